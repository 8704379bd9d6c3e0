//! The batch manifest: which batch-view objects answer for which hours, under which logic
//! version, and the horizon before which serving reads batch views instead of real-time ones.
//!
//! The batch layer publishes a new manifest with one atomic write after every recompute;
//! serving and the speed layer only ever read a published one, so none sees a half-written
//! version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::time::HOUR_MS;
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
    /// Hours a reviewed reprocess computed under a logic version, not yet live: queries read
    /// them only when they ask for that version, until a promotion moves them into `hours`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub staged: BTreeMap<Millis, HourEntry>,
    /// Why the view's last recompute failed, and at which hour: its hours stop there, and it
    /// no longer holds back the manifest's horizon (serving refuses its queries instead),
    /// until a run computes it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
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
            staged: BTreeMap::new(),
            failing: None,
        }
    }

    /// The hour as logic version `version` has it: staged for that version if a reviewed
    /// reprocess computed it, else live if live is that version.
    pub fn hour_as(&self, hour: Millis, version: LogicVersion) -> Option<&HourEntry> {
        let of_version = |entry: &&HourEntry| entry.logic_version == version;
        (self.staged.get(&hour).filter(of_version)).or(self.hours.get(&hour).filter(of_version))
    }

    /// Makes the staged hours of `version` live and `version` the current one when it is
    /// newer; returns how many hours went live. Staged hours of other versions stay staged.
    pub fn promote(&mut self, version: LogicVersion) -> usize {
        let promoted: Vec<Millis> = (self.staged.iter())
            .filter(|(_, entry)| entry.logic_version == version)
            .map(|(hour, _)| *hour)
            .collect();
        for hour in &promoted {
            let entry = self.staged.remove(hour).expect("listed just above");
            self.hours.insert(*hour, entry);
        }
        if !promoted.is_empty() {
            self.current_version = self.current_version.max(version);
        }
        promoted.len()
    }

    /// How many live hours starting in `range` have no state of `version`, staged or live.
    pub fn hours_lacking(&self, version: LogicVersion, range: std::ops::Range<Millis>) -> usize {
        let first_hour = range.start.div_euclid(HOUR_MS).saturating_mul(HOUR_MS);
        (self.hours.range(first_hour..range.end.max(first_hour)))
            .filter(|(hour, _)| self.hour_as(**hour, version).is_none())
            .count()
    }

    /// The staged logic versions, each with its count of staged hours.
    pub fn staged_versions(&self) -> BTreeMap<LogicVersion, usize> {
        count_versions(&self.staged)
    }

    /// The logic versions of the live hours, each with its count of hours.
    pub fn live_versions(&self) -> BTreeMap<LogicVersion, usize> {
        count_versions(&self.hours)
    }

    /// The version after the newest one registered: what a changed spec gets. Past the last
    /// number (a manifest written before versions were numbered in turn may hold it), the
    /// first free one, so that no registered spec is ever replaced.
    pub fn next_version(&self) -> LogicVersion {
        let last = self.versions.keys().next_back().copied().unwrap_or(0);
        last.checked_add(1).unwrap_or_else(|| {
            (1..=LogicVersion::MAX)
                .find(|version| !self.versions.contains_key(version))
                .expect("fewer versions than numbers")
        })
    }

    /// The logic version whose spec equals `spec`, registering a new one (and making it
    /// current) when the spec changed. Returns the version and whether it is new.
    pub fn version_for(&mut self, spec: &ViewSpec) -> (LogicVersion, bool) {
        if self.versions.get(&self.current_version) == Some(spec) {
            return (self.current_version, false);
        }
        // A version staged for review with this very spec becomes current, not a twin of it.
        let newer = self.current_version.saturating_add(1);
        if let Some((&staged, _)) = (self.versions.range(newer..)).find(|(_, s)| *s == spec) {
            self.current_version = staged;
            return (staged, true);
        }
        let next = self.next_version();
        self.versions.insert(next, spec.clone());
        self.current_version = next;
        (next, true)
    }
}

/// How many of `hours` each logic version computed.
fn count_versions(hours: &BTreeMap<Millis, HourEntry>) -> BTreeMap<LogicVersion, usize> {
    let mut versions = BTreeMap::new();
    for entry in hours.values() {
        *versions.entry(entry.logic_version).or_default() += 1;
    }
    versions
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
    fn a_spec_staged_for_review_is_not_registered_twice() {
        let mut view = ViewManifest::new("t", &spec(&[]));
        view.versions.insert(2, spec(&["os_type"]));
        assert_eq!(view.version_for(&spec(&["os_type"])), (2, true));
        assert_eq!(view.versions.len(), 2);
    }

    fn entry(logic_version: LogicVersion, object: &str) -> HourEntry {
        HourEntry {
            logic_version,
            object: Some(object.into()),
            rows: 1,
            events: 1,
            inputs: RawInputs::default(),
        }
    }

    #[test]
    fn staged_hours_are_read_only_as_their_version_until_promoted() {
        let mut view = ViewManifest::new("t", &spec(&[]));
        view.hours.insert(0, entry(1, "live-0"));
        view.hours.insert(HOUR_MS, entry(1, "live-1"));
        view.staged.insert(HOUR_MS, entry(2, "staged-1"));
        view.staged.insert(2 * HOUR_MS, entry(3, "other"));
        let object =
            |hour, version| (view.hour_as(hour, version)).and_then(|entry| entry.object.clone());
        assert_eq!(object(HOUR_MS, 2).as_deref(), Some("staged-1"));
        assert_eq!(object(HOUR_MS, 1).as_deref(), Some("live-1"));
        assert_eq!(
            object(0, 2),
            None,
            "live hours of another version are not version 2"
        );
        assert_eq!(view.hours_lacking(2, 0..2 * HOUR_MS), 1);
        assert_eq!(view.hours_lacking(1, 0..2 * HOUR_MS), 0);
        assert_eq!(view.staged_versions(), BTreeMap::from([(2, 1), (3, 1)]));

        assert_eq!(view.promote(2), 1);
        assert_eq!(view.hours[&HOUR_MS].object.as_deref(), Some("staged-1"));
        assert_eq!(view.current_version, 2);
        assert_eq!(view.staged_versions(), BTreeMap::from([(3, 1)]));
        assert_eq!(view.promote(2), 0, "nothing is left to promote twice");
    }

    #[test]
    fn a_manifest_written_before_staging_still_reads() {
        let old =
            r#"{"tenant":"t","view":"v","versions":{},"current_version":1,"horizon":0,"hours":{}}"#;
        let view: ViewManifest = serde_json::from_str(old).unwrap();
        assert!(view.staged.is_empty());
        assert!(!serde_json::to_string(&view).unwrap().contains("staged"));
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

    /// A manifest that holds the last number (written before versions were numbered in turn)
    /// numbers the next spec with the first free one, never wrapping onto version 0 or 1.
    #[test]
    fn the_next_version_after_the_last_number_is_the_first_free_one() {
        let mut view = ViewManifest::new("t", &spec(&["os_type"]));
        assert_eq!(view.next_version(), 2);
        view.versions.insert(LogicVersion::MAX, spec(&["country"]));
        assert_eq!(view.next_version(), 2);
        let (version, new) = view.version_for(&spec(&["source"]));
        assert_eq!((version, new), (2, true));
        assert_eq!(view.versions[&1], spec(&["os_type"]));
        assert_eq!(view.versions[&LogicVersion::MAX], spec(&["country"]));
    }
}
