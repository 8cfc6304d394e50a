//! Arrow Flight SQL through the server, spoken to with the `arrow-flight` crate's own
//! Flight SQL client: time-travel SQL and prepared statements with the same answers and
//! refusals as HTTP, tickets pinned to the versions planned, catalog calls scoped to the
//! tenant, bulk tickets, and an intent and outcome in the ledger for every call.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use arrow_flight::{Action, Criteria, Empty, FlightDescriptor, FlightInfo, Ticket};
use futures::TryStreamExt;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::audit::{find, wait_for_outcomes};
use crate::support::Server;

async fn channel(s: &Server) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", s.flight)).unwrap().connect().await.unwrap()
}

pub(crate) async fn client(s: &Server, key: &str) -> FlightSqlServiceClient<Channel> {
    let mut c = FlightSqlServiceClient::new(channel(s).await);
    c.set_token(key.to_string());
    c
}

async fn fetch(c: &mut FlightSqlServiceClient<Channel>, info: &FlightInfo) -> Vec<RecordBatch> {
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    c.do_get(ticket).await.unwrap().try_collect().await.unwrap()
}

fn ints(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    batches.iter().flat_map(|b| b.column_by_name(column).unwrap().as_primitive::<Int64Type>().values().to_vec()).collect()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap().as_string::<i32>();
            (0..a.len()).map(|i| a.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect()
}

/// The message of a refused call: `<code>: <message> (error_id …)`.
fn refusal<T: std::fmt::Debug>(r: Result<T, arrow_flight::error::FlightError>) -> String {
    r.expect_err("the call is refused").to_string()
}

async fn two_versions(s: &Server) {
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 10}, {"user_id": 2, "ts": "2026-01-01T00:00:00Z", "clicks": 20}]))
        .await;
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 3, "ts": "2026-01-02T00:00:00Z", "clicks": 30}])).await;
}

