//! Recompute: for each closed hour that needs it, read the hour's raw objects, dedupe, build
//! every view's states with the Polars plan of [`crate::plan`], write them as new objects, and
//! publish one manifest that points at them, with the new horizon.
//!
//! An hour needs computing when a view has never computed it, when its raw objects changed
//! since (late events arrived: the hour is dirty, recomputed under its own logic version), or
//! when a reprocess asks for it under a new logic version.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use polars::prelude::*;
use tally_connectors::batch_views::{BatchViews, BatchViewsError};
use tally_connectors::catalog::CatalogHandle;
use tally_model::layout::{RawStream, parse_hour_partition, view_object_path};
use tally_model::manifest::{HourEntry, LogicVersion, Manifest, RawInputs, ViewManifest, view_id};
use tally_model::time::{Granularity, HOUR_MS, format_rfc3339, now_millis};
use tally_model::{Catalog, Millis, ViewSpec, stable_hash};

use crate::BatchError;
use crate::archiver::archived_through;
use crate::plan::{self, BuiltStates, dedupe};
use crate::retention::frozen_before;
use crate::telemetry::{BatchMetrics, RunSummary};

/// What a run should compute.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Only hours starting in this range; all closed hours when none.
    pub hours: Option<Range<Millis>>,
    /// Only this view (of every tenant that has it).
    pub view: Option<String>,
    /// Only the views of this tenant.
    pub tenant: Option<String>,
    /// Recompute every hour in range with the current specs under this logic version, then
    /// make it the views' current version.
    pub reprocess_as: Option<LogicVersion>,
    /// With `reprocess_as`: stage the recomputed hours for review instead of making them
    /// live ([`ViewManifest::staged`]); [`Recompute::promote`] makes them live later.
    pub stage: bool,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum RunProgress {
    /// The run has planned this many hours.
    Planned {
        /// Hours to compute.
        hours: usize,
    },
    /// An hour is done.
    HourDone {
        /// Raw rows it read.
        raw_rows: u64,
    },
}

/// The raw objects of one hour.
#[derive(Debug, Clone, Default)]
struct RawHour {
    objects: Vec<String>,
    inputs: RawInputs,
}

/// One view to compute for one hour.
struct Job {
    view_id: String,
    tenant: String,
    version: LogicVersion,
    spec: ViewSpec,
}

/// The recompute job.
pub struct Recompute {
    store: Arc<dyn ObjectStore>,
    views: BatchViews,
    catalog: CatalogHandle,
    lateness_ms: Millis,
    metrics: Arc<BatchMetrics>,
}

/// What names a run's state objects: the manifest generation it will publish, and a token of
/// its own ([`view_object_path`]).
#[derive(Debug, Clone, Copy)]
struct RunStamp {
    generation: u64,
    run: u64,
}

