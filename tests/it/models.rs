//! Models through the server: real data ingested as feature groups, training sets, training
//! jobs, the registry with signed artifacts, aliases with history, lineage both ways.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Http, Server, error_code};

/// Ingests one of the scikit-learn datasets as two feature groups: `<name>_features` (every
/// column but the label) and `<name>_labels` (the label), keyed by `id`, with event times
/// one day apart so every label sees its features.
pub(crate) async fn ingest_dataset(s: &impl Http, k: &str, name: &str, label: &str, label_type: &str) -> usize {
    let path = format!("{}/../trainer/tests/data/{name}.csv", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let label_at = header.iter().position(|h| *h == label).unwrap();
    let features: Vec<Value> =
        header.iter().filter(|h| **h != "id" && **h != label).map(|h| json!({"name": h, "type": "float64"})).collect();
    for (group, feats) in [(format!("{name}_features"), features), (format!("{name}_labels"), vec![json!({"name": label, "type": label_type})])] {
        let r = s
            .post(k, "/v1/feature-groups")
            .json(&json!({"name": group, "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts", "features": feats}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let (mut fcsv, mut lcsv) = (String::new(), format!("id,ts,{label}\n"));
    fcsv.push_str(&header.iter().filter(|h| **h != label).copied().collect::<Vec<_>>().join(","));
    fcsv.push_str(",ts\n");
    let mut rows = 0;
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let value = if label_type == "int64" { format!("{}", cells[label_at].parse::<f64>().unwrap() as i64) } else { cells[label_at].to_string() };
        let rest: Vec<&str> = cells.iter().enumerate().filter(|(i, _)| *i != label_at).map(|(_, c)| *c).collect();
        fcsv.push_str(&format!("{},2026-01-01T00:00:00Z\n", rest.join(",")));
        lcsv.push_str(&format!("{},2026-01-02T00:00:00Z,{value}\n", cells[0]));
        rows += 1;
    }
    for (group, body) in [(format!("{name}_features"), fcsv), (format!("{name}_labels"), lcsv)] {
        let r = s.post(k, &format!("/v1/feature-groups/{group}/data")).header("content-type", "text/csv").body(body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    rows
}

pub(crate) fn training_set(name: &str, label: &str) -> Value {
    json!({"name": name, "spine_sql": format!("SELECT id, ts, {label} FROM {name}_labels"), "spine_time": "ts", "features": [format!("{name}_features")]})
}

/// Polls a job until it ends (training here takes seconds; the cap only stops a hang).
pub(crate) async fn wait(s: &impl Http, k: &str, id: &str) -> Value {
    for _ in 0..1200 {
        let j: Value = s.get(k, &format!("/v1/training-jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

pub(crate) async fn train(s: &impl Http, k: &str, body: Value) -> Value {
    let r = s.post(k, "/v1/training-jobs").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let job: Value = r.json().await.unwrap();
    assert!(["queued", "running"].contains(&job["state"].as_str().unwrap()));
    let done = wait(s, k, job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    done
}

#[tokio::test]
async fn real_datasets_train_to_the_reference_scores_with_lineage_and_signatures() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    let cases = [
        ("breast_cancer", "benign", "int64", "classification", "accuracy", 0.95),
        ("wine", "cultivar", "int64", "classification", "accuracy", 0.95),
        ("diabetes", "progression", "float64", "regression", "r2", 0.35),
    ];
    for (name, label, label_type, task, metric, floor) in cases {
        let rows = ingest_dataset(&s, &k, name, label, label_type).await;
        // Linear and logistic regression, as in the reference scores.
        let job = train(&s, &k, json!({
            "model": name, "training_set": training_set(name, label), "label": label,
            "config": {"task": task, "hidden_layers": [], "learning_rate": 0.01, "seed": 0}
        }))
        .await;
        assert!(job["progress"]["epoch"].as_u64().unwrap() >= 1, "{job}");
        assert_eq!(job["model_version"], 1);
        let v: Value = s.get(&k, &format!("/v1/models/{name}/versions/1")).send().await.unwrap().json().await.unwrap();
        let score = v["metrics"][metric].as_f64().unwrap();
        assert!(score >= floor, "{name}: {metric} {score} < {floor}: {v}");
        assert_eq!((v["source"].as_str(), v["backend"].as_str()), (Some("trained"), Some("cpu")));
        assert_eq!(v["lineage"]["feature_groups"], json!([{"group": format!("{name}_features"), "version": 1}]));
        assert_eq!(v["lineage"]["spine_versions"], json!([format!("{name}_labels@1")]));
        let ts: Value = s.get(&k, &format!("/v1/training-sets/{}", v["training_set_id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
        assert_eq!(ts["rows"].as_u64(), Some(rows as u64));
        assert_eq!(v["lineage"]["training_set_sha256"], ts["sha256"]);
        assert!(v["build_id"].as_str().unwrap().starts_with("lakeledger "));
    }

    // The signature is a signed note by the key the server publishes, over the artifact's hash.
    let key = s.get(&k, "/v1/models/signing-key").send().await.unwrap().text().await.unwrap();
    let verifier = lakeledger_audit::VerifierKey::parse(&key).unwrap();
    let v: Value = s.get(&k, "/v1/models/wine/versions/1").send().await.unwrap().json().await.unwrap();
    let (text, _) = lakeledger_audit::note::open_note(v["signature"].as_str().unwrap(), &[verifier]).unwrap();
    assert_eq!(text, format!("lakeledger model artifact\ndefault/wine\nsha256:{}\n", v["artifact_sha256"].as_str().unwrap()));
    let r = s.get(&k, "/v1/models/wine/versions/1/artifact").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let artifact = r.bytes().await.unwrap();
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&artifact)), v["artifact_sha256"].as_str().unwrap());

    // Lineage both ways.
    let l: Value = s.get(&k, "/v1/models/wine/versions/1/lineage").send().await.unwrap().json().await.unwrap();
    assert_eq!(l["training_set"]["id"], v["training_set_id"]);
    assert_eq!(l["feature_groups"][0]["group"], "wine_features");
    let back: Value = s.get(&k, "/v1/feature-groups/wine_features/lineage?version=1").send().await.unwrap().json().await.unwrap();
    assert_eq!(back["model_versions"], json!([{"model": "wine", "version": 1, "training_set_id": v["training_set_id"]}]), "{back}");
    let none: Value = s.get(&k, "/v1/feature-groups/wine_features/lineage?version=7").send().await.unwrap().json().await.unwrap();
    assert_eq!(none["training_sets"], json!([]));

    // An externally trained artifact in the same format imports, marked as such.
    let r = s.post(&k, "/v1/models/wine/versions").header("content-type", "application/json").body(artifact.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let imported: Value = r.json().await.unwrap();
    assert_eq!((imported["version"].as_i64(), imported["source"].as_str(), &imported["lineage"]), (Some(2), Some("imported"), &Value::Null));
    let r = s.post(&k, "/v1/models/wine/versions").header("content-type", "application/json").body("{\"weights\": []}").send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("not a lakeledger model artifact"));

    // Every download is in the ledger; so is each job's outcome.
    let l = &s.state.audit.ledger;
    let events: Vec<Value> = l.read(0, l.size()).unwrap().iter().filter_map(|leaf| serde_json::from_slice(leaf.view().unwrap().payload).ok()).collect();
    assert!(events.iter().any(|e| e["kind"] == "model_version.download" && e["resource"]["name"] == "wine"));
    let finished: Vec<&Value> = events.iter().filter(|e| e["kind"] == "training_job.finish").collect();
    assert_eq!(finished.len(), 3);
    assert!(finished.iter().all(|e| e["details"]["state"] == "succeeded" && e["resource"]["versions_written"] == json!([1])));

    // A tampered artifact is refused with a clear error.
    let stored = s.data_dir.join("tables/tenants/default/models");
    let file = walk(&stored).into_iter().find(|p| p.to_string_lossy().contains(v["artifact_sha256"].as_str().unwrap())).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let (code, message) = error_code(s.get(&k, "/v1/models/wine/versions/1/artifact").send().await.unwrap(), 409).await;
    assert_eq!(code, "integrity_check_failed");
    assert!(message.contains("SHA-256"), "{message}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test]
async fn aliases_keep_their_history_and_answer_for_any_time() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    ingest_dataset(&s, &k, "wine", "cultivar", "int64").await;
    let job = |seed: u64| json!({"model": "wine", "training_set": training_set("wine", "cultivar"), "label": "cultivar",
                                 "config": {"task": "classification", "hidden_layers": [], "max_epochs": 3, "seed": seed}});
    train(&s, &k, job(1)).await;
    train(&s, &k, job(2)).await;

    let put = |alias: &str, body: Value| s.client.put(s.url(&format!("/v1/models/wine/aliases/{alias}"))).bearer_auth(&k).json(&body).send();
    let r = put("champion", json!({"version": 1, "reason": "first model"})).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let between = r.json::<Value>().await.unwrap()["moved_at"].as_str().unwrap().to_string();
    let moved: Value = put("champion", json!({"version": 2, "reason": "better f1"})).await.unwrap().json().await.unwrap();
    assert_eq!((moved["from_version"].as_i64(), moved["to_version"].as_i64(), moved["seq"].as_i64()), (Some(1), Some(2), Some(2)));

    let now: Value = s.get(&k, "/v1/models/wine/aliases/champion").send().await.unwrap().json().await.unwrap();
    assert_eq!(now["version"], 2);
    let then: Value = s.get(&k, &format!("/v1/models/wine/aliases/champion?at={}", between.replace('+', "%2B"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(then["version"], 1, "champion at T");
    let before = error_code(s.get(&k, "/v1/models/wine/aliases/champion?at=2020-01-01T00:00:00Z").send().await.unwrap(), 404).await;
    assert_eq!(before.0, "alias_not_found");
    let history: Vec<Value> = s.get(&k, "/v1/models/wine/aliases/champion/history").send().await.unwrap().json().await.unwrap();
    assert_eq!(history.iter().map(|h| (h["to_version"].as_i64(), h["reason"].as_str().unwrap().to_string())).collect::<Vec<_>>(),
               vec![(Some(1), "first model".to_string()), (Some(2), "better f1".to_string())]);
    assert!(history.iter().all(|h| h["actor"].as_str().unwrap().starts_with("default/")), "{history:?}");
    let m: Value = s.get(&k, "/v1/models/wine").send().await.unwrap().json().await.unwrap();
    assert_eq!((m["latest_version"].as_i64(), &m["aliases"]), (Some(2), &json!({"champion": 2})));

    // A version an alias points at cannot be deleted; archived versions take no aliases.
    let del = s.delete(&k, "/v1/models/wine/versions/2").send().await.unwrap();
    assert!(error_code(del, 409).await.1.contains("champion"));
    let r = s.post(&k, "/v1/models/wine/versions/1/archive").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(error_code(put("challenger", json!({"version": 1})).await.unwrap(), 409).await.0, "conflict");
    assert_eq!(error_code(put("champion", json!({"version": 9})).await.unwrap(), 404).await.0, "model_version_not_found");
    assert_eq!(error_code(put("7", json!({"version": 2})).await.unwrap(), 422).await.0, "unprocessable");
    let r = s.delete(&k, "/v1/models/wine/aliases/champion?reason=retired").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.delete(&k, "/v1/models/wine/versions/2").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get(&k, "/v1/models/wine/versions/2").send().await.unwrap().status(), 404);
    let history: Vec<Value> = s.get(&k, "/v1/models/wine/aliases/champion/history").send().await.unwrap().json().await.unwrap();
    assert_eq!((history.len(), &history[2]["to_version"], &history[2]["reason"]), (3, &Value::Null, &json!("retired")));

    // Readers read; they cannot move aliases.
    let reader = s.create_key("reader", None).await;
    assert_eq!(s.get(&reader, "/v1/models/wine/versions").send().await.unwrap().status(), 200);
    let r = s.client.put(s.url("/v1/models/wine/aliases/x")).bearer_auth(&reader).json(&json!({"version": 1})).send().await.unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn jobs_stream_progress_can_be_cancelled_and_survive_restarts_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(lakeledger::app::config::Config::embedded(dir.path()).unwrap(), None).await;
    let k = s.admin_key.clone();
    ingest_dataset(&s, &k, "wine", "cultivar", "int64").await;
    let ts: Value = s.post(&k, "/v1/training-sets").json(&training_set("wine", "cultivar")).send().await.unwrap().json().await.unwrap();
    let ts_id = ts["id"].as_str().unwrap();

    // Bad requests are named before anything is queued.
    let bad = |body: Value| s.post(&k, "/v1/training-jobs").json(&body).send();
    let r = bad(json!({"model": "wine", "training_set_id": ts_id, "label": "cultivar", "config": {"task": "classification", "learning_rate": -1}})).await.unwrap();
    assert!(error_code(r, 422).await.1.contains("learning_rate"));
    let r = bad(json!({"model": "wine", "training_set_id": "ts_0123456789abcdef0123456789abcdef", "label": "cultivar", "config": {"task": "classification"}})).await.unwrap();
    assert_eq!(error_code(r, 404).await.0, "training_set_not_found");
    let r = bad(json!({"model": "wine", "training_set_id": ts_id, "label": "cultivar", "config": {"task": "classification"}, "backend": "cuda"})).await.unwrap();
    assert!(error_code(r, 422).await.1.contains("cuda"));
    // A label the training set does not have fails the job, saying which columns exist.
    let r = bad(json!({"model": "wine", "training_set_id": ts_id, "label": "nope", "config": {"task": "classification"}})).await.unwrap();
    let failed = wait(&s, &k, r.json::<Value>().await.unwrap()["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("no column `nope`"), "{failed}");

    // A long job, followed over SSE and cancelled once it reports progress.
    let r = bad(json!({"model": "wine", "training_set_id": ts_id, "label": "cultivar",
                       "config": {"task": "classification", "hidden_layers": [64], "max_epochs": 100000, "patience": 100000}})).await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let mut events = s.get(&k, &format!("/v1/training-jobs/{id}/events")).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut cancelled = false;
    while let Some(chunk) = events.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !cancelled && seen.contains("\"epoch\":") {
            let r = s.post(&k, &format!("/v1/training-jobs/{id}/cancel")).send().await.unwrap();
            assert_eq!(r.status(), 202);
            cancelled = true;
        }
    }
    assert!(seen.contains("event: job"), "{seen}");
    assert!(seen.contains("\"state\":\"cancelled\""), "the stream ends with the final state: {seen}");
    assert_eq!(wait(&s, &k, &id).await["state"], "cancelled");
    assert!(s.get(&k, "/v1/models/wine/versions").send().await.unwrap().json::<Vec<Value>>().await.unwrap().is_empty());

    // A job the previous process left running is failed at startup, with the reason.
    let catalog = lakeledger::platform::catalog::connect(lakeledger::app::config::Config::embedded(dir.path()).unwrap().catalog_url.expose()).await.unwrap();
    let mut job = catalog.job(&catalog.tenant_by_name("default").await.unwrap().unwrap().id, &id).await.unwrap().unwrap();
    job.id = "job_left_running".into();
    job.state = "running".into();
    job.finished_at = None;
    catalog.insert_job(&job).await.unwrap();
    // Another replica's jobs: one it is running (its lease holds) and one whose replica
    // died (its lease lapsed).
    let elsewhere = lakeledger::platform::catalog::JobRecord {
        id: "job_elsewhere".into(),
        worker: Some("replica_other".into()),
        lease_until: Some(i64::MAX),
        ..job.clone()
    };
    catalog.insert_job(&elsewhere).await.unwrap();
    catalog.insert_job(&lakeledger::platform::catalog::JobRecord { id: "job_lapsed".into(), lease_until: Some(1), ..elsewhere }).await.unwrap();
    s.stop().await;
    let s = Server::start_with(lakeledger::app::config::Config::embedded(dir.path()).unwrap(), Some(k.clone())).await;
    let j: Value = s.get(&k, "/v1/training-jobs/job_left_running").send().await.unwrap().json().await.unwrap();
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("server stopped"), "{j}");
    let j: Value = s.get(&k, "/v1/training-jobs/job_elsewhere").send().await.unwrap().json().await.unwrap();
    assert_eq!(j["state"], "running", "a job another replica runs is not touched: {j}");
    let j: Value = s.get(&k, "/v1/training-jobs/job_lapsed").send().await.unwrap().json().await.unwrap();
    assert_eq!(j["state"], "failed");
    assert!(j["error"].as_str().unwrap().contains("lease lapsed"), "{j}");
    let l = &s.state.audit.ledger;
    let ends = l
        .read(0, l.size())
        .unwrap()
        .iter()
        .filter_map(|leaf| serde_json::from_slice::<Value>(leaf.view().unwrap().payload).ok())
        .filter(|e| e["kind"] == "training_job.finish" && e["resource"]["name"] == "job_lapsed")
        .count();
    assert_eq!(ends, 1, "the lapsed job's end is recorded once");
    // A cancel asked here is passed to the replica running it.
    let r = s.post(&k, "/v1/training-jobs/job_elsewhere/cancel").send().await.unwrap();
    assert_eq!(r.status(), 202);
    let tenant = catalog.tenant_by_name("default").await.unwrap().unwrap();
    assert!(catalog.job(&tenant.id, "job_elsewhere").await.unwrap().unwrap().cancel_requested);
    let all: Vec<Value> = s.get(&k, "/v1/training-jobs").send().await.unwrap().json().await.unwrap();
    assert_eq!(all.len(), 5);
}

/// `lakeledger train` starts a job on a running server, follows it to the end and says
/// which version it registered; a refused job exits non-zero with the server's reason.
#[tokio::test]
async fn the_cli_starts_and_follows_a_job() {
    let Some(bin) = crate::audit::lakeledger_bin() else {
        assert_ne!(std::env::var("LAKELEDGER_REQUIRE_BIN").as_deref(), Ok("1"), "the lakeledger binary is required");
        crate::support::notice("lakeledger binary not built; skipping the CLI training test");
        return;
    };
    let s = Server::start().await;
    let k = s.admin_key.clone();
    ingest_dataset(&s, &k, "wine", "cultivar", "int64").await;
    let ts: Value = s.post(&k, "/v1/training-sets").json(&training_set("wine", "cultivar")).send().await.unwrap().json().await.unwrap();
    let run = |config: &str| {
        tokio::process::Command::new(&bin)
            .args(["train", "--server", &s.url(""), "--model", "wine", "--training-set", ts["id"].as_str().unwrap(), "--label", "cultivar", "--config", config])
            .env("LAKELEDGER_API_KEY", &k)
            .output()
    };
    let out = run(r#"{"task":"classification","hidden_layers":[],"max_epochs":5}"#).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("succeeded: wine version 1"), "{stdout}");
    let out = run(r#"{"task":"classification","batch_size":0}"#).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch_size"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `lakeledger models rotate-signing-key` (server stopped): new versions are signed with
/// the new key, earlier ones still verify by the key they name and stay servable, the
/// rotation is in the ledger, and a version naming a key the server never had is refused.
#[tokio::test]
async fn a_rotated_signing_key_keeps_earlier_versions_servable() {
    let Some(bin) = crate::audit::lakeledger_bin() else {
        assert_ne!(std::env::var("LAKELEDGER_REQUIRE_BIN").as_deref(), Ok("1"), "the lakeledger binary is required");
        crate::support::notice("lakeledger binary not built; skipping the signing-key rotation test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = || lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    let s = Server::start_with(config(), None).await;
    let k = s.admin_key.clone();
    ingest_dataset(&s, &k, "wine", "cultivar", "int64").await;
    let small = json!({"task": "classification", "hidden_layers": [], "max_epochs": 5, "seed": 1});
    train(&s, &k, json!({"model": "wine", "training_set": training_set("wine", "cultivar"), "label": "cultivar", "config": small})).await;
    let before: Value = s.get(&k, "/v1/models/signing-keys").send().await.unwrap().json().await.unwrap();
    let v1: Value = s.get(&k, "/v1/models/wine/versions/1").send().await.unwrap().json().await.unwrap();
    assert_eq!((&v1["signing_key_id"], &before["previous"]), (&before["current"], &json!([])));
    let instances = json!({"instances": [[13.2, 1.8, 2.4, 16.0, 100.0, 2.8, 2.7, 0.3, 1.9, 4.4, 1.0, 3.2, 1000.0]]});
    let predicted: Value = s.post(&k, "/v1/models/wine/versions/1/invocations").json(&instances).send().await.unwrap().json().await.unwrap();
    s.stop().await;

    let out = tokio::process::Command::new(&bin).args(["models", "rotate-signing-key", "--data-dir"]).arg(dir.path()).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(before["current"].as_str().unwrap()), "{stdout}");

    let s = Server::start_with(config(), Some(k.clone())).await;
    let after: Value = s.get(&k, "/v1/models/signing-keys").send().await.unwrap().json().await.unwrap();
    assert_eq!(after["previous"], json!([before["current"]]));
    assert_ne!(after["current"], before["current"]);
    // Version 1 still downloads and scores the same.
    assert_eq!(s.get(&k, "/v1/models/wine/versions/1/artifact").send().await.unwrap().status(), 200);
    let again: Value = s.post(&k, "/v1/models/wine/versions/1/invocations").json(&instances).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["predictions"], predicted["predictions"]);
    // New versions carry the new key.
    train(&s, &k, json!({"model": "wine", "training_set": training_set("wine", "cultivar"), "label": "cultivar", "config": small})).await;
    let v2: Value = s.get(&k, "/v1/models/wine/versions/2").send().await.unwrap().json().await.unwrap();
    assert_eq!(v2["signing_key_id"], after["current"]);

    // The rotation is recorded, naming both keys.
    let l = &s.state.audit.ledger;
    let events: Vec<Value> = l.read(0, l.size()).unwrap().iter().filter_map(|leaf| serde_json::from_slice(leaf.view().unwrap().payload).ok()).collect();
    let rotated = events.iter().find(|e| e["kind"] == "model.rotate_signing_key" && e["phase"] == "outcome").expect("the rotation is recorded");
    assert_eq!((&rotated["details"]["old_key"], &rotated["details"]["new_key"]), (&before["current"], &after["current"]));
    assert_eq!(rotated["outcome"]["result"], "success");

    // A version that names a key this server never had is refused, saying so.
    let stranger = lakeledger_audit::SignerKey::generate("lakeledger-models").unwrap().verifier().encode();
    let pool = sqlx::SqlitePool::connect(config().catalog_url.expose()).await.unwrap();
    sqlx::query("UPDATE model_versions SET signing_key_id = ? WHERE version = 1").bind(&stranger).execute(&pool).await.unwrap();
    let (code, message) = error_code(s.get(&k, "/v1/models/wine/versions/1/artifact").send().await.unwrap(), 409).await;
    assert_eq!(code, "integrity_check_failed");
    assert!(message.contains("not one of this server's model-signing keys"), "{message}");
}
