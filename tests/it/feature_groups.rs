use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde_json::{Value, json};

use crate::support::{Server, error_code};

#[tokio::test]
async fn create_ingest_and_read_every_version() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;

    let r = s
        .ingest_json(&k, "clicks", "append", json!([
            {"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 3, "ctr": 0.5, "country": "NL", "emb": [0.1, 0.2]},
            {"user_id": 2, "ts": "2026-01-01T00:00:00Z", "clicks": 7}
        ]))
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"version": 1, "rows": 2, "mode": "append"}));

    // Upsert replaces the row with the same key and event time, and adds a new one.
    let csv = "user_id,ts,clicks\n1,2026-01-01T00:00:00Z,30\n3,2026-01-02T00:00:00Z,1\n";
    let r = s
        .post(&k, "/v1/feature-groups/clicks/data?mode=upsert")
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);

    let latest = s.read_json(&k, "/v1/feature-groups/clicks/data").await;
    assert_eq!(latest.len(), 3);
    let user1 = latest.iter().find(|r| r["user_id"] == 1).unwrap();
    assert_eq!(user1["clicks"], 30);

    let v1 = s.read_json(&k, "/v1/feature-groups/clicks/data?version=1").await;
    assert_eq!(v1.len(), 2);
    assert_eq!(v1.iter().find(|r| r["user_id"] == 1).unwrap()["clicks"], 3);
    assert_eq!(v1.iter().find(|r| r["user_id"] == 1).unwrap()["emb"], json!([0.1, 0.2]));

    let v0 = s.read_json(&k, "/v1/feature-groups/clicks/data?version=0").await;
    assert!(v0.is_empty());

    // Versions list, with commit times that resolve `as_of` exactly.
    let versions: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[1]["rows_added"], 2);
    assert_eq!(versions[2]["operation"], "MERGE (upsert)");
    let t1 = versions[1]["committed_at"].as_str().unwrap();
    let at_v1 = s.read_json(&k, &format!("/v1/feature-groups/clicks/data?as_of={}", urlencode(t1))).await;
    assert_eq!(at_v1.len(), 2, "as_of the commit time of v1 reads v1");

    // Filters and limits.
    let one = s.read_json(&k, "/v1/feature-groups/clicks/data?key.user_id=2,3&limit=10").await;
    assert_eq!(one.len(), 2);
    let limited = s.read_json(&k, "/v1/feature-groups/clicks/data?limit=1").await;
    assert_eq!(limited.len(), 1);

    // The group reports its current version and row count.
    let g: Value = s.get(&k, "/v1/feature-groups/clicks").send().await.unwrap().json().await.unwrap();
    assert_eq!((g["current_version"].clone(), g["row_count"].clone()), (json!(2), json!(3)));

    // Overwrite replaces everything in one version.
    let r = s.ingest_json(&k, "clicks", "overwrite", json!([{"user_id": 9, "ts": "2026-02-01T00:00:00Z"}])).await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data").await.len(), 1);
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?version=2").await.len(), 3);
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test]
async fn missing_versions_and_times_are_errors_never_latest_data() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).await;

    let r = s.get(&k, "/v1/feature-groups/clicks/data?version=7").send().await.unwrap();
    let (code, msg) = error_code(r, 404).await;
    assert_eq!(code, "version_not_found");
    assert!(msg.contains("0 to 1"), "{msg}");
    let r = s.get(&k, "/v1/feature-groups/clicks/data?as_of=2001-01-01T00:00:00Z").send().await.unwrap();
    let (_, msg) = error_code(r, 422).await;
    assert!(msg.contains("before the first commit"), "{msg}");
    let r = s.get(&k, "/v1/feature-groups/clicks/data?as_of=yesterday").send().await.unwrap();
    error_code(r, 400).await;
    let r = s.get(&k, "/v1/feature-groups/clicks/data?version=1&as_of=2026-01-01T00:00:00Z").send().await.unwrap();
    error_code(r, 400).await;
    let r = s.get(&k, "/v1/feature-groups/clicks/data?key.clicks=1").send().await.unwrap();
    error_code(r, 400).await;
}