impl Recompute {
    /// Recomputes the views of `catalog` from the raw events in `store`. `lateness_ms` is how
    /// late an event may arrive (ingest rejects later ones): hours end that long before the
    /// horizon can pass them.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        catalog: impl Into<CatalogHandle>,
        lateness_ms: Millis,
        metrics: Arc<BatchMetrics>,
    ) -> Self {
        Recompute {
            views: BatchViews::new(store.clone()),
            store,
            catalog: catalog.into(),
            lateness_ms,
            metrics,
        }
    }

    /// The object store it reads and writes.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The catalog it computes the views of.
    pub fn catalog(&self) -> &CatalogHandle {
        &self.catalog
    }

    /// Computes what `request` asks for and publishes the result.
    pub async fn run(
        &self,
        request: &RunRequest,
        progress: &(dyn Fn(RunProgress) + Sync),
    ) -> Result<RunSummary, BatchError> {
        let started = Instant::now();
        let result = self.run_inner(request, progress).await;
        match &result {
            Ok(summary) => self.metrics.run_finished(summary, started.elapsed()),
            Err(err) => self.metrics.run_failed(err),
        }
        result
    }

    async fn run_inner(
        &self,
        request: &RunRequest,
        progress: &(dyn Fn(RunProgress) + Sync),
    ) -> Result<RunSummary, BatchError> {
        let published = self.views.manifest_to_build_on().await?;
        let mut manifest = published.clone().unwrap_or_default();
        let generation = manifest.generation + 1;
        // Another run may race for the same generation: this run's objects are named apart.
        let stamp = RunStamp {
            generation,
            run: tally_model::token::fresh_token(),
        };
        let archived = archived_through(self.store.as_ref(), RawStream::Events).await?;
        let raw_hours = self.list_raw_hours().await?;
        // Hours the archiver has passed: every event received before their end is archived.
        // A partition that has archived nothing yet reads Millis::MIN: nothing is closed.
        let closed_end = archived.map_or(Millis::MIN, |through| {
            Granularity::Hour.bucket_start(through)
        });
        let wanted = request.hours.clone().unwrap_or(Millis::MIN..Millis::MAX);
        // One clock reading for what raw retention has frozen, in planning and horizons alike.
        let started_at = now_millis();

        // One catalog for the whole run, however governance changes it meanwhile.
        let catalog = self.catalog.current();
        let mut work: BTreeMap<Millis, Vec<Job>> = BTreeMap::new();
        let views = catalog_views(&catalog, request.view.as_deref())
            .filter(|(tenant, _)| request.tenant.as_deref().is_none_or(|only| only == *tenant));
        for (tenant, spec) in views {
            let id = view_id(tenant, &spec.name);
            let entry = manifest
                .views
                .entry(id.clone())
                .or_insert_with(|| ViewManifest::new(tenant, spec));
            let version = choose_version(entry, spec, request.reprocess_as, request.stage)?;
            let frozen_end = frozen_before(&catalog, tenant, spec, started_at);
            let mut frozen = 0;
            for (&hour, raw) in raw_hours.range(wanted.clone()) {
                if hour >= closed_end {
                    break;
                }
                // Raw retention may have thinned these hours: their states are final.
                if hour + HOUR_MS <= frozen_end && entry.hours.contains_key(&hour) {
                    frozen += 1;
                    continue;
                }
                let (version, spec) = match entry.hours.get(&hour) {
                    Some(_) if request.reprocess_as.is_some() => (version, spec.clone()),
                    None => (version, spec.clone()),
                    Some(done) if done.inputs != raw.inputs => {
                        let spec = entry.versions.get(&done.logic_version).ok_or_else(|| {
                            BatchError::Corrupt {
                                what: format!("manifest entry of {id}"),
                                reason: format!("logic version {} has no spec", done.logic_version),
                            }
                        })?;
                        (done.logic_version, spec.clone())
                    }
                    Some(_) => continue,
                };
                work.entry(hour).or_default().push(Job {
                    view_id: id.clone(),
                    tenant: tenant.to_owned(),
                    version,
                    spec,
                });
            }
            if frozen > 0 && request.reprocess_as.is_some() {
                tracing::warn!(
                    view = %id,
                    hours = frozen,
                    "not reprocessing hours older than the shortest raw retention of the event types this view covers: their raw events may be gone, so their states stay as computed"
                );
            }
        }

        progress(RunProgress::Planned { hours: work.len() });
        let mut summary = RunSummary::default();
        let planned: BTreeSet<String> = (work.values().flatten())
            .map(|job| job.view_id.clone())
            .collect();
        // A view that failed an hour computes no later one: its hours stop where it failed.
        let mut failed = BTreeSet::new();
        for (hour, mut jobs) in work {
            jobs.retain(|job| !failed.contains(&job.view_id));
            if jobs.is_empty() {
                progress(RunProgress::HourDone { raw_rows: 0 });
                continue;
            }
            let raw = &raw_hours[&hour];
            let raw_rows = self
                .compute_hour(
                    hour,
                    raw,
                    jobs,
                    (stamp, request.stage),
                    (&mut manifest, &mut failed),
                    &mut summary,
                )
                .await?;
            summary.raw_rows += raw_rows;
            progress(RunProgress::HourDone { raw_rows });
        }
        for view in planned.difference(&failed) {
            if let Some(entry) = manifest.views.get_mut(view) {
                entry.failing = None;
            }
            self.metrics.view_recovered(view);
        }
        summary.failed_views = (failed.iter())
            .filter_map(|view| {
                Some(format!(
                    "{view}: {}",
                    manifest.views.get(view)?.failing.as_ref()?
                ))
            })
            .collect();

        if let Some(through) = archived {
            let final_end =
                Granularity::Hour.bucket_start(through.saturating_sub(self.lateness_ms));
            self.advance_horizons(&catalog, &mut manifest, &raw_hours, final_end, started_at);
        }
        summary.horizon = manifest.horizon;
        // A first manifest with no hour and no horizon would tell readers nothing, and its
        // default horizon would read as one the batch layer lags behind.
        let nothing_yet = published.is_none()
            && summary.hours == 0
            && manifest.horizon == Manifest::default().horizon;
        if published.as_ref() != Some(&manifest) && !nothing_yet {
            manifest.generation = generation;
            manifest.published_at = now_millis();
            self.views.publish(&manifest).await?;
            summary.generation = Some(generation);
        }
        Ok(summary)
    }

    /// Makes the staged hours of `version` of a tenant's view live, in one manifest swap;
    /// returns how many hours went live.
    pub async fn promote(
        &self,
        tenant: &str,
        view: &str,
        version: LogicVersion,
    ) -> Result<usize, BatchError> {
        let mut manifest = self.views.manifest_to_build_on().await?.unwrap_or_default();
        let id = view_id(tenant, view);
        let entry = manifest.views.get_mut(&id);
        let promoted = entry.map_or(0, |entry| entry.promote(version));
        if promoted == 0 {
            return Err(BatchError::NothingStaged { view: id, version });
        }
        manifest.generation += 1;
        manifest.published_at = now_millis();
        self.views.publish(&manifest).await?;
        tracing::info!(view = %id, version, hours = promoted, "promoted a reviewed logic version");
        Ok(promoted)
    }

    /// Reads, dedupes and aggregates one hour for its jobs, writing their states as objects
    /// named by `stamp`, live or `staged`; returns the raw rows read. A view whose plan fails
    /// is marked failing in the manifest and added to `failed`; the others go on.
    async fn compute_hour(
        &self,
        hour: Millis,
        raw: &RawHour,
        jobs: Vec<Job>,
        (stamp, staged): (RunStamp, bool),
        (manifest, failed): (&mut Manifest, &mut BTreeSet<String>),
        summary: &mut RunSummary,
    ) -> Result<u64, BatchError> {
        let mut objects = Vec::with_capacity(raw.objects.len());
        for object in &raw.objects {
            let bytes = self
                .store
                .get(&ObjectPath::from(object.as_str()))
                .await
                .map_err(|source| BatchError::store(object, source))?
                .bytes()
                .await
                .map_err(|source| BatchError::store(object, source))?;
            objects.push((object.clone(), bytes));
        }
        // Polars is CPU work with its own thread pool: off the async runtime.
        let (raw_rows, built) =
            tokio::task::spawn_blocking(move || build_hour(hour, objects, jobs))
                .await
                .expect("building an hour's states does not panic")?;
        for (job, states) in built {
            let states = match states {
                Ok(states) => states,
                Err(error) => {
                    self.view_failed(&job, &error, (manifest, failed));
                    continue;
                }
            };
            let object = match states.rows.is_empty() {
                true => None,
                false => {
                    let path = view_object_path(
                        &job.tenant,
                        &job.spec.name,
                        job.version,
                        hour,
                        stamp.generation,
                        stamp.run,
                    );
                    let written = self
                        .views
                        .write_states(&path, &job.spec.dimensions, &states.rows)
                        .await;
                    match written {
                        Ok(()) => Some(path),
                        // The view's states do not encode: its own failure. A store that
                        // fails is every view's, and fails the run.
                        Err(error @ BatchViewsError::Parquet(_)) => {
                            self.view_failed(&job, &BatchError::from(error), (manifest, failed));
                            continue;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            };
            summary.hours += 1;
            summary.rows += states.rows.len() as u64;
            let entry = manifest
                .views
                .get_mut(&job.view_id)
                .expect("every job's view is in the manifest");
            let hours = if staged {
                &mut entry.staged
            } else {
                &mut entry.hours
            };
            hours.insert(
                hour,
                HourEntry {
                    logic_version: job.version,
                    object,
                    rows: states.rows.len() as u64,
                    events: states.events,
                    inputs: raw.inputs,
                },
            );
        }
        Ok(raw_rows)
    }

    /// Marks `job`'s view failing with `error`, in the manifest and the metrics, so that its
    /// later hours are skipped and the other views go on.
    fn view_failed(
        &self,
        job: &Job,
        error: &BatchError,
        (manifest, failed): (&mut Manifest, &mut BTreeSet<String>),
    ) {
        tracing::error!(view = %job.view_id, %error, "a view's recompute failed; the other views go on");
        self.metrics.view_failed(&job.view_id, error);
        if let Some(entry) = manifest.views.get_mut(&job.view_id) {
            entry.failing = Some(error.to_string());
        }
        failed.insert(job.view_id.clone());
    }

    /// Every raw events object, grouped by hour, with each hour's input fingerprint.
    async fn list_raw_hours(&self) -> Result<BTreeMap<Millis, RawHour>, BatchError> {
        let prefix = RawStream::Events.prefix();
        let listed: Vec<_> = self
            .store
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .map_err(|source| BatchError::store(prefix, source))?;
        let mut hours: BTreeMap<Millis, Vec<(String, u64)>> = BTreeMap::new();
        for meta in listed {
            let path = meta.location.to_string();
            // The local store stages writes beside their target; only whole objects count.
            if !path.ends_with(".parquet") {
                continue;
            }
            if let Some(hour) = parse_hour_partition(&path) {
                hours.entry(hour).or_default().push((path, meta.size));
            }
        }
        Ok(hours
            .into_iter()
            .map(|(hour, mut objects)| {
                objects.sort();
                let fingerprint = stable_hash(objects.iter().flat_map(|(path, size)| {
                    path.bytes().chain(size.to_le_bytes()).collect::<Vec<_>>()
                }));
                let inputs = RawInputs {
                    objects: objects.len() as u64,
                    fingerprint,
                };
                let objects = objects.into_iter().map(|(path, _)| path).collect();
                (hour, RawHour { objects, inputs })
            })
            .collect())
    }

    /// Moves each view's horizon to the end of its contiguous computed hours before
    /// `final_end` (hours that can no longer receive events), and the manifest's to the least
    /// of the views that are not failing. Horizons never move back: the speed layer has dropped what lies before them.
    /// Hours raw retention had frozen at `frozen_at` count as computed.
    fn advance_horizons(
        &self,
        catalog: &Catalog,
        manifest: &mut Manifest,
        raw_hours: &BTreeMap<Millis, RawHour>,
        final_end: Millis,
        frozen_at: Millis,
    ) {
        let mut least = final_end;
        for (tenant, spec) in catalog_views(catalog, None) {
            let Some(entry) = manifest.views.get_mut(&view_id(tenant, &spec.name)) else {
                least = least.min(manifest.horizon);
                continue;
            };
            // A failing view keeps its own horizon; serving refuses its queries rather than
            // let it hold back every other view's.
            let failing = entry.failing.is_some();
            let frozen_end = frozen_before(catalog, tenant, spec, frozen_at);
            let first_gap = raw_hours
                .range(..final_end)
                .find(|(hour, raw)| match entry.hours.get(hour) {
                    None => true,
                    Some(_) if **hour + HOUR_MS <= frozen_end => false,
                    Some(done) => done.inputs != raw.inputs,
                })
                .map_or(final_end, |(hour, _)| *hour);
            entry.horizon = entry.horizon.max(first_gap);
            if !failing {
                least = least.min(entry.horizon);
            }
        }
        if least > manifest.horizon {
            tracing::info!(horizon = %format_rfc3339(least), "batch horizon advances");
            manifest.horizon = least;
        }
    }
}

/// Every (tenant, view) of the catalog, or only views named `only`.
fn catalog_views<'a>(
    catalog: &'a Catalog,
    only: Option<&'a str>,
) -> impl Iterator<Item = (&'a str, &'a ViewSpec)> + 'a {
    catalog.tenants.iter().flat_map(move |(name, tenant)| {
        tenant
            .views
            .iter()
            .filter(move |spec| only.is_none_or(|only| spec.name == only))
            .map(move |spec| (name.as_str(), spec))
    })
}

