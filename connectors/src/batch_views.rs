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

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use polars::prelude::*;
use tally_model::manifest::Manifest;
use tally_model::time::HOUR_MS;
use tally_model::{AggregateState, Millis, StateDecodeError};
use thiserror::Error;

use crate::archive::{ArchiveError, write_parquet};
use crate::view_store::ViewKey;

const CURRENT: &str = "manifests/CURRENT";

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
}

impl BatchViews {
    /// Batch views kept in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        BatchViews { store }
    }

    /// The published manifest, if any run has published one.
    pub async fn manifest(&self) -> Result<Option<Manifest>, BatchViewsError> {
        let Some(pointer) = self.get_optional(CURRENT).await? else {
            return Ok(None);
        };
        let path = String::from_utf8_lossy(&pointer).trim().to_owned();
        let bytes = self.get(&path).await?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| BatchViewsError::Manifest { path, source })
    }

    /// Publishes `manifest` (whose generation must be new) atomically.
    pub async fn publish(&self, manifest: &Manifest) -> Result<(), BatchViewsError> {
        let path = format!("manifests/manifest-{:010}.json", manifest.generation);
        let body = serde_json::to_vec_pretty(manifest).expect("a manifest serializes to JSON");
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&ObjectPath::from(path.as_str()), body.into(), create)
            .await
        {
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(BatchViewsError::Conflict(manifest.generation));
            }
            result => result.map_err(|source| store_error(&path, source))?,
        };
        self.put(CURRENT, path.into_bytes()).await
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

    /// Every batch state of a tenant's view with a bucket in `buckets` that the manifest
    /// covers, each hour read from the object of its logic version, one state per key.
    pub async fn read(
        &self,
        manifest: &Manifest,
        tenant: &str,
        view: &str,
        buckets: Range<Millis>,
    ) -> Result<Vec<(ViewKey, AggregateState)>, BatchViewsError> {
        let Some(entry) = manifest.view(tenant, view) else {
            return Ok(Vec::new());
        };
        // An hour's object holds the buckets its events fall in, so a day bucket's state is
        // spread over its 24 hours and merged here.
        let widest_bucket = entry
            .versions
            .values()
            .map(|spec| spec.granularity.millis())
            .max()
            .unwrap_or(HOUR_MS);
        let first_hour = buckets.start.div_euclid(HOUR_MS).saturating_mul(HOUR_MS);
        let last_hour = buckets.end.saturating_add(widest_bucket);
        let mut states: BTreeMap<ViewKey, AggregateState> = BTreeMap::new();
        let objects = entry
            .hours
            .range(first_hour..last_hour)
            .filter_map(|(_, hour)| hour.object.as_deref());
        for object in objects {
            for (bucket, dimensions, state) in self.read_states(object).await? {
                if !buckets.contains(&bucket) {
                    continue;
                }
                let key = ViewKey {
                    tenant: tenant.to_owned(),
                    view: view.to_owned(),
                    bucket,
                    dimensions,
                };
                match states.entry(key) {
                    Entry::Vacant(slot) => {
                        slot.insert(state);
                    }
                    Entry::Occupied(mut slot) => {
                        slot.get_mut()
                            .merge(&state)
                            .map_err(|err| BatchViewsError::Corrupt {
                                path: object.to_owned(),
                                reason: err.to_string(),
                            })?;
                    }
                }
            }
        }
        Ok(states.into_iter().collect())
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
        match self.get(path).await {
            Err(BatchViewsError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            other => other.map(Some),
        }
    }
}

fn store_error(path: &str, source: object_store::Error) -> BatchViewsError {
    BatchViewsError::Store {
        path: path.to_owned(),
        source,
    }
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
