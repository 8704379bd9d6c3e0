//! Why a catalog is inconsistent: each [`CatalogProblem`] names what to fix, and
//! [`CatalogProblems`] gathers every one a check found, so that a config or a governance
//! change is answered with all of them at once.

use std::fmt;

use thiserror::Error;

use crate::measure::Measure;
use crate::name::{EventTypeAliasError, NameError};

/// One way a catalog is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CatalogProblem {
    /// A name that is not plain.
    #[error(transparent)]
    Name(#[from] NameError),
    /// An event type alias that is empty, too long, padded, `*` or holds control characters.
    #[error(transparent)]
    EventTypeAlias(#[from] EventTypeAliasError),
    /// An alias that is another tag's (or event type's) name.
    #[error("alias '{alias}' of {what} '{owner}' is the name of {what} '{alias}'")]
    AliasIsAName {
        /// What is aliased: "tag" or "event type".
        what: &'static str,
        /// The alias.
        alias: String,
        /// The tag or event type that declares it.
        owner: String,
    },
    /// An alias two tags (or two event types) declare.
    #[error("alias '{alias}' is claimed by {what}s '{first}' and '{second}'; give it to one")]
    AliasClaimed {
        /// What is aliased: "tag" or "event type".
        what: &'static str,
        /// The alias.
        alias: String,
        /// One tag that declares it.
        first: String,
        /// The other.
        second: String,
    },
    /// An event type that names a tag the registry does not declare.
    #[error("event type '{event_type}' names tag '{tag}', which is not declared under [tags]")]
    UndeclaredTag {
        /// The event type.
        event_type: String,
        /// The tag.
        tag: String,
    },
    /// A view dimension that is neither a built-in field nor a tag.
    #[error(
        "view '{view}': dimension '{dimension}' is neither a built-in field nor a declared tag"
    )]
    UnknownDimension {
        /// The view.
        view: String,
        /// The dimension.
        dimension: String,
    },
    /// A view measure that reads a field nobody declared.
    #[error("view '{view}': measure '{measure}' reads '{field}', which is not declared")]
    UndeclaredField {
        /// The view.
        view: String,
        /// The measure.
        measure: Measure,
        /// The field it reads.
        field: String,
    },
    /// A numeric view measure over a tag that is not a number.
    #[error("view '{view}': measure '{measure}' needs a number tag, '{field}' is not")]
    NotANumber {
        /// The view.
        view: String,
        /// The measure.
        measure: Measure,
        /// The field it reads.
        field: String,
    },
    /// A view that names a dimension or a measure twice.
    #[error("view '{view}': {what} '{name}' is named twice; name it once")]
    RepeatedInView {
        /// The view.
        view: String,
        /// "dimension" or "measure".
        what: &'static str,
        /// The name repeated.
        name: String,
    },
    /// A view that lists no event type or no measure: it would count nothing, or answer
    /// nothing.
    #[error("view '{view}' lists no {what}; name at least one")]
    EmptyInView {
        /// The view.
        view: String,
        /// "events" or "measures".
        what: &'static str,
    },
    /// A view with more dimensions or measures than a view may have.
    #[error("view '{view}' has {count} {what}s; a view may have at most {max}")]
    TooManyInView {
        /// The view.
        view: String,
        /// "dimension" or "measure".
        what: &'static str,
        /// How many it has.
        count: usize,
        /// How many it may have.
        max: usize,
    },
    /// A tenant with more of something (views, tags, keys...) than a tenant may have.
    #[error("{count} {what}; a tenant may have at most {max}")]
    TooMany {
        /// What there are too many of: "views", "tags", ...
        what: &'static str,
        /// How many it has.
        count: usize,
        /// How many it may have.
        max: usize,
    },
    /// A registry entry that lists more names than an entry may.
    #[error("{entry} lists {count} {what}; an entry may list at most {max}")]
    TooManyInEntry {
        /// The entry: "tag 'os_type'", "event type 'click'", ...
        entry: String,
        /// What it lists: "aliases", "tags", "event types".
        what: &'static str,
        /// How many it lists.
        count: usize,
        /// How many it may list.
        max: usize,
    },
    /// A view over an event type the registry does not declare.
    #[error("view '{view}': event type '{event_type}' is not registered")]
    UnregisteredEventType {
        /// The view.
        view: String,
        /// The event type.
        event_type: String,
    },
    /// An API key of a tenant that does not exist.
    #[error("API key '{key}' names unknown tenant '{tenant}'")]
    UnknownTenant {
        /// The key's name (its source).
        key: String,
        /// The tenant it names.
        tenant: String,
    },
    /// A problem inside one tenant.
    #[error("tenant '{tenant}': {problem}")]
    InTenant {
        /// The tenant.
        tenant: String,
        /// What is wrong there.
        problem: Box<CatalogProblem>,
    },
}

/// Every problem a check found, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Error)]
pub struct CatalogProblems(pub Vec<CatalogProblem>);

impl CatalogProblems {
    /// `Ok` when nothing was found.
    pub fn into_result(self) -> Result<(), CatalogProblems> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Adds a problem.
    pub fn push(&mut self, problem: impl Into<CatalogProblem>) {
        self.0.push(problem.into());
    }

    /// Each problem as its message, for a caller that lists them.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for CatalogProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.messages().join("; "))
    }
}