#[tokio::test]
async fn bad_rows_are_refused_with_column_type_and_row_and_nothing_is_written() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let rows = json!([
        {"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 1},
        {"user_id": 2, "ts": "2026-01-01T00:00:00Z", "clicks": 2},
        {"user_id": 3, "ts": "2026-01-01T00:00:00Z", "clicks": "three"}
    ]);
    let (code, msg) = error_code(s.ingest_json(&k, "clicks", "append", rows).await, 422).await;
    assert_eq!(code, "invalid_rows");
    assert!(msg.contains("`clicks`") && msg.contains("int32") && msg.contains("row 3"), "{msg}");

    let (_, msg) = error_code(s.ingest_json(&k, "clicks", "append", json!([{"ts": "2026-01-01T00:00:00Z"}])).await, 422).await;
    assert!(msg.contains("user_id"), "{msg}");
    let (_, msg) =
        error_code(s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "nope": 1}])).await, 422).await;
    assert!(msg.contains("nope"), "{msg}");
    let dup = json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}, {"user_id": 1, "ts": "2026-01-01T00:00:00Z"}]);
    error_code(s.ingest_json(&k, "clicks", "upsert", dup).await, 422).await;
    let r = s.post(&k, "/v1/feature-groups/clicks/data").header("content-type", "application/json").body("[{\"user_id\": 1,").send().await.unwrap();
    error_code(r, 400).await;
    let r = s.post(&k, "/v1/feature-groups/clicks/data").header("content-type", "application/xml").body("<x/>").send().await.unwrap();
    error_code(r, 415).await;
    let r = s.post(&k, "/v1/feature-groups/clicks/data?mode=merge").header("content-type", "application/json").body("[]").send().await.unwrap();
    error_code(r, 400).await;

    // Nothing of the refused uploads became a version, and no stray data files remain.
    let versions: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    assert_eq!(versions.len(), 1);
    let table_dir = s.data_dir.join("tables/tenants/default/feature-groups/clicks");
    let parquet_files = std::fs::read_dir(&table_dir).unwrap().filter(|e| {
        e.as_ref().unwrap().path().extension().is_some_and(|x| x == "parquet")
    });
    assert_eq!(parquet_files.count(), 0);
    assert!(no_spool_files(&s), "the refused upsert's spool file is gone");
}

/// Upserts spool their rows under `<data-dir>/tmp` until the merge; none outlives its request.
fn no_spool_files(s: &Server) -> bool {
    std::fs::read_dir(s.data_dir.join("tmp"))
        .map(|d| d.flatten().all(|e| !e.file_name().to_string_lossy().starts_with("upsert-")))
        .unwrap_or(true)
}

/// An upsert larger than one decoded batch: its rows go to a spool file on disk as they
/// arrive, duplicates are found across batches (named by row), and the merge replaces and
/// inserts exactly as for a small one.
#[tokio::test]
async fn a_large_upsert_spools_to_disk_and_merges_every_batch() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let n = 50_000;
    let rows = |from: usize, to: usize, clicks: usize| -> String {
        (from..to).map(|i| format!("{{\"user_id\":{i},\"ts\":\"2026-01-01T00:00:00Z\",\"clicks\":{clicks}}}\n")).collect()
    };
    let ndjson = |body: String| s.post(&k, "/v1/feature-groups/clicks/data?mode=upsert").header("content-type", "application/x-ndjson").body(body).send();
    assert_eq!(ndjson(rows(0, n, 1)).await.unwrap().status(), 201);
    // Half replaced, half new.
    let r = ndjson(rows(n / 2, n + n / 2, 2)).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["rows"], n);
    let all = s.read_json(&k, "/v1/feature-groups/clicks/data?limit=1000000").await;
    assert_eq!(all.len(), n + n / 2);
    let twos = all.iter().filter(|r| r["clicks"] == 2).count();
    assert_eq!(twos, n, "every row of the second upsert, replaced or inserted");
    // A duplicate far apart (in different batches) is refused naming both rows.
    let mut dup = rows(0, n, 3);
    dup.push_str(&rows(7, 8, 3));
    let (code, message) = error_code(ndjson(dup).await.unwrap(), 422).await;
    assert_eq!(code, "invalid_rows");
    assert!(message.contains("rows 8 and 50001"), "{message}");
    let versions: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    assert_eq!(versions.len(), 3, "the refused upsert made no version");
    assert!(no_spool_files(&s));
}

