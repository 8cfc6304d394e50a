//! Three `lakeledger serve` processes on one Postgres database, one S3 bucket (moto) and
//! one Redis, driven through all three at once — ingests into one shared group, online
//! lookups, scoring on an alias that moves, training jobs — with one killed (`kill -9`)
//! mid-work and restarted. Afterwards every promise a load-balanced deployment relies on
//! is checked against the catalog, the Delta log, Redis and the merged audit trail.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::audit::{Running, lakeledger_bin, start_binary_with};
use crate::support::{Http, Remote, fresh_postgres_schema, notice, postgres_url, redis_url};

const WRITERS: i64 = 3;
const BATCHES: i64 = 10;
const ROWS: i64 = 100;

/// The audit receipt of an acknowledged request: the replica that answered it, and the
/// seq and leaf hash of its intent record.
type Receipt = (usize, u64, String);

fn receipt(r: &reqwest::Response, replica: usize) -> Receipt {
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (replica, header("x-audit-seq").parse().expect("an acknowledged request carries its audit seq"), header("x-audit-leaf-hash"))
}

/// An acknowledged ingest: which batch, and the receipt of the request acknowledged.
#[derive(Debug)]
struct Acked {
    batch: (i64, i64),
    receipt: Receipt,
}

fn s3_endpoint() -> Option<String> {
    match std::env::var("LAKELEDGER_TEST_S3_ENDPOINT") {
        Ok(e) => Some(e),
        Err(_) => {
            assert_ne!(std::env::var("LAKELEDGER_REQUIRE_S3").as_deref(), Ok("1"), "LAKELEDGER_TEST_S3_ENDPOINT must point at an S3-compatible server");
            notice("skipping the three-replica test: LAKELEDGER_TEST_S3_ENDPOINT is not set");
            None
        }
    }
}