#[tokio::test]
async fn flight_sql_answers_time_travel_sql_like_http_at_the_versions_it_planned() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    two_versions(&s).await;

    // The key as the password of a Basic handshake gives the bearer header to use.
    let mut c = FlightSqlServiceClient::new(channel(&s).await);
    c.handshake("anyone", &k).await.unwrap();
    assert_eq!(c.token(), Some(&k));

    let sql = "SELECT user_id, clicks FROM clicks VERSION AS OF 1 ORDER BY user_id";
    let info = c.execute(sql.into(), None).await.unwrap();
    let batches = fetch(&mut c, &info).await;
    assert_eq!(ints(&batches, "user_id"), vec![1, 2]);
    let http: Vec<Value> = s.post(&k, "/v1/sql").json(&json!({"sql": sql, "format": "json"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(http.iter().map(|r| r["user_id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);

    // A ticket reads the versions its plan resolved, even after a commit in between.
    let info = c.execute("SELECT count(*) AS n FROM clicks".into(), None).await.unwrap();
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 4, "ts": "2026-01-03T00:00:00Z"}])).await;
    assert_eq!(ints(&fetch(&mut c, &info).await, "n"), vec![3]);
    let info = c.execute("SELECT count(*) AS n FROM clicks".into(), None).await.unwrap();
    assert_eq!(ints(&fetch(&mut c, &info).await, "n"), vec![4]);

    // Prepared statements: the schema up front, the rows when executed.
    let mut prepared = c.prepare("SELECT user_id FROM clicks TIMESTAMP AS OF '2999-01-01T00:00:00Z' WHERE clicks >= 20 ORDER BY user_id".into(), None).await.unwrap();
    assert_eq!(prepared.dataset_schema().unwrap().field(0).name(), "user_id");
    let info = prepared.execute().await.unwrap();
    assert_eq!(ints(&fetch(&mut c, &info).await, "user_id"), vec![2, 3]);
    prepared.close().await.unwrap();

    // The same refusals as HTTP, with the same codes.
    assert!(refusal(c.execute("DROP TABLE clicks".into(), None).await).contains("sql_not_allowed"));
    assert!(refusal(c.execute("SELECT * FROM nowhere".into(), None).await).contains("table_not_visible"));
    assert!(refusal(c.execute("SELECT * FROM clicks VERSION AS OF 99".into(), None).await).contains("version_not_found"));
    assert!(refusal(c.execute("SELECT * FROM read_parquet('/etc/passwd')".into(), None).await).contains("sql_not_allowed"));
    assert!(refusal(c.execute_update("DELETE FROM clicks".into(), None).await).contains("read-only"));

    // No key, a wrong key: unauthenticated, and nothing read.
    let mut anonymous = FlightSqlServiceClient::new(channel(&s).await);
    assert!(refusal(anonymous.execute("SELECT 1".into(), None).await).contains("unauthenticated"));
    let mut wrong = client(&s, "llk_not_a_key").await;
    assert!(refusal(wrong.execute("SELECT 1".into(), None).await).contains("invalid_api_key"));
    assert!(refusal(wrong.handshake("anyone", "llk_not_a_key").await).contains("invalid_api_key"));
}

#[tokio::test]
async fn catalog_calls_list_only_the_callers_tenant() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    two_versions(&s).await;
    let mut c = client(&s, &k).await;

    let info = c.get_catalogs().await.unwrap();
    assert_eq!(strings(&fetch(&mut c, &info).await, "catalog_name"), vec!["lakeledger"]);
    let info = c.get_db_schemas(CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: None }).await.unwrap();
    assert_eq!(strings(&fetch(&mut c, &info).await, "db_schema_name"), vec!["default"]);
    let tables = CommandGetTables { include_schema: true, ..Default::default() };
    let info = c.get_tables(tables.clone()).await.unwrap();
    let batches = fetch(&mut c, &info).await;
    assert_eq!(strings(&batches, "table_name"), vec!["clicks"]);
    assert_eq!(strings(&batches, "table_type"), vec!["TABLE"]);
    let schema_bytes = batches[0].column_by_name("table_schema").unwrap().as_binary::<i32>().value(0).to_vec();
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&schema_bytes).unwrap();
    assert!(schema.field_with_name("clicks").is_ok());
    let info = c.get_table_types().await.unwrap();
    assert_eq!(strings(&fetch(&mut c, &info).await, "table_type"), vec!["TABLE"]);
    let info = c.get_sql_info(vec![SqlInfo::FlightSqlServerName, SqlInfo::FlightSqlServerReadOnly]).await.unwrap();
    assert_eq!(fetch(&mut c, &info).await[0].num_rows(), 2);

    // Another tenant's reader sees its own (empty) schema and no feature group of ours.
    let r = s.post(&k, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let other = s.create_key("reader", Some("acme")).await;
    let mut o = client(&s, &other).await;
    let info = o.get_tables(tables).await.unwrap();
    assert!(strings(&fetch(&mut o, &info).await, "table_name").is_empty());
    let info = o.get_db_schemas(CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: None }).await.unwrap();
    assert_eq!(strings(&fetch(&mut o, &info).await, "db_schema_name"), vec!["acme"]);
    assert!(refusal(o.execute("SELECT * FROM clicks".into(), None).await).contains("table_not_visible"));
    let ticket = Ticket::new(r#"{"feature_group": "clicks"}"#);
    assert!(refusal(o.do_get(ticket).await.map(|_| ())).contains("feature_group_not_found"));
}

