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
    let r = s.post(&k, "/v1/training-sets").json(&request(json!({"as_known_at_spine_time": true}))).send().await.unwrap();
    assert!(error_code(r, 422).await.1.contains("not available yet"));
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
