//! Archive and recompute against a plain fold over the same events, on a real spool and a
//! local object store; crash redo, dirty hours, reprocessing and the horizon; [`review`]:
//! a reprocess staged for review and its promotion, run as batch jobs.

mod review;

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;
use tally_connectors::archive::events_from_parquet;
use tally_connectors::batch_views::BatchViews;
use tally_connectors::log::{AppendRecord, EventLog, Spool, SpoolOptions};
use tally_connectors::testing::{
    assert_states_agree, demo_events, reference_states, sample_demo_events,
};
use tally_connectors::view_store::ViewKey;
use tally_model::layout::RawStream;
use tally_model::manifest::Manifest;
use tally_model::time::{HOUR_MS, now_millis};
use tally_model::{AggregateState, Catalog, Event, Granularity, Millis};

use crate::archiver::{self, Archiver, CONSUMER, RollPolicy};
use crate::recompute::{Recompute, RunRequest};
use crate::retention::{RetentionReport, expire_raw_events};
use crate::telemetry::{BatchMetrics, RunSummary};

const PARTITIONS: u32 = 3;

struct Rig {
    _dir: tempfile::TempDir,
    log: Arc<Spool>,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        partitions: PARTITIONS,
        ..SpoolOptions::default()
    };
    let log = Arc::new(Spool::open(&dir.path().join("log"), options).unwrap());
    let store = tally_connectors::object_store::open_local(&dir.path().join("objects")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Rig {
        _dir: dir,
        log,
        store,
        runtime,
    }
}

/// Small rolls, so one archive pass writes several objects per hour.
fn policy() -> RollPolicy {
    RollPolicy {
        events: 40,
        bytes: usize::MAX,
        age: std::time::Duration::from_secs(3600),
        clock_slack_ms: 1_000,
    }
}

/// Events over three whole hours that all closed hours ago: the start of the hour six
/// hours back, so that the first hour holds a third of them whenever the tests run (from a
/// minute before the hour, it held none).
fn base() -> Millis {
    Granularity::Hour.bucket_start(now_millis() - 6 * HOUR_MS)
}

impl Rig {
    fn append(&self, events: &[Event]) {
        let records = events
            .iter()
            .map(|e| AppendRecord::event(e, PARTITIONS))
            .collect();
        self.runtime.block_on(self.log.append(records)).unwrap();
    }

    /// Archives everything in the log, closing every roll.
    fn archive(&self) {
        self.archive_partitions(None);
    }

    /// Archives everything in the partitions `owned` (all when `None`), closing every roll.
    fn archive_partitions(&self, owned: Option<&[u32]>) {
        self.runtime.block_on(async {
            let metrics = BatchMetrics::register(&mut Default::default());
            let (log, store) = (self.log.clone(), self.store.clone());
            let owned = owned.map(Into::into);
            let mut archiver = Archiver::<Event>::open_owned(log, store, policy(), metrics, owned)
                .await
                .unwrap();
            while archiver.pass(true).await.unwrap().read > 0 {}
        });
    }

    fn recompute(&self, catalog: &Catalog, lateness: Millis, request: RunRequest) -> RunSummary {
        self.try_recompute(catalog, lateness, request).unwrap()
    }

    fn try_recompute(
        &self,
        catalog: &Catalog,
        lateness: Millis,
        request: RunRequest,
    ) -> Result<RunSummary, crate::BatchError> {
        let metrics = BatchMetrics::register(&mut Default::default());
        let recompute = Recompute::new(
            self.store.clone(),
            Arc::new(catalog.clone()),
            lateness,
            metrics,
        );
        self.runtime.block_on(recompute.run(&request, &|_| {}))
    }

    fn manifest(&self) -> Manifest {
        let views = BatchViews::new(self.store.clone());
        self.runtime.block_on(views.manifest()).unwrap().unwrap()
    }

    /// Every batch state of the catalog's views the manifest publishes.
    fn batch_states(&self, catalog: &Catalog) -> BTreeMap<ViewKey, AggregateState> {
        let manifest = self.manifest();
        let views = BatchViews::new(self.store.clone());
        let mut states = BTreeMap::new();
        for (tenant, config) in &catalog.tenants {
            for view in &config.views {
                let read = views.read(&manifest, tenant, &view.name, Millis::MIN..Millis::MAX);
                states.extend(self.runtime.block_on(read).unwrap());
            }
        }
        states
    }

