//! What the batch layer measures, in one place: every metric it exports to `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tally_model::Millis;
use tally_model::layout::RawStream;
use tally_model::time::now_millis;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: &'static str,
}

/// The batch jobs whose health `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BatchJob {
    /// The archiver of one raw stream.
    Archiver(RawStream),
    /// Scheduled recompute.
    Recompute,
}

impl BatchJob {
    fn name(self) -> &'static str {
        match self {
            BatchJob::Archiver(RawStream::Events) => "archiver events",
            BatchJob::Archiver(RawStream::Rejected) => "archiver rejected",
            BatchJob::Recompute => "recompute",
        }
    }
}

/// The batch layer's metrics.
#[derive(Default)]
pub struct BatchMetrics {
    events_archived: Family<StreamLabels, Counter>,
    raw_objects: Counter,
    raw_bytes: Counter,
    undecodable: Counter,
    runs: Counter,
    runs_skipped: Counter,
    run_failures: Counter,
    last_run_finished: Gauge,
    last_run_millis: Gauge,
    last_run_hours: Gauge,
    last_run_rows: Gauge,
    horizon: Gauge,
    failing: Family<JobLabels, Gauge>,
    failures: Mutex<BTreeMap<BatchJob, String>>,
    failing_views: Gauge,
    /// Views whose last recompute failed, by view id, with why.
    view_failures: Mutex<BTreeMap<String, String>>,
}

/// What one recompute did, for the metrics and the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// View-hours computed.
    pub hours: u64,
    /// Rows (view keys) written.
    pub rows: u64,
    /// Raw rows read, before dedupe.
    pub raw_rows: u64,
    /// The published horizon.
    pub horizon: Millis,
    /// The published manifest generation; none when nothing changed.
    pub generation: Option<u64>,
    /// Views whose recompute failed in this run, each with why; the others were computed all
    /// the same.
    pub failed_views: Vec<String>,
}

impl BatchMetrics {
    /// Creates the metrics and registers them under `tally_batch_*`.
    pub fn register(registry: &mut Registry) -> Arc<BatchMetrics> {
        let metrics = BatchMetrics::default();
        let batch = registry.sub_registry_with_prefix("tally_batch");
        batch.register(
            "events_archived",
            "Log records written to raw Parquet, by stream",
            metrics.events_archived.clone(),
        );
        batch.register(
            "raw_objects",
            "Raw Parquet objects written",
            metrics.raw_objects.clone(),
        );
        batch.register(
            "raw_bytes",
            "Bytes of raw Parquet written",
            metrics.raw_bytes.clone(),
        );
        batch.register(
            "undecodable",
            "Log records the archiver could not decode",
            metrics.undecodable.clone(),
        );
        batch.register("runs", "Recompute runs finished", metrics.runs.clone());
        batch.register(
            "runs_skipped",
            "Scheduled runs skipped because one was still in flight",
            metrics.runs_skipped.clone(),
        );
        batch.register(
            "run_failures",
            "Recompute runs that failed",
            metrics.run_failures.clone(),
        );
        batch.register(
            "last_run_finished_ms",
            "When the last recompute finished (ms since the epoch)",
            metrics.last_run_finished.clone(),
        );
        batch.register(
            "last_run_duration_ms",
            "How long the last recompute took",
            metrics.last_run_millis.clone(),
        );
        batch.register(
            "last_run_hours",
            "View-hours the last recompute computed",
            metrics.last_run_hours.clone(),
        );
        batch.register(
            "last_run_rows",
            "Rows the last recompute wrote",
            metrics.last_run_rows.clone(),
        );
        batch.register(
            "horizon_ms",
            "The published horizon (ms since the epoch); now minus this is the horizon lag",
            metrics.horizon.clone(),
        );
        batch.register(
            "failing",
            "1 while a batch job's last attempt failed (it retries), by job",
            metrics.failing.clone(),
        );
        batch.register(
            "failing_views",
            "Views whose last recompute failed; the others are computed all the same",
            metrics.failing_views.clone(),
        );
        Arc::new(metrics)
    }