#[tokio::test]
async fn arrow_ipc_and_parquet_round_trip() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("ctr", DataType::Float64, true),
        Field::new("country", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from((0..1000).collect::<Vec<i64>>())),
            Arc::new(TimestampMicrosecondArray::from(vec![1_767_225_600_000_000i64; 1000]).with_timezone("UTC")),
            Arc::new(Float64Array::from((0..1000).map(|i| i as f64 / 1000.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec!["DE"; 1000])),
        ],
    )
    .unwrap();
    let mut ipc = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    let r = s
        .post(&k, "/v1/feature-groups/clicks/data")
        .header("content-type", "application/vnd.apache.arrow.stream")
        .body(ipc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let mut pq = Vec::new();
    {
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut pq, schema.clone(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let r = s
        .post(&k, "/v1/feature-groups/clicks/data")
        .header("content-type", "application/vnd.apache.parquet")
        .body(pq)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // Read back as Arrow IPC and as Parquet.
    let r = s.get(&k, "/v1/feature-groups/clicks/data?version=1").header("accept", "application/vnd.apache.arrow.stream").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/vnd.apache.arrow.stream");
    let bytes = r.bytes().await.unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 1000);

    let r = s.get(&k, "/v1/feature-groups/clicks/data?format=parquet").send().await.unwrap();
    let bytes = r.bytes().await.unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 4096).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 2000);

    let csv = s.get(&k, "/v1/feature-groups/clicks/data?version=1&limit=5").header("accept", "text/csv").send().await.unwrap().text().await.unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    let r = s.get(&k, "/v1/feature-groups/clicks/data").header("accept", "image/png").send().await.unwrap();
    error_code(r, 406).await;
}

