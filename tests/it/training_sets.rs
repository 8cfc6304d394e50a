//! Point-in-time training sets through the server.

use serde_json::{Value, json};

use crate::support::{Server, error_code};


async fn setup() -> Server {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    // v1: user 1 on Jan 1, user 2 on Jan 3; v2: user 1 again on Jan 5.
    s.ingest_json(&k, "clicks", "append", json!([
        {"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 10},
        {"user_id": 2, "ts": "2026-01-03T00:00:00Z", "clicks": 20}
    ])).await;
    s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2026-01-05T00:00:00Z", "clicks": 50}])).await;
    let r = s.post(&k, "/v1/feature-groups").json(&json!({
        "name": "labels", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "label", "type": "int64"}]
    })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    s.ingest_json(&k, "labels", "append", json!([
        {"user_id": 2, "ts": "2026-01-10T00:00:00Z", "label": 4},
        {"user_id": 1, "ts": "2026-01-06T00:00:00Z", "label": 2},
        {"user_id": 1, "ts": "2026-01-02T00:00:00Z", "label": 1},
        {"user_id": 2, "ts": "2026-01-02T00:00:00Z", "label": 3},
        {"user_id": 3, "ts": "2026-01-04T00:00:00Z", "label": 5}
    ])).await;
    s
}

