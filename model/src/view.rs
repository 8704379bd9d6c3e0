//! View specs: a metric declared once, as data, and compiled by both the speed and the
//! batch layer into the same [`AggregateState`]s.

use serde::{Deserialize, Serialize};

use crate::event::{EventFields, FieldValue, Millis};
use crate::measure::Measure;
use crate::name::ANY_EVENT_TYPE;
use crate::problem::{CatalogProblem, CatalogProblems};
use crate::registry::{TagKind, TagRegistry};
use crate::state::AggregateState;
use crate::time::Granularity;

/// Fields every event has, usable as dimensions and in `uniq(...)`.
pub const BUILT_IN_FIELDS: [&str; 3] = ["event_type", "user_id", "source"];

/// The most dimensions a view may have.
pub const MAX_DIMENSIONS: usize = 16;
/// The most measures a view may have.
pub const MAX_MEASURES: usize = 32;

/// One view: which events it covers, how it groups them, what it measures, how finely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// The view's name, unique per tenant.
    pub name: String,
    /// Event types it covers; [`ANY_EVENT_TYPE`] (`"*"`) covers all.
    pub events: Vec<String>,
    /// Group-by keys kept in the view: built-in fields or tags.
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// What it measures: `count`, `sum(tag)`, `min(tag)`, `max(tag)`, `uniq(field)`,
    /// `quantiles(tag)`.
    #[schema(value_type = Vec<String>, example = json!(["count", "sum(revenue)", "uniq(user_id)"]))]
    pub measures: Vec<Measure>,
    /// The finest bucket kept; queries roll up from it.
    pub granularity: Granularity,
}

impl ViewSpec {
    /// Whether events of `event_type` feed this view.
    pub fn covers(&self, event_type: &str) -> bool {
        self.covers_every_event_type() || self.events.iter().any(|e| e == event_type)
    }

    /// Whether every event feeds this view ([`ANY_EVENT_TYPE`] is among its events).
    pub fn covers_every_event_type(&self) -> bool {
        self.events.iter().any(|e| e == ANY_EVENT_TYPE)
    }

    /// The event's values for this view's dimensions; a missing tag is the empty string.
    pub fn dimension_values(&self, event: &(impl EventFields + ?Sized)) -> Vec<String> {
        self.dimensions
            .iter()
            .map(|dimension| dimension_text(event.field(dimension)).into_owned())
            .collect()
    }

    /// The width of the buckets its states are stored in: the view's granularity, but never
    /// wider than an hour, so that every stored bucket lies wholly on one side of the
    /// (hour-aligned) batch horizon and the seam between the layers stays exact. Day views
    /// are rolled up from hours at query time.
    pub fn stored_granularity(&self) -> Granularity {
        self.granularity.min(Granularity::Hour)
    }

    /// The name its real-time states are stored under: the view's name and a fingerprint of
    /// everything that shapes its states (the events covered, the dimensions, the measures,
    /// the stored granularity), e.g. `events_by_type@5f0c…`. States of an earlier spec keep
    /// their own name, so they are never read, merged or counted beside those of this one:
    /// the rule the batch layer follows with logic versions.
    pub fn stored_name(&self) -> String {
        let shape = serde_json::json!([
            self.events,
            self.dimensions,
            self.measures,
            self.stored_granularity()
        ]);
        format!("{}@{:016x}", self.name, fnv1a(shape.to_string().as_bytes()))
    }

    /// The start of the stored bucket holding `ts`.
    pub fn bucket_of(&self, ts: Millis) -> Millis {
        self.stored_granularity().bucket_start(ts)
    }

    /// A state holding nothing yet, shaped for this view's measures.
    pub fn empty_state(&self) -> AggregateState {
        AggregateState::for_measures(&self.measures)
    }

    /// The field each of a state's [`measures`](AggregateState::measures) reads, in order.
    pub fn measure_fields(&self) -> impl Iterator<Item = &str> {
        self.measures.iter().filter_map(Measure::field)
    }

    /// Adds one event to a state of this view.
    pub fn accumulate(&self, state: &mut AggregateState, event: &(impl EventFields + ?Sized)) {
        let values = self.measure_fields().map(|field| event.field(field));
        self.accumulate_values(state, values);
    }

