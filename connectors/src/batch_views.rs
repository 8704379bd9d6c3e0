//! Batch views in the object store: the Parquet objects holding one hour of a view's states,
//! and the manifest that says which objects answer for which hours.
//!
//! Publishing is one atomic step: the new manifest is written as a new object
//! (`manifests/manifest-<generation>.json`, created only if absent, so two publishers cannot
//! both win a generation), then the one pointer `manifests/CURRENT` is swapped to it. A reader
//! resolves `CURRENT` first, so it sees the old manifest or the new one, never a mix, and
//! state objects are never overwritten: each is named by the generation that wrote it.
//!
//! A state object has one row per (bucket, dimension values): `bucket` (timestamp, ms),
//! `dim_<dimension>` (string) in the view's order, `count` (u64) and `state` (the
//! [`AggregateState`] encoding).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Cursor;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use polars::prelude::*;
use tally_model::manifest::{HourEntry, LogicVersion, Manifest};
use tally_model::time::HOUR_MS;
use tally_model::{AggregateState, Millis, StateDecodeError};
use thiserror::Error;

use crate::archive::{ArchiveError, write_parquet};
use crate::object_store::{get_optional, publish_generation, rolled_forward};
use crate::view_store::ViewKey;

const CURRENT: &str = "manifests/CURRENT";
/// Every manifest generation is an object named `<this><generation>.json`.
pub const MANIFEST_PREFIX: &str = "manifests/manifest-";

/// The object of manifest generation `generation`.
fn manifest_path(generation: u64) -> String {
    format!("{MANIFEST_PREFIX}{generation:010}.json")
}

/// One row of a batch view: a bucket, its dimension values, its state.
pub type StateRow = (Millis, Vec<String>, AggregateState);