fn request(extra: Value) -> Value {
    let mut r = json!({
        "name": "churn-v1",
        "spine_sql": "SELECT user_id, ts, label FROM labels",
        "spine_time": "ts",
        "features": ["clicks:clicks"],
        "ttl_seconds": {"clicks": 5 * 86400}
    });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

#[tokio::test]
async fn features_are_taken_as_of_each_spine_time_and_the_result_is_reproducible() {
    let s = setup().await;
    let k = s.admin_key.clone();
    let r = s.post(&k, "/v1/training-sets").json(&request(json!({}))).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["rows"], 5);
    assert_eq!(m["features"][0]["version"], 2, "the latest version at creation");
    assert_eq!(m["spine_versions"], json!(["labels@1"]));
    let id = m["id"].as_str().unwrap().to_string();

    let rows: Vec<Value> = s.get(&k, &format!("/v1/training-sets/{id}/data?format=json")).send().await.unwrap().json().await.unwrap();
    let got: Vec<(i64, Value)> = rows.iter().map(|r| (r["label"].as_i64().unwrap(), r["clicks__clicks"].clone())).collect();
    // Ordered by spine time. Jan 2: user 1 sees Jan 1's 10, user 2 has nothing yet.
    // Jan 4: user 3 is unknown. Jan 6: user 1 sees Jan 5's 50.
    // Jan 10: user 2's Jan 3 row is 7 days old, past the 5-day TTL.
    assert_eq!(got, vec![(1, json!(10)), (3, Value::Null), (5, Value::Null), (2, json!(50)), (4, Value::Null)]);

    // The same request gives byte-identical data.
    let again: Value = s.post(&k, "/v1/training-sets").json(&request(json!({}))).send().await.unwrap().json().await.unwrap();
    assert_ne!(again["id"], m["id"]);
    assert_eq!(again["sha256"], m["sha256"]);
    let parquet = s.get(&k, &format!("/v1/training-sets/{id}/data?format=parquet")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&parquet)), m["sha256"].as_str().unwrap());

    // Pinning version 1 hides the Jan 5 row; no TTL lets user 2's Jan 3 row through.
    let pinned: Value = s
        .post(&k, "/v1/training-sets")
        .json(&request(json!({"versions": {"clicks": 1}, "ttl_seconds": {}})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows: Vec<Value> = s.get(&k, &format!("/v1/training-sets/{}/data?format=json", pinned["id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
    let got: Vec<Value> = rows.iter().map(|r| r["clicks__clicks"].clone()).collect();
    assert_eq!(got, vec![json!(10), Value::Null, Value::Null, json!(10), json!(20)]);

    let manifest: Value = s.get(&k, &format!("/v1/training-sets/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(manifest, m);

    // What was read is in the ledger before it was read.
    let l = &s.state.audit.ledger;
    let plans: Vec<Value> = l
        .read(0, l.size())
        .unwrap()
        .iter()
        .filter_map(|leaf| serde_json::from_slice::<Value>(leaf.view().unwrap().payload).ok())
        .filter(|v| v["kind"] == "training_set.plan")
        .collect();
    assert_eq!(plans[0]["details"]["features"], "clicks@2:clicks");
    assert_eq!(plans[0]["resource"]["versions_read"], json!([1, 2]));
}

#[tokio::test]
async fn bad_requests_and_other_tenants_are_refused() {
    let s = setup().await;
    let k = s.admin_key.clone();
    let r = s.post(&k, "/v1/training-sets").json(&request(json!({"features": ["clicks:nope"]}))).send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("no feature `nope`"));
    let r = s.post(&k, "/v1/training-sets").json(&request(json!({"spine_sql": "SELECT user_id, label FROM labels"}))).send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("`ts`"));
    let r = s.post(&k, "/v1/training-sets").json(&request(json!({"spine_sql": "DELETE FROM labels"}))).send().await.unwrap();
    assert_eq!(error_code(r, 403).await.0, "sql_not_allowed");
    let reader = s.create_key("reader", None).await;
    let r = s.post(&reader, "/v1/training-sets").json(&request(json!({}))).send().await.unwrap();
    assert_eq!(r.status(), 403);

    let m: Value = s.post(&k, "/v1/training-sets").json(&request(json!({}))).send().await.unwrap().json().await.unwrap();
    let id = m["id"].as_str().unwrap();
    let r = s.post(&k, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let other = s.create_key("reader", Some("acme")).await;
    assert_eq!(s.get(&other, &format!("/v1/training-sets/{id}")).send().await.unwrap().status(), 404);
    assert_eq!(s.get(&other, &format!("/v1/training-sets/{id}/data")).send().await.unwrap().status(), 404);
    assert_eq!(s.get(&k, "/v1/training-sets/../../etc").send().await.unwrap().status(), 404);
}

/// Bitemporal builds: each spine row sees a group as it was at the last commit at or
/// before the spine time, so a late backfill or a later correction cannot leak in.
#[tokio::test]
async fn as_known_at_spine_time_sees_each_group_as_it_was_then() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let ok = |r: reqwest::Response| async move { assert_eq!(r.status(), 201, "{}", r.text().await.unwrap()) };
    // v1: Jan 1 rows for users 1 and 2.
    ok(s.ingest_json(&k, "clicks", "append", json!([
        {"user_id": 1, "ts": "2020-01-01T00:00:00Z", "clicks": 10},
        {"user_id": 2, "ts": "2020-01-01T00:00:00Z", "clicks": 30}
    ])).await).await;
    // v2: a backfill for user 1 dated Jan 2, committed later.
    ok(s.ingest_json(&k, "clicks", "append", json!([{"user_id": 1, "ts": "2020-01-02T00:00:00Z", "clicks": 20}])).await).await;
    // v3: a correction of user 2's Jan 1 row (the file holding it is rewritten).
    ok(s.ingest_json(&k, "clicks", "upsert", json!([{"user_id": 2, "ts": "2020-01-01T00:00:00Z", "clicks": 31}])).await).await;
    let versions: Vec<Value> = s.read_json(&k, "/v1/feature-groups/clicks/versions").await;
    let at = |v: i64| versions.iter().find(|x| x["version"] == v).unwrap()["committed_at"].as_str().unwrap().to_string();

    let r = s.post(&k, "/v1/feature-groups").json(&json!({
        "name": "labels", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "label", "type": "int64"}]
    })).send().await.unwrap();
    assert_eq!(r.status(), 201);
    // Labels at each commit time, and one in 2020, before anything was committed.
    let mut labels = vec![json!({"user_id": 1, "ts": "2020-06-01T00:00:00Z", "label": 0})];
    for v in [1i64, 2, 3] {
        labels.push(json!({"user_id": 1, "ts": at(v), "label": 10 * v}));
        labels.push(json!({"user_id": 2, "ts": at(v), "label": 10 * v + 1}));
    }
    ok(s.ingest_json(&k, "labels", "append", Value::Array(labels)).await).await;

    let build = |bitemporal: bool| {
        let body = json!({
            "name": "bt", "spine_sql": "SELECT user_id, ts, label FROM labels", "spine_time": "ts",
            "features": ["clicks:clicks"], "as_known_at_spine_time": bitemporal
        });
        let s = &s;
        let k = k.clone();
        async move {
            let r = s.post(&k, "/v1/training-sets").json(&body).send().await.unwrap();
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
            let m: Value = r.json().await.unwrap();
            let rows = s.read_json(&k, &format!("/v1/training-sets/{}/data?format=json", m["id"].as_str().unwrap())).await;
            let got: Vec<(i64, Value)> = rows.iter().map(|r| (r["label"].as_i64().unwrap(), r["clicks__clicks"].clone())).collect();
            (m, got)
        }
    };
    let (m, got) = build(true).await;
    assert_eq!(m["as_known_at_spine_time"], true);
    assert_eq!(got, vec![
        (0, Value::Null),                   // 2020: nothing committed yet
        (10, json!(10)), (11, json!(30)),   // at v1: the Jan 1 rows
        (20, json!(20)), (21, json!(30)),   // at v2: the backfill is known
        (30, json!(20)), (31, json!(31)),   // at v3: the correction is known
    ]);
    // Files that any version up to the pinned one held are named for vacuum to keep.
    assert_eq!(m["features"][0]["files"].as_array().unwrap().len(), 3, "v1, v2 and v3 each added one: {m}");

    // Without the bitemporal rule, the latest version answers for every time.
    let (m, got) = build(false).await;
    assert_eq!(got, vec![(0, json!(20)), (10, json!(20)), (11, json!(31)), (20, json!(20)), (21, json!(31)), (30, json!(20)), (31, json!(31))]);
    assert_eq!(m["features"][0]["files"].as_array().unwrap().len(), 2, "v3 replaced v1's file: {m}");
}

/// Vacuum deletes files that left the table, except those a live training set read, so
/// pinned versions stay reproducible until the training sets are deleted.
#[tokio::test]
async fn vacuum_keeps_what_live_training_sets_read() {
    let s = setup().await;
    let k = s.admin_key.clone();
    let pinned = request(json!({"versions": {"clicks": 1}}));
    let t1: Value = s.post(&k, "/v1/training-sets").json(&pinned).send().await.unwrap().json().await.unwrap();
    assert_eq!(t1["features"][0]["files"].as_array().unwrap().len(), 1, "{t1}");
    // v3 overwrites: the files of v1 and v2 leave the table.
    let r = s.ingest_json(&k, "clicks", "overwrite", json!([{"user_id": 9, "ts": "2026-02-01T00:00:00Z", "clicks": 1}])).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let vacuum = |body: Value| s.post(&k, "/v1/feature-groups/clicks/vacuum").json(&body).send();
    let (_, msg) = error_code(vacuum(json!({"retention_hours": 0})).await.unwrap(), 422).await;
    assert!(msg.contains("168 hours") && msg.contains("force"), "{msg}");
    let reader = s.create_key("reader", None).await;
    let r = s.post(&reader, "/v1/feature-groups/clicks/vacuum").json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // With the default retention nothing is old enough yet.
    let report: Value = vacuum(json!({})).await.unwrap().json().await.unwrap();
    assert_eq!((report["deleted"].as_array().unwrap().len(), report["kept"].as_array().unwrap().len()), (0, 0), "{report}");

    let dry: Value = vacuum(json!({"retention_hours": 0, "force": true, "dry_run": true})).await.unwrap().json().await.unwrap();
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 1, "v2's file: {dry}");
    assert_eq!(dry["kept"], json!([{"path": t1["features"][0]["files"][0], "training_sets": [t1["id"]]}]));
    let done: Value = vacuum(json!({"retention_hours": 0, "force": true})).await.unwrap().json().await.unwrap();
    assert_eq!(done["deleted"], dry["deleted"]);
    assert_eq!(done["kept"], dry["kept"]);

    // The pinned version still reads, and rebuilding the training set gives the same bytes.
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data?version=1&format=json").await.len(), 2);
    let again: Value = s.post(&k, "/v1/training-sets").json(&pinned).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["sha256"], t1["sha256"]);

    // Deleting the training sets releases the file.
    let listed: Vec<Value> = s.read_json(&k, "/v1/training-sets").await;
    assert_eq!(listed.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(), vec![t1["id"].clone(), again["id"].clone()]);
    for m in &listed {
        let r = s.delete(&k, &format!("/v1/training-sets/{}", m["id"].as_str().unwrap())).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(s.read_json(&k, "/v1/training-sets").await.is_empty());
    assert_eq!(s.get(&k, &format!("/v1/training-sets/{}", t1["id"].as_str().unwrap())).send().await.unwrap().status(), 404);
    let last: Value = vacuum(json!({"retention_hours": 0, "force": true})).await.unwrap().json().await.unwrap();
    assert_eq!(last["deleted"], json!([t1["features"][0]["files"][0]]));
    let r = s.post(&k, "/v1/training-sets").json(&pinned).send().await.unwrap();
    let (code, msg) = error_code(r, 422).await;
    assert_eq!(code, "history_unavailable", "{msg}");
}

/// A spine can be uploaded (CSV, JSON, Arrow, Parquet) instead of selected by SQL; the
/// training set names the upload and its hash.
#[tokio::test]
async fn uploaded_spines_build_the_same_training_set_as_sql() {
    let s = setup().await;
    let k = s.admin_key.clone();
    let upload = |ct: &'static str, body: String, time: &'static str| {
        s.post(&k, &format!("/v1/spines?time={time}")).header("content-type", ct).body(body).send()
    };
    let csv = "user_id,ts,label\n2,2026-01-10T00:00:00Z,4\n1,2026-01-06T00:00:00Z,2\n1,2026-01-02T00:00:00Z,1\n2,2026-01-02T00:00:00Z,3\n3,2026-01-04T00:00:00Z,5\n";
    let rows = json!([
        {"user_id": 2, "ts": "2026-01-10T00:00:00Z", "label": 4}, {"user_id": 1, "ts": "2026-01-06T00:00:00Z", "label": 2},
        {"user_id": 1, "ts": "2026-01-02T00:00:00Z", "label": 1}, {"user_id": 2, "ts": "2026-01-02T00:00:00Z", "label": 3},
        {"user_id": 3, "ts": "2026-01-04T00:00:00Z", "label": 5}
    ]);
    let mut ids = Vec::new();
    for (ct, body) in [("text/csv", csv.to_string()), ("application/json", rows.to_string())] {
        let r = upload(ct, body.clone(), "ts").await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let m: Value = r.json().await.unwrap();
        assert_eq!((m["rows"].as_u64(), m["time"].as_str()), (Some(5), Some("ts")), "{m}");
        // The same rows give the same stored bytes.
        let again: Value = upload(ct, body, "ts").await.unwrap().json().await.unwrap();
        assert_eq!(again["sha256"], m["sha256"]);
        assert_eq!(s.get(&k, &format!("/v1/spines/{}", m["id"].as_str().unwrap())).send().await.unwrap().json::<Value>().await.unwrap(), m);
        ids.push(m);
    }

    for m in &ids {
        let body = json!({"name": "up", "spine_upload": m["id"], "spine_time": "ts", "features": ["clicks:clicks"],
                          "ttl_seconds": {"clicks": 5 * 86400}});
        let r = s.post(&k, "/v1/training-sets").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let t: Value = r.json().await.unwrap();
        assert_eq!((&t["spine_upload"], &t["spine_upload_sha256"], &t["spine_sql"]), (&m["id"], &m["sha256"], &Value::Null));
        let rows = s.read_json(&k, &format!("/v1/training-sets/{}/data?format=json", t["id"].as_str().unwrap())).await;
        let got: Vec<(i64, Value)> = rows.iter().map(|r| (r["label"].as_i64().unwrap(), r["clicks__clicks"].clone())).collect();
        assert_eq!(got, vec![(1, json!(10)), (3, Value::Null), (5, Value::Null), (2, json!(50)), (4, Value::Null)]);
    }

    // What is wrong is named.
    let r = s.post(&k, "/v1/spines").header("content-type", "text/csv").body(csv).send().await.unwrap();
    assert!(error_code(r, 400).await.1.contains("?time="));
    let r = upload("text/csv", "user_id,ts,label\n1,2026-01-02T00:00:00Z,1\n2,yesterday,3\n".into(), "ts").await.unwrap();
    let (_, msg) = error_code(r, 422).await;
    assert!(msg.contains("row 2") && msg.contains("yesterday"), "{msg}");
    let r = upload("text/csv", csv.into(), "when").await.unwrap();
    assert!(error_code(r, 422).await.1.contains("`when`"));
    let r = upload("application/xml", "<rows/>".into(), "ts").await.unwrap();
    assert_eq!(r.status(), 415);
    let r = upload("application/json", "[1, 2]".into(), "ts").await.unwrap();
    assert!(error_code(r, 400).await.1.contains("row 1 is not an object"));
    let both = json!({"name": "x", "spine_sql": "SELECT user_id, ts, label FROM labels", "spine_upload": ids[0]["id"],
                      "spine_time": "ts", "features": ["clicks"]});
    let r = s.post(&k, "/v1/training-sets").json(&both).send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("exactly one"));
    let missing = json!({"name": "x", "spine_upload": "sp_0123456789abcdef0123456789abcdef", "spine_time": "ts", "features": ["clicks"]});
    assert_eq!(error_code(s.post(&k, "/v1/training-sets").json(&missing).send().await.unwrap(), 404).await.0, "spine_not_found");
    let r = s.post(&k, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let other = s.create_key("reader", Some("acme")).await;
    assert_eq!(s.get(&other, &format!("/v1/spines/{}", ids[0]["id"].as_str().unwrap())).send().await.unwrap().status(), 404);
}
