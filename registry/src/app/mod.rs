//! The application: configuration (plain settings), the wiring of every service with the
//! handles it uses, and starting and stopping the server. The only place that sees every
//! domain.

pub mod config;
pub mod server;
mod services;

pub use services::replica_id;
