//! The catalog every service reads (tenants, registries, views, keys): kept in the object
//! store by [`CatalogStore`], shared in a process by a [`CatalogHandle`] that governance
//! swaps whole, so a request sees one consistent catalog from start to end.
//!
//! Saving is the manifest's pattern: a new object `governance/catalog-<generation>.json`,
//! created only if absent (two admins cannot both win a generation), then the pointer
//! `governance/CURRENT` swapped to it. Other processes poll the pointer and pick up changes
//! without a restart.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tally_model::Catalog;
use thiserror::Error;

use crate::object_store::{get_optional, publish_generation, rolled_forward};

const CURRENT: &str = "governance/CURRENT";
/// Where the generations are: `governance/catalog-<generation>.json`.
const GENERATIONS: &str = "governance";

/// The object of catalog generation `generation`.
fn generation_path(generation: u64) -> String {
    format!("{GENERATIONS}/catalog-{generation:010}.json")
}

/// A catalog as saved, with the generation that orders saves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCatalog {
    /// Increases by one with every save.
    pub generation: u64,
    /// The catalog.
    pub catalog: Catalog,
}

/// Why the catalog could not be loaded or saved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The object store failed.
    #[error("object store, at {path}: {source}")]
    Store {
        /// The object.
        path: String,
        /// The cause.
        source: object_store::Error,
    },
    /// Someone saved this generation first.
    #[error(
        "the catalog changed while this change was made (generation {0} exists); reload and retry"
    )]
    Conflict(u64),
    /// A stored catalog does not parse.
    #[error("catalog {path} is corrupt: {source}")]
    Corrupt {
        /// The object.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// How long a superseded catalog generation is kept before a save deletes it: long enough
/// for every process polling the pointer to have read its successor, short enough that a
/// deleted key's hash does not linger.
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(3600);

/// Superseded generations kept whatever their age: older ones go with the next save even
/// within [`SUPERSEDED_GRACE`], so that a burst of changes cannot pile up generations.
pub const KEEP_SUPERSEDED: u64 = 16;

/// The catalog in an object store.
#[derive(Clone)]
pub struct CatalogStore {
    store: Arc<dyn ObjectStore>,
    superseded_grace: Duration,
}

impl CatalogStore {
    /// The catalog kept in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        CatalogStore {
            store,
            superseded_grace: SUPERSEDED_GRACE,
        }
    }

    /// The same store, keeping superseded generations for `grace` instead of
    /// [`SUPERSEDED_GRACE`].
    pub fn with_superseded_grace(self, grace: Duration) -> Self {
        CatalogStore {
            superseded_grace: grace,
            ..self
        }
    }

    /// The saved catalog, if one was ever saved: the newest generation, a save that stopped
    /// before it swapped `CURRENT` included (it is published now, so that its generation does
    /// not refuse every later save).
    pub async fn load(&self) -> Result<Option<StoredCatalog>, CatalogError> {
        let newest = rolled_forward(self.store.as_ref(), CURRENT, generation_path)
            .await
            .map_err(|err| CatalogError::Store {
                path: err.path,
                source: err.source,
            })?;
        let Some(path) = newest else {
            return Ok(None);
        };
        let bytes = self
            .get_optional(&path)
            .await?
            .ok_or_else(|| CatalogError::Store {
                path: path.clone(),
                source: object_store::Error::NotFound {
                    path: path.clone(),
                    source: "the catalog pointer names a missing object".into(),
                },
            })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CatalogError::Corrupt { path, source })
    }

    /// Saves `catalog` as the generation after `previous` (0 for the first save).
    pub async fn save(
        &self,
        catalog: &Catalog,
        previous: u64,
    ) -> Result<StoredCatalog, CatalogError> {
        let stored = StoredCatalog {
            generation: previous + 1,
            catalog: catalog.clone(),
        };
        let path = generation_path(stored.generation);
        let body = serde_json::to_vec_pretty(&stored).expect("a catalog serializes to JSON");
        match publish_generation(self.store.as_ref(), &path, body, CURRENT).await {
            Ok(true) => {}
            Ok(false) => return Err(CatalogError::Conflict(stored.generation)),
            Err(err) => {
                return Err(CatalogError::Store {
                    path: err.path,
                    source: err.source,
                });
            }
        }
        // The save stands; pruning is housekeeping, retried by the next save.
        if let Err(err) = self.prune(stored.generation).await {
            tracing::warn!(error = %err, "could not delete superseded catalog generations");
        }
        Ok(stored)
    }

    /// Deletes the generations before the one preceding `current` that are older than the
    /// grace, so that deleted keys and old registries do not stay in the store forever.
    async fn prune(&self, current: u64) -> Result<(), CatalogError> {
        let prefix = ObjectPath::from(GENERATIONS);
        let listed: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| store_error(GENERATIONS, source))?;
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.superseded_grace).unwrap_or(chrono::Duration::MAX);
        for object in listed {
            let generation = object
                .location
                .filename()
                .and_then(|name| name.strip_prefix("catalog-")?.strip_suffix(".json"))
                .and_then(|number| number.parse::<u64>().ok());
            let superseded = generation.is_some_and(|g| g.saturating_add(1) < current);
            let beyond_kept =
                generation.is_some_and(|g| g.saturating_add(KEEP_SUPERSEDED) < current);
            if superseded && (object.last_modified < cutoff || beyond_kept) {
                match self.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => return Err(store_error(object.location.as_ref(), source)),
                }
            }
        }
        Ok(())
    }

    async fn get_optional(&self, path: &str) -> Result<Option<bytes::Bytes>, CatalogError> {
        get_optional(self.store.as_ref(), path)
            .await
            .map_err(|source| store_error(path, source))
    }
}