    /// Every logged event with its position.
    fn logged(&self) -> Vec<(u32, u64, Event)> {
        (0..PARTITIONS)
            .flat_map(|partition| {
                let entries = self.log.read(partition, 0, usize::MAX).unwrap();
                entries
                    .into_iter()
                    .map(move |entry| (partition, entry.offset, entry.decode().unwrap()))
            })
            .collect()
    }

    fn expected(&self, catalog: &Catalog) -> BTreeMap<ViewKey, AggregateState> {
        reference_states(catalog, self.logged(), Millis::MIN..Millis::MAX)
    }

    /// Every raw event object's rows.
    fn raw_rows(&self) -> Vec<(u32, u64)> {
        let listed: Vec<String> = self.runtime.block_on(async {
            use futures::TryStreamExt;
            let prefix = object_store::path::Path::from(RawStream::Events.prefix());
            let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.unwrap();
            metas.into_iter().map(|m| m.location.to_string()).collect()
        });
        let mut rows = Vec::new();
        for path in listed {
            let bytes = self.runtime.block_on(async {
                let location = object_store::path::Path::from(path.as_str());
                let object = object_store::ObjectStoreExt::get(&self.store, &location).await;
                object.unwrap().bytes().await.unwrap()
            });
            rows.extend(
                events_from_parquet(&bytes)
                    .unwrap()
                    .into_iter()
                    .map(|logged| (logged.partition, logged.offset)),
            );
        }
        rows.sort_unstable();
        rows
    }

    fn log_positions(&self) -> Vec<(u32, u64)> {
        (0..PARTITIONS)
            .flat_map(|partition| {
                let entries = self.log.read(partition, 0, usize::MAX).unwrap();
                entries
                    .into_iter()
                    .map(move |entry| (partition, entry.offset))
            })
            .collect()
    }
}

fn demo() -> Catalog {
    Catalog::demo("w", "r")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn recomputed_states_equal_a_plain_fold_over_the_same_events(events in demo_events(base())) {
        let rig = rig();
        rig.append(&events);
        rig.archive();
        assert_eq!(rig.raw_rows(), rig.log_positions(), "every record archived once");
        rig.recompute(&demo(), 0, RunRequest::default());
        assert_states_agree(&rig.batch_states(&demo()), &rig.expected(&demo()));
    }
}

#[test]
fn archivers_that_split_the_partitions_archive_each_record_once_and_agree_on_the_horizon() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive_partitions(Some(&[0, 2]));
    let through = |rig: &Rig| {
        let archived = archiver::archived_through(rig.store.as_ref(), RawStream::Events);
        rig.runtime.block_on(archived).unwrap()
    };
    assert_eq!(through(&rig), None, "partition 1 has no archiver yet");
    let positions = rig.log_positions();
    let archived: Vec<_> = positions.iter().filter(|(p, _)| *p != 1).copied().collect();
    assert_eq!(rig.raw_rows(), archived, "only the owned partitions");
    rig.archive_partitions(Some(&[1]));
    assert_eq!(rig.raw_rows(), positions, "every record archived once");
    assert!(through(&rig).is_some(), "every partition archived");
    rig.recompute(&demo(), 0, RunRequest::default());
    assert_states_agree(&rig.batch_states(&demo()), &rig.expected(&demo()));
}

#[test]
fn a_roll_interrupted_before_its_commit_is_redone_into_the_same_objects() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    let archived = rig.raw_rows();
    // As if the archiver died after writing a roll's objects and before committing it: the
    // consumer position is back at 0 and the progress object names the pending roll.
    rig.runtime.block_on(async {
        for partition in 0..PARTITIONS {
            let mut progress =
                archiver::read_progress(rig.store.as_ref(), RawStream::Events, partition)
                    .await
                    .unwrap()
                    .unwrap();
            let first_roll_end = policy().events as u64 - 1;
            progress.pending = Some((0, first_roll_end.min(progress.next_offset - 1)));
            progress.next_offset = 0;
            let path = tally_model::layout::archive_progress_path(RawStream::Events, partition);
            let body = serde_json::to_vec(&progress).unwrap();
            object_store::ObjectStoreExt::put(
                &rig.store,
                &object_store::path::Path::from(path.as_str()),
                body.into(),
            )
            .await
            .unwrap();
            rig.log.commit(CONSUMER, partition, 0).unwrap();
        }
    });
    rig.archive();
    assert_eq!(rig.raw_rows(), archived, "objects replaced, none added");
    rig.recompute(&demo(), 0, RunRequest::default());
    assert_states_agree(&rig.batch_states(&demo()), &rig.expected(&demo()));
}

