//! The batch manifest: which batch-view objects answer for which hours, under which logic
//! version, and the horizon before which serving reads batch views instead of real-time ones.
//!
//! The batch layer publishes a new manifest with one atomic write after every recompute;
//! serving and the speed layer only ever read a published one, so none sees a half-written
//! version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::view::ViewSpec;

/// A logic version of a view: a number that changes whenever its spec does.
pub type LogicVersion = u32;

/// One published state of the batch layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Increases by one with every publish.
    pub generation: u64,
    /// When it was published (ms, UTC).
    pub published_at: Millis,
    /// Batch views answer for buckets before this instant, every view alike; the speed layer
    /// keeps the rest. Never moves backwards.
    pub horizon: Millis,
    /// Per view, keyed by [`view_id`].
    pub views: BTreeMap<String, ViewManifest>,
}

/// The batch state of one tenant's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewManifest {
    /// The tenant owning the view.
    pub tenant: String,
    /// The view's name.
    pub view: String,
    /// The spec behind each logic version, so readers know every version's dimensions and
    /// measures.
    pub versions: BTreeMap<LogicVersion, ViewSpec>,
    /// The version new hours are computed with.
    pub current_version: LogicVersion,
    /// The end of the view's contiguous final hours: every hour before it is computed from
    /// all of its events.
    pub horizon: Millis,
    /// Computed hours, by the hour's start (ms, UTC).
    pub hours: BTreeMap<Millis, HourEntry>,
}

/// One computed hour of one view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourEntry {
    /// The logic version it was computed with.
    pub logic_version: LogicVersion,
    /// The object holding its states; none when no event of the hour feeds the view.
    pub object: Option<String>,
    /// Rows (view keys) in the object.
    pub rows: u64,
    /// Distinct events counted into it.
    pub events: u64,
    /// The raw objects it was computed from; a different set later means late events arrived
    /// and the hour is dirty.
    pub inputs: RawInputs,
}

/// What identifies the set of raw objects of one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInputs {
    /// How many raw objects.
    pub objects: u64,
    /// A hash of their names and sizes.
    pub fingerprint: u64,
}

/// The key of a view in [`Manifest::views`]: `tenant/view`.
pub fn view_id(tenant: &str, view: &str) -> String {
    format!("{tenant}/{view}")
}

impl Manifest {
    /// The entry of a tenant's view.
    pub fn view(&self, tenant: &str, view: &str) -> Option<&ViewManifest> {
        self.views.get(&view_id(tenant, view))
    }
}

impl ViewManifest {
    /// A view with no hour computed yet, whose first logic version is `spec`.
    pub fn new(tenant: &str, spec: &ViewSpec) -> Self {
        ViewManifest {
            tenant: tenant.to_owned(),
            view: spec.name.clone(),
            versions: BTreeMap::from([(1, spec.clone())]),
            current_version: 1,
            horizon: Millis::MIN,
            hours: BTreeMap::new(),
        }
    }

    /// The logic version whose spec equals `spec`, registering a new one (and making it
    /// current) when the spec changed. Returns the version and whether it is new.
    pub fn version_for(&mut self, spec: &ViewSpec) -> (LogicVersion, bool) {
        if self.versions.get(&self.current_version) == Some(spec) {
            return (self.current_version, false);
        }
        let next = self.versions.keys().next_back().map_or(1, |last| last + 1);
        self.versions.insert(next, spec.clone());
        self.current_version = next;
        (next, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dimensions: &[&str]) -> ViewSpec {
        ViewSpec {
            name: "v".into(),
            events: vec!["*".into()],
            dimensions: dimensions.iter().map(|d| (*d).to_owned()).collect(),
            measures: vec![crate::Measure::Count],
            granularity: crate::Granularity::Hour,
        }
    }

    #[test]
    fn a_changed_spec_gets_the_next_logic_version() {
        let mut view = ViewManifest::new("t", &spec(&[]));
        assert_eq!(view.version_for(&spec(&[])), (1, false));
        assert_eq!(view.version_for(&spec(&["os_type"])), (2, true));
        assert_eq!(view.version_for(&spec(&["os_type"])), (2, false));
        assert_eq!(view.current_version, 2);
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let mut manifest = Manifest {
            generation: 3,
            published_at: 10,
            horizon: 7_200_000,
            views: BTreeMap::new(),
        };
        let mut view = ViewManifest::new("t", &spec(&["os_type"]));
        view.hours.insert(
            3_600_000,
            HourEntry {
                logic_version: 1,
                object: Some("views/t/v/v=1/dt=1970-01-01/hour=01/states-3.parquet".into()),
                rows: 2,
                events: 5,
                inputs: RawInputs {
                    objects: 1,
                    fingerprint: 42,
                },
            },
        );
        manifest.views.insert(view_id("t", "v"), view);
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
        assert!(manifest.view("t", "v").is_some() && manifest.view("t", "w").is_none());
    }
}
