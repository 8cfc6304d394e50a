//! The tables the server writes are standard Delta tables: the Python `deltalake`
//! package reads every version with the same rows.

use serde_json::{Value, json};

use crate::support::Server;

fn python_with_deltalake() -> Option<String> {
    let python = std::env::var("LAKELEDGER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python).args(["-c", "import deltalake, pyarrow"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var("LAKELEDGER_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("{python} with the deltalake and pyarrow packages is required (pip install deltalake pyarrow)");
    }
    crate::support::notice(&format!("skipping Python interop test: {python} cannot import deltalake and pyarrow"));
    None
}

#[tokio::test]
async fn python_deltalake_reads_every_version() {
    let Some(python) = python_with_deltalake() else { return };
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "emb": [1.0]}, {"user_id": 2, "ts": "2026-01-01T00:00:00Z"}])).await;
    s.ingest_json(&k, "clicks", "upsert", json!([{"user_id": 2, "ts": "2026-01-01T00:00:00Z", "clicks": 5}, {"user_id": 3, "ts": "2026-01-02T00:00:00Z"}])).await;
    let mut features = vec![
        json!({"name": "clicks", "type": "int32"}),
        json!({"name": "ctr", "type": "float64"}),
        json!({"name": "country", "type": "string"}),
        json!({"name": "emb", "type": "list<float32>"}),
    ];
    features.push(json!({"name": "day", "type": "date"}));
    let r = s.client.put(s.url("/v1/feature-groups/clicks/schema")).bearer_auth(&k).json(&json!({"features": features})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.ingest_json(&k, "clicks", "overwrite", json!([{"user_id": 7, "ts": "2026-01-03T00:00:00Z", "day": "2026-01-03"}])).await;

    let table = s.data_dir.join("tables/tenants/default/feature-groups/clicks");
    let out = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/read_versions.py"))
        .arg(&table)
        .arg("4")
        .arg("user_id")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The server's own reads of each version agree with what Python saw.
    for v in 0..=4 {
        let rows = s.read_json(&k, &format!("/v1/feature-groups/clicks/data?version={v}")).await;
        let mut ids: Vec<i64> = rows.iter().map(|r| r["user_id"].as_i64().unwrap()).collect();
        ids.sort();
        assert_eq!(seen[v.to_string()], json!(ids), "version {v}");
    }
    assert_eq!(seen["2"], json!([1, 2, 3]));
    assert_eq!(seen["4"], json!([7]));
}
