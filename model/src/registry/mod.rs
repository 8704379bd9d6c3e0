//! The tag registry (governance): which event types a tenant accepts, which tags each carries
//! and of what type, known misspellings, which sources may publish what, and retention.
//!
//! [`TagRegistry::validate`] turns one submitted JSON object into an [`Event`] or into every
//! reason it is not one (`validate`); trackers' context fields come along as
//! offered tags, kept only where the registry declares them.

mod validate;

pub use validate::{MAX_REASON_CHARS, MAX_REASONS, bounded as bounded_reasons, json_type};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Millis, TagValue};
use crate::name::{ANY_EVENT_TYPE, check_event_type_alias, check_name};
use crate::problem::{CatalogProblem, CatalogProblems};
use crate::time::parse_timestamp;

/// The largest magnitude a number tag may have. Sums are kept exactly in millionths in an
/// `i128` (see [`MeasureState::Sum`](crate::state::MeasureState::Sum)): at this bound one
/// value is 10²¹ millionths, so a state would need 1.7 × 10¹⁷ such values before it could
/// overflow, and both layers add the same integers in any order to the same total.
pub const MAX_TAG_NUMBER: f64 = 1e15;
/// Longest accepted `event_id`.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Longest accepted `user_id`.
pub const MAX_USER_ID_LEN: usize = 256;
/// The most tags, event types or source policies a tenant may declare, and the most names
/// one entry may list: every governance change writes the whole catalog.
pub const MAX_ENTRIES: usize = 1_000;
/// The most aliases one tag or event type may have.
pub const MAX_ALIASES: usize = 32;

/// A tenant's governance rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRegistry {
    /// Canonical tag name → its type and known misspellings.
    #[serde(default)]
    pub tags: BTreeMap<String, TagSpec>,
    /// Event type name → the tags it requires and allows, and its retention.
    #[serde(default)]
    pub event_types: BTreeMap<String, EventTypeSpec>,
    /// Source (API key name) → the event types it may publish.
    #[serde(default)]
    pub sources: BTreeMap<String, SourcePolicy>,
}

/// One canonical tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    /// The value type every event must use for this tag.
    #[serde(rename = "type")]
    pub kind: TagKind,
    /// Known misspellings, silently renamed to the canonical name on ingest.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The value type of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TagKind {
    /// Text.
    String,
    /// A finite number.
    Number,
    /// `true` or `false`.
    Bool,
}

impl TagKind {
    fn name(self) -> &'static str {
        match self {
            TagKind::String => "string",
            TagKind::Number => "number",
            TagKind::Bool => "bool",
        }
    }
}

/// One event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeSpec {
    /// Other names senders use for it, renamed to this one on ingest: a tracking plan's
    /// `Order Completed` for `purchase`. Free text (spaces and case allowed), unlike names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Tags every event of this type must carry.
    #[serde(default)]
    pub required: Vec<String>,
    /// Tags an event of this type may carry.
    #[serde(default)]
    pub optional: Vec<String>,
    /// How long raw events of this type are kept.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

impl EventTypeSpec {
    /// Whether an event of this type may carry `tag`, required or optional.
    pub fn declares(&self, tag: &str) -> bool {
        self.required
            .iter()
            .chain(&self.optional)
            .any(|declared| declared == tag)
    }
}

/// How long raw events of a type are kept when its spec does not say.
pub const DEFAULT_RETENTION_DAYS: u32 = 395;

const fn default_retention_days() -> u32 {
    DEFAULT_RETENTION_DAYS
}

/// What one source may publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcePolicy {
    /// Event types it may publish; `"*"` allows all.
    pub event_types: Vec<String>,
}

/// Why an event was rejected: a stable code for metrics and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectReason {
    /// Short, stable, for counting: `unknown_tag`, `missing_field`, ...
    pub code: &'static str,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl RejectReason {
    /// A reason with its code.
    pub fn new(code: &'static str, message: String) -> Self {
        RejectReason { code, message }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What validation needs to know besides the submitted object.
#[derive(Debug, Clone)]
pub struct ValidationContext<'a> {
    /// The tenant of the API key.
    pub tenant: &'a str,
    /// The source (API key name).
    pub source: &'a str,
    /// Receive time; also the event time when the client sent none.
    pub received_at: Millis,
    /// How far in the future an event time may be.
    pub max_future_ms: Millis,
    /// How far in the past an event time may be.
    pub max_age_ms: Millis,
    /// Accept tag values sent as text (the pixel's query string) when they parse as the
    /// declared type.
    pub tag_values_as_text: bool,
}

impl TagRegistry {
    /// The canonical name for `name`: itself, the tag an alias stands for, or none.
    pub fn canonical_tag(&self, name: &str) -> Option<&str> {
        canonical(&self.tags, name)
    }

    /// The canonical tag a user most likely meant by `name`: an alias match, or the closest
    /// canonical name or alias by edit distance.
    pub fn suggest_tag(&self, name: &str) -> Option<&str> {
        suggest(&self.tags, name)
    }

    /// The canonical event type for `name`: itself, the type an alias stands for, or none.
    pub fn canonical_event_type(&self, name: &str) -> Option<&str> {
        canonical(&self.event_types, name)
    }

    /// The canonical event type a sender most likely meant by `name`, as [`Self::suggest_tag`].
    pub fn suggest_event_type(&self, name: &str) -> Option<&str> {
        suggest(&self.event_types, name)
    }

    /// Whether `source` may publish `event_type`.
    pub fn may_publish(&self, source: &str, event_type: &str) -> bool {
        self.sources.get(source).is_some_and(|policy| {
            policy
                .event_types
                .iter()
                .any(|allowed| allowed == ANY_EVENT_TYPE || allowed == event_type)
        })
    }

