//! Time-travel SQL over feature groups, sandboxed.
//!
//! A statement is parsed with the Databricks dialect (the one Delta users know), checked,
//! and rewritten before DataFusion sees it:
//!
//! - Only `SELECT` queries (with CTEs, joins, window functions…) and `EXPLAIN` of one are
//!   accepted; anything else — DDL, DML, `COPY`, `SET`, `CREATE EXTERNAL TABLE`, several
//!   statements — is refused.
//! - Every table must be a single unqualified name; table functions and file or URL reads
//!   are refused. Each reference, with its version clause, becomes a [`TableRequest`] that
//!   the caller resolves to an exact Delta version of a visible feature group.
//! - `VERSION AS OF <integer>` and `TIMESTAMP AS OF '<RFC 3339>'` are supported. Every other
//!   version form (`FOR SYSTEM_TIME AS OF`, Snowflake `AT`/`BEFORE`/`CHANGES`, non-literal
//!   versions) is refused: a version clause is honoured exactly or the query fails.
//! - Each reference is renamed to an internal table registered at its resolved version,
//!   keeping the name the user wrote as its alias, so columns qualify as written.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, Query, Statement, TableAlias, TableFactor, TableVersion, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::DatabricksDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};

/// Longest statement accepted, in bytes.
pub const MAX_SQL_LEN: usize = 100_000;

/// How deeply a statement may nest (subqueries, parenthesized tables and expressions).
/// Parsing, printing, visiting, planning and dropping a statement all recurse over its
/// tree on the caller's thread (an async worker, with a few MiB of stack): a short
/// statement of a few dozen nested parentheses overflowed it and took the whole server down
/// (found by fuzzing the guard). Refused while parsing, before any of that recursion.
pub const MAX_SQL_DEPTH: usize = 24;
const INTERNAL_PREFIX: &str = "__lakeledger_t";

/// Which version of a feature group a reference asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VersionSpec {
    Latest,
    Version(i64),
    /// RFC 3339, resolved through the commit-time map.
    Timestamp(String),
}

/// One table reference in a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRequest {
    /// The feature group name as written.
    pub name: String,
    pub version: VersionSpec,
    /// The name the table is registered under for this statement.
    pub internal: String,
}

/// A checked statement, ready to be resolved and run.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The statement as parsed, re-printed: one normalized form for the audit log.
    pub normalized: String,
    pub is_explain: bool,
    pub tables: Vec<TableRequest>,
    rewritten: Statement,
}

/// A table reference resolved to an exact version.
pub struct ResolvedTable {
    pub internal: String,
    pub provider: Arc<dyn TableProvider>,
}

/// Limits a statement runs under.
#[derive(Clone, Debug)]
pub struct SqlLimits {
    /// The memory every running query shares: sorts and aggregations spill to disk, and
    /// then fail, when it is spent, however many queries run at once.
    pub memory: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    pub target_partitions: usize,
}

impl SqlLimits {
    /// Limits over one pool of `memory_bytes` for every query given these limits (clones
    /// share it), divided fairly among the queries that spill.
    pub fn shared(memory_bytes: usize, target_partitions: usize) -> SqlLimits {
        SqlLimits { memory: Arc::new(datafusion::execution::memory_pool::FairSpillPool::new(memory_bytes)), target_partitions }
    }
}

fn refused(what: impl Into<String>) -> Error {
    Error::SqlRefused(what.into())
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::SqlUnsupported(format!(
        "{}; supported: `FROM <group> VERSION AS OF <integer>` and `FROM <group> TIMESTAMP AS OF '<RFC 3339 time>'`",
        what.into()
    ))
}

/// Parses and checks `sql`, collecting its feature-group references.
pub fn parse(sql: &str) -> Result<Parsed> {
    if sql.len() > MAX_SQL_LEN {
        return Err(Error::InvalidSql(format!("the statement is {} bytes; the limit is {MAX_SQL_LEN}", sql.len())));
    }
    let mut statements = Parser::new(&DatabricksDialect {})
        .with_recursion_limit(MAX_SQL_DEPTH)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| match e {
            datafusion::sql::sqlparser::parser::ParserError::RecursionLimitExceeded => {
                Error::InvalidSql(format!("the statement nests deeper than {MAX_SQL_DEPTH} levels (subqueries, parentheses); flatten it, e.g. with WITH"))
            }
            e => Error::InvalidSql(e.to_string()),
        })?;
    if statements.len() != 1 {
        return Err(refused(format!("send exactly one statement (got {})", statements.len())));
    }
    let mut statement = statements.remove(0);
    let normalized = statement.to_string();
    let is_explain = match &statement {
        Statement::Query(_) => false,
        Statement::Explain { statement: inner, .. } if matches!(**inner, Statement::Query(_)) => true,
        other => return Err(refused(format!("only SELECT queries (and EXPLAIN SELECT) are allowed, not {}", statement_kind(other)))),
    };
    let mut rewriter = Rewriter::default();
    // CTE names are not feature groups; collect them first so references to them stay.
    let _ = statement.visit(&mut CteNames(&mut rewriter.ctes));
    if let ControlFlow::Break(e) = statement.visit(&mut rewriter) {
        return Err(e);
    }
    Ok(Parsed { normalized, is_explain, tables: rewriter.tables, rewritten: statement })
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    format!("`{}`", words.join(" "))
}

