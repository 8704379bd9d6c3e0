//! Which spec's real-time states answer a query. When a view changes, the speed layer builds
//! the new spec's states beside the old ones and records the new spec as live only once they
//! hold every event since the horizon ([`tally_connectors::view_store::live`]). Until then a
//! query reads the old spec's states, which are complete, and a query that needs what only
//! the new spec has is told to retry: never a blank answer, never a mix of the two.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_connectors::view_store::ViewStore;
use tally_connectors::view_store::live::{self, LiveViews};
use tally_model::ViewSpec;

use crate::ServingError;

/// How long a read of the record is used before it is read again.
const REREAD_AFTER: Duration = Duration::from_millis(250);

/// The speed layer's record of live specs, read at most every [`REREAD_AFTER`].
#[derive(Default)]
pub(crate) struct LiveSpecs {
    last: Mutex<Option<(Instant, Option<Arc<LiveViews>>)>>,
}

impl LiveSpecs {
    /// The spec whose states in `store` answer for `tenant`'s view `current` now: `current`
    /// itself once the speed layer has built it (or when no speed layer has recorded any),
    /// else the earlier spec it still answers with.
    pub(crate) fn spec_for(
        &self,
        store: &dyn ViewStore,
        tenant: &str,
        current: &ViewSpec,
    ) -> Result<ViewSpec, ServingError> {
        let Some(record) = self.record(store)? else {
            return Ok(current.clone());
        };
        match record.view(tenant, &current.name) {
            Some(live) if live.stored_name() == current.stored_name() => Ok(current.clone()),
            Some(earlier) => Ok(earlier.clone()),
            None => Err(ServingError::Building(format!(
                "view '{}' is new: the speed layer is building its real-time states from the events since the horizon; retry in a few seconds",
                current.name
            ))),
        }
    }

    fn record(&self, store: &dyn ViewStore) -> Result<Option<Arc<LiveViews>>, ServingError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((read_at, record)) = &*last
            && read_at.elapsed() < REREAD_AFTER
        {
            return Ok(record.clone());
        }
        let record = live::read(store)?.map(Arc::new);
        *last = Some((Instant::now(), record.clone()));
        Ok(record)
    }
}
