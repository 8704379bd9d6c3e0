//! The contract every Tally layer shares. Pure data and functions: no I/O, no async.
//!
//! - [`event`]: the [`Event`] a client sends once ingest has validated and stamped it, and the
//!   [`RejectedEvent`] kept with its reasons when it could not be accepted.
//! - [`registry`]: the per-tenant tag registry (governance) and event validation.
//! - [`tenant`]: tenants, the catalog, and the demo catalog; [`key`]: API keys, kept as
//!   hashes, and their scopes.
//! - [`view`], [`measure`] and [`state`]: view specs, declared once and compiled by both the speed and the
//!   batch layer, and the mergeable [`AggregateState`] they both produce.
//! - [`time`] and [`layout`]: UTC time buckets and the raw partition layout in object storage.
//! - [`manifest`]: the batch manifest (views, logic versions, hours, horizon); [`job`]: the
//!   batch jobs the governance API asks for (reprocess for review, promote).
//! - [`name`]: the one rule for the names a tenant declares; [`problem`]: why a catalog is
//!   inconsistent; [`token`]: numbers that tell concurrent writers apart.
//! - [`config`]: the one TOML file, overridable by `TALLY_*` environment variables.
//!
//! ```
//! use tally_model::{Granularity, ViewSpec, Measure};
//!
//! let view: ViewSpec = toml::from_str(r#"
//!     name = "events_by_type"
//!     events = ["*"]
//!     dimensions = ["event_type"]
//!     measures = ["count", "uniq(user_id)"]
//!     granularity = "minute"
//! "#).unwrap();
//! assert_eq!(view.measures[1], Measure::Uniq("user_id".into()));
//! assert_eq!(Granularity::Hour.bucket_start(3_600_000 + 42), 3_600_000);
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod event;
pub mod job;
pub mod key;
pub mod layout;
pub mod manifest;
pub mod measure;
pub mod name;
pub mod problem;
pub mod registry;
pub mod state;
pub mod tenant;
pub mod time;
pub mod token;
pub mod view;

pub use config::{BatchConfig, Config, ConfigError, KafkaConfig, LogKind};
pub use event::{
    Event, EventFields, FieldValue, Millis, RejectedEvent, TagValue, partition_of, stable_hash,
};
pub use manifest::{LogicVersion, Manifest, ViewManifest};
pub use measure::Measure;
pub use registry::{RejectReason, TagKind, TagRegistry, ValidationContext};
pub use state::{AggregateState, MeasureState, StateDecodeError, StateMerger, StateSummary};
pub use tenant::{ApiKey, Catalog, Scope, Tenant};
pub use time::Granularity;
pub use view::{ViewSpec, dimension_text};