struct CteNames<'a>(&'a mut HashSet<String>);

impl VisitorMut for CteNames<'_> {
    type Break = ();
    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.0.insert(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }
}

#[derive(Default)]
struct Rewriter {
    ctes: HashSet<String>,
    tables: Vec<TableRequest>,
}

fn single_name(name: &ObjectName) -> Option<&Ident> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(id)] => Some(id),
        _ => None,
    }
}

fn version_spec(v: &TableVersion) -> Result<VersionSpec, Error> {
    match v {
        TableVersion::VersionAsOf(Expr::Value(value)) => match &value.value {
            Value::Number(n, _) => n
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .map(VersionSpec::Version)
                .ok_or_else(|| unsupported(format!("`VERSION AS OF {n}` is not a version number"))),
            other => Err(unsupported(format!("`VERSION AS OF {other}` is not an integer literal"))),
        },
        TableVersion::TimestampAsOf(Expr::Value(value)) => match &value.value {
            Value::SingleQuotedString(s) => Ok(VersionSpec::Timestamp(s.clone())),
            other => Err(unsupported(format!("`TIMESTAMP AS OF {other}` is not a quoted time literal"))),
        },
        TableVersion::TimestampAsOf(Expr::TypedString(t)) => match &t.value.value {
            Value::SingleQuotedString(s) => Ok(VersionSpec::Timestamp(s.clone())),
            other => Err(unsupported(format!("`TIMESTAMP AS OF {other}` is not a quoted time literal"))),
        },
        TableVersion::TimestampAsOf(e) => Err(unsupported(format!("`TIMESTAMP AS OF {e}` is not a literal time"))),
        TableVersion::VersionAsOf(e) => Err(unsupported(format!("`VERSION AS OF {e}` is not an integer literal"))),
        TableVersion::ForSystemTimeAsOf(_) => Err(unsupported("`FOR SYSTEM_TIME AS OF` is not supported")),
        TableVersion::Function(f) => Err(unsupported(format!("`{f}` is not supported"))),
        TableVersion::Changes { .. } => Err(unsupported("`CHANGES` is not supported")),
    }
}

impl VisitorMut for Rewriter {
    type Break = Error;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Error> {
        let result = match factor {
            TableFactor::Table { name, alias, args, version, with_hints, partitions, json_path, sample, index_hints, .. } => {
                if args.is_some() {
                    Err(refused(format!("table functions such as `{name}(…)` are not allowed; query feature groups by name")))
                } else if !with_hints.is_empty() || !partitions.is_empty() || json_path.is_some() || sample.is_some() || !index_hints.is_empty() {
                    Err(refused(format!("table hints, partitions and samples are not allowed (on `{name}`)")))
                } else if let Some(id) = single_name(name).cloned() {
                    let lower = id.value.to_lowercase();
                    if id.quote_style == Some('\'') || id.value.contains('/') || id.value.contains("://") {
                        Err(refused(format!("`{}`: files and URLs cannot be queried; query feature groups by name", id.value)))
                    } else if lower.starts_with(INTERNAL_PREFIX) {
                        Err(refused(format!("`{}` is not a feature group", id.value)))
                    } else if self.ctes.contains(&lower) {
                        if version.is_some() {
                            Err(unsupported(format!("`{}` is a CTE; version clauses apply to feature groups", id.value)))
                        } else {
                            Ok(())
                        }
                    } else {
                        match version.as_ref().map(version_spec).transpose() {
                            Err(e) => Err(e),
                            Ok(spec) => {
                                let internal = format!("{INTERNAL_PREFIX}{}", self.tables.len());
                                self.tables.push(TableRequest {
                                    name: id.value.clone(),
                                    version: spec.unwrap_or(VersionSpec::Latest),
                                    internal: internal.clone(),
                                });
                                *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(internal))]);
                                *version = None;
                                if alias.is_none() {
                                    *alias = Some(TableAlias { explicit: true, name: id, columns: vec![], at: None });
                                }
                                Ok(())
                            }
                        }
                    }
                } else {
                    Err(refused(format!("`{name}`: only feature groups, by their plain name, can be queried")))
                }
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } | TableFactor::Pivot { .. } | TableFactor::Unpivot { .. } => Ok(()),
            other => Err(refused(format!("`{other}` is not allowed; query feature groups by name"))),
        };
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

