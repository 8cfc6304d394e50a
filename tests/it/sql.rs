//! Time-travel SQL through the server: the `.slt` files under `tests/slt/` pin its
//! semantics (run against a fixture of two tenants' feature groups over HTTP), plus
//! audit, streaming and limits.

use std::path::Path;

use lakeledger_query::arrow::array::RecordBatch;
use lakeledger_query::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Value, json};
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::support::Server;

/// The fixture every `.slt` file runs against.
///
/// `clicks` (tenant default): v0 created; v1 appends users 1-3; v2 appends users 4-5;
/// v3 adds the column `score`; v4 upserts user 1 with a later event (clicks 100).
/// `users` (tenant default): v1 holds users 1-5 with their plan.
/// `secret` (tenant acme): one row that default's keys must never see.
async fn fixture() -> (Server, String) {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    s.ingest_json(&k, "clicks", "append", json!([
        {"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 10, "country": "DE"},
        {"user_id": 2, "ts": "2026-01-01T00:00:00Z", "clicks": 20, "country": "FR"},
        {"user_id": 3, "ts": "2026-01-01T00:00:00Z", "clicks": 30, "country": "DE"}
    ])).await;
    s.ingest_json(&k, "clicks", "append", json!([
        {"user_id": 4, "ts": "2026-01-02T00:00:00Z", "clicks": 40, "country": "US"},
        {"user_id": 5, "ts": "2026-01-02T00:00:00Z", "clicks": 50, "country": null}
    ])).await;
    let view: Value = s.get(&k, "/v1/feature-groups/clicks").send().await.unwrap().json().await.unwrap();
    let mut features = view["features"].as_array().unwrap().clone();
    features.push(json!({"name": "score", "type": "float64"}));
    let r = s.client.put(s.url("/v1/feature-groups/clicks/schema")).bearer_auth(&k).json(&json!({"features": features})).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    s.ingest_json(&k, "clicks", "upsert", json!([
        {"user_id": 1, "ts": "2026-01-03T00:00:00Z", "clicks": 100, "country": "DE", "score": 0.5}
    ])).await;

    let r = s.post(&k, "/v1/feature-groups").json(&json!({
        "name": "users", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "plan", "type": "string"}]
    })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    s.ingest_json(&k, "users", "append", json!([
        {"user_id": 1, "ts": "2025-12-01T00:00:00Z", "plan": "pro"},
        {"user_id": 2, "ts": "2025-12-01T00:00:00Z", "plan": "free"},
        {"user_id": 3, "ts": "2025-12-01T00:00:00Z", "plan": "pro"},
        {"user_id": 4, "ts": "2025-12-01T00:00:00Z", "plan": "free"},
        {"user_id": 5, "ts": "2025-12-01T00:00:00Z", "plan": "team"}
    ])).await;

    let r = s.post(&k, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let acme = s.create_key("writer", Some("acme")).await;
    let r = s.post(&acme, "/v1/feature-groups").json(&json!({
        "name": "secret", "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "value", "type": "string"}]
    })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    s.ingest_json(&acme, "secret", "append", json!([{"id": 1, "ts": "2026-01-01T00:00:00Z", "value": "acme-only"}])).await;
    let reader = s.create_key("reader", None).await;
    (s, reader)
}

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

/// Runs each statement through `POST /v1/sql` as Arrow IPC and prints values the way the
/// `.slt` files expect (NULL for null).
struct HttpSql {
    client: reqwest::Client,
    url: String,
    key: String,
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for row in 0..b.num_rows() {
            out.push(formatters.iter().map(|f| f.value(row).to_string()).collect());
        }
    }
    out
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for HttpSql {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let r = self.client.post(&self.url).bearer_auth(&self.key).json(&json!({"sql": sql, "format": "arrow"})).send().await.unwrap();
        let status = r.status();
        let body = r.bytes().await.map_err(|e| SqlError(format!("stream cut: {e}")))?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(SqlError(format!("{} {}: {}", status.as_u16(), v["error"]["code"].as_str().unwrap_or(""), v["error"]["message"].as_str().unwrap_or(""))));
        }
        let reader = lakeledger_query::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
            .map_err(|e| SqlError(e.to_string()))?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| SqlError(e.to_string()))?;
        let rows = rows_of(&batches);
        let width = rows.first().map_or(0, Vec::len);
        Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; width], rows })
    }

    async fn shutdown(&mut self) {}
}

#[tokio::test]
async fn slt_files_pin_the_sql_semantics() {
    let (s, reader) = fixture().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "slt")).collect();
    files.sort();
    assert!(files.len() >= 3);
    for file in files {
        let (client, url, key) = (s.client.clone(), s.url("/v1/sql"), reader.clone());
        let mut runner = sqllogictest::Runner::new(move || {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            async move { Ok(HttpSql { client, url, key }) }
        });
        runner.with_column_validator(sqllogictest::default_column_validator);
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {}", file.display(), e.display(true));
        }
    }
}

