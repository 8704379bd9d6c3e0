//! What serving keeps between queries, and the one key it keeps it under: dashboards repeat
//! their queries, so the rows a whole batch hour gives a query's shape, and the rows the
//! real-time views gave while their generation stays, are built once.

use std::sync::{Arc, Mutex};

use tally_connectors::batch_views::FifoCache;
use tally_model::Millis;

use crate::ServingError;
use crate::query::{Condition, Projection, Query, QueryGranularity};

/// Where cached rows came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowsSource {
    /// A batch-view object (objects are never overwritten).
    BatchObject(String),
    /// A real-time view's states over a range, while its generation stays.
    Realtime {
        /// The tenant.
        tenant: String,
        /// The name its states are stored under.
        view: String,
        /// The view's generation when they were read.
        generation: u64,
        /// The range read.
        from: Millis,
        /// The range read.
        to: Millis,
    },
}

/// What identifies the rows a source gives one shape of query: the answer granularity, the
/// groups, the filter and the measures picked, and for rendered rows the measures as named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowsKey {
    source: RowsSource,
    granularity: QueryGranularity,
    group: Vec<usize>,
    filter: Vec<Condition<usize>>,
    picked: Vec<usize>,
    /// For rendered rows: the measures as the query names them.
    named: Option<Vec<String>>,
}

impl RowsKey {
    /// The key of the states `projection` rolls up from `source` for `query`.
    pub fn rolled(source: RowsSource, projection: &Projection, query: &Query) -> RowsKey {
        let (group, filter, picked) = projection.shape();
        RowsKey {
            source,
            granularity: query.granularity,
            group: group.to_vec(),
            filter: filter.to_vec(),
            picked: picked.to_vec(),
            named: None,
        }
    }

    /// The key of the rows `projection` renders from `source` for `query`.
    pub fn rendered(source: RowsSource, projection: &Projection, query: &Query) -> RowsKey {
        RowsKey {
            named: Some(query.measures.iter().map(ToString::to_string).collect()),
            ..RowsKey::rolled(source, projection, query)
        }
    }
}

/// Cached values by [`RowsKey`], within a byte budget.
pub type RowsCache<V> = Mutex<FifoCache<V, RowsKey>>;

/// The value `cache` holds under `key`, or the one `build` makes (with its size in bytes),
/// cached. The lock is not held while building.
pub fn cached<V>(
    cache: &RowsCache<V>,
    key: RowsKey,
    build: impl FnOnce() -> Result<(V, usize), ServingError>,
) -> Result<Arc<V>, ServingError> {
    if let Some(value) = cache.lock().expect("cache lock").get(&key) {
        return Ok(value);
    }
    let (value, size) = build()?;
    let value = Arc::new(value);
    cache
        .lock()
        .expect("cache lock")
        .insert(key, value.clone(), size);
    Ok(value)
}