    /// Checks the registry itself: every name is plain ([`check_name`]), each alias belongs
    /// to one tag or event type, and every tag an event type names is declared.
    pub fn check(&self) -> Result<(), CatalogProblems> {
        let mut problems = CatalogProblems::default();
        let names = self.tags.keys().map(|tag| ("tag", tag));
        let aliases = self
            .tags
            .values()
            .flat_map(|spec| spec.aliases.iter().map(|alias| ("alias", alias)));
        let event_types = self.event_types.keys().map(|name| ("event type", name));
        let sources = self.sources.keys().map(|name| ("source", name));
        for (what, name) in names.chain(aliases).chain(event_types).chain(sources) {
            if let Err(err) = check_name(what, name) {
                problems.push(err);
            }
        }
        for (what, count) in [
            ("tags", self.tags.len()),
            ("event types", self.event_types.len()),
            ("source policies", self.sources.len()),
        ] {
            if count > MAX_ENTRIES {
                problems.push(CatalogProblem::TooMany {
                    what,
                    count,
                    max: MAX_ENTRIES,
                });
            }
        }
        let lists = (self.tags.iter())
            .map(|(name, spec)| (format!("tag '{name}'"), "aliases", spec.aliases.len()))
            .chain(self.event_types.iter().flat_map(|(name, spec)| {
                [
                    ("aliases", spec.aliases.len()),
                    (
                        "tags",
                        spec.required.len().saturating_add(spec.optional.len()),
                    ),
                ]
                .map(|(what, count)| (format!("event type '{name}'"), what, count))
            }))
            .chain(self.sources.iter().map(|(name, policy)| {
                let count = policy.event_types.len();
                (format!("source '{name}'"), "event types", count)
            }));
        for (entry, what, count) in lists {
            let max = if what == "aliases" {
                MAX_ALIASES
            } else {
                MAX_ENTRIES
            };
            if count > max {
                problems.push(CatalogProblem::TooManyInEntry {
                    entry,
                    what,
                    count,
                    max,
                });
            }
        }
        for alias in self.event_types.values().flat_map(|spec| &spec.aliases) {
            if let Err(err) = check_event_type_alias(alias) {
                problems.push(err);
            }
        }
        // Each spelling names one tag (one event type): an alias that another owns, or that
        // is another's name, would silently move events from one to the other.
        check_aliases("tag", &self.tags, &mut problems);
        check_aliases("event type", &self.event_types, &mut problems);
        for (event_type, spec) in &self.event_types {
            for tag in spec.required.iter().chain(&spec.optional) {
                if !self.tags.contains_key(tag) {
                    problems.push(CatalogProblem::UndeclaredTag {
                        event_type: event_type.clone(),
                        tag: tag.clone(),
                    });
                }
            }
        }
        problems.into_result()
    }
}

/// A registry entry that other spellings may stand for: a tag or an event type.
trait Aliased {
    fn aliases(&self) -> &[String];
}

impl Aliased for TagSpec {
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
}

impl Aliased for EventTypeSpec {
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
}

/// The entry `name` stands for: itself, or the entry that declares it as an alias.
fn canonical<'a, T: Aliased>(entries: &'a BTreeMap<String, T>, name: &str) -> Option<&'a str> {
    if let Some((canonical, _)) = entries.get_key_value(name) {
        return Some(canonical);
    }
    entries
        .iter()
        .find(|(_, entry)| entry.aliases().iter().any(|alias| alias == name))
        .map(|(canonical, _)| canonical.as_str())
}

/// The entry a sender most likely meant by `name`: an alias match, or the closest name or
/// alias by edit distance.
fn suggest<'a, T: Aliased>(entries: &'a BTreeMap<String, T>, name: &str) -> Option<&'a str> {
    canonical(entries, name).or_else(|| {
        let candidates = entries.iter().flat_map(|(canonical, entry)| {
            std::iter::once((canonical.as_str(), canonical.as_str())).chain(
                entry
                    .aliases()
                    .iter()
                    .map(move |alias| (alias.as_str(), canonical.as_str())),
            )
        });
        closest(name, candidates)
    })
}

/// Adds a problem for each alias that is another entry's name, or that two entries claim.
fn check_aliases<T: Aliased>(
    what: &'static str,
    entries: &BTreeMap<String, T>,
    problems: &mut CatalogProblems,
) {
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for (owner, entry) in entries {
        for alias in entry.aliases() {
            if alias != owner && entries.contains_key(alias) {
                problems.push(CatalogProblem::AliasIsAName {
                    what,
                    alias: alias.clone(),
                    owner: owner.clone(),
                });
            } else if let Some(first) = owners.insert(alias, owner)
                && first != owner
            {
                problems.push(CatalogProblem::AliasClaimed {
                    what,
                    alias: alias.clone(),
                    first: first.to_owned(),
                    second: owner.clone(),
                });
            }
        }
    }
}

/// The longest name a suggestion is looked for: comparing costs the product of the lengths.
const MAX_SUGGESTED_NAME: usize = 64;

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
/// Candidates are `(spelling, what to suggest for it)`. A name longer than
/// [`MAX_SUGGESTED_NAME`] gets none, and only candidates whose length is within the allowed
/// distance are compared, so the work is bounded by the name, not by the registry's names.
fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    let length = name.chars().count();
    if length > MAX_SUGGESTED_NAME {
        return None;
    }
    let allowed = (length / 3).max(1);
    candidates
        .filter(|(spelling, _)| spelling.chars().count().abs_diff(length) <= allowed)
        .map(|(spelling, suggestion)| (strsim::damerau_levenshtein(name, spelling), suggestion))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, suggestion)| suggestion)
}

#[cfg(test)]
mod tests;
