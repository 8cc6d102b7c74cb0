//! OTLP/JSON lines: one `ExportTraceServiceRequest` per line, the OpenTelemetry Collector file
//! exporter's format (readable back with the Collector's `otlpjsonfile` receiver).
//!
//! In: batches of `SpanData`. Out: appended lines, flushed per batch. A write error fails the
//! batch, which the queue retries and then counts as lost.

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

#[derive(Debug)]
pub struct FileExporter {
    path: PathBuf,
    file: Mutex<File>,
    resource: ResourceAttributesWithSchema,
}

impl FileExporter {
    pub fn open(path: &Path, resource: &Resource) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileExporter { path: path.to_owned(), file: Mutex::new(file), resource: resource.into() })
    }

    /// One line of OTLP/JSON for a batch.
    pub fn encode(batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) -> Result<String, serde_json::Error> {
        let req = ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(batch, resource) };
        serde_json::to_string(&req)
    }
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut line = Self::encode(batch, &self.resource).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        line.push('\n');
        let mut f = self.file.lock().map_err(|_| OTelSdkError::InternalFailure("file lock poisoned".into()))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.flush())
            .map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display())))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}
