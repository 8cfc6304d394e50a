//! The lakeledger server and CLI: HTTP API, catalog, authentication and the audit
//! layer that records every request in the ledger, over the `lakeledger-query` engine.
//!
//! Tests and embedders build a [`app::config::Config`], call [`app::server::prepare`]
//! and then either [`app::server::serve`] or drive [`app::server::app`] directly.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod error;
pub mod features;
pub mod flight;
pub mod http;
pub mod identity;
pub mod lineage;
pub mod models;
pub mod online;
pub mod platform;
pub mod rpc;
pub mod serving;
pub mod sql;
pub mod training;

pub use error::{Error, Result};
