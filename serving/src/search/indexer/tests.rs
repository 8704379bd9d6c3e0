//! The indexer over a real spool and a local archive: an archived hour it cannot read fails
//! the rebuild, which it says (for `/readyz`) and retries, with the whole log to index (its
//! lag, for `/metrics`); once the archive reads again it rebuilds, follows the log, finds
//! every event and lags no more.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use tally_connectors::log::{AppendRecord, Spool, SpoolOptions};
use tally_connectors::testing::sample_demo_events;
use tally_model::layout::{RawStream, raw_object_path};
use tally_model::tenant::DEMO_TENANT;
use tally_model::time::DAY_MS;
use tally_model::{Catalog, Millis};

use super::*;
use crate::search::SearchRequest;

/// Polls `done` until it holds; fails naming `what` after a minute.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every hit of the demo tenant in the last day.
fn found(index: &SearchIndex, now: Millis) -> usize {
    let request = SearchRequest {
        tenant: DEMO_TENANT,
        q: "*",
        event_type: None,
        user_id: None,
        range: now - DAY_MS..now + 1,
        offset: 0,
        limit: 1,
    };
    index.search(&request, &str::to_owned).unwrap().total
}

#[test]
fn a_rebuild_that_cannot_read_the_archive_says_so_and_recovers_once_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let now = now_millis();
    let hour = Granularity::Hour.bucket_start(now);
    // Three hours of events with resent copies, ending an hour ago, in the log.
    let events = sample_demo_events(hour - 4 * HOUR_MS);
    let distinct: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let spool = Arc::new(Spool::open(&dir.path().join("log"), SpoolOptions::default()).unwrap());
    let records = (events.iter())
        .map(|e| AppendRecord::event(e, spool.partitions()))
        .collect();
    runtime.block_on(spool.append(records)).unwrap();
    // An object of this hour's archive that is not Parquet.
    let objects = tally_connectors::object_store::open_local(&dir.path().join("objects")).unwrap();
    let damaged = raw_object_path(RawStream::Events, hour, 0, 0, 0);
    let damaged_at = ObjectPath::from(damaged.as_str());
    let put = objects.put(&damaged_at, PutPayload::from_static(b"not Parquet"));
    runtime.block_on(put).unwrap();

    let (index, positions) = SearchIndex::open(&dir.path().join("search"), DAY_MS).unwrap();
    let index = Arc::new(index);
    let raw = RawEvents::new(objects.clone(), Some(spool.clone()), None);
    let catalog = CatalogHandle::new(Catalog::demo("w", "r"), 0);
    let indexer = SearchIndexer::start(index.clone(), positions, (spool, raw), catalog).unwrap();
    let status = indexer.status();
    wait_for("the rebuild to fail", || {
        matches!(status.state(), IndexerState::Failing(_))
    });
    // Nothing is archived: the whole log is still to index.
    assert_eq!(status.lag().get(), events.len() as i64);
    let shown = status.degraded().unwrap();
    assert!(
        shown.contains("rebuilding its index from the archive failed") && shown.contains(&damaged),
        "{shown}"
    );
    assert_eq!(found(&index, now), 0, "a failed rebuild commits nothing");

    runtime.block_on(objects.delete(&damaged_at)).unwrap();
    wait_for("the indexer to follow the log", || {
        status.state() == IndexerState::Following
    });
    assert_eq!(status.degraded(), None);
    wait_for("every event to be found once", || {
        found(&index, now) == distinct.len()
    });
    wait_for("no lag", || status.lag().get() == 0);
    indexer.stop();
}
