//! The S3 path against an S3-compatible server (CI starts `moto_server` on 127.0.0.1).
//! Set LAKELEDGER_TEST_S3_ENDPOINT (and create bucket `lakeledger-test`) to run these;
//! LAKELEDGER_REQUIRE_S3=1 turns a missing endpoint into a failure.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use lakeledger_query::tables::{CommitMeta, TableStore, WriteMode};
use serde_json::{Value, json};

use crate::support::Server;

const BUCKET: &str = "lakeledger-test";

fn s3_options() -> Option<HashMap<String, String>> {
    let Ok(endpoint) = std::env::var("LAKELEDGER_TEST_S3_ENDPOINT") else {
        if std::env::var("LAKELEDGER_REQUIRE_S3").is_ok_and(|v| v == "1") {
            panic!("LAKELEDGER_TEST_S3_ENDPOINT must point at an S3-compatible server");
        }
        crate::support::notice("skipping S3 tests: LAKELEDGER_TEST_S3_ENDPOINT is not set");
        return None;
    };
    Some(HashMap::from([
        ("aws_endpoint".to_string(), endpoint),
        ("aws_allow_http".to_string(), "true".to_string()),
        ("aws_access_key_id".to_string(), "test".to_string()),
        ("aws_secret_access_key".to_string(), "test".to_string()),
        ("aws_region".to_string(), "us-east-1".to_string()),
    ]))
}

fn root() -> url::Url {
    url::Url::parse(&format!("s3://{BUCKET}/run-{}/", uuid::Uuid::new_v4().simple())).unwrap()
}

#[tokio::test]
async fn feature_groups_live_on_s3() {
    let Some(options) = s3_options() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.data_root = root();
    config.storage_options = options;
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let r = s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}])).await;
    assert_eq!(r.status(), 201);
    let r = s.ingest_json(&k, "clicks", "upsert", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 4}, {"user_id": 2, "ts": "2026-01-01T00:00:00Z"}])).await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?version=1").await.len(), 1);
    let latest = s.read_json(&k, "/v1/feature-groups/clicks/data").await;
    assert_eq!(latest.len(), 2);
    assert_eq!(latest.iter().find(|r| r["user_id"] == 1).unwrap()["clicks"], 4);
    let versions: Vec<Value> = s.get(&k, "/v1/feature-groups/clicks/versions").send().await.unwrap().json().await.unwrap();
    let t1 = versions[1]["committed_at"].as_str().unwrap().replace(':', "%3A");
    assert_eq!(s.read_json(&k, &format!("/v1/feature-groups/clicks/data?as_of={t1}")).await.len(), 1);
    let ready: Value = s.client.get(s.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["storage"], true);
}

/// Two writers commit against the same snapshot with no lock between them: conditional
/// puts make each land as its own version (one retries), never one over the other.
#[tokio::test]
async fn concurrent_commits_on_s3_do_not_overwrite_each_other() {
    let Some(options) = s3_options() else { return };
    let store = TableStore::new(root(), options).unwrap();
    let url = store.location("t").unwrap();
    let schema: lakeledger_query::FeatureSchema =
        serde_json::from_value(json!({"entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts", "features": []})).unwrap();
    store.create(&url, "t", &schema, CommitMeta::default()).await.unwrap();

    let mut commits = Vec::new();
    for writer in 0..2i64 {
        let table = store.open(&url, None).await.unwrap();
        let mut staged = store.begin_write(&table, &schema, WriteMode::Append).unwrap();
        let batch = RecordBatch::try_new(
            schema.arrow_schema(),
            vec![Arc::new(Int64Array::from(vec![writer])), Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC"))],
        )
        .unwrap();
        staged.write(batch).await.unwrap();
        commits.push((staged, table));
    }
    let (a, b) = (commits.pop().unwrap(), commits.pop().unwrap());
    let (ra, rb) = tokio::join!(a.0.commit(a.1, CommitMeta::default()), b.0.commit(b.1, CommitMeta::default()));
    let mut versions = vec![ra.unwrap().version, rb.unwrap().version];
    versions.sort();
    assert_eq!(versions, vec![1, 2]);
    let table = store.open(&url, None).await.unwrap();
    assert_eq!(lakeledger_query::tables::row_count(&table).await.unwrap(), Some(2));
}

/// The audit archive on S3: segments, tiles and checkpoints go up with conditional puts,
/// the archive alone verifies, nothing in it is overwritten, and a segment dropped
/// locally comes back from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_archive_lives_on_s3_and_verifies_from_there_alone() {
    use lakeledger_audit::archive::{ArchiveStore, StoreLog, archive_pass, verify_log};
    use lakeledger_audit::{Event, Ledger, LedgerConfig, Phase};
    let Some(options) = s3_options() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = Arc::new(lakeledger::platform::audit::ObjectArchive::new(root(), options, tokio::runtime::Handle::current()).unwrap());
    let mut cfg = LedgerConfig::new(dir.path().join("audit"), dir.path().join("audit.key"));
    cfg.segment_max_bytes = 64 << 10;
    cfg.archive = Some(archive.clone());
    let a = archive.clone();
    tokio::task::spawn_blocking(move || {
        let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
        let key = ledger.public_key();
        let pending: Vec<_> = (0..2000)
            .map(|i| {
                let mut e = Event::new("data.read", Phase::Intent);
                e.resource.name = Some(format!("group_{i}"));
                ledger.append_event(&e).unwrap()
            })
            .collect();
        for p in pending {
            p.wait(std::time::Duration::from_secs(10)).unwrap();
        }
        ledger.checkpoint().unwrap();
        for _ in 0..1000 {
            if ledger.segments().iter().rev().skip(1).all(|s| s.stored == lakeledger_audit::store::Stored::Compressed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let before: Vec<_> = ledger.read(0, ledger.size()).unwrap().iter().map(|l| l.hash).collect();
        let report = archive_pass(&ledger, &*a, Some(std::time::Duration::ZERO)).unwrap();
        assert!(!report.segments.is_empty() && report.dropped == report.segments, "{report:?}");
        let end = ledger.segments().last().unwrap().first_seq;
        let s = verify_log(&StoreLog(&*a), std::slice::from_ref(&key), None).unwrap();
        assert_eq!((s.records, s.end_size), (end, end));
        assert!(a.put_new("seg-00000001.zst", b"not the segment").is_err(), "the archive is never overwritten");
        // The dropped segments are read back from S3.
        let after: Vec<_> = ledger.read(0, ledger.size()).unwrap().iter().map(|l| l.hash).collect();
        assert_eq!(before, after);
    })
    .await
    .unwrap();
}