    /// [`accumulate`](Self::accumulate), given the event's values of the fields the measures
    /// read, in [`measure_fields`](Self::measure_fields) order: for a reader that looks each
    /// of an event's fields up once for all the views it feeds.
    pub fn accumulate_values<'a>(
        &self,
        state: &mut AggregateState,
        values: impl Iterator<Item = Option<FieldValue<'a>>>,
    ) {
        state.count += 1;
        for (measure_state, value) in state.measures.iter_mut().zip(values) {
            if let Some(value) = value {
                measure_state.add(value);
            }
        }
    }

    /// Checks the spec against the tenant's registry: every field it names exists, once,
    /// numeric measures read number tags, and it has at most [`MAX_DIMENSIONS`] dimensions
    /// and [`MAX_MEASURES`] measures (each dimension multiplies a view's keys, and both
    /// layers compute every one of them).
    pub fn check(&self, registry: &TagRegistry) -> Result<(), CatalogProblems> {
        let mut problems = CatalogProblems::default();
        if let Err(err) = crate::name::check_name("view", &self.name) {
            problems.push(err);
        }
        let view = || self.name.clone();
        let names = |what: &'static str, names: Vec<String>, max: usize| {
            let mut found = Vec::new();
            if names.len() > max {
                found.push(CatalogProblem::TooManyInView {
                    view: view(),
                    what,
                    count: names.len(),
                    max,
                });
            }
            let mut seen = std::collections::BTreeSet::new();
            for name in names {
                if !seen.insert(name.clone()) {
                    found.push(CatalogProblem::RepeatedInView {
                        view: view(),
                        what,
                        name,
                    });
                }
            }
            found
        };
        for (what, empty) in [
            ("events", self.events.is_empty()),
            ("measures", self.measures.is_empty()),
        ] {
            if empty {
                problems.push(CatalogProblem::EmptyInView { view: view(), what });
            }
        }
        let measures = self.measures.iter().map(ToString::to_string).collect();
        for problem in names("dimension", self.dimensions.clone(), MAX_DIMENSIONS)
            .into_iter()
            .chain(names("measure", measures, MAX_MEASURES))
        {
            problems.push(problem);
        }
        let kind_of = |field: &str| match BUILT_IN_FIELDS.contains(&field) {
            true => Some(TagKind::String),
            false => registry.tags.get(field).map(|tag| tag.kind),
        };
        for dimension in &self.dimensions {
            if kind_of(dimension).is_none() {
                problems.push(CatalogProblem::UnknownDimension {
                    view: view(),
                    dimension: dimension.clone(),
                });
            }
        }
        for measure in &self.measures {
            let Some(field) = measure.field() else {
                continue;
            };
            let (measure, field) = (measure.clone(), field.to_owned());
            match (kind_of(&field), &measure) {
                (None, _) => problems.push(CatalogProblem::UndeclaredField {
                    view: view(),
                    measure,
                    field,
                }),
                (
                    Some(kind),
                    Measure::Sum(_) | Measure::Min(_) | Measure::Max(_) | Measure::Quantiles(_),
                ) if kind != TagKind::Number => problems.push(CatalogProblem::NotANumber {
                    view: view(),
                    measure,
                    field,
                }),
                _ => {}
            }
        }
        for event_type in &self.events {
            if event_type != ANY_EVENT_TYPE && !registry.event_types.contains_key(event_type) {
                problems.push(CatalogProblem::UnregisteredEventType {
                    view: view(),
                    event_type: event_type.clone(),
                });
            }
        }
        problems.into_result()
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across builds and platforms, for names
/// that are stored.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A field's value as a dimension: a missing tag is the empty string.
pub fn dimension_text(value: Option<FieldValue<'_>>) -> std::borrow::Cow<'_, str> {
    value.map(|value| value.as_dimension()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    #[test]
    fn a_spec_that_shapes_states_differently_is_stored_apart() {
        let view = crate::Tenant::demo().views[0].clone();
        assert_eq!(view.stored_name(), view.clone().stored_name());
        assert!(view.stored_name().starts_with("events_by_type@"));
        let mut changes: Vec<ViewSpec> = Vec::new();
        let mut with = |change: fn(&mut ViewSpec)| {
            let mut changed = view.clone();
            change(&mut changed);
            changes.push(changed);
        };
        with(|v| v.dimensions.push("country".into()));
        with(|v| v.dimensions.reverse());
        with(|v| v.measures.push(Measure::Uniq("country".into())));
        with(|v| v.events = vec!["click".into()]);
        with(|v| v.granularity = Granularity::Hour);
        for changed in &changes {
            assert_ne!(changed.stored_name(), view.stored_name(), "{changed:?}");
        }
        // Day views are stored by the hour, like hour views: the same states.
        let mut hourly = view.clone();
        hourly.granularity = Granularity::Hour;
        let mut daily = view.clone();
        daily.granularity = Granularity::Day;
        assert_eq!(hourly.stored_name(), daily.stored_name());
    }

    #[test]
    fn dimension_values_read_fields_and_tags() {
        let view: ViewSpec = toml::from_str(
            r#"name = "v"
               events = ["click"]
               dimensions = ["event_type", "os_type", "country"]
               measures = ["count"]
               granularity = "hour""#,
        )
        .unwrap();
        let event = Event {
            event_id: "e".into(),
            event_type: "click".into(),
            ts: 0,
            tenant: "t".into(),
            user_id: "u".into(),
            tags: [("os_type".to_owned(), crate::TagValue::String("ios".into()))].into(),
            received_at: 0,
            source: "s".into(),
        };
        assert!(view.covers("click") && !view.covers("purchase"));
        assert_eq!(view.dimension_values(&event), ["click", "ios", ""]);
    }
}
