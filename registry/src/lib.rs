//! The lakeledger server and CLI: HTTP API, catalog, authentication and the audit
//! layer that records every request in the ledger, over the `lakeledger-query` engine.
//!
//! Tests and embedders build a [`config::Config`], call [`server::prepare`] and then
//! either [`server::serve`] or drive [`server::app`] directly.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli_train;
pub mod config;
pub mod drift;
pub mod error;
pub mod feature_groups;
pub mod inference_log;
pub mod jobs;
pub mod models;
pub mod online;
pub mod server;
pub mod serving;
pub mod sql;
pub mod state;
pub mod training_sets;

pub use error::{Error, Result};