#[tokio::test]
async fn keys_roles_and_tenants_are_enforced() {
    let s = Server::start().await;
    let admin = s.admin_key.clone();
    s.create_clicks(&admin).await;
    let reader = s.create_key("reader", None).await;
    let writer = s.create_key("writer", None).await;

    // No key, a malformed key, an unknown key.
    let r = s.client.get(s.url("/v1/feature-groups")).send().await.unwrap();
    assert_eq!(error_code(r, 401).await.0, "unauthenticated");
    let r = s.get("llk_nope", "/v1/feature-groups").send().await.unwrap();
    assert_eq!(error_code(r, 401).await.0, "invalid_api_key");

    // Readers read but do not write; writers do not manage keys.
    assert_eq!(s.get(&reader, "/v1/feature-groups/clicks").send().await.unwrap().status(), 200);
    let r = s.ingest_json(&reader, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).await;
    assert_eq!(error_code(r, 403).await.0, "forbidden");
    let r = s.ingest_json(&writer, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).await;
    assert_eq!(r.status(), 201);
    let r = s.post(&writer, "/v1/keys").json(&json!({"name": "x", "role": "admin"})).send().await.unwrap();
    error_code(r, 403).await;

    // Another tenant cannot see this tenant's group.
    let r = s.post(&admin, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let acme = s.create_key("admin", Some("acme")).await;
    let r = s.get(&acme, "/v1/feature-groups/clicks").send().await.unwrap();
    assert_eq!(error_code(r, 404).await.0, "feature_group_not_found");
    let r = s.get(&acme, "/v1/feature-groups/clicks/data").send().await.unwrap();
    error_code(r, 404).await;
    let listed: Vec<Value> = s.get(&acme, "/v1/feature-groups").send().await.unwrap().json().await.unwrap();
    assert!(listed.is_empty());
    // Tenant admins manage their own keys, not other tenants or tenants at all.
    let r = s.post(&acme, "/v1/tenants").json(&json!({"name": "evil"})).send().await.unwrap();
    error_code(r, 403).await;
    let r = s.post(&acme, "/v1/keys").json(&json!({"name": "x", "role": "admin", "tenant": "default"})).send().await.unwrap();
    error_code(r, 403).await;
    // The same group name is free in another tenant.
    s.create_clicks(&acme).await;

    // Revoked keys stop working at once; listings never show secrets.
    let keys: Vec<Value> = s.get(&admin, "/v1/keys").send().await.unwrap().json().await.unwrap();
    assert!(keys.iter().all(|k| k.get("secret").is_none() && k.get("secret_hash").is_none()));
    let reader_id = keys.iter().find(|k| k["role"] == "reader").unwrap()["id"].as_str().unwrap().to_string();
    let r = s.client.delete(s.url(&format!("/v1/keys/{reader_id}"))).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.get(&reader, "/v1/feature-groups").send().await.unwrap();
    error_code(r, 401).await;

    // Unknown routes and bad JSON use the same error body.
    let r = s.get(&admin, "/v1/nothing-here").send().await.unwrap();
    error_code(r, 404).await;
    let r = s.post(&admin, "/v1/feature-groups").header("content-type", "application/json").body("{").send().await.unwrap();
    error_code(r, 400).await;
    let r = s.post(&admin, "/v1/feature-groups").json(&json!({"name": "x"})).send().await.unwrap();
    error_code(r, 422).await;
}

#[tokio::test]
async fn schema_evolution_adds_columns_and_refuses_breaking_changes() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 1}])).await;
    let g: Value = s.get(&k, "/v1/feature-groups/clicks").send().await.unwrap().json().await.unwrap();
    let mut features = g["features"].as_array().unwrap().clone();

    // A changed type is refused, naming the column.
    let mut changed = features.clone();
    changed[0]["type"] = json!("int64");
    let r = s.client.put(s.url("/v1/feature-groups/clicks/schema")).bearer_auth(&k).json(&json!({"features": changed})).send().await.unwrap();
    let (code, msg) = error_code(r, 409).await;
    assert_eq!(code, "incompatible_schema_change");
    assert!(msg.contains("`clicks`"), "{msg}");
    // A dropped column and a key change are refused too.
    let r = s.client.put(s.url("/v1/feature-groups/clicks/schema")).bearer_auth(&k).json(&json!({"features": features[1..]})).send().await.unwrap();
    assert!(error_code(r, 409).await.1.contains("`clicks`"));
    let r = s
        .client
        .put(s.url("/v1/feature-groups/clicks/schema"))
        .bearer_auth(&k)
        .json(&json!({"features": features, "entity_keys": [{"name": "user_id", "type": "string"}]}))
        .send()
        .await
        .unwrap();
    assert!(error_code(r, 409).await.1.contains("user_id"));

    // Adding a nullable column is a new version; old rows read it as null.
    features.push(json!({"name": "score", "type": "float32"}));
    let r = s.client.put(s.url("/v1/feature-groups/clicks/schema")).bearer_auth(&k).json(&json!({"features": features})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let g: Value = r.json().await.unwrap();
    assert_eq!(g["current_version"], 2);
    let r = s.ingest_json(&k, "clicks", "append", json!([{"user_id": 2, "ts": "2026-01-01T00:00:00Z", "score": 0.5}])).await;
    assert_eq!(r.status(), 201);
    let rows = s.read_json(&k, "/v1/feature-groups/clicks/data").await;
    assert_eq!(rows.iter().find(|r| r["user_id"] == 1).unwrap()["score"], Value::Null);
    assert_eq!(rows.iter().find(|r| r["user_id"] == 2).unwrap()["score"], 0.5);
    // Version 1 still reads with its own schema.
    let v1 = s.read_json(&k, "/v1/feature-groups/clicks/data?version=1").await;
    assert!(v1[0].get("score").is_none());

    // Metadata updates and archiving.
    let r = s.client.patch(s.url("/v1/feature-groups/clicks")).bearer_auth(&k).json(&json!({"owner": "ml"})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["owner"], "ml");
    let r = s.post(&k, "/v1/feature-groups/clicks/archive").send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "archived");
    let r = s.ingest_json(&k, "clicks", "append", json!([{"user_id": 3, "ts": "2026-01-01T00:00:00Z"}])).await;
    error_code(r, 409).await;
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?version=1").await.len(), 1);
    let listed: Vec<Value> = s.get(&k, "/v1/feature-groups").send().await.unwrap().json().await.unwrap();
    assert!(listed.is_empty());
    let listed: Vec<Value> = s.get(&k, "/v1/feature-groups?include_archived=true").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn concurrent_ingests_each_get_their_own_version() {
    let s = Arc::new(Server::start().await);
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let rows: Vec<Value> = (0..50).map(|j| json!({"user_id": i * 1000 + j, "ts": "2026-01-01T00:00:00Z"})).collect();
            s.ingest_json(&k, "clicks", "append", Value::Array(rows)).await.status().as_u16()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let history: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    for h in &history {
        versions.push(h["version"].as_i64().unwrap());
    }
    assert_eq!(versions, (0..=8).collect::<Vec<_>>());
    let times: Vec<&str> = history.iter().map(|h| h["committed_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "commit times increase with versions");
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data").await.len(), 400);
}

#[tokio::test]
async fn body_limit_answers_413_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.max_body_bytes = 1024;
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let rows: Vec<Value> = (0..200).map(|j| json!({"user_id": j, "ts": "2026-01-01T00:00:00Z"})).collect();
    // Chunked upload without Content-Length: the limit is enforced while streaming.
    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        Value::Array(rows).to_string().into_bytes().chunks(100).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    ));
    let r = s.post(&k, "/v1/feature-groups/clicks/data").header("content-type", "application/json").body(body).send().await.unwrap();
    assert_eq!(error_code(r, 413).await.0, "payload_too_large");
    let versions: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    assert_eq!(versions.len(), 1);
}