/// What a [`PutHook`] runs before each write: an error fails the write with it.
type BeforePut = Box<dyn Fn(&str) -> object_store::Result<()> + Send + Sync>;

/// The rig's object store behind a hook that runs before each write, for tests that cut a
/// write as a network cut would, or hold a writer at a chosen write.
struct PutHook {
    inner: Arc<dyn ObjectStore>,
    before_put: BeforePut,
}

impl std::fmt::Debug for PutHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PutHook({})", self.inner)
    }
}

impl std::fmt::Display for PutHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PutHook({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for PutHook {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        (self.before_put)(location.as_ref())?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[test]
fn a_recompute_that_loses_the_race_to_publish_leaves_the_winners_views_whole() {
    // Two recomputes start from the same manifest: the loser lists the raw objects, the
    // winner lists them after more of the same hours were archived, and publishes first.
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    rig.append(&sample_demo_events(base() + 10 * 60_000));
    rig.archive();
    let (reached, at_first_write) = std::sync::mpsc::channel();
    let (resume, go) = std::sync::mpsc::channel::<()>();
    let go = std::sync::Mutex::new(go);
    let held = std::sync::atomic::AtomicBool::new(false);
    let loser_store: Arc<dyn ObjectStore> = Arc::new(PutHook {
        inner: rig.store.clone(),
        before_put: Box::new(move |path| {
            if path.starts_with("views/") && !held.swap(true, std::sync::atomic::Ordering::AcqRel) {
                let _ = reached.send(());
                let _ = go.lock().unwrap().recv();
            }
            Ok(())
        }),
    });
    let loser = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let metrics = BatchMetrics::register(&mut Default::default());
        let recompute = Recompute::new(loser_store, Arc::new(demo()), 0, metrics);
        runtime.block_on(recompute.run(&RunRequest::default(), &|_| {}))
    });
    at_first_write.recv().unwrap();
    rig.append(&sample_demo_events(base() + 20 * 60_000));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    resume.send(()).unwrap();
    let lost = loser.join().unwrap();
    assert!(
        lost.as_ref()
            .is_err_and(|err| err.to_string().contains("another batch run")),
        "the loser's publish is refused: {lost:?}"
    );
    assert_states_agree(&rig.batch_states(&demo()), &rig.expected(&demo()));
}

#[test]
fn a_roll_whose_progress_write_fails_after_its_commit_is_counted_once() {
    let rig = rig();
    let events = sample_demo_events(base());
    rig.append(&events);
    let logged: u64 = (0..PARTITIONS)
        .map(|partition| rig.log.read(partition, 0, usize::MAX).unwrap().len() as u64)
        .sum();
    // The second progress write is the one after the first roll's commit.
    let progress_writes = std::sync::atomic::AtomicUsize::new(0);
    let store: Arc<dyn ObjectStore> = Arc::new(PutHook {
        inner: rig.store.clone(),
        before_put: Box::new(move |path| {
            let ordinal = path
                .starts_with("archive/")
                .then(|| 1 + progress_writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel));
            match ordinal {
                Some(2) => Err(object_store::Error::Generic {
                    store: "test",
                    source: "the connection was reset".into(),
                }),
                _ => Ok(()),
            }
        }),
    });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = BatchMetrics::register(&mut registry);
    rig.runtime.block_on(async {
        let open =
            || Archiver::<Event>::open(rig.log.clone(), store.clone(), policy(), metrics.clone());
        let mut archiver = open().await.unwrap();
        loop {
            match archiver.pass(true).await {
                Ok(report) if report.read == 0 => break,
                Ok(_) => {}
                // As the archiver's run loop does: start over from what is durable.
                Err(_) => archiver = open().await.unwrap(),
            }
        }
    });
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let counted: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("tally_batch_events_archived_total{stream=\"events\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        counted, logged,
        "every logged event counted as archived once\n{text}"
    );
}

