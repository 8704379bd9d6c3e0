//! The retention sweep: deletes the batch views no reader can reach any more.
//!
//! The published manifest, and every manifest written within the grace period (a reader may
//! have resolved one just before a swap), keep every state object they name. Older manifests
//! are deleted, and so are the state objects that only they named: superseded logic versions
//! after a reprocess, and hours recomputed after late events. A state object younger than the
//! grace period is kept even when no manifest names it, since a run in flight writes its
//! states before it publishes them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tally_connectors::batch_views::{BatchViews, MANIFEST_PREFIX};
use tally_model::layout::VIEWS_PREFIX;

use crate::BatchError;

/// How long a superseded manifest and its objects stay readable by default: far longer than a
/// query, and longer than a run takes between writing its states and publishing them.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What a sweep deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Manifest generations deleted.
    pub manifests: usize,
    /// State objects deleted.
    pub objects: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Deletes what no manifest younger than `grace` (nor the published one) names, and is itself
/// older than `grace`.
pub async fn sweep(
    store: Arc<dyn ObjectStore>,
    grace: Duration,
) -> Result<SweepReport, BatchError> {
    let views = BatchViews::new(store.clone());
    let Some(published) = views.current_manifest_path().await? else {
        return Ok(SweepReport::default());
    };
    let cutoff = cutoff(grace);
    let mut named = BTreeSet::new();
    let mut expired = Vec::new();
    let (manifests_folder, _) = MANIFEST_PREFIX.rsplit_once('/').expect("a folder");
    for meta in list(&store, manifests_folder).await? {
        let path = meta.location.to_string();
        if !path.starts_with(MANIFEST_PREFIX) {
            continue;
        }
        if path == published || meta.last_modified >= cutoff {
            let manifest = views.manifest_at(&path).await?;
            let objects = (manifest.views.values())
                .flat_map(|view| view.hours.values().chain(view.staged.values()));
            named.extend(objects.filter_map(|hour| hour.object.clone()));
        } else {
            expired.push(meta.location);
        }
    }
    let mut report = SweepReport::default();
    // State objects first: a manifest left behind by an interrupted sweep is unpublished and
    // past its grace, so no reader resolves it.
    for meta in list(&store, VIEWS_PREFIX).await? {
        if meta.last_modified < cutoff && !named.contains(meta.location.as_ref()) {
            delete(&store, &meta.location).await?;
            report.objects += 1;
            report.bytes += meta.size;
        }
    }
    for location in expired {
        delete(&store, &location).await?;
        report.manifests += 1;
    }
    if report != SweepReport::default() {
        tracing::info!(
            manifests = report.manifests,
            objects = report.objects,
            bytes = report.bytes,
            "swept superseded batch views"
        );
    }
    Ok(report)
}

fn cutoff(grace: Duration) -> chrono::DateTime<chrono::Utc> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    chrono::Utc::now()
        .checked_sub_signed(grace)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

async fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Result<Vec<ObjectMeta>, BatchError> {
    let location = ObjectPath::from(prefix);
    store
        .list(Some(&location))
        .try_collect()
        .await
        .map_err(|source| BatchError::store(prefix, source))
}

/// Deletes an object; one already gone is fine.
pub(crate) async fn delete(
    store: &Arc<dyn ObjectStore>,
    location: &ObjectPath,
) -> Result<(), BatchError> {
    match store.delete(location).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(BatchError::store(location.as_ref(), source)),
    }
}