/// Why batch views could not be read or published.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BatchViewsError {
    /// The object store failed.
    #[error("object store, at {path}: {source}")]
    Store {
        /// The object.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// Another publisher wrote this generation first.
    #[error(
        "manifest generation {0} was published by another batch run; is a second scheduler running against the same object store?"
    )]
    Conflict(u64),
    /// A manifest does not parse.
    #[error("manifest {path} is corrupt: {source}")]
    Manifest {
        /// The object.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A state object does not decode.
    #[error("batch view object {path}: {reason}")]
    Corrupt {
        /// The object.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing Parquet failed.
    #[error(transparent)]
    Parquet(#[from] ArchiveError),
}

/// The batch views and manifests in an object store.
#[derive(Clone)]
pub struct BatchViews {
    store: Arc<dyn ObjectStore>,
    cache: Option<Arc<Mutex<FifoCache<Vec<StateRow>>>>>,
}

/// One computed hour of a view: its logic version and the rows of its object.
#[derive(Debug, Clone)]
pub struct BatchHour {
    /// The hour's start.
    pub hour: Millis,
    /// The logic version it was computed with (its spec is in the manifest).
    pub logic_version: LogicVersion,
    /// The object its rows were read from; never rewritten, so a key for derived caches.
    pub object: String,
    /// Every row of the hour's object.
    pub rows: Arc<Vec<StateRow>>,
}

impl BatchViews {
    /// Batch views kept in `store`, read afresh every time.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        BatchViews { store, cache: None }
    }

    /// Batch views kept in `store`, keeping up to `cache_bytes` of decoded state objects in
    /// memory. Objects are never overwritten, so a cached object never goes stale.
    pub fn with_cache(store: Arc<dyn ObjectStore>, cache_bytes: usize) -> Self {
        let cache = FifoCache::new(cache_bytes);
        BatchViews {
            store,
            cache: Some(Arc::new(Mutex::new(cache))),
        }
    }

    /// The object store the views are kept in.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The published manifest, if any run has published one.
    pub async fn manifest(&self) -> Result<Option<Manifest>, BatchViewsError> {
        match self.current_manifest_path().await? {
            Some(path) => self.manifest_at(&path).await.map(Some),
            None => Ok(None),
        }
    }

    /// The manifest a run builds on: the published one, or a later one whose run stopped
    /// between writing it and swapping `CURRENT` (it is published now, so that the generation
    /// it took does not refuse every later run).
    pub async fn manifest_to_build_on(&self) -> Result<Option<Manifest>, BatchViewsError> {
        let newest = rolled_forward(self.store.as_ref(), CURRENT, manifest_path)
            .await
            .map_err(|err| store_error(&err.path, err.source))?;
        match newest {
            Some(path) => self.manifest_at(&path).await.map(Some),
            None => Ok(None),
        }
    }

    /// The object of the published manifest, if any run has published one.
    pub async fn current_manifest_path(&self) -> Result<Option<String>, BatchViewsError> {
        let pointer = self.get_optional(CURRENT).await?;
        Ok(pointer.map(|pointer| String::from_utf8_lossy(&pointer).trim().to_owned()))
    }

    /// The manifest stored at `path`, published or not.
    pub async fn manifest_at(&self, path: &str) -> Result<Manifest, BatchViewsError> {
        let bytes = self.get(path).await?;
        serde_json::from_slice(&bytes).map_err(|source| BatchViewsError::Manifest {
            path: path.to_owned(),
            source,
        })
    }

    /// Publishes `manifest` (whose generation must be new) atomically.
    pub async fn publish(&self, manifest: &Manifest) -> Result<(), BatchViewsError> {
        let path = manifest_path(manifest.generation);
        let body = serde_json::to_vec_pretty(manifest).expect("a manifest serializes to JSON");
        match publish_generation(self.store.as_ref(), &path, body, CURRENT).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(BatchViewsError::Conflict(manifest.generation)),
            Err(err) => Err(store_error(&err.path, err.source)),
        }
    }

    /// Writes one hour of a view's states as a new object at `path`.
    pub async fn write_states(
        &self,
        path: &str,
        dimensions: &[String],
        rows: &[StateRow],
    ) -> Result<(), BatchViewsError> {
        let buckets: Vec<Millis> = rows.iter().map(|(bucket, _, _)| *bucket).collect();
        let dimensions: Vec<(String, Vec<String>)> = dimensions
            .iter()
            .enumerate()
            .map(|(index, dimension)| {
                let values = rows.iter().map(|(_, values, _)| values[index].clone());
                (format!("dim_{dimension}"), values.collect())
            })
            .collect();
        let counts: Vec<u64> = rows.iter().map(|(_, _, state)| state.count).collect();
        let states: Vec<Vec<u8>> = rows.iter().map(|(_, _, state)| state.encode()).collect();
        // Polars is CPU work with its own thread pool: off the async runtime.
        let encoded = tokio::task::spawn_blocking(move || {
            let height = buckets.len();
            let mut columns = vec![
                Column::new("bucket".into(), buckets)
                    .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?,
            ];
            for (name, values) in dimensions {
                columns.push(Column::new(name.into(), values));
            }
            columns.push(Column::new("count".into(), counts));
            let states: Vec<&[u8]> = states.iter().map(Vec::as_slice).collect();
            columns.push(Column::new("state".into(), states));
            write_parquet(DataFrame::new(height, columns)?)
        })
        .await
        .expect("encoding Parquet does not panic")?;
        self.put(path, encoded).await
    }

    /// Reads a state object written by [`write_states`](Self::write_states).
    pub async fn read_states(&self, path: &str) -> Result<Vec<StateRow>, BatchViewsError> {
        let bytes = self.get(path).await?;
        tokio::task::spawn_blocking(move || decode_states(&bytes))
            .await
            .expect("decoding Parquet does not panic")
            .map_err(|reason| BatchViewsError::Corrupt {
                path: path.to_owned(),
                reason,
            })
    }

    /// The computed hours of a tenant's view that may hold a bucket in `buckets`, oldest
    /// first, each with its logic version and every row of its object (shared, from the cache
    /// when there is one). Stored buckets never straddle an hour, so an hour's rows are the
    /// whole truth for its buckets; callers keep the rows whose bucket is in range.
    ///
    /// The live hours, or with `as_version` the hours as that logic version has them, staged
    /// for review or live ([`ViewManifest::hour_as`](tally_model::ViewManifest::hour_as));
    /// hours it lacks are left out.
    pub async fn read_hours(
        &self,
        manifest: &Manifest,
        tenant: &str,
        view: &str,
        buckets: Range<Millis>,
        as_version: Option<LogicVersion>,
    ) -> Result<Vec<BatchHour>, BatchViewsError> {
        let Some(entry) = manifest.view(tenant, view) else {
            return Ok(Vec::new());
        };
        let first_hour = buckets.start.div_euclid(HOUR_MS).saturating_mul(HOUR_MS);
        let in_range = first_hour..buckets.end.max(first_hour);
        let chosen: Vec<(Millis, &HourEntry)> = match as_version {
            None => entry.hours.range(in_range).map(|(h, e)| (*h, e)).collect(),
            Some(version) => {
                let hours: BTreeSet<Millis> = (entry.hours.range(in_range.clone()))
                    .chain(entry.staged.range(in_range))
                    .map(|(hour, _)| *hour)
                    .collect();
                (hours.into_iter())
                    .filter_map(|hour| Some((hour, entry.hour_as(hour, version)?)))
                    .collect()
            }
        };
        let mut hours = Vec::new();
        for (hour, computed) in chosen {
            let Some(object) = computed.object.as_deref() else {
                continue;
            };
            hours.push(BatchHour {
                hour,
                logic_version: computed.logic_version,
                rows: self.cached_states(object).await?,
                object: object.to_owned(),
            });
        }
        Ok(hours)
    }

    /// Every batch state of a tenant's view with a bucket in `buckets`, one per key; the
    /// hours read must share one logic version (use [`read_hours`](Self::read_hours) to
    /// read across versions).
    pub async fn read(
        &self,
        manifest: &Manifest,
        tenant: &str,
        view: &str,
        buckets: Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, BatchViewsError> {
        let hours = self
            .read_hours(manifest, tenant, view, buckets.clone(), None)
            .await?;
        let mut states = Vec::new();
        for hour in hours {
            let in_range = hour.rows.iter().filter(|(b, _, _)| buckets.contains(b));
            states.extend(in_range.map(|(bucket, dimensions, state)| {
                let key = ViewKey {
                    tenant: tenant.to_owned(),
                    view: view.to_owned(),
                    bucket: *bucket,
                    dimensions: dimensions.clone(),
                };
                (key, state.clone())
            }));
        }
        states.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(states)
    }

    async fn cached_states(&self, path: &str) -> Result<Arc<Vec<StateRow>>, BatchViewsError> {
        let Some(cache) = &self.cache else {
            return self.read_states(path).await.map(Arc::new);
        };
        if let Some(rows) = cache.lock().expect("cache lock").get(path) {
            return Ok(rows);
        }
        let rows = Arc::new(self.read_states(path).await?);
        let size = rows.iter().map(|(_, d, state)| row_bytes(d, state)).sum();
        cache
            .lock()
            .expect("cache lock")
            .insert(path.to_owned(), rows.clone(), size);
        Ok(rows)
    }

    async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), BatchViewsError> {
        self.store
            .put(&ObjectPath::from(path), PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|source| store_error(path, source))
    }

    async fn get(&self, path: &str) -> Result<bytes::Bytes, BatchViewsError> {
        let result = self.store.get(&ObjectPath::from(path)).await;
        let result = match result {
            Ok(object) => object.bytes().await,
            Err(err) => Err(err),
        };
        result.map_err(|source| store_error(path, source))
    }

    async fn get_optional(&self, path: &str) -> Result<Option<bytes::Bytes>, BatchViewsError> {
        get_optional(self.store.as_ref(), path)
            .await
            .map_err(|source| store_error(path, source))
    }
}

