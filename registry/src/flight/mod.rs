//! Arrow Flight SQL: the door for SQL tools (ADBC, JDBC), `pyarrow.flight` and bulk Arrow
//! pulls, on its own port, over the same services as HTTP.
//!
//! - Authentication: `authorization: Bearer <API key or OIDC token>` on every call, or a
//!   Flight `Handshake` with HTTP Basic credentials whose password is the API key (what
//!   `pyarrow.flight`'s `authenticate_basic_token` and ADBC's `username`/`password` send);
//!   the handshake answers with the bearer header to use.
//! - SQL: `CommandStatementQuery` and prepared statements run the same sandboxed
//!   time-travel SQL as `POST /v1/sql`, with the same refusals, limits and `sql.plan`
//!   record naming `table@version`. `GetFlightInfo` plans the statement and pins the
//!   versions it resolved into the ticket; `DoGet` streams those versions' rows.
//! - Catalog calls list only the caller's tenant's feature groups: one catalog
//!   (`lakeledger`), one schema (the tenant), a table per live feature group.
//! - Bulk tickets (see [`tickets`]): a feature group at a version or time, a training set.
//! - Read-only: updates, ingest (`DoPut`) and transactions are refused; use HTTP to write.
//!
//! Every call is recorded ([`crate::rpc::audit`]): intent before any data leaves, outcome when the
//! call answers or its stream ends or is cut.

mod catalog;
pub mod tickets;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::SqlInfoData;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any, Command,
    ProstMessageExt, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::{Stream, TryStreamExt};
use lakeledger_query::arrow::datatypes::SchemaRef;
use lakeledger_query::arrow::ipc::writer::IpcWriteOptions;
use lakeledger_query::datafusion::physical_plan::SendableRecordBatchStream;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::rpc::audit::{Call, CallKind, Facts, Recorder};
use self::tickets::{Bulk, StatementHandle};
use crate::error::{Error, Result};
use crate::features::{FeatureGroups, ReadSpec};
use crate::identity::Principal;
use crate::platform::catalog::Role;
use crate::sql::Sql;
use crate::training::TrainingSets;

const READ: &[Role] = &[Role::Admin, Role::Writer, Role::Reader];

/// How the Flight endpoint listens, from the config.
#[derive(Clone, Debug)]
pub struct FlightSettings {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; plaintext when absent.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The Flight SQL service: the handles it uses, nothing more.
pub struct FlightSql {
    recorder: Recorder,
    sql: Arc<Sql>,
    features: Arc<FeatureGroups>,
    training_sets: Arc<TrainingSets>,
    info: SqlInfoData,
}

type Answer<T> = std::result::Result<Response<T>, Status>;
type Streamed<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send + 'static>>;

/// What a descriptor or ticket asks for, decoded before the call is recorded so that the
/// record names it.
enum Asked {
    /// Plan a statement (text), or run one planned before (handle with pinned versions).
    Statement(String),
    Planned(StatementHandle),
    Metadata(catalog::Metadata),
    Bulk(Bulk),
    /// A Flight SQL command this server does not offer (updates, substrait, keys…).
    Unsupported(String),
}

impl Asked {
    fn from_descriptor(d: &FlightDescriptor) -> Result<Asked> {
        if d.r#type != arrow_flight::flight_descriptor::DescriptorType::Cmd as i32 {
            return Err(Error::BadRequest(
                "path descriptors are not used here: send a Flight SQL command, or a JSON command such as {\"feature_group\": \"<name>\"}".into(),
            ));
        }
        Self::from_bytes(&d.cmd)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Asked> {
        if Bulk::looks_like(bytes) {
            return Ok(Asked::Bulk(Bulk::parse(bytes)?));
        }
        let any = Any::decode(bytes)
            .map_err(|e| Error::BadRequest(format!("the command is neither a Flight SQL command nor a JSON ticket: {e}")))?;
        let command = Command::try_from(any).map_err(|e| Error::BadRequest(format!("the Flight SQL command does not decode: {e}")))?;
        Ok(match command {
            Command::CommandStatementQuery(q) => Asked::Statement(q.query),
            Command::CommandPreparedStatementQuery(q) => Asked::Statement(prepared_sql(&q.prepared_statement_handle)?),
            Command::TicketStatementQuery(t) => Asked::Planned(StatementHandle::decode(&t.statement_handle)?),
            other => match catalog::Metadata::from_command(other) {
                Ok(m) => Asked::Metadata(m),
                Err(unknown) => Asked::Unsupported(unknown),
            },
        })
    }