#[tokio::test]
async fn queries_are_audited_with_statement_hash_and_exact_versions() {
    let (s, reader) = fixture().await;
    let sql = "SELECT count(*) AS n FROM clicks VERSION AS OF 1 JOIN users ON clicks.user_id = users.user_id";
    let r = s.post(&reader, "/v1/sql").header("x-request-id", "sql-1").json(&json!({"sql": sql, "format": "json"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-lakeledger-versions"], "clicks@1,users@1");
    let rows: Value = r.json().await.unwrap();
    assert_eq!(rows, json!([{"n": 3}]));
    let r = s.post(&reader, "/v1/sql").header("x-request-id", "sql-2").json(&json!({"sql": "DELETE FROM clicks"})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let _ = r.bytes().await;

    let all = crate::audit::wait_for_outcomes(&s, &["sql-1".into(), "sql-2".into()]).await;
    let query = all.iter().find(|r| r["kind"] == "sql.plan" && r["source"]["request_id"] == "sql-1" && r["phase"] == "intent" && r["details"]["tables"].is_string()).unwrap();
    assert_eq!(query["details"]["tables"], "clicks@1,users@1");
    assert_eq!(query["resource"]["versions_read"], json!([1, 1]));
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(sql.as_bytes()));
    assert_eq!(query["details"]["sql_sha256"], hash);
    let outcome = crate::audit::find(&all, "sql-1", "outcome").unwrap();
    assert_eq!(outcome["outcome"]["rows"], 1);
    assert_eq!(outcome["details"]["tables"], "clicks@1,users@1");
    let denied = crate::audit::find(&all, "sql-2", "outcome").unwrap();
    assert_eq!(denied["outcome"]["result"], "denied");
    assert_eq!(denied["details"]["sql"], "DELETE FROM clicks");
}

#[tokio::test]
async fn large_results_stream_and_the_row_limit_cuts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.sql_row_limit = 150_000;
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let mut ndjson = String::new();
    for i in 0..200_000 {
        ndjson.push_str(&format!("{{\"user_id\":{i},\"ts\":\"2026-01-01T00:00:00Z\",\"clicks\":{}}}\n", i % 100));
    }
    let r = s.post(&k, "/v1/feature-groups/clicks/data").header("content-type", "application/x-ndjson").body(ndjson).send().await.unwrap();
    assert_eq!(r.status(), 201);

    let r = s.post(&k, "/v1/sql").json(&json!({"sql": "SELECT user_id FROM clicks WHERE clicks < 50", "format": "ndjson"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().lines().count(), 100_000);

    let r = s.post(&k, "/v1/sql").json(&json!({"sql": "SELECT * FROM clicks", "format": "ndjson"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "rows flow before the limit is reached");
    assert!(r.text().await.is_err(), "past the row limit the stream is cut, never silently short");
}

#[tokio::test]
async fn a_query_over_its_memory_limit_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.sql_memory_limit_bytes = 256 * 1024;
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let mut ndjson = String::new();
    for i in 0..100_000 {
        ndjson.push_str(&format!("{{\"user_id\":{i},\"ts\":\"2026-01-01T00:00:00Z\",\"country\":\"c{i}\"}}\n"));
    }
    let r = s.post(&k, "/v1/feature-groups/clicks/data").header("content-type", "application/x-ndjson").body(ndjson).send().await.unwrap();
    assert_eq!(r.status(), 201);
    // A hash join must hold its build side in memory; 100k strings do not fit in 256 KiB.
    let sql = "SELECT count(*) FROM clicks a JOIN clicks b ON a.country = b.country";
    let r = s.post(&k, "/v1/sql").json(&json!({"sql": sql, "format": "json"})).send().await.unwrap();
    let (code, message) = crate::support::error_code(r, 422).await;
    assert_eq!(code, "limit_exceeded");
    assert!(message.contains("memory"), "{message}");
    // Other requests are unaffected, and the memory all queries share was given back.
    assert_eq!(s.get(&k, "/v1/whoami").send().await.unwrap().status(), 200);
    for _ in 0..3 {
        let r = s.post(&k, "/v1/sql").json(&json!({"sql": "SELECT count(*) AS n FROM clicks", "format": "json"})).send().await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()[0]["n"], 100_000);
    }
}

#[tokio::test]
async fn a_query_past_its_time_limit_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.sql_timeout = std::time::Duration::from_millis(1);
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let mut ndjson = String::new();
    for i in 0..20_000 {
        ndjson.push_str(&format!("{{\"user_id\":{i},\"ts\":\"2026-01-01T00:00:00Z\",\"clicks\":{}}}\n", i % 7));
    }
    let r = s.post(&k, "/v1/feature-groups/clicks/data").header("content-type", "application/x-ndjson").body(ndjson).send().await.unwrap();
    assert_eq!(r.status(), 201);
    // 400 million pairs: far more than a millisecond of work on any machine.
    let sql = "SELECT count(*) FROM clicks a CROSS JOIN clicks b WHERE a.clicks + b.clicks = 3";
    let r = s.post(&k, "/v1/sql").json(&json!({"sql": sql, "format": "json"})).send().await.unwrap();
    let (code, message) = crate::support::error_code(r, 422).await;
    assert_eq!(code, "limit_exceeded");
    assert!(message.contains("time limit"), "{message}");
    assert_eq!(s.get(&k, "/v1/whoami").send().await.unwrap().status(), 200);
}