    /// The failure of the first batch job whose last attempt failed, or of the first view
    /// whose recompute failed, for `/readyz`.
    pub fn failure(&self) -> Option<String> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((job, error)) = failures.iter().next() {
            return Some(format!("{}: {error}", job.name()));
        }
        let views = self.view_failures.lock().unwrap_or_else(|p| p.into_inner());
        let (view, error) = views.iter().next()?;
        let others = match views.len() {
            1 => String::new(),
            n => format!(" (and {} more failing views)", n - 1),
        };
        Some(format!(
            "view {view} cannot be recomputed, and serving refuses its queries: {error}{others}; fix its spec (PUT /v1/governance/views/<name>), the other views are computed all the same"
        ))
    }

    /// A view's recompute failed with `error`; the other views went on.
    pub(crate) fn view_failed(&self, view: &str, error: &dyn std::fmt::Display) {
        let mut views = self.view_failures.lock().unwrap_or_else(|p| p.into_inner());
        views.insert(view.to_owned(), error.to_string());
        self.failing_views.set(views.len() as i64);
    }

    /// A view was recomputed without failing.
    pub(crate) fn view_recovered(&self, view: &str) {
        let mut views = self.view_failures.lock().unwrap_or_else(|p| p.into_inner());
        if views.remove(view).is_some() {
            tracing::info!(view, "the view is recomputed again");
        }
        self.failing_views.set(views.len() as i64);
    }

    /// `job`'s last attempt failed with `error`; it will retry.
    pub(crate) fn job_failed(&self, job: BatchJob, error: &dyn std::fmt::Display) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.insert(job, error.to_string());
        self.failing
            .get_or_create(&JobLabels { job: job.name() })
            .set(1);
    }

    /// `job`'s last attempt succeeded.
    pub(crate) fn job_succeeded(&self, job: BatchJob) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.remove(&job).is_some() {
            tracing::info!(job = job.name(), "the batch job works again");
        }
        self.failing
            .get_or_create(&JobLabels { job: job.name() })
            .set(0);
    }

    pub(crate) fn events_archived(&self, stream: RawStream, events: usize) {
        self.events_archived
            .get_or_create(&StreamLabels {
                stream: stream.name(),
            })
            .inc_by(events as u64);
    }

    pub(crate) fn raw_object_written(&self, bytes: usize) {
        self.raw_objects.inc();
        self.raw_bytes.inc_by(bytes as u64);
    }

    pub(crate) fn undecodable_record(&self) {
        self.undecodable.inc();
    }

    /// A recompute finished.
    pub fn run_finished(&self, summary: &RunSummary, took: Duration) {
        self.job_succeeded(BatchJob::Recompute);
        self.runs.inc();
        self.last_run_finished.set(now_millis());
        self.last_run_millis.set(took.as_millis() as i64);
        self.last_run_hours.set(summary.hours as i64);
        self.last_run_rows.set(summary.rows as i64);
        self.horizon.set(summary.horizon);
        tracing::info!(
            hours = summary.hours,
            rows = summary.rows,
            raw_rows = summary.raw_rows,
            horizon = %tally_model::time::format_rfc3339(summary.horizon),
            generation = ?summary.generation,
            took_ms = took.as_millis() as u64,
            "batch recompute finished"
        );
    }

    /// A recompute failed.
    pub fn run_failed(&self, error: &dyn std::fmt::Display) {
        self.job_failed(BatchJob::Recompute, error);
        self.run_failures.inc();
        tracing::error!(%error, "batch recompute failed; the published manifest is unchanged");
    }

    /// A scheduled run was skipped.
    pub fn run_skipped(&self) {
        self.runs_skipped.inc();
        tracing::warn!("skipping a scheduled batch run: the previous one is still running");
    }
}
