//! What every domain stands on: the catalog (one trait, SQLite and Postgres), change
//! notices between replicas, the bounds on requests in flight, the audit sink, keyed
//! locks, the query runtime, readiness, logs and traces, time, private key files and
//! download spools.
//!
//! Imports no domain folder and nothing of the HTTP edge: everything here is a plain
//! handle a service is given when the application is wired (`app/`).

pub mod admission;
pub mod audit;
pub mod catalog;
pub mod changes;
pub mod keyfile;
pub mod locks;
pub mod readiness;
pub mod runtime;
pub mod spool;
pub mod telemetry;
pub mod time;