fn store_error(path: &str, source: object_store::Error) -> BatchViewsError {
    BatchViewsError::Store {
        path: path.to_owned(),
        source,
    }
}

/// Shared values by key within a byte budget, the oldest inserted evicted first. Suits
/// values that never go stale under their key (objects are never overwritten).
pub struct FifoCache<V, K = String> {
    budget: usize,
    used: usize,
    entries: HashMap<K, (Arc<V>, usize)>,
    order: VecDeque<K>,
}

impl<V, K: std::hash::Hash + Eq + Clone> FifoCache<V, K> {
    /// An empty cache holding up to `budget` bytes (as sized by the caller).
    pub fn new(budget: usize) -> Self {
        FifoCache {
            budget,
            used: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The value under `key`, if cached.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|(value, _)| value.clone())
    }

    /// Keeps `value` of `size` bytes under `key`, evicting the oldest entries to fit.
    pub fn insert(&mut self, key: K, value: Arc<V>, size: usize) {
        if size > self.budget || self.entries.contains_key(&key) {
            return;
        }
        while self.used + size > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, freed)) = self.entries.remove(&oldest) {
                self.used -= freed;
            }
        }
        self.used += size;
        self.order.push_back(key.clone());
        self.entries.insert(key, (value, size));
    }
}

/// Roughly the memory one row of states takes, for cache budgets.
pub fn row_bytes(dimensions: &[String], state: &AggregateState) -> usize {
    64 + dimensions.iter().map(String::len).sum::<usize>() + state.encode().len()
}

