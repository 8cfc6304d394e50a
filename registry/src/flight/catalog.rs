//! Flight SQL's catalog calls, scoped to the caller's tenant: one catalog (`lakeledger`),
//! one schema (the tenant's name), one table per live feature group, with its current
//! Arrow schema when asked.

use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    Any, Command, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, ProstMessageExt,
    SqlInfo, SqlSupportedTransaction,
};
use lakeledger_query::arrow::array::RecordBatch;
use lakeledger_query::arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::features::FeatureGroups;
use crate::identity::Principal;

pub const CATALOG: &str = "lakeledger";
const TABLE_TYPE: &str = "TABLE";

/// A catalog command this server answers.
pub enum Metadata {
    Catalogs(CommandGetCatalogs),
    Schemas(CommandGetDbSchemas),
    Tables(CommandGetTables),
    TableTypes(CommandGetTableTypes),
    SqlInfo(CommandGetSqlInfo),
}

impl Metadata {
    /// The catalog command, or the name of a command this server does not offer.
    pub fn from_command(c: Command) -> std::result::Result<Metadata, String> {
        match c {
            Command::CommandGetCatalogs(c) => Ok(Metadata::Catalogs(c)),
            Command::CommandGetDbSchemas(c) => Ok(Metadata::Schemas(c)),
            Command::CommandGetTables(c) => Ok(Metadata::Tables(c)),
            Command::CommandGetTableTypes(c) => Ok(Metadata::TableTypes(c)),
            Command::CommandGetSqlInfo(c) => Ok(Metadata::SqlInfo(c)),
            other => Err(other.type_url().rsplit('.').next().unwrap_or("the command").to_string()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Metadata::Catalogs(_) => "CommandGetCatalogs",
            Metadata::Schemas(_) => "CommandGetDbSchemas",
            Metadata::Tables(_) => "CommandGetTables",
            Metadata::TableTypes(_) => "CommandGetTableTypes",
            Metadata::SqlInfo(_) => "CommandGetSqlInfo",
        }
    }

    /// Listing tables is listing feature groups; the rest describe the server.
    pub fn action(&self) -> &'static str {
        match self {
            Metadata::Tables(_) => "feature_group.list",
            _ => "sql.metadata",
        }
    }

    /// The command itself is its ticket: the answer is built when it is fetched.
    pub fn as_any(&self) -> Any {
        match self {
            Metadata::Catalogs(c) => c.as_any(),
            Metadata::Schemas(c) => c.as_any(),
            Metadata::Tables(c) => c.as_any(),
            Metadata::TableTypes(c) => c.as_any(),
            Metadata::SqlInfo(c) => c.as_any(),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        match self {
            Metadata::Catalogs(c) => (*c).into_builder().schema(),
            Metadata::Schemas(c) => c.clone().into_builder().schema(),
            Metadata::Tables(c) => c.clone().into_builder().schema(),
            Metadata::TableTypes(c) => (*c).into_builder().schema(),
            Metadata::SqlInfo(_) => std::sync::Arc::new(SqlInfoDataBuilder::schema().clone()),
        }
    }

    pub async fn build(&self, p: &Principal, features: &FeatureGroups, info: &SqlInfoData) -> Result<RecordBatch> {
        let arrow = |e: arrow_flight::error::FlightError| Error::Internal(format!("building a catalog answer: {e}"));
        match self {
            Metadata::Catalogs(c) => {
                let mut b = (*c).into_builder();
                b.append(CATALOG);
                b.build().map_err(arrow)
            }
            Metadata::Schemas(c) => {
                let mut b = c.clone().into_builder();
                b.append(CATALOG, &p.tenant);
                b.build().map_err(arrow)
            }
            Metadata::Tables(c) => {
                let mut b = c.clone().into_builder();
                for g in features.visible(p).await? {
                    b.append(CATALOG, &p.tenant, &g.name, TABLE_TYPE, &g.schema.arrow_schema()).map_err(arrow)?;
                }
                b.build().map_err(arrow)
            }
            Metadata::TableTypes(c) => {
                let mut b = (*c).into_builder();
                b.append(TABLE_TYPE);
                b.build().map_err(arrow)
            }
            Metadata::SqlInfo(c) => c.clone().into_builder(info).build().map_err(arrow),
        }
    }
}

/// What `GetSqlInfo` reports: a read-only SQL server without transactions or Substrait,
/// quoting identifiers with backticks (the Databricks dialect).
pub fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "lakeledger");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "`");
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.build().expect("the server's SQL info is well formed")
}