#[tokio::test]
async fn restart_reconciles_catalog_with_the_delta_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    let s = Server::start_with(config.clone(), None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).await;
    s.stop().await;

    // A commit that reached the Delta log but not the catalog, as after kill -9 between the two.
    let schema: lakeledger_query::FeatureSchema = serde_json::from_value(json!({
        "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "clicks", "type": "int32"}, {"name": "ctr", "type": "float64"},
                     {"name": "country", "type": "string"}, {"name": "emb", "type": "list<float32>"}]
    }))
    .unwrap();
    let meta = lakeledger_query::tables::CommitMeta::default().with("lakeledger.actor", "default/crashed-writer");
    assert_eq!(commit_behind_the_catalog(&config, &schema, 2, meta).await, 2);

    // And a group whose creation never got past the catalog row.
    let catalog = lakeledger::platform::catalog::connect(config.catalog_url.expose()).await.unwrap();
    let tenant = catalog.tenant_by_name("default").await.unwrap().unwrap();
    catalog
        .insert_feature_group(&lakeledger::platform::catalog::FeatureGroupRecord {
            id: "fg_half".into(),
            tenant_id: tenant.id.clone(),
            name: "half".into(),
            schema: schema.clone(),
            description: String::new(),
            owner: String::new(),
            tags: Default::default(),
            online: false,
            online_max_age_seconds: None,
            location: "tenants/default/feature-groups/half".into(),
            state: lakeledger::platform::catalog::GroupState::Creating,
            created_at: 0,
            updated_at: 0,
            created_by: "x".into(),
        })
        .await
        .unwrap();
    // Another replica's creation under way: too young to be a leftover.
    let young = lakeledger::platform::catalog::FeatureGroupRecord {
        id: "fg_young".into(),
        name: "young".into(),
        location: "tenants/default/feature-groups/young".into(),
        created_at: lakeledger::platform::time::now_micros(),
        ..catalog.feature_group(&tenant.id, "half").await.unwrap().unwrap()
    };
    catalog.insert_feature_group(&young).await.unwrap();
    // And a version missing from the middle of the catalog's map, not only its tail.
    let pool = sqlx::SqlitePool::connect(config.catalog_url.expose()).await.unwrap();
    sqlx::query("DELETE FROM feature_group_versions WHERE version = 1 AND feature_group_id IN (SELECT id FROM feature_groups WHERE name = 'clicks')")
        .execute(&pool)
        .await
        .unwrap();
    drop(pool);

    let s = Server::start_with(config.clone(), Some(k.clone())).await;
    let history: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!((&history[1]["recovered"], &history[2]["recovered"]), (&json!(true), &json!(true)));
    assert_eq!(history[2]["actor"], "default/crashed-writer");
    // Times rise with versions, and each resolves to its own version.
    for (v, h) in history.iter().enumerate() {
        let t = h["committed_at"].as_str().unwrap();
        if v > 0 {
            assert!(history[v - 1]["committed_at"].as_str().unwrap() < t, "{history:?}");
        }
        let rows = s.read_json(&k, &format!("/v1/feature-groups/clicks/data?as_of={}", urlencode(t))).await;
        assert_eq!(rows.len(), v, "as_of version {v}'s time");
    }
    let catalog = lakeledger::platform::catalog::connect(config.catalog_url.expose()).await.unwrap();
    assert!(catalog.feature_group(&tenant.id, "young").await.unwrap().is_some(), "a young creation is left to its replica");
    drop(catalog);
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?version=2").await.len(), 2);
    let r = s.get(&k, "/v1/feature-groups/half").send().await.unwrap();
    error_code(r, 404).await;
    // The name is free again.
    let r = s
        .post(&k, "/v1/feature-groups")
        .json(&json!({"name": "half", "entity_keys": [{"name": "id", "type": "string"}], "event_time": "ts"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Commits one row (`user_id`, event time 0) to `clicks` straight to its Delta table, with
/// `meta`, and nothing to the catalog: what a writer killed between the two leaves.
/// Returns the version.
async fn commit_behind_the_catalog(
    config: &lakeledger::app::config::Config,
    schema: &lakeledger_query::FeatureSchema,
    user_id: i64,
    meta: lakeledger_query::tables::CommitMeta,
) -> i64 {
    let store = lakeledger_query_store(config);
    let table = store.open(&store.location("tenants/default/feature-groups/clicks").unwrap(), None).await.unwrap();
    let mut staged = store.begin_write(&table, schema, lakeledger_query::tables::WriteMode::Append).unwrap();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        ])),
        vec![Arc::new(Int64Array::from(vec![user_id])), Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC"))],
    )
    .unwrap();
    staged.write(lakeledger_query::ingest::Conformer::new(schema.clone()).conform(&batch).unwrap()).await.unwrap();
    staged.commit(table, meta).await.unwrap().version
}