fn store_error(path: &str, source: object_store::Error) -> CatalogError {
    CatalogError::Store {
        path: path.to_owned(),
        source,
    }
}

/// A shared, swappable catalog and the generation it was saved as.
#[derive(Clone)]
pub struct CatalogHandle {
    current: Arc<RwLock<(u64, Arc<Catalog>)>>,
}

impl CatalogHandle {
    /// A handle holding `catalog`, saved as `generation` (0: not saved).
    pub fn new(catalog: Catalog, generation: u64) -> Self {
        CatalogHandle {
            current: Arc::new(RwLock::new((generation, Arc::new(catalog)))),
        }
    }

    /// The catalog as it is now; later changes do not affect the returned snapshot.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.read().expect("catalog lock").1.clone()
    }

    /// The catalog as it is now, with its generation.
    pub fn current_with_generation(&self) -> (u64, Arc<Catalog>) {
        self.current.read().expect("catalog lock").clone()
    }

    /// Takes `stored` if it is newer than what the handle holds; returns whether it did.
    pub fn offer(&self, stored: StoredCatalog) -> bool {
        let mut current = self.current.write().expect("catalog lock");
        if stored.generation <= current.0 {
            return false;
        }
        *current = (stored.generation, Arc::new(stored.catalog));
        true
    }
}

/// A catalog that is not saved anywhere (generation 0): for jobs and tests.
impl From<Arc<Catalog>> for CatalogHandle {
    fn from(catalog: Arc<Catalog>) -> Self {
        CatalogHandle {
            current: Arc::new(RwLock::new((0, catalog))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A save stopped after writing its generation and before swapping `CURRENT` (or, for the
    /// first save, before writing `CURRENT` at all): the next load hands out that generation
    /// and points to it, so later saves are not refused its number for good.
    #[tokio::test]
    async fn a_save_that_stopped_before_its_pointer_swap_is_loaded_and_saved_after() {
        let dir = tempfile::tempdir().unwrap();
        let objects = crate::object_store::open_local(dir.path()).unwrap();
        let store = CatalogStore::new(objects.clone());
        let unnamed = |generation| {
            let objects = objects.clone();
            async move {
                let stored = StoredCatalog {
                    generation,
                    catalog: Catalog::demo(&format!("w{generation}"), "r"),
                };
                let body = serde_json::to_vec(&stored).unwrap();
                let path = generation_path(generation);
                objects
                    .put(&path.as_str().into(), body.into())
                    .await
                    .unwrap();
                stored
            }
        };
        let first = unnamed(1).await;
        assert_eq!(store.load().await.unwrap(), Some(first));
        let second = unnamed(2).await;
        assert_eq!(store.load().await.unwrap(), Some(second));
        let third = store.save(&Catalog::demo("w3", "r"), 2).await.unwrap();
        assert_eq!(store.load().await.unwrap(), Some(third));
    }

    #[tokio::test]
    async fn saves_generations_once_and_hands_out_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::new(crate::object_store::open_local(dir.path()).unwrap());
        assert_eq!(store.load().await.unwrap(), None);
        let first = store.save(&Catalog::demo("w", "r"), 0).await.unwrap();
        assert_eq!(first.generation, 1);
        assert!(matches!(
            store.save(&Catalog::demo("w2", "r2"), 0).await,
            Err(CatalogError::Conflict(1))
        ));
        let second = store.save(&Catalog::demo("w2", "r2"), 1).await.unwrap();
        assert_eq!(store.load().await.unwrap().as_ref(), Some(&second));

        let handle = CatalogHandle::new(Catalog::default(), 0);
        assert!(handle.offer(second.clone()));
        assert!(
            !handle.offer(first),
            "an older generation never replaces a newer one"
        );
        assert!(handle.current().key("w2", 0).is_some());
    }

    #[tokio::test]
    async fn superseded_generations_are_deleted_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let objects = crate::object_store::open_local(dir.path()).unwrap();
        let generations = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path().join("governance"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.starts_with("catalog-"))
                .collect();
            names.sort();
            names
        };
        let keeping = CatalogStore::new(objects.clone());
        for generation in 0..3 {
            keeping
                .save(&Catalog::demo("w", "r"), generation)
                .await
                .unwrap();
        }
        assert_eq!(generations().len(), 3, "all within the grace");
        let pruning = CatalogStore::new(objects).with_superseded_grace(Duration::ZERO);
        pruning.save(&Catalog::demo("w", "r"), 3).await.unwrap();
        assert_eq!(
            generations(),
            ["catalog-0000000003.json", "catalog-0000000004.json"],
            "the current generation and the one before it stay"
        );
        assert_eq!(pruning.load().await.unwrap().unwrap().generation, 4);
        // A burst of changes within the grace keeps only the newest superseded ones.
        let mut generation = 4;
        for _ in 0..KEEP_SUPERSEDED + 10 {
            generation = keeping
                .save(&Catalog::demo("w", "r"), generation)
                .await
                .unwrap()
                .generation;
        }
        assert_eq!(
            generations().len() as u64,
            KEEP_SUPERSEDED + 1,
            "{:?}",
            generations()
        );
    }
}
