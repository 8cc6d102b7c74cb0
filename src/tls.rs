//! TLS configurations that follow their certificate files: cert-manager (and a Kubernetes
//! Secret volume) replaces the files in place, and the listeners and the stream client pick the
//! new ones up without a restart.
//!
//! In: the paths of a certificate, its key and a CA bundle, and how to build a rustls config
//! from them. Out: the current config, re-read when any file's identity (device, inode, size,
//! modification time) changed since the last attempt; checked each time one is asked for (once
//! per new connection: three `stat`s). Dropped: nothing; a set of files that does not build
//! (half written, key and certificate that do not match) is logged and counted
//! (`result="failed"`) and the last good config stays in use until the files change again.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::serve::ServeError;

type Labels = Vec<(&'static str, &'static str)>;

/// What identifies one version of a file on disk.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    // stat follows symlinks: a Secret volume swaps its `..data` link, which changes the inode
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

type Build<T> = Box<dyn Fn() -> Result<T, ServeError> + Send + Sync>;

/// A config built from files, rebuilt when they change.
pub struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<(Arc<T>, Vec<Stamp>)>,
    reloads: Family<Labels, Counter>,
}

impl<T> Reloading<T> {
    /// Builds once now (a failure here is the caller's start-up error). `reloads` counts later
    /// rebuilds by `result` (ok, failed).
    pub fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, ServeError> + Send + Sync + 'static,
        reloads: Family<Labels, Counter>,
    ) -> Result<Self, ServeError> {
        let stamps: Vec<Stamp> = files.iter().map(|f| stamp(f)).collect();
        let first = build()?;
        Ok(Self { what, files, build: Box::new(build), state: Mutex::new((Arc::new(first), stamps)), reloads })
    }

    /// The config to use for a new connection: rebuilt first if a file changed.
    pub fn current(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.1 != stamps {
            // tried once per change: a broken set is not re-read on every connection
            st.1 = stamps;
            match (self.build)() {
                Ok(cfg) => {
                    st.0 = Arc::new(cfg);
                    self.reloads.get_or_create(&vec![("result", "ok")]).inc();
                    tracing::info!(what = self.what, files = ?self.files, "TLS certificate files changed: reloaded");
                }
                Err(e) => {
                    self.reloads.get_or_create(&vec![("result", "failed")]).inc();
                    tracing::warn!(what = self.what, error = %e, "TLS certificate files changed but do not load: keeping the previous ones");
                }
            }
        }
        st.0.clone()
    }
}