/// A run killed between writing its manifest and swapping `CURRENT` to it leaves a complete
/// manifest that nothing names, whose generation every later run was refused for good ("is a
/// second scheduler running?"). The next run builds on it and publishes the one after.
#[test]
fn a_run_after_one_stopped_before_its_pointer_swap_builds_on_its_manifest() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    let mut unnamed = rig.manifest();
    unnamed.generation += 1;
    let path = format!(
        "{}{:010}.json",
        tally_connectors::batch_views::MANIFEST_PREFIX,
        unnamed.generation
    );
    let body = serde_json::to_vec(&unnamed).unwrap();
    rig.runtime
        .block_on(rig.store.put(&path.as_str().into(), body.into()))
        .unwrap();

    // Nothing new to compute: the unnamed manifest is published as it was written.
    rig.recompute(&demo(), 0, RunRequest::default());
    assert_eq!(rig.manifest(), unnamed);
    // Events of another hour: the next run computes them on top of it.
    rig.append(&sample_demo_events(base() - 3 * HOUR_MS));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    assert_eq!(rig.manifest().generation, unnamed.generation + 1);
    assert_states_agree(&rig.batch_states(&demo()), &rig.expected(&demo()));
}

#[test]
fn late_events_make_their_hour_dirty_and_the_next_run_recomputes_it() {
    let rig = rig();
    let events = sample_demo_events(base());
    rig.append(&events);
    rig.archive();
    let first = rig.recompute(&demo(), 0, RunRequest::default());
    assert!(first.hours > 0);
    let unchanged = rig.recompute(&demo(), 0, RunRequest::default());
    assert_eq!((unchanged.hours, unchanged.generation), (0, None));

    let mut late = events[0].clone();
    late.event_id = "late".into();
    late.received_at = now_millis();
    rig.append(&[late]);
    rig.archive();
    let again = rig.recompute(&demo(), 0, RunRequest::default());
    let views = demo().tenants["demo"].views.len() as u64;
    assert_eq!(again.hours, views, "one hour, every view");
    assert_states_agree(&rig.batch_states(&demo()), &rig.expected(&demo()));
}

/// A reprocess may name an existing version of the same spec or the next one, nothing past
/// it: version 4294967295 made the next one wrap to 0 and overwrite version 0's spec.
#[test]
fn a_reprocess_as_a_version_past_the_next_is_refused() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    let mut fixed = demo();
    let view = &mut fixed.tenants.get_mut("demo").unwrap().views[0];
    view.dimensions.push("source".into());
    let name = view.name.clone();
    let asked = |version| RunRequest {
        view: Some(name.clone()),
        reprocess_as: Some(version),
        ..RunRequest::default()
    };
    let refused = rig.try_recompute(&fixed, 0, asked(u32::MAX)).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("has no logic version 4294967295")
            && refused.to_string().contains("the next one, 2"),
        "{refused}"
    );
    rig.recompute(&fixed, 0, asked(2));
    assert_eq!(
        rig.manifest().view("demo", &name).unwrap().current_version,
        2
    );
}

#[test]
fn reprocessing_swaps_a_range_to_the_new_logic_version() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    let before = rig.manifest();

    let mut fixed = demo();
    let view = &mut fixed.tenants.get_mut("demo").unwrap().views[0];
    view.dimensions.push("source".into());
    let name = view.name.clone();
    let first_hour = base().div_euclid(HOUR_MS) * HOUR_MS;
    let range = first_hour..first_hour + 2 * HOUR_MS;
    rig.recompute(
        &fixed,
        0,
        RunRequest {
            hours: Some(range.clone()),
            view: Some(name.clone()),
            reprocess_as: Some(2),
            ..RunRequest::default()
        },
    );
    let after = rig.manifest();
    let entry = after.view("demo", &name).unwrap();
    assert_eq!(entry.current_version, 2);
    for (hour, done) in &entry.hours {
        let version = if range.contains(hour) { 2 } else { 1 };
        assert_eq!(done.logic_version, version, "hour {hour}");
        if let Some(object) = &done.object {
            assert!(object.contains(&format!("/v={version}/")), "{object}");
        }
    }
    // The range reads as the new spec, one more dimension per key; the rest as the old.
    let old_dimensions = demo().tenants["demo"].views[0].dimensions.len();
    let states = rig.batch_states(&fixed);
    for key in states.keys().filter(|key| key.view == name) {
        let dimensions = old_dimensions + usize::from(range.contains(&key.bucket));
        assert_eq!(key.dimensions.len(), dimensions, "{key:?}");
    }
    let expected = rig.expected(&fixed);
    let reprocessed =
        |states: &BTreeMap<ViewKey, AggregateState>| -> BTreeMap<ViewKey, AggregateState> {
            states
                .iter()
                .filter(|(key, _)| key.view == name && range.contains(&key.bucket))
                .map(|(key, state)| (key.clone(), state.clone()))
                .collect()
        };
    assert_states_agree(&reprocessed(&states), &reprocessed(&expected));
    // The old version's objects stay until a retention sweep.
    let old = before.view("demo", &name).unwrap();
    for object in old.hours.values().filter_map(|done| done.object.as_ref()) {
        let location = object_store::path::Path::from(object.as_str());
        rig.runtime
            .block_on(object_store::ObjectStoreExt::head(&rig.store, &location))
            .unwrap();
    }
}