    /// The call's name in records, the action (as HTTP names the same act) and resource.
    fn kind(&self, rpc: &'static str) -> CallKind {
        let (command, action, resource_kind, resource_name) = match self {
            Asked::Statement(_) => ("CommandStatementQuery", if rpc == "DoGet" { "sql.query" } else { "sql.describe" }, Some("feature_group"), None),
            Asked::Planned(_) => ("TicketStatementQuery", "sql.query", Some("feature_group"), None),
            Asked::Metadata(m) => (m.name(), m.action(), Some("feature_group"), None),
            Asked::Bulk(Bulk::FeatureGroup { name, .. }) => {
                ("FeatureGroup", if rpc == "DoGet" { "data.read" } else { "feature_group.get" }, Some("feature_group"), Some(name.clone()))
            }
            Asked::Bulk(Bulk::TrainingSet { id }) => {
                ("TrainingSet", if rpc == "DoGet" { "training_set.read" } else { "training_set.get" }, Some("training_set"), Some(id.clone()))
            }
            Asked::Unsupported(_) => ("Unsupported", "flight.unsupported", None, None),
        };
        CallKind { protocol: "flight", rpc, command, action, resource_kind, resource_name }
    }
}

/// A prepared statement's handle is its text: nothing is held between calls, so any
/// replica can run it.
fn prepared_sql(handle: &[u8]) -> Result<String> {
    String::from_utf8(handle.to_vec()).map_err(|_| Error::BadRequest("the prepared statement handle is not one this server issued".into()))
}

/// A refused or undecodable request still gets its records.
fn undecodable(rpc: &'static str) -> CallKind {
    CallKind { protocol: "flight", rpc, command: "Invalid", action: "flight.invalid", resource_kind: None, resource_name: None }
}

impl FlightSql {
    pub fn new(recorder: Recorder, sql: Arc<Sql>, features: Arc<FeatureGroups>, training_sets: Arc<TrainingSets>) -> FlightSql {
        FlightSql { recorder, sql, features, training_sets, info: catalog::sql_info() }
    }

    /// Records the call and decodes what it asks for; a request that does not decode is
    /// recorded and refused.
    async fn open<T>(&self, req: &Request<T>, rpc: &'static str, asked: Result<Asked>) -> std::result::Result<(Principal, Call, Asked), Status> {
        let kind = match &asked {
            Ok(a) => a.kind(rpc),
            Err(_) => undecodable(rpc),
        };
        let (p, call) = self.recorder.begin(req.metadata(), req.remote_addr(), kind).await?;
        match asked {
            Ok(Asked::Unsupported(what)) => Err(call.unimplemented(&format!("{what} is not offered: this endpoint is read-only SQL and bulk reads"))),
            Ok(a) => match p.require(READ, "read over Flight") {
                Ok(()) => Ok((p, call, a)),
                Err(e) => Err(call.fail(e)),
            },
            Err(e) => Err(call.fail(e)),
        }
    }

    /// Plans what a descriptor asks for: its schema, the ticket that fetches exactly that,
    /// and what the plan resolved (for the record).
    async fn plan(&self, p: &Principal, asked: &Asked) -> Result<(SchemaRef, Vec<u8>, Facts)> {
        match asked {
            Asked::Statement(sql) => {
                let (parsed, tables, facts) = self.sql.prepare(p, sql).await?;
                let schema = self.sql.output_schema(&parsed, tables).await?;
                let handle = StatementHandle { sql: sql.clone(), versions: facts.tables.iter().map(|(_, v)| *v).collect() };
                let ticket = TicketStatementQuery { statement_handle: handle.encode().into() }.as_any().encode_to_vec();
                Ok((schema, ticket, Facts { details: facts.details(), ..Default::default() }))
            }
            Asked::Metadata(m) => {
                let any = m.as_any().encode_to_vec();
                Ok((m.schema(), any, Facts::default()))
            }
            Asked::Bulk(b @ Bulk::FeatureGroup { name, version, as_of }) => {
                let g = self.features.find(p, name).await?;
                let spec = ReadSpec { version: *version, as_of: as_of.clone(), filters: vec![], limit: None };
                let v = self.features.resolve_version(&g, &spec).await?.version;
                let snap = self.features.snapshot(&g, Some(v)).await?;
                Ok((snap.arrow, b.pinned(Some(v)), Facts { details: vec![("version".into(), v.to_string())], ..Default::default() }))
            }
            Asked::Bulk(b @ Bulk::TrainingSet { id }) => {
                let (m, stream) = self.training_sets.batches(p, id).await?;
                let facts = Facts { details: vec![("sha256".into(), m.sha256.clone())], rows: Some(m.rows), ..Default::default() };
                Ok((stream.schema(), b.pinned(None), facts))
            }
            Asked::Planned(_) => Err(Error::BadRequest("a ticket is for DoGet; GetFlightInfo takes a command".into())),
            Asked::Unsupported(what) => Err(Error::BadRequest(format!("{what} is not offered"))),
        }
    }