/// A job with its states, or why its view's plan failed.
type BuiltJob = (Job, Result<BuiltStates, BatchError>);

/// Decodes an hour's raw objects (only the columns its jobs read), dedupes them once, and
/// builds every job's states. Returns the raw rows read and each job with its states, or
/// why its plan failed: one view's failure is its own.
fn build_hour(
    hour: Millis,
    objects: Vec<(String, bytes::Bytes)>,
    jobs: Vec<Job>,
) -> Result<(u64, Vec<BuiltJob>), BatchError> {
    let columns: BTreeSet<String> = jobs
        .iter()
        .flat_map(|job| plan::raw_columns(&job.spec))
        .collect();
    let mut frames = Vec::with_capacity(objects.len());
    for (object, bytes) in objects {
        let read = || -> PolarsResult<DataFrame> {
            let mut reader = ParquetReader::new(Cursor::new(bytes));
            let present: Vec<String> = reader
                .schema()?
                .iter_names()
                .filter(|name| columns.contains(name.as_str()))
                .map(|name| name.to_string())
                .collect();
            reader.with_columns(Some(present)).finish()
        };
        frames.push(read().map_err(|err| BatchError::Corrupt {
            what: object,
            reason: err.to_string(),
        })?);
    }
    let frame = polars::functions::concat_df_diagonal(&frames)?;
    let raw_rows = frame.height() as u64;
    let available = frame.schema().clone();
    let deduped = dedupe(frame)?;
    let mut built = Vec::with_capacity(jobs.len());
    for job in jobs {
        let states = plan::view_states(deduped.clone(), &available, &job.tenant, &job.spec)
            .map_err(|source| BatchError::Plan {
                view: job.view_id.clone(),
                hour: format_rfc3339(hour),
                source,
            });
        built.push((job, states));
    }
    Ok((raw_rows, built))
}