impl Parsed {
    /// Plans and starts the statement against its resolved tables. Planning errors name
    /// the tables as the user wrote them.
    pub async fn execute(&self, tables: Vec<ResolvedTable>, limits: SqlLimits) -> Result<SendableRecordBatchStream> {
        let (ctx, plan) = self.plan(tables, limits).await?;
        let rename = |e: datafusion::error::DataFusionError| self.user_error(e);
        let df = ctx.execute_logical_plan(plan).await.map_err(rename)?;
        df.execute_stream().await.map_err(rename)
    }

    /// The schema of the statement's result, from its plan; nothing is read or run.
    pub async fn output_schema(&self, tables: Vec<ResolvedTable>, limits: SqlLimits) -> Result<arrow::datatypes::SchemaRef> {
        let (_, plan) = self.plan(tables, limits).await?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }

    async fn plan(&self, tables: Vec<ResolvedTable>, limits: SqlLimits) -> Result<(SessionContext, datafusion::logical_expr::LogicalPlan)> {
        let config = SessionConfig::new()
            .with_target_partitions(limits.target_partitions.max(1))
            .with_information_schema(false)
            .with_create_default_catalog_and_schema(true);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(limits.memory.clone())
            .build_arc()
            .map_err(Error::DataFusion)?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        for t in tables {
            ctx.register_table(t.internal.as_str(), t.provider).map_err(Error::DataFusion)?;
        }
        let rename = |e: datafusion::error::DataFusionError| self.user_error(e);
        let plan = ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(self.rewritten.clone())))
            .await
            .map_err(rename)?;
        Ok((ctx, plan))
    }

    /// DataFusion errors with internal table names replaced by the names the user wrote.
    pub fn user_error(&self, e: datafusion::error::DataFusionError) -> Error {
        use datafusion::error::DataFusionError as D;
        let inner = e.find_root();
        let mut text = inner.to_string();
        for t in self.tables.iter().rev() {
            text = text.replace(&t.internal, &t.name);
        }
        match inner {
            D::ResourcesExhausted(_) => {
                Error::LimitExceeded(format!("the query needs more memory than its limit allows: {text}"))
            }
            D::Plan(_) | D::SQL(..) | D::SchemaError(..) | D::NotImplemented(_) => Error::InvalidSql(text),
            _ => Error::DataFusion(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<(String, VersionSpec)> {
        parse(sql).unwrap().tables.into_iter().map(|t| (t.name, t.version)).collect()
    }

    #[test]
    fn version_clauses_become_requests() {
        assert_eq!(
            names("SELECT * FROM clicks VERSION AS OF 3 a JOIN clicks VERSION AS OF 7 b ON a.user_id = b.user_id"),
            vec![("clicks".into(), VersionSpec::Version(3)), ("clicks".into(), VersionSpec::Version(7))]
        );
        assert_eq!(
            names("SELECT count(*) FROM users TIMESTAMP AS OF '2026-03-01T00:00:00Z'"),
            vec![("users".into(), VersionSpec::Timestamp("2026-03-01T00:00:00Z".into()))]
        );
        assert_eq!(
            names("WITH recent AS (SELECT * FROM clicks) SELECT * FROM recent JOIN users ON true"),
            vec![("clicks".into(), VersionSpec::Latest), ("users".into(), VersionSpec::Latest)]
        );
        assert!(parse("EXPLAIN SELECT * FROM clicks").unwrap().is_explain);
    }

    #[test]
    fn everything_but_reading_feature_groups_is_refused() {
        for sql in [
            "DROP TABLE clicks",
            "INSERT INTO clicks VALUES (1)",
            "DELETE FROM clicks",
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
            "COPY clicks TO '/tmp/x.parquet'",
            "SET datafusion.execution.batch_size = 1",
            "SELECT 1; SELECT 2",
            "SELECT * FROM read_parquet('/etc/passwd')",
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM other_schema.clicks",
            "SELECT * FROM __lakeledger_t0",
            "EXPLAIN DROP TABLE clicks",
        ] {
            let e = parse(sql).err().unwrap_or_else(|| panic!("accepted: {sql}"));
            assert!(matches!(e, Error::SqlRefused(_) | Error::InvalidSql(_)), "{sql}: {e}");
        }
    }

    #[test]
    fn unsupported_version_forms_say_what_is_supported() {
        for sql in [
            "SELECT * FROM clicks FOR SYSTEM_TIME AS OF '2026-01-01'",
            "SELECT * FROM clicks TIMESTAMP AS OF now()",
            "SELECT * FROM clicks AT(TIMESTAMP => '2026-01-01')",
        ] {
            match parse(sql) {
                Err(Error::SqlUnsupported(m)) => assert!(m.contains("VERSION AS OF <integer>"), "{m}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}