    /// Starts what a ticket asks for: the rows as a stream, what was read, the row
    /// counter and any slot held until the stream ends.
    async fn fetch(&self, p: &Principal, call: &Call, asked: Asked) -> Result<Fetched> {
        match asked {
            Asked::Planned(handle) => {
                let slot = self.recorder.quotas.admit_query(p).await?;
                let (parsed, tables, facts) = self.sql.prepare_pinned(p, &handle.sql, &handle.versions).await?;
                self.sql.record_query(p, &call.ctx, &facts).await?;
                let rows = Arc::new(AtomicU64::new(0));
                let stream = self.sql.stream(parsed, tables, rows.clone()).await?;
                let facts = Facts { versions_read: facts.tables.iter().map(|(_, v)| *v).collect(), details: facts.details(), ..Default::default() };
                Ok(Fetched { stream, facts, rows: Some(rows), slot })
            }
            Asked::Statement(sql) => {
                // A client may fetch a statement's command as its own ticket.
                let handle = StatementHandle { sql, versions: vec![] };
                Box::pin(self.fetch(p, call, Asked::Planned(handle))).await
            }
            Asked::Metadata(m) => {
                let batch = m.build(p, &self.features, &self.info).await?;
                let rows = batch.num_rows() as u64;
                let schema = batch.schema();
                let stream = futures::stream::iter([Ok(batch)]);
                let stream = Box::pin(lakeledger_query::datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream));
                Ok(Fetched { stream, facts: Facts { rows: Some(rows), ..Default::default() }, rows: None, slot: None })
            }
            Asked::Bulk(Bulk::FeatureGroup { name, version, as_of }) => {
                let g = self.features.find(p, &name).await?;
                let spec = ReadSpec { version, as_of, filters: vec![], limit: None };
                let (v, stream) = self.features.scan(&g, &spec).await?;
                let facts = Facts { versions_read: vec![v.version], details: vec![("version".into(), v.version.to_string())], ..Default::default() };
                Ok(Fetched { stream, facts, rows: Some(Arc::new(AtomicU64::new(0))), slot: None })
            }
            Asked::Bulk(Bulk::TrainingSet { id }) => {
                let (m, stream) = self.training_sets.batches(p, &id).await?;
                let facts = Facts { resource_name: Some(m.id.clone()), details: vec![("sha256".into(), m.sha256.clone())], ..Default::default() };
                Ok(Fetched { stream, facts, rows: Some(Arc::new(AtomicU64::new(0))), slot: None })
            }
            Asked::Unsupported(what) => Err(Error::BadRequest(format!("{what} is not offered"))),
        }
    }
}

