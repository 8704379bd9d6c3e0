//! `GET /v1/query`: one view over a time range, batch views before the horizon and real-time
//! views after it, rolled up to the asked granularity, grouped, filtered and measured.
//!
//! The seam is exact because every stored bucket lies wholly on one side of the hour-aligned
//! horizon (see [`ViewSpec::stored_granularity`](tally_model::ViewSpec::stored_granularity)) and because the real-time store is read
//! *before* the manifest: the speed layer only drops buckets below a horizon that has been
//! published, so the horizon read afterwards is at or above the one the store reflected,
//! and the store still held every bucket from it on. A query with `logic_version=` reads
//! batch states alone ([`BatchReading`]): how a staged fix is put beside the live hours.
//!
//! - `params`: the query string as sent ([`QueryParams`]), and its filter conditions.
//! - `parse`: the parameters checked against the tenant's view ([`Query::parse`]).
//! - `rollup`: stored states rolled up into answer rows ([`Projection`], [`Rollup`]).
//! - `render`: rows written as JSON text, and the seam ([`Sources`]).

mod params;
mod parse;
mod render;
mod rollup;
#[cfg(test)]
mod tests;

pub use params::{Condition, QueryParams};
pub use parse::{BatchReading, MAX_MEASURES, Query, QueryError, QueryGranularity, QueryMeasure};
pub use render::{RenderedHour, RenderedRows, Sources};
pub use rollup::{Lacking, Projection, RolledHour, Rollup, RowKey};
