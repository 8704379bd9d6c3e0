//! The wiring of Tally's layers into runnable services, as a library: the `tally` binary's
//! commands call it, and so do the benchmarks (`tally-bench`) and the end-to-end tests.
//!
//! - [`serve`] runs the services (`up`, `ingest`, `speed`, `serve`), with [`operations`]
//!   (health, readiness, metrics, OpenAPI) and [`guard`] (rate limits, timeouts, the JSON
//!   404) in front of every route.
//! - [`batch`] runs the batch layer's jobs (`archive`, `batch run|reprocess|schedule`).
//! - [`catalog`] seeds, loads and follows the saved catalog.
//! - [`logs`] inspects the event log, [`kafka`] creates the Kafka topics, [`views`] reads the
//!   real-time views, [`generator`] sends realistic load (`gen`).
//! - [`settings`] turns the config file, `TALLY_*` variables and flags into one
//!   [`tally_model::Config`], and opens the stores it names.

pub mod batch;
pub mod catalog;
pub mod generator;
pub mod guard;
pub mod kafka;
pub mod logs;
pub mod operations;
pub mod serve;
pub mod settings;
pub mod views;
