//! The catalog every service reads (tenants, registries, views, keys): kept in the object
//! store by [`CatalogStore`], shared in a process by a [`CatalogHandle`] that governance
//! swaps whole, so a request sees one consistent catalog from start to end.
//!
//! Saving is the manifest's pattern: a new object `governance/catalog-<generation>.json`,
//! created only if absent (two admins cannot both win a generation), then the pointer
//! `governance/CURRENT` swapped to it. Other processes poll the pointer and pick up changes
//! without a restart.

use std::sync::{Arc, RwLock};

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tally_model::Catalog;
use thiserror::Error;

use crate::object_store::{get_optional, publish_generation};

const CURRENT: &str = "governance/CURRENT";

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

/// The catalog in an object store.
#[derive(Clone)]
pub struct CatalogStore {
    store: Arc<dyn ObjectStore>,
}

impl CatalogStore {
    /// The catalog kept in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        CatalogStore { store }
    }

    /// The saved catalog, if one was ever saved.
    pub async fn load(&self) -> Result<Option<StoredCatalog>, CatalogError> {
        let Some(pointer) = self.get_optional(CURRENT).await? else {
            return Ok(None);
        };
        let path = String::from_utf8_lossy(&pointer).trim().to_owned();
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
        let path = format!("governance/catalog-{:010}.json", stored.generation);
        let body = serde_json::to_vec_pretty(&stored).expect("a catalog serializes to JSON");
        match publish_generation(self.store.as_ref(), &path, body, CURRENT).await {
            Ok(true) => Ok(stored),
            Ok(false) => Err(CatalogError::Conflict(stored.generation)),
            Err((path, source)) => Err(CatalogError::Store { path, source }),
        }
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
        assert!(handle.current().key("w2").is_some());
    }
}
