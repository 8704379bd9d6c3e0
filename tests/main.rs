//! End-to-end tests of the `tally` binary: one test binary, one module per concern.

mod backends;
mod batch;
mod cli;
mod cluster;
mod dashboard;
mod governance;
mod hostile;
mod infra;
mod kafka;
mod kill;
mod lambda;
mod layout;
mod notebooks;
mod objects;
mod openapi;
mod raw_readers;
mod readme;
mod search;
mod serving;
mod speed;
mod support;
mod trackers;
mod view_change;
