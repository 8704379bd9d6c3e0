//! The catalog every service reads (tenants, registries, views, keys), behind one handle that
//! governance swaps whole, so a request sees one consistent catalog from start to end.

use std::sync::{Arc, RwLock};

use tally_model::Catalog;

/// A shared, swappable catalog.
#[derive(Clone)]
pub struct CatalogHandle {
    current: Arc<RwLock<Arc<Catalog>>>,
}

impl CatalogHandle {
    /// A handle holding `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        CatalogHandle {
            current: Arc::new(RwLock::new(Arc::new(catalog))),
        }
    }

    /// The catalog as it is now; later changes do not affect the returned snapshot.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.read().expect("catalog lock").clone()
    }

    /// Replaces the catalog for every holder of this handle.
    pub fn replace(&self, catalog: Catalog) {
        *self.current.write().expect("catalog lock") = Arc::new(catalog);
    }
}
