//! The lakehouse engine of lakeledger: feature group schemas, validated ingest into
//! Delta tables, and versioned reads.
//!
//! Each feature group is one Delta table. Writes stage Parquet files as rows arrive and
//! become visible only through a single commit, so a failed upload leaves no version
//! behind. Reads open a table at an exact version and stream Arrow batches.

#![forbid(unsafe_code)]

pub mod error;
pub mod feature_rows;
pub mod formats;
pub mod ingest;
pub mod point_in_time;
#[cfg(feature = "s3")]
mod s3;
pub mod schema;
pub mod sql;
pub mod tables;

pub use error::{Error, Result};
pub use schema::{Column, ColumnType, FeatureSchema};

/// Re-exported so dependants use exactly the arrow and DataFusion versions the engine uses.
pub use arrow;
pub use datafusion;
pub use deltalake;
