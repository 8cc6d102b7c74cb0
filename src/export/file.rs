//! OTLP/JSON lines: one `ExportTraceServiceRequest` per line, the OpenTelemetry Collector file
//! exporter's format (readable back with the Collector's `otlpjsonfile` receiver, and with
//! `podtrail show`).
//!
//! In: batches of `SpanData`. Out: appended lines, flushed per batch; with a [`Rotation`], the
//! file is renamed `FILE.1` (older ones shifted to `FILE.2` ...) before a line would take it
//! past its size, and rotated files beyond `keep` are deleted. A line is never split across
//! two files, so a reader of `FILE.N ... FILE.1 FILE` sees every batch once. A write error
//! fails the batch, which the queue retries and then counts as lost; a failed rotation is a
//! write error too (the line is not written into a file that should have rotated).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

/// When the file sink starts a new file, and how many old ones it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// A line that would take the file past this starts a new file (a single line larger than
    /// this still goes, alone, into a fresh file).
    pub max_bytes: u64,
    /// Rotated files kept: `FILE.1` (newest) ... `FILE.keep`.
    pub keep: u32,
}

#[derive(Debug)]
struct Open {
    file: File,
    len: u64,
}

#[derive(Debug)]
pub struct FileExporter {
    path: PathBuf,
    rotation: Option<Rotation>,
    file: Mutex<Open>,
    resource: ResourceAttributesWithSchema,
}

/// `FILE.n`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<Open> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    Ok(Open { file, len })
}

impl FileExporter {
    pub fn open(path: &Path, resource: &Resource) -> std::io::Result<Self> {
        Self::open_rotating(path, None, resource)
    }

    pub fn open_rotating(path: &Path, rotation: Option<Rotation>, resource: &Resource) -> std::io::Result<Self> {
        let file = open_append(path)?;
        Ok(FileExporter { path: path.to_owned(), rotation, file: Mutex::new(file), resource: resource.into() })
    }

    /// One line of OTLP/JSON for a batch.
    pub fn encode(batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) -> Result<String, serde_json::Error> {
        let req = ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, resource) };
        serde_json::to_string(&req)
    }

    /// Shifts `FILE.k` to `FILE.k+1` (dropping the oldest beyond `keep`), `FILE` to `FILE.1`,
    /// and opens a new, empty `FILE`.
    fn rotate(&self, open: &mut Open, keep: u32) -> std::io::Result<()> {
        open.file.flush()?;
        match std::fs::remove_file(rotated_path(&self.path, keep)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            match std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        *open = open_append(&self.path)?;
        Ok(())
    }

    fn write_line(&self, line: &str) -> std::io::Result<()> {
        let mut open = self.file.lock().map_err(|_| std::io::Error::other("file lock poisoned"))?;
        if let Some(r) = self.rotation {
            if open.len > 0 && open.len + line.len() as u64 > r.max_bytes {
                self.rotate(&mut open, r.keep)?;
            }
        }
        open.file.write_all(line.as_bytes())?;
        open.file.flush()?;
        open.len += line.len() as u64;
        Ok(())
    }
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut line = Self::encode(batch, &self.resource).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        line.push('\n');
        self.write_line(&line).map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display())))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}
