//! The rules stage as a pipeline task, between the span stage and export.
//!
//! In: [`Output`]s of the span stage (bounded channel; its close is the shutdown signal), the
//! rule set (reloaded when its file changes, [`RuleSource::poll`]). Out: the same outputs,
//! annotated ([`AlertStage::annotate`]), on a bounded channel to export. Dropped: nothing; a
//! rule that does not parse on reload is left out and logged.

use std::time::Instant;

use tokio::sync::mpsc;

use super::source::RuleSource;
use super::stage::AlertStage;
use crate::spans::Output;

/// Runs until `rx` closes, after passing on everything it read.
pub async fn run(
    mut rx: mpsc::Receiver<Output>,
    mut stage: AlertStage,
    mut rules: RuleSource,
    tx: mpsc::Sender<Output>,
) {
    while let Some(mut out) = rx.recv().await {
        for e in rules.poll(Instant::now()).unwrap_or_default() {
            tracing::warn!("rule left out: {e}");
        }
        stage.annotate(&rules.rules(), &mut out);
        if tx.send(out).await.is_err() {
            return;
        }
    }
}