struct Fetched {
    stream: SendableRecordBatchStream,
    facts: Facts,
    /// Counted as batches go out (SQL counts its own).
    rows: Option<Arc<AtomicU64>>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Record batches as Flight data, counting rows as they go.
fn encode(stream: SendableRecordBatchStream, rows: Option<Arc<AtomicU64>>, counts_itself: bool) -> Streamed<FlightData> {
    let schema = stream.schema();
    let counted = stream
        .map_ok(move |b| {
            if let (Some(r), false) = (&rows, counts_itself) {
                r.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            }
            b
        })
        .map_err(|e| FlightError::Tonic(Box::new(Status::aborted(format!("the stream stopped: {e}")))));
    let encoded = FlightDataEncoderBuilder::new().with_schema(schema).build(counted).map_err(Status::from);
    Box::pin(encoded)
}

fn flight_info(descriptor: FlightDescriptor, schema: &SchemaRef, ticket: Vec<u8>) -> Result<FlightInfo> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Error::Internal(format!("encoding a schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_total_records(-1)
        .with_total_bytes(-1)
        .with_ordered(true);
    Ok(info)
}

#[tonic::async_trait]
impl FlightService for FlightSql {
    type HandshakeStream = Streamed<HandshakeResponse>;
    type ListFlightsStream = Streamed<FlightInfo>;
    type DoGetStream = Streamed<FlightData>;
    type DoPutStream = Streamed<PutResult>;
    type DoExchangeStream = Streamed<FlightData>;
    type DoActionStream = Streamed<arrow_flight::Result>;
    type ListActionsStream = Streamed<ActionType>;

    /// Basic credentials (any user name, the API key as password) or a bearer header in;
    /// the bearer header to send on later calls out.
    async fn handshake(&self, mut req: Request<Streaming<HandshakeRequest>>) -> Answer<Self::HandshakeStream> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let bearer = match header.as_deref().map(basic_to_bearer) {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), handshake_kind()).await?;
                return Err(call.fail(e));
            }
            None => None,
        };
        if let Some(b) = &bearer {
            let v = tonic::metadata::MetadataValue::try_from(b.as_str()).map_err(|_| Status::invalid_argument("the credentials are not valid header text"))?;
            req.metadata_mut().insert("authorization", v);
        }
        let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), handshake_kind()).await?;
        call.done(Facts::default());
        let token = bearer.or(header).unwrap_or_default();
        let mut response = Response::new(Box::pin(futures::stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.strip_prefix("Bearer ").unwrap_or_default().to_string().into(),
        })])) as Self::HandshakeStream);
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(token.as_str()) {
            response.metadata_mut().insert("authorization", v);
        }
        Ok(response)
    }

    async fn list_flights(&self, req: Request<Criteria>) -> Answer<Self::ListFlightsStream> {
        let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), simple_kind("ListFlights", "flight.list")).await?;
        Err(call.unimplemented("ListFlights: list feature groups with the Flight SQL GetTables command"))
    }

    async fn get_flight_info(&self, req: Request<FlightDescriptor>) -> Answer<FlightInfo> {
        let asked = Asked::from_descriptor(req.get_ref());
        let (p, call, asked) = self.open(&req, "GetFlightInfo", asked).await?;
        match self.plan(&p, &asked).await.and_then(|(schema, ticket, facts)| Ok((flight_info(req.get_ref().clone(), &schema, ticket)?, facts))) {
            Ok((info, facts)) => {
                call.done(facts);
                Ok(Response::new(info))
            }
            Err(e) => Err(call.fail(e)),
        }
    }

    async fn poll_flight_info(&self, req: Request<FlightDescriptor>) -> Answer<PollInfo> {
        let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), simple_kind("PollFlightInfo", "flight.poll")).await?;
        Err(call.unimplemented("PollFlightInfo: queries are planned at once; use GetFlightInfo"))
    }

    async fn get_schema(&self, req: Request<FlightDescriptor>) -> Answer<SchemaResult> {
        let asked = Asked::from_descriptor(req.get_ref());
        let (p, call, asked) = self.open(&req, "GetSchema", asked).await?;
        let answer = self.plan(&p, &asked).await.and_then(|(schema, _, facts)| {
            let r = SchemaResult::try_from(SchemaAsIpc::new(&schema, &IpcWriteOptions::default()))
                .map_err(|e| Error::Internal(format!("encoding a schema: {e}")))?;
            Ok((r, facts))
        });
        match answer {
            Ok((r, facts)) => {
                call.done(facts);
                Ok(Response::new(r))
            }
            Err(e) => Err(call.fail(e)),
        }
    }

    async fn do_get(&self, req: Request<Ticket>) -> Answer<Self::DoGetStream> {
        let asked = Asked::from_bytes(&req.get_ref().ticket);
        let (p, call, asked) = self.open(&req, "DoGet", asked).await?;
        let counts_itself = matches!(asked, Asked::Planned(_) | Asked::Statement(_));
        match self.fetch(&p, &call, asked).await {
            Ok(f) => {
                let data = encode(f.stream, f.rows.clone(), counts_itself);
                Ok(Response::new(Box::pin(call.stream(f.facts, f.rows, f.slot, data))))
            }
            Err(e) => Err(call.fail(e)),
        }
    }

    async fn do_put(&self, req: Request<Streaming<FlightData>>) -> Answer<Self::DoPutStream> {
        let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), simple_kind("DoPut", "flight.put")).await?;
        Err(call.fail(Error::BadRequest(
            "this Flight endpoint is read-only: updates, bound parameters and uploads are refused; ingest rows with POST /v1/feature-groups/{name}/data (Arrow IPC is accepted)".into(),
        )))
    }

    async fn do_exchange(&self, req: Request<Streaming<FlightData>>) -> Answer<Self::DoExchangeStream> {
        let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), simple_kind("DoExchange", "flight.exchange")).await?;
        Err(call.unimplemented("DoExchange"))
    }

    async fn do_action(&self, req: Request<Action>) -> Answer<Self::DoActionStream> {
        let action = req.get_ref().r#type.clone();
        match action.as_str() {
            "CreatePreparedStatement" => {
                let asked = Any::decode(&*req.get_ref().body)
                    .map_err(|e| Error::BadRequest(format!("CreatePreparedStatement: the body does not decode: {e}")))
                    .and_then(|any| {
                        any.unpack::<ActionCreatePreparedStatementRequest>()
                            .map_err(|e| Error::BadRequest(format!("CreatePreparedStatement: {e}")))?
                            .ok_or_else(|| Error::BadRequest("CreatePreparedStatement: the body is not an ActionCreatePreparedStatementRequest".into()))
                    })
                    .map(|r| Asked::Statement(r.query));
                let (p, call, asked) = self.open(&req, "DoAction", asked).await?;
                let Asked::Statement(sql) = &asked else { return Err(call.fail(Error::Internal("a statement was expected".into()))) };
                let answer = self.plan(&p, &asked).await.and_then(|(schema, _, facts)| {
                    let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
                        .try_into()
                        .map_err(|e: lakeledger_query::arrow::error::ArrowError| Error::Internal(format!("encoding a schema: {e}")))?;
                    let result = ActionCreatePreparedStatementResult {
                        prepared_statement_handle: sql.clone().into_bytes().into(),
                        dataset_schema: schema_bytes,
                        parameter_schema: Default::default(),
                    };
                    Ok((arrow_flight::Result { body: result.as_any().encode_to_vec().into() }, facts))
                });
                match answer {
                    Ok((r, facts)) => {
                        call.done(facts);
                        Ok(Response::new(Box::pin(futures::stream::iter([Ok(r)]))))
                    }
                    Err(e) => Err(call.fail(e)),
                }
            }
            "ClosePreparedStatement" => {
                let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), simple_kind("DoAction", "sql.close")).await?;
                // Nothing is held for a prepared statement; the body is checked all the same.
                let ok = Any::decode(&*req.get_ref().body).ok().and_then(|a| a.unpack::<ActionClosePreparedStatementRequest>().ok().flatten());
                if ok.is_none() {
                    return Err(call.fail(Error::BadRequest("ClosePreparedStatement: the body is not an ActionClosePreparedStatementRequest".into())));
                }
                call.done(Facts::default());
                Ok(Response::new(Box::pin(futures::stream::empty())))
            }
            other => {
                let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), simple_kind("DoAction", "flight.action")).await?;
                Err(call.unimplemented(&format!("the action `{}`; offered: CreatePreparedStatement, ClosePreparedStatement", other.chars().take(64).collect::<String>())))
            }
        }
    }

    async fn list_actions(&self, req: Request<Empty>) -> Answer<Self::ListActionsStream> {
        let (_, call) = self.recorder.begin(req.metadata(), req.remote_addr(), simple_kind("ListActions", "flight.actions")).await?;
        call.done(Facts::default());
        let actions = [
            ("CreatePreparedStatement", "Plans a SQL statement; the handle runs it at the versions current when it is executed."),
            ("ClosePreparedStatement", "Releases a prepared statement (nothing is held server-side)."),
        ]
        .map(|(t, d)| Ok(ActionType { r#type: t.into(), description: d.into() }));
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }
}

fn handshake_kind() -> CallKind {
    simple_kind("Handshake", "auth.handshake")
}

fn simple_kind(rpc: &'static str, action: &'static str) -> CallKind {
    CallKind { protocol: "flight", rpc, command: rpc, action, resource_kind: None, resource_name: None }
}

/// `Basic base64(user:key)` becomes `Bearer key`; a bearer header passes as it is.
fn basic_to_bearer(header: &str) -> Result<String> {
    let Some(encoded) = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic ")) else {
        return Ok(header.to_string());
    };
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Error::BadRequest("the Basic credentials are not base64 of `user:password`".into()))?;
    let (_, secret) = decoded.split_once(':').ok_or_else(|| Error::BadRequest("the Basic credentials have no `:` between user and password".into()))?;
    if secret.is_empty() {
        return Err(Error::Unauthenticated);
    }
    Ok(format!("Bearer {secret}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_carry_the_key() {
        use base64::Engine as _;
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("anyone:llk_secret"));
        assert_eq!(basic_to_bearer(&basic).unwrap(), "Bearer llk_secret");
        assert_eq!(basic_to_bearer("Bearer llk_x").unwrap(), "Bearer llk_x");
        assert!(basic_to_bearer("Basic !!!").unwrap_err().to_string().contains("base64"));
        let no_key = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("user:"));
        assert!(matches!(basic_to_bearer(&no_key), Err(Error::Unauthenticated)));
    }
}