fn decode_states(bytes: &[u8]) -> Result<Vec<StateRow>, String> {
    let frame = ParquetReader::new(Cursor::new(bytes))
        .finish()
        .map_err(|err| err.to_string())?;
    let column = |name: &str| frame.column(name).map_err(|err| err.to_string());
    let buckets = column("bucket")?
        .cast(&DataType::Int64)
        .map_err(|err| err.to_string())?;
    let buckets = buckets.i64().map_err(|err| err.to_string())?;
    let states = column("state")?.binary().map_err(|err| err.to_string())?;
    let dimension_columns: Vec<&StringChunked> = frame
        .columns()
        .iter()
        .filter(|column| column.name().starts_with("dim_"))
        .map(|column| column.str().map_err(|err| err.to_string()))
        .collect::<Result<_, _>>()?;
    (0..frame.height())
        .map(|row| {
            let bucket = buckets.get(row).ok_or("a null bucket")?;
            let dimensions = dimension_columns
                .iter()
                .map(|values| values.get(row).unwrap_or_default().to_owned())
                .collect();
            let state = states.get(row).ok_or("a null state")?;
            let state =
                AggregateState::decode(state).map_err(|err: StateDecodeError| err.to_string())?;
            Ok((bucket, dimensions, state))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tally_model::manifest::{HourEntry, RawInputs, ViewManifest};
    use tally_model::{Measure, ViewSpec};

    use super::*;

    fn spec() -> ViewSpec {
        ViewSpec {
            name: "by_type".into(),
            events: vec!["*".into()],
            dimensions: vec!["event_type".into()],
            measures: vec![Measure::Count],
            granularity: tally_model::Granularity::Minute,
        }
    }

    #[tokio::test]
    async fn publishes_atomically_and_reads_states_by_bucket_range() {
        let dir = tempfile::tempdir().unwrap();
        let views = BatchViews::new(crate::object_store::open_local(dir.path()).unwrap());
        assert_eq!(views.manifest().await.unwrap(), None);

        let mut state = spec().empty_state();
        state.count = 3;
        let path = "views/demo/by_type/v=1/dt=1970-01-01/hour=01/states-0000000001.parquet";
        let rows = vec![
            (HOUR_MS, vec!["click".to_owned()], state.clone()),
            (HOUR_MS + 60_000, vec!["view".to_owned()], state.clone()),
        ];
        views
            .write_states(path, &["event_type".to_owned()], &rows)
            .await
            .unwrap();
        assert_eq!(views.read_states(path).await.unwrap(), rows);

        let mut view = ViewManifest::new("demo", &spec());
        view.hours.insert(
            HOUR_MS,
            HourEntry {
                logic_version: 1,
                object: Some(path.into()),
                rows: 2,
                events: 6,
                inputs: RawInputs::default(),
            },
        );
        let manifest = Manifest {
            generation: 1,
            published_at: 0,
            horizon: 2 * HOUR_MS,
            views: BTreeMap::from([(tally_model::manifest::view_id("demo", "by_type"), view)]),
        };
        views.publish(&manifest).await.unwrap();
        assert_eq!(views.manifest().await.unwrap().as_ref(), Some(&manifest));
        assert!(matches!(
            views.publish(&manifest).await,
            Err(BatchViewsError::Conflict(1))
        ));

        let read = views
            .read(&manifest, "demo", "by_type", HOUR_MS + 60_000..2 * HOUR_MS)
            .await
            .unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0.dimensions, ["view"]);
        assert!(
            views
                .read(&manifest, "other", "by_type", 0..Millis::MAX)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
