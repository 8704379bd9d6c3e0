//! Which view specs the real-time states in the store answer for: the speed layer writes the
//! record once every state of a spec is complete, and serving reads it to choose the states it
//! queries. When a view changes, the speed layer builds the new spec's states beside the old
//! ones; serving keeps answering from the old spec's until this record names the new one.

use serde::{Deserialize, Serialize};
use tally_model::{Catalog, ViewSpec};

use super::{ViewStore, ViewStoreError};

/// The progress key the record is kept under.
const LIVE_VIEWS_RECORD: &str = "speed-stored-views";

/// The specs whose real-time states are complete, from the catalog generation they came with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveViews {
    /// The catalog generation the specs were taken from.
    pub generation: u64,
    /// Every tenant's views.
    pub views: Vec<LiveView>,
}

/// One view whose real-time states are complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveView {
    /// The tenant.
    pub tenant: String,
    /// The spec the states were built with; its
    /// [`stored_name`](ViewSpec::stored_name) is where they are.
    pub spec: ViewSpec,
}

impl LiveViews {
    /// Every tenant's view specs in `catalog`, in the catalog's order, from its `generation`.
    pub fn of(catalog: &Catalog, generation: u64) -> Self {
        let views = catalog
            .tenants
            .iter()
            .flat_map(|(tenant, config)| {
                config.views.iter().map(|spec| LiveView {
                    tenant: tenant.clone(),
                    spec: spec.clone(),
                })
            })
            .collect();
        LiveViews { generation, views }
    }

    /// The spec `tenant`'s view `name` answers with, if the record holds one.
    pub fn view(&self, tenant: &str, name: &str) -> Option<&ViewSpec> {
        self.views
            .iter()
            .find(|live| live.tenant == tenant && live.spec.name == name)
            .map(|live| &live.spec)
    }

    /// Every `(tenant, stored name)` the record names.
    pub fn stored_names(&self) -> Vec<(String, String)> {
        self.views
            .iter()
            .map(|live| (live.tenant.clone(), live.spec.stored_name()))
            .collect()
    }
}

/// The record in `store`, if the speed layer has written one.
pub fn read(store: &dyn ViewStore) -> Result<Option<LiveViews>, ViewStoreError> {
    let Some(bytes) = store.progress(LIVE_VIEWS_RECORD)? else {
        return Ok(None);
    };
    // A record of an earlier release lists names only: it names no spec to answer with.
    Ok(serde_json::from_slice(&bytes).ok())
}

/// Replaces the record in `store`.
pub fn write(store: &dyn ViewStore, live: &LiveViews) -> Result<(), ViewStoreError> {
    let bytes = serde_json::to_vec(live).expect("view specs serialize");
    store.record_progress(LIVE_VIEWS_RECORD, &bytes)
}

/// The `(tenant, stored name)` pairs the record names, in either its current form or an
/// earlier release's list of pairs: what a starting speed layer may have to retire.
pub fn recorded_names(store: &dyn ViewStore) -> Result<Vec<(String, String)>, ViewStoreError> {
    let Some(bytes) = store.progress(LIVE_VIEWS_RECORD)? else {
        return Ok(Vec::new());
    };
    if let Ok(live) = serde_json::from_slice::<LiveViews>(&bytes) {
        return Ok(live.stored_names());
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}