fn lakeledger_query_store(config: &lakeledger::app::config::Config) -> lakeledger_query::tables::TableStore {
    lakeledger_query::tables::TableStore::new(config.data_root.clone(), config.storage_options.clone()).unwrap()
}

#[tokio::test]
async fn probes_metrics_and_request_ids() {
    let s = Server::start().await;
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let r = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["ready"], true);
    let r = s.get(&s.admin_key, "/v1/whoami").header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let metrics = s.get(&s.admin_key, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lakeledger_http_requests_total"), "{metrics}");
    assert!(metrics.contains("lakeledger_http_request_duration_seconds_bucket"), "{metrics}");
    let docs = s.client.get(s.url("/docs")).send().await.unwrap().text().await.unwrap();
    assert!(docs.contains("/openapi.json"));
}

/// kill -9 of the real binary while ingests are in flight: after a restart every
/// acknowledged version is there, nothing half-written is visible, and the catalog
/// agrees with the Delta log.
#[tokio::test]
async fn kill_9_during_ingest_leaves_only_whole_versions() {
    let Some(bin) = crate::audit::lakeledger_bin() else {
        assert_ne!(std::env::var("LAKELEDGER_REQUIRE_BIN").as_deref(), Ok("1"), "the lakeledger binary is required");
        crate::support::notice("lakeledger binary not built; skipping the kill -9 ingest test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = crate::audit::start_binary(&bin, &data).await;
    let key = server.admin_key.clone().unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let r = client.post(format!("{base}/v1/feature-groups")).bearer_auth(&key).json(&json!({
        "name": "events", "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "batch", "type": "int64"}]
    })).send().await.unwrap();
    assert_eq!(r.status(), 201);

    // Writers post batches of 2000 rows; each acknowledged batch is remembered.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let (client, key, base, acked) = (client.clone(), key.clone(), base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for b in 0.. {
                let batch = w * 1_000_000 + b;
                let body: String = (0..2000).map(|i| format!("{{\"id\":{},\"ts\":\"2026-01-01T00:00:00Z\",\"batch\":{batch}}}\n", batch * 10_000 + i)).collect();
                let r = client.post(format!("{base}/v1/feature-groups/events/data")).bearer_auth(&key)
                    .header("content-type", "application/x-ndjson").body(body).send().await;
                match r {
                    Ok(r) if r.status() == 201 => acked.lock().unwrap().push(batch),
                    Ok(r) if r.status() == 409 => {}
                    _ => return,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 12 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }

    let server = crate::audit::start_binary(&bin, &data).await;
    let base = format!("http://{}", server.addr);
    let history: Vec<Value> = client.get(format!("{base}/v1/feature-groups/events/versions")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let rows: Vec<Value> = client.get(format!("{base}/v1/feature-groups/events/data?format=json")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let mut per_batch: std::collections::HashMap<i64, usize> = Default::default();
    for r in &rows {
        *per_batch.entry(r["batch"].as_i64().unwrap()).or_default() += 1;
    }
    assert!(per_batch.values().all(|n| *n == 2000), "every visible batch is whole");
    for b in acked.lock().unwrap().iter() {
        assert_eq!(per_batch.get(b), Some(&2000), "acknowledged batch {b} survived");
    }
    // Version 0 is the creation; each later version is one whole batch.
    assert_eq!(history.len(), per_batch.len() + 1, "catalog and Delta log agree: {history:?}");
}

/// An ingest sent with an Idempotency-Key writes at most once: a retry gets the first
/// result, also when the first attempt stopped between its Delta commit and its answer.
#[tokio::test]
async fn an_idempotent_ingest_writes_once_however_often_it_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    let s = Server::start_with(config.clone(), None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let send = |key: &str, mode: &str, rows: Value| {
        s.post(&k, &format!("/v1/feature-groups/clicks/data?mode={mode}")).header("idempotency-key", key).json(&rows).send()
    };
    let rows = json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}, {"user_id": 2, "ts": "2026-01-01T00:00:00Z"}]);

    let first = send("order-1", "append", rows.clone()).await.unwrap();
    assert_eq!((first.status().as_u16(), first.headers()["idempotent-replayed"].to_str().unwrap()), (201, "false"));
    let first: Value = first.json().await.unwrap();
    for _ in 0..2 {
        let again = send("order-1", "append", rows.clone()).await.unwrap();
        assert_eq!((again.status().as_u16(), again.headers()["idempotent-replayed"].to_str().unwrap()), (201, "true"));
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data").await.len(), 2, "written once");
    let versions: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    assert_eq!(versions.len(), 2);

    // The same key for another request is refused, naming the first.
    let (code, message) = error_code(send("order-1", "upsert", rows.clone()).await.unwrap(), 422).await;
    assert_eq!(code, "unprocessable");
    assert!(message.contains("mode=append"), "{message}");
    // A first attempt refused before writing leaves the key free.
    let r = send("order-2", "append", json!([{"user_id": "not a number", "ts": "2026-01-01T00:00:00Z"}])).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = send("order-2", "append", json!([{"user_id": 3, "ts": "2026-01-01T00:00:00Z"}])).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["idempotent-replayed"].to_str().unwrap()), (201, "false"));
    let r = s.post(&k, "/v1/feature-groups/clicks/data").header("idempotency-key", "bad key").json(&rows).send().await.unwrap();
    assert_eq!(error_code(r, 400).await.0, "bad_request");

    // A first attempt that stopped after its Delta commit, before recording it or
    // answering (as after kill -9): the key is pending and the commit carries it.
    s.stop().await;
    let catalog = lakeledger::platform::catalog::connect(config.catalog_url.expose()).await.unwrap();
    let tenant = catalog.tenant_by_name("default").await.unwrap().unwrap();
    let fingerprint = "POST /v1/feature-groups/clicks/data?mode=append";
    assert!(catalog.reserve_idempotency_key(&tenant.id, "order-3", fingerprint, lakeledger::platform::time::now_micros()).await.unwrap().is_none());
    let schema = catalog.feature_group(&tenant.id, "clicks").await.unwrap().unwrap().schema;
    let meta = lakeledger_query::tables::CommitMeta::default()
        .with("lakeledger.idempotencyKey", "order-3")
        .with("lakeledger.rows", 1)
        .with("lakeledger.mode", "append");
    let crashed = commit_behind_the_catalog(&config, &schema, 4, meta).await;
    // And another key whose attempt is still in flight on another replica.
    assert!(catalog.reserve_idempotency_key(&tenant.id, "order-4", fingerprint, lakeledger::platform::time::now_micros()).await.unwrap().is_none());
    // And one whose replica died before committing: its hold (30 s by default) lapsed.
    let lapsed = lakeledger::platform::time::now_micros() - 31_000_000;
    assert!(catalog.reserve_idempotency_key(&tenant.id, "order-5", fingerprint, lapsed).await.unwrap().is_none());
    drop(catalog);

    let s = Server::start_with(config.clone(), Some(k.clone())).await;
    let send = |key: &str, rows: Value| s.post(&k, "/v1/feature-groups/clicks/data").header("idempotency-key", key).json(&rows).send();
    let r = send("order-3", json!([{"user_id": 4, "ts": "2026-01-01T00:00:00Z"}])).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["idempotent-replayed"].to_str().unwrap()), (201, "true"));
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"version": crashed, "rows": 1, "mode": "append"}));
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?key.user_id=4").await.len(), 1, "the retry wrote nothing more");
    let (code, message) = error_code(send("order-4", rows.clone()).await.unwrap(), 409).await;
    assert_eq!(code, "conflict");
    assert!(message.contains("in progress"), "{message}");
    // The lapsed hold is taken over: the retry writes, once.
    let r = send("order-5", json!([{"user_id": 5, "ts": "2026-01-01T00:00:00Z"}])).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["idempotent-replayed"].to_str().unwrap()), (201, "false"));
    let r = send("order-5", json!([{"user_id": 5, "ts": "2026-01-01T00:00:00Z"}])).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["idempotent-replayed"].to_str().unwrap()), (201, "true"));
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?key.user_id=5").await.len(), 1);
}