/// The logic version a view computes with in this run. A reprocess registers its version's
/// spec, and makes it current unless it is `staged` for review.
fn choose_version(
    entry: &mut ViewManifest,
    spec: &ViewSpec,
    reprocess_as: Option<LogicVersion>,
    staged: bool,
) -> Result<LogicVersion, BatchError> {
    let Some(version) = reprocess_as else {
        let (version, new) = entry.version_for(spec);
        if new {
            tracing::warn!(
                view = %entry.view,
                tenant = %entry.tenant,
                version,
                "the view spec changed: new hours use logic version {version}; run `tally batch reprocess --from <T> --to <T> --logic-version {version}` to recompute history with it"
            );
        }
        return Ok(version);
    };
    match entry.versions.get(&version) {
        Some(existing) if existing != spec => Err(BatchError::VersionTaken {
            view: view_id(&entry.tenant, &entry.view),
            version,
            next: entry.next_version(),
        }),
        // Versions are numbered in turn: one far ahead would leave nothing after it to number.
        None if version != entry.next_version() => Err(BatchError::VersionUnknown {
            view: view_id(&entry.tenant, &entry.view),
            version,
            next: entry.next_version(),
        }),
        _ => {
            entry.versions.insert(version, spec.clone());
            if !staged {
                entry.current_version = version;
            }
            Ok(version)
        }
    }
}
