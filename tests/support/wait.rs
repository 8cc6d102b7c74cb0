//! Waiting for something another task does, in async tests: poll a condition until it holds,
//! and fail the test with what was awaited when it does not within 15 s.

use std::time::Duration;

/// Polls `cond` every 20 ms until it holds; panics naming `what` after 15 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..750 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}