#[tokio::test]
async fn bulk_tickets_pull_a_version_and_a_training_set_with_its_hash() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    two_versions(&s).await;
    let mut c = client(&s, &k).await;

    // A feature group at a version, by a ticket written by hand.
    let rows: Vec<RecordBatch> = c.do_get(Ticket::new(r#"{"feature_group": "clicks", "version": 1}"#)).await.unwrap().try_collect().await.unwrap();
    let mut ids = ints(&rows, "user_id");
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    // The descriptor form resolves "latest" and pins it in the ticket it returns.
    let info = c.inner_mut().get_flight_info(with_id(FlightDescriptor::new_cmd(r#"{"feature_group": "clicks"}"#), "bulk-info", &k)).await.unwrap().into_inner();
    let ticket: Value = serde_json::from_slice(&info.endpoint[0].ticket.as_ref().unwrap().ticket).unwrap();
    assert_eq!(ticket["version"], 2);
    assert!(refusal(c.do_get(Ticket::new(r#"{"feature_group": "clicks", "version": 1, "as_of": "2026-01-01T00:00:00Z"}"#)).await.map(|_| ())).contains("not both"));
    assert!(refusal(c.do_get(Ticket::new(r#"{"table": "clicks"}"#)).await.map(|_| ())).contains("unknown field"));
    assert!(refusal(c.do_get(Ticket::new("not a ticket")).await.map(|_| ())).contains("bad_request"));

    // A training set's rows equal those of the Parquet file whose SHA-256 the manifest names.
    let r = s.post(&k, "/v1/feature-groups").json(&json!({
        "name": "labels", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "label", "type": "int64"}]
    })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    s.ingest_json(&k, "labels", "append", json!([{"user_id": 1, "ts": "2026-01-05T00:00:00Z", "label": 1}, {"user_id": 3, "ts": "2026-01-05T00:00:00Z", "label": 0}])).await;
    let m: Value = s
        .post(&k, "/v1/training-sets")
        .json(&json!({"name": "t", "spine_sql": "SELECT user_id, ts, label FROM labels", "spine_time": "ts", "features": ["clicks:clicks"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = m["id"].as_str().unwrap();
    let parquet = s.get(&k, &format!("/v1/training-sets/{id}/data?format=parquet")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&parquet)), m["sha256"].as_str().unwrap());
    let from_file: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet).unwrap().build().unwrap().collect::<Result<_, _>>().unwrap();
    c.set_header("x-request-id", "flight-training-set-pull");
    let over_flight: Vec<RecordBatch> = c.do_get(Ticket::new(format!(r#"{{"training_set": "{id}"}}"#))).await.unwrap().try_collect().await.unwrap();
    let concat = |b: &[RecordBatch]| arrow::compute::concat_batches(&b[0].schema(), b).unwrap();
    assert_eq!(concat(&over_flight), concat(&from_file));

    // The outcome of the pull (recorded as its stream ends on the server, which may be a
    // moment after the client has read it) names the training set and its hash.
    let all = wait_for_outcomes(&s, &["flight-training-set-pull".to_string()]).await;
    let outcome = find(&all, "flight-training-set-pull", "outcome").unwrap();
    assert_eq!(outcome["kind"], "training_set.read");
    assert_eq!(outcome["resource"]["name"], id);
    assert!(outcome["details"].to_string().contains(m["sha256"].as_str().unwrap()));
    assert_eq!(outcome["outcome"]["rows"], 2);
}

/// Sends one call with its own request id, for finding its records.
fn with_id<T>(message: T, id: &str, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("x-request-id", id.parse().unwrap());
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

#[tokio::test]
async fn every_flight_call_records_an_intent_and_an_outcome_including_refusals() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    two_versions(&s).await;
    let mut raw = FlightServiceClient::new(channel(&s).await);
    let sql_cmd = |q: &str| {
        use arrow_flight::sql::ProstMessageExt;
        use prost::Message;
        arrow_flight::sql::CommandStatementQuery { query: q.into(), transaction_id: None }.as_any().encode_to_vec()
    };

    let mut ids = Vec::new();
    let mut id = |name: &str| {
        let id = format!("flight-{name}-{}", uuid::Uuid::now_v7());
        ids.push(id.clone());
        id
    };
    // Each RPC, answered or refused.
    let info = raw.get_flight_info(with_id(FlightDescriptor::new_cmd(sql_cmd("SELECT user_id FROM clicks VERSION AS OF 2")), &id("info"), &k)).await.unwrap().into_inner();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let get_id = id("get");
    let mut stream = raw.do_get(with_id(ticket.clone(), &get_id, &k)).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    raw.get_schema(with_id(FlightDescriptor::new_cmd(r#"{"feature_group": "clicks"}"#), &id("schema"), &k)).await.unwrap();
    let _ = raw.get_flight_info(with_id(FlightDescriptor::new_path(vec!["clicks".into()]), &id("path"), &k)).await.unwrap_err();
    let _ = raw.do_get(with_id(Ticket::new("garbage"), &id("garbage"), &k)).await.unwrap_err();
    let _ = raw.do_get(with_id(ticket.clone(), &id("nokey"), "")).await.unwrap_err();
    let _ = raw.list_flights(with_id(Criteria::default(), &id("list"), &k)).await.unwrap_err();
    let _ = raw.poll_flight_info(with_id(FlightDescriptor::new_cmd(sql_cmd("SELECT 1")), &id("poll"), &k)).await.unwrap_err();
    raw.list_actions(with_id(Empty {}, &id("actions"), &k)).await.unwrap();
    let _ = raw.do_action(with_id(Action::new("DropEverything", ""), &id("action"), &k)).await.unwrap_err();
    let _ = raw.do_put(with_id(futures::stream::empty(), &id("put"), &k)).await.unwrap_err();
    let _ = raw.do_exchange(with_id(futures::stream::empty(), &id("exchange"), &k)).await.unwrap_err();

    let all = wait_for_outcomes(&s, &ids).await;
    for id in &ids {
        let intent = find(&all, id, "intent").unwrap_or_else(|| panic!("no intent for {id}"));
        let outcome = find(&all, id, "outcome").unwrap();
        assert!(intent["source"]["route"].as_str().unwrap().starts_with("flight:"), "{intent}");
        assert!(intent["_seq"].as_u64() < outcome["_seq"].as_u64(), "the intent comes first: {id}");
        assert_eq!(outcome["intent_seq"], intent["_seq"]);
    }
    // The query: `sql.plan` names table@version between intent and outcome; the outcome
    // has the versions read, the rows and a hash of what was sent.
    let intent = find(&all, &get_id, "intent").unwrap();
    let outcome = find(&all, &get_id, "outcome").unwrap();
    assert_eq!(intent["kind"], "sql.query");
    let plan = all.iter().find(|r| r["kind"] == "sql.plan" && r["source"]["request_id"] == get_id.as_str()).unwrap();
    assert!(plan["details"].to_string().contains("clicks@2"), "{plan}");
    assert!(intent["_seq"].as_u64() < plan["_seq"].as_u64() && plan["_seq"].as_u64() < outcome["_seq"].as_u64());
    assert_eq!(outcome["resource"]["versions_read"], json!([2]));
    assert_eq!(outcome["outcome"]["rows"], 3);
    assert_eq!(outcome["outcome"]["result"], "success");
    assert_eq!(outcome["outcome"]["body_sha256"].as_str().unwrap().len(), 64);
    // Refusals are recorded as such.
    let nokey = find(&all, ids.iter().find(|i| i.contains("-nokey-")).unwrap(), "outcome").unwrap();
    assert_eq!(nokey["outcome"]["result"], "denied");
    assert_eq!(nokey["outcome"]["error_code"], "unauthenticated");
    let garbage = find(&all, ids.iter().find(|i| i.contains("-garbage-")).unwrap(), "outcome").unwrap();
    assert_eq!(garbage["outcome"]["status"], 400);

    // A stream the client drops part way is recorded as cut.
    for i in 0..20 {
        let rows: Vec<Value> = (0..500).map(|j| json!({"user_id": 1000 * i + j, "ts": "2026-02-01T00:00:00Z"})).collect();
        s.ingest_json(&k, "clicks", "append", Value::Array(rows)).await;
    }
    let cut_id = format!("flight-cut-{}", uuid::Uuid::now_v7());
    let info = raw
        .get_flight_info(with_id(FlightDescriptor::new_cmd(sql_cmd("SELECT a.user_id FROM clicks a CROSS JOIN clicks b")), &format!("{cut_id}-plan"), &k))
        .await
        .unwrap()
        .into_inner();
    let mut stream = raw.do_get(with_id(info.endpoint[0].ticket.clone().unwrap(), &cut_id, &k)).await.unwrap().into_inner();
    stream.message().await.unwrap();
    drop(stream);
    let all = wait_for_outcomes(&s, std::slice::from_ref(&cut_id)).await;
    let cut = find(&all, &cut_id, "outcome").unwrap();
    assert_eq!(cut["outcome"]["result"], "error", "{cut}");
    assert!(cut["details"].to_string().contains("stopped reading"), "{cut}");
}