#[test]
fn the_horizon_is_the_end_of_the_contiguous_final_hours() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    let lateness = 2 * HOUR_MS;
    let summary = rig.recompute(&demo(), lateness, RunRequest::default());
    let through = rig
        .runtime
        .block_on(archiver::archived_through(
            rig.store.as_ref(),
            RawStream::Events,
        ))
        .unwrap()
        .unwrap();
    let final_end = (through - lateness).div_euclid(HOUR_MS) * HOUR_MS;
    assert_eq!(summary.horizon, final_end);
    assert_eq!(rig.manifest().horizon, final_end);
    for view in rig.manifest().views.values() {
        assert_eq!(view.horizon, final_end, "{}", view.view);
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => folders.push(path),
                false => files.push(path),
            }
        }
    }
    files
}

#[test]
fn the_sweep_deletes_only_what_no_reader_can_reach() {
    use crate::sweep::{SweepReport, sweep};
    let hour = std::time::Duration::from_secs(3600);
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    let name = demo().tenants["demo"].views[0].name.clone();
    let before = rig.manifest();
    rig.recompute(
        &demo(),
        0,
        RunRequest {
            hours: None,
            view: Some(name.clone()),
            reprocess_as: Some(2),
            ..RunRequest::default()
        },
    );
    let after = rig.manifest();
    let states = rig.batch_states(&demo());
    let objects_dir = rig._dir.path().join("objects");
    let named = |manifest: &Manifest| -> Vec<String> {
        let hours = manifest.views.values().flat_map(|view| view.hours.values());
        hours.filter_map(|hour| hour.object.clone()).collect()
    };
    let superseded: Vec<String> = named(&before)
        .into_iter()
        .filter(|object| !named(&after).contains(object))
        .collect();
    assert!(!superseded.is_empty(), "the reprocess superseded objects");
    let exists = |object: &str| objects_dir.join(object).is_file();

    // Within the grace period nothing goes.
    let nothing = rig
        .runtime
        .block_on(sweep(rig.store.clone(), hour))
        .unwrap();
    assert_eq!(nothing, SweepReport::default());

    // Two hours later, with a run in flight that has written states it has not published.
    let two_hours_ago = std::time::SystemTime::now() - 2 * hour;
    for file in files_under(&objects_dir) {
        let file = std::fs::File::options().write(true).open(file).unwrap();
        file.set_modified(two_hours_ago).unwrap();
    }
    let in_flight = "views/demo/in_flight/v=1/dt=2026-11-22/hour=01/states-0000000099.parquet";
    let location = object_store::path::Path::from(in_flight);
    let put = object_store::ObjectStoreExt::put(&rig.store, &location, b"rows".to_vec().into());
    rig.runtime.block_on(put).unwrap();

    let report = rig
        .runtime
        .block_on(sweep(rig.store.clone(), hour))
        .unwrap();
    assert_eq!(report.objects, superseded.len());
    assert_eq!(
        report.manifests as u64,
        after.generation - 1,
        "all but the published"
    );
    assert!(superseded.iter().all(|object| !exists(object)));
    assert!(named(&after).iter().all(|object| exists(object)));
    assert!(
        exists(in_flight),
        "an unpublished state younger than the grace stays"
    );
    assert_eq!(
        rig.batch_states(&demo()),
        states,
        "every query answers as before"
    );
}