/// Sends one batch with its idempotency key, starting at replica `first` and moving to the
/// next on a refused connection, a 5xx or a 409 (an attempt still holds the key), until it
/// is acknowledged.
async fn ingest_until_acked(replicas: &[Remote], key: &str, writer: i64, batch: i64, first: usize) -> Acked {
    let body: String = (0..ROWS)
        .map(|i| format!("{{\"id\":{},\"ts\":\"2026-01-01T00:00:00Z\",\"writer\":{writer},\"batch\":{batch}}}\n", writer * 1_000_000 + batch * 1000 + i))
        .collect();
    for attempt in 0..600 {
        let replica = (first + attempt) % replicas.len();
        let r = replicas[replica]
            .post(key, "/v1/feature-groups/events/data")
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", format!("w{writer}-b{batch}"))
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 201 => return Acked { batch: (writer, batch), receipt: receipt(&r, replica) },
            Ok(r) if r.status() == 409 || r.status().is_server_error() => {}
            Ok(r) => panic!("batch {writer}/{batch}: {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("batch {writer}/{batch} was never acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_keep_every_promise_when_one_is_killed() {
    let Some(bin) = lakeledger_bin() else {
        assert_ne!(std::env::var("LAKELEDGER_REQUIRE_BIN").as_deref(), Ok("1"), "the lakeledger binary is required");
        notice("lakeledger binary not built; skipping the three-replica test");
        return;
    };
    let (Some(pg), Some(redis), Some(s3)) = (postgres_url().await, redis_url().await, s3_endpoint()) else { return };
    let catalog = fresh_postgres_schema(&pg).await;
    let dir = tempfile::Builder::new().prefix("replicas-").disable_cleanup(std::env::var("LAKELEDGER_KEEP_TEST_DIRS").is_ok()).tempdir().unwrap();
    let root = format!("s3://lakeledger-test/replicas-{}/", uuid::Uuid::new_v4().simple());
    let config = dir.path().join("lakeledger.toml");
    let shared = dir.path().join("shared");
    std::fs::write(
        &config,
        format!(
            "catalog = {catalog:?}\ndata_root = {root:?}\nonline_store = {redis:?}\nmodel_key_path = {:?}\nentity_hash_key_path = {:?}\n\
             job_lease_secs = 3\nidempotency_hold_secs = 3\n[storage_options]\naws_endpoint = {s3:?}\naws_allow_http = \"true\"\n\
             aws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\naws_region = \"us-east-1\"\n",
            shared.join("model-signing.key"),
            shared.join("entity-hash.key"),
        ),
    )
    .unwrap();
    let data = |i: usize| dir.path().join(format!("replica-{i}"));
    let args = [OsStr::new("--config"), config.as_os_str()];
    let start = |i: usize| {
        let (bin, data, args) = (bin.clone(), data(i), args);
        async move { start_binary_with(&bin, &data, &args).await }
    };
    let mut running: Vec<Running> = Vec::new();
    for i in 0..3 {
        running.push(start(i).await);
    }
    let k = running[0].admin_key.clone().expect("the first replica bootstrapped the catalog");
    let client = reqwest::Client::new();
    let remote = |r: &Running| Remote { base: format!("http://{}", r.addr), client: client.clone() };
    let replicas: Vec<Remote> = running.iter().map(remote).collect();

    // Through the first replica: a shared online group, a dataset, two model versions and
    // an alias.
    let r = replicas[0]
        .post(&k, "/v1/feature-groups")
        .json(&json!({"name": "events", "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts",
                      "features": [{"name": "writer", "type": "int64"}, {"name": "batch", "type": "int64"}], "online": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    crate::models::ingest_dataset(&replicas[0], &k, "wine", "cultivar", "int64").await;
    let small = json!({"task": "classification", "hidden_layers": [], "max_epochs": 3, "seed": 1});
    let job = |config: &Value| json!({"model": "wine", "training_set": crate::models::training_set("wine", "cultivar"), "label": "cultivar", "config": config});
    crate::models::train(&replicas[0], &k, job(&small)).await;
    crate::models::train(&replicas[1], &k, job(&small)).await;
    let move_alias = |to: &Remote, v: i64| to.client.put(to.url("/v1/models/wine/aliases/champion")).bearer_auth(&k).json(&json!({"version": v})).send();
    assert_eq!(move_alias(&replicas[0], 1).await.unwrap().status(), 200);

    // A job that will still be running when the replica that claimed it is killed.
    let endless = json!({"task": "classification", "hidden_layers": [64, 64], "max_epochs": 100_000, "patience": 100_000, "seed": 2});
    let r = replicas[2].post(&k, "/v1/training-jobs").json(&job(&endless)).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let endless_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let ids: Vec<String> = (0..3).map(|i| std::fs::read_to_string(data(i).join("replica.id")).unwrap().trim().to_string()).collect();

    // Work through all three at once.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<Acked>::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (replicas, k, acked) = (replicas.clone(), k.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let a = ingest_until_acked(&replicas, &k, w, b, (w + b) as usize % 3).await;
                acked.lock().unwrap().push(a);
            }
        }));
    }
    // Receipts of every other acknowledged request (scoring, lookups, alias moves).
    let receipts = Arc::new(std::sync::Mutex::new(Vec::<Receipt>::new()));
    let mut others = Vec::new();
    let instances = json!({"instances": [[13.2, 1.8, 2.4, 16.0, 100.0, 2.8, 2.7, 0.3, 1.9, 4.4, 1.0, 3.2, 1000.0]]});
    for (i, replica) in replicas.iter().enumerate() {
        let (replica, k, stop, instances, receipts) = (replica.clone(), k.clone(), stop.clone(), instances.clone(), receipts.clone());
        others.push(tokio::spawn(async move {
            let (mut scored, mut looked_up) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                // Scoring on the alias that moves: always one of its versions.
                if let Ok(r) = replica.post(&k, "/v1/models/wine@champion/invocations").json(&instances).send().await {
                    let status = r.status();
                    if status == 200 {
                        receipts.lock().unwrap().push(receipt(&r, i));
                    }
                    let v: Value = r.json().await.unwrap_or_default();
                    assert!(status == 200 || status.is_server_error(), "replica {i} scoring: {status} {v}");
                    if status == 200 {
                        assert!([1, 2].contains(&v["version"].as_i64().unwrap()), "{v}");
                        scored += 1;
                    }
                }
                let ask = json!({"features": ["events:batch"], "entities": {"id": [0, 1_000_000, 2_000_000]}});
                if let Ok(r) = replica.post(&k, "/v1/online/features").json(&ask).send().await {
                    let status = r.status();
                    if status == 200 {
                        receipts.lock().unwrap().push(receipt(&r, i));
                    }
                    let v: Value = r.json().await.unwrap_or_default();
                    assert!(status == 200 || status.is_server_error(), "replica {i} lookup: {status} {v}");
                    looked_up += u64::from(status == 200);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (scored, looked_up)
        }));
    }
    let mover = {
        let (replicas, stop, k, receipts) = (replicas.clone(), stop.clone(), k.clone(), receipts.clone());
        let move_alias = move |to: &Remote, v: i64| to.client.put(to.url("/v1/models/wine/aliases/champion")).bearer_auth(&k).json(&json!({"version": v})).send();
        tokio::spawn(async move {
            let mut moves = 0;
            while !stop.load(Ordering::SeqCst) {
                let to = &replicas[moves % 2];
                if let Ok(r) = move_alias(to, 1 + (moves % 2) as i64).await {
                    assert_eq!(r.status(), 200);
                    receipts.lock().unwrap().push(receipt(&r, moves % 2));
                }
                moves += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            moves
        })
    };

    // Kill the replica running the long job mid-work, with ingests acknowledged and in
    // flight, and restart it.
    let victim = loop {
        let j: Value = replicas[0].get(&k, &format!("/v1/training-jobs/{endless_id}")).send().await.unwrap().json().await.unwrap();
        if j["state"] == "running" && acked.lock().unwrap().len() >= 6 {
            break ids.iter().position(|id| j["worker"] == id.as_str()).expect("the job names the replica running it");
        }
        assert!(["queued", "running"].contains(&j["state"].as_str().unwrap()), "{j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    running[victim].child.start_kill().unwrap();
    running[victim].child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running[victim] = start(victim).await;
    let replicas: Vec<Remote> = running.iter().map(remote).collect();
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for o in others {
        let (scored, looked_up) = o.await.unwrap();
        assert!(scored > 0 && looked_up > 0, "every replica answered scoring and lookups");
    }
    assert!(mover.await.unwrap() > 0);

    // Every acknowledged ingest is present exactly once (each batch was retried until it
    // was acknowledged, so that is every batch).
    let rows: Vec<Value> = replicas[1].get(&k, "/v1/feature-groups/events/data?format=json&limit=100000").send().await.unwrap().json().await.unwrap();
    let mut per_batch: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for r in &rows {
        *per_batch.entry((r["writer"].as_i64().unwrap(), r["batch"].as_i64().unwrap())).or_default() += 1;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert_eq!(acked.len() as i64, WRITERS * BATCHES);
    for a in &acked {
        assert_eq!(per_batch.get(&a.batch), Some(&ROWS), "batch {:?} written exactly once", a.batch);
    }
    assert_eq!(per_batch.len() as i64, WRITERS * BATCHES, "nothing unacknowledged was written");

    // Catalog versions: gap-free, one per batch, times rising; the Delta log agrees.
    let versions: Vec<Value> = replicas[2].get(&k, "/v1/feature-groups/events/versions").send().await.unwrap().json().await.unwrap();
    let numbers: Vec<i64> = versions.iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(numbers, (0..=WRITERS * BATCHES).collect::<Vec<_>>());
    let times: Vec<&str> = versions.iter().map(|v| v["committed_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "commit times rise with the version: {times:?}");
    let pool = sqlx::postgres::PgPoolOptions::new().connect(&catalog).await.unwrap();
    let location: String = sqlx::query_scalar("SELECT location FROM feature_groups WHERE name = 'events'").fetch_one(&pool).await.unwrap();
    let options: std::collections::HashMap<String, String> = [
        ("aws_endpoint", s3.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let tables = lakeledger_query::tables::TableStore::new(url::Url::parse(&root).unwrap(), options).unwrap();
    let table = tables.open(&tables.location(&location).unwrap(), None).await.unwrap();
    assert_eq!(table.version().map(|v| v as i64), Some(WRITERS * BATCHES), "the Delta log holds as many versions as the catalog");

    // `TIMESTAMP AS OF` every recorded time reads that version, on every replica.
    for (v, t) in numbers.iter().zip(&times) {
        let replica = &replicas[*v as usize % 3];
        let sql = format!("SELECT count(*) AS n FROM events TIMESTAMP AS OF '{t}'");
        let r = replica.post(&k, "/v1/sql").json(&json!({"sql": sql, "format": "json"})).send().await.unwrap();
        assert_eq!(r.headers()["x-lakeledger-versions"], format!("events@{v}").as_str());
        assert_eq!(r.json::<Value>().await.unwrap(), json!([{"n": v * ROWS}]));
    }

    // Every job ran to one end: the killed replica's job failed (at its restart, or by
    // another replica once its lease lapsed), with the reason; the others succeeded, each
    // registering one version.
    let mut endless_job = Value::Null;
    for _ in 0..300 {
        endless_job = replicas[0].get(&k, &format!("/v1/training-jobs/{endless_id}")).send().await.unwrap().json().await.unwrap();
        if endless_job["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(endless_job["state"], "failed", "{endless_job}");
    assert!(endless_job["error"].as_str().unwrap_or_default().contains("stopped"), "{endless_job}");
    let jobs: Vec<Value> = replicas[1].get(&k, "/v1/training-jobs").send().await.unwrap().json().await.unwrap();
    let succeeded = jobs.iter().filter(|j| j["state"] == "succeeded").count();
    assert_eq!((jobs.len(), succeeded), (3, 2), "{jobs:?}");
    let model_versions: Vec<Value> = replicas[2].get(&k, "/v1/models/wine/versions").send().await.unwrap().json().await.unwrap();
    assert_eq!(model_versions.len(), succeeded, "one version per succeeded job");

    // Lookups on every replica agree with the latest version (a replica killed between its
    // commit and its Redis write is caught up by the others' refresh).
    let ids: Vec<i64> = (0..WRITERS).flat_map(|w| (0..BATCHES).map(move |b| w * 1_000_000 + b * 1000)).collect();
    let ask = json!({"features": ["events:batch"], "entities": {"id": ids}});
    let want: Vec<Value> = (0..WRITERS).flat_map(|_| (0..BATCHES).map(|b| json!(b))).collect();
    for (i, replica) in replicas.iter().enumerate() {
        let mut got = Value::Null;
        for _ in 0..200 {
            got = replica.post(&k, "/v1/online/features").json(&ask).send().await.unwrap().json().await.unwrap();
            if got["metadata"]["versions"]["events"] == WRITERS * BATCHES && got["results"][1]["values"] == json!(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got["metadata"]["versions"]["events"], WRITERS * BATCHES, "replica {i}: {got}");
        assert_eq!(got["results"][1]["values"], json!(want), "replica {i}");
    }

    // The merged audit export verifies and holds the intent of every acknowledged request.
    let auditor: Value = replicas[0].post(&k, "/v1/keys").json(&json!({"name": "audit", "role": "auditor"})).send().await.unwrap().json().await.unwrap();
    let auditor = auditor["secret"].as_str().unwrap().to_string();
    let mut packages = Vec::new();
    let mut keys = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let r = replica.post(&auditor, "/v1/audit/export").json(&json!({})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let file = dir.path().join(format!("export-{i}.json"));
        std::fs::write(&file, r.bytes().await.unwrap()).unwrap();
        packages.push(file);
        let out = std::process::Command::new(&bin).args(["audit", "public-key", "--data-dir"]).arg(data(i)).output().unwrap();
        keys.push(lakeledger_audit::note::VerifierKey::parse(String::from_utf8(out.stdout).unwrap().trim()).unwrap());
    }
    let merged = dir.path().join("merged");
    lakeledger_audit::merge::merge(&packages, &keys, &merged).unwrap();
    lakeledger_audit::merge::verify_merged(&merged, &keys).unwrap();
    let timeline: BTreeSet<(usize, u64, String)> = std::fs::read_to_string(merged.join("timeline.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["log"].as_u64().unwrap() as usize, v["seq"].as_u64().unwrap(), v["leaf_hash"].as_str().unwrap().to_string())
        })
        .collect();
    for a in &acked {
        assert!(timeline.contains(&a.receipt), "the intent of acknowledged batch {:?} is in the merged trail", a.batch);
    }
    let receipts = std::mem::take(&mut *receipts.lock().unwrap());
    assert!(!receipts.is_empty());
    for r in &receipts {
        assert!(timeline.contains(r), "the intent of acknowledged request {r:?} is in the merged trail");
    }
}