#[test]
fn raw_retention_drops_expired_events_and_keeps_their_batch_numbers() {
    let rig = rig();
    let events = sample_demo_events(base());
    rig.append(&events);
    rig.archive();
    rig.recompute(&demo(), 0, RunRequest::default());
    let numbers = rig.batch_states(&demo());
    let horizon = rig.manifest().horizon;

    // Clicks are kept for 0 days: every closed hour's clicks have expired.
    let mut short = demo();
    let registry = &mut short.tenants.get_mut("demo").unwrap().registry;
    registry
        .event_types
        .get_mut("click")
        .unwrap()
        .retention_days = 0;
    let logged = rig.logged();
    let clicks = logged
        .iter()
        .filter(|(_, _, e)| e.event_type == "click")
        .count();
    assert!(clicks > 0 && clicks < logged.len(), "a mix to thin");
    let expire = || {
        rig.runtime
            .block_on(expire_raw_events(rig.store.clone(), &short, now_millis()))
            .unwrap()
    };
    let report = expire();
    assert_eq!(report.events, clicks as u64);
    assert!(report.rewritten > 0);
    let mut kept: Vec<(u32, u64)> = logged
        .iter()
        .filter(|(_, _, e)| e.event_type != "click")
        .map(|(partition, offset, _)| (*partition, *offset))
        .collect();
    kept.sort_unstable();
    assert_eq!(rig.raw_rows(), kept, "exactly the clicks are gone");
    assert_eq!(
        expire(),
        RetentionReport::default(),
        "a second pass finds nothing"
    );

    // The thinned hours are frozen for views covering clicks: their numbers stay.
    rig.recompute(&short, 0, RunRequest::default());
    assert_eq!(rig.batch_states(&short), numbers);
    assert!(rig.manifest().horizon >= horizon);
}

#[test]
fn a_run_before_any_partition_has_archived_publishes_nothing_and_does_not_overflow() {
    let rig = rig();
    // Progress as a partition records it before its first roll lands: nothing archived yet.
    for partition in 0..PARTITIONS {
        let progress = archiver::PartitionProgress {
            partitions: PARTITIONS,
            archived_through: Millis::MIN,
            ..Default::default()
        };
        let path = tally_model::layout::archive_progress_path(RawStream::Events, partition);
        let body = serde_json::to_vec(&progress).unwrap();
        rig.runtime
            .block_on(object_store::ObjectStoreExt::put(
                &rig.store,
                &object_store::path::Path::from(path.as_str()),
                body.into(),
            ))
            .unwrap();
    }
    let summary = rig.recompute(&demo(), 0, RunRequest::default());
    assert_eq!((summary.hours, summary.generation), (0, None));
    let views = BatchViews::new(rig.store.clone());
    assert_eq!(rig.runtime.block_on(views.manifest()).unwrap(), None);
}

#[test]
fn a_view_whose_recompute_fails_holds_back_no_other_view() {
    let rig = rig();
    rig.append(&sample_demo_events(base()));
    rig.archive();
    // A catalog saved before specs were checked: one view names a dimension twice, which
    // its plan refuses. It is built as stored, past Catalog::new's checks.
    let mut broken = demo();
    let tenant = broken.tenants.get_mut("demo").unwrap();
    let mut dup = tenant.views[0].clone();
    dup.name = "dup".to_owned();
    dup.dimensions = vec!["os_type".to_owned(), "os_type".to_owned()];
    tenant.views.push(dup);
    let summary = rig.recompute(&broken, 0, RunRequest::default());
    assert_eq!(summary.failed_views.len(), 1, "{:?}", summary.failed_views);
    assert!(
        summary.failed_views[0].starts_with("demo/dup: "),
        "{:?}",
        summary.failed_views
    );
    let manifest = rig.manifest();
    let failing = manifest.view("demo", "dup").unwrap();
    assert!(failing.failing.is_some());
    assert!(failing.hours.is_empty());
    // Every other view computed its hours, and the horizon moved on without the failing one.
    assert_states_agree(&rig.batch_states(&demo()), &rig.expected(&demo()));
    let others = demo().tenants["demo"].views.len();
    let advanced = (manifest.views.values())
        .filter(|entry| entry.view != "dup" && entry.horizon == manifest.horizon)
        .count();
    assert_eq!(advanced, others);
    assert!(
        manifest.horizon > failing.horizon,
        "the horizon waited for the failing view"
    );

    // Its spec fixed, the next run computes it, and it fails no more.
    let mut fixed = broken.clone();
    let tenant = fixed.tenants.get_mut("demo").unwrap();
    tenant.views.last_mut().unwrap().dimensions = vec!["os_type".to_owned()];
    let summary = rig.recompute(&fixed, 0, RunRequest::default());
    assert!(
        summary.failed_views.is_empty(),
        "{:?}",
        summary.failed_views
    );
    let manifest = rig.manifest();
    let recovered = manifest.view("demo", "dup").unwrap();
    assert_eq!(recovered.failing, None);
    assert_eq!(recovered.horizon, manifest.horizon);
    assert_states_agree(&rig.batch_states(&fixed), &rig.expected(&fixed));
}
