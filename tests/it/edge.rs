//! The HTTP edge under hostile or heavy use: body limits per route, bounds on requests in
//! flight, the request time limit, who may read metrics, and the docs page.

use std::time::Duration;

use serde_json::{Value, json};

use crate::audit::{find, wait_for_outcomes};
use crate::support::{Server, error_code};

#[tokio::test]
async fn metrics_need_an_operator_or_the_scrape_token_and_make_no_series_for_unknown_models() {
    let dir = tempfile::tempdir().unwrap();
    let token = "scrape-token-0123456789abcdef";
    std::fs::write(dir.path().join("metrics.token"), format!("{token}\n")).unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path().join("data")).unwrap();
    config.metrics_token_file = Some(dir.path().join("metrics.token"));
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();

    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(error_code(r, 401).await.0, "unauthenticated");
    let writer = s.create_key("writer", None).await;
    assert_eq!(error_code(s.get(&writer, "/metrics").send().await.unwrap(), 403).await.0, "forbidden");
    // A tenant's own admin is not an operator: labels name every tenant.
    assert_eq!(s.post(&k, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap().status(), 201);
    let acme_admin = s.create_key("admin", Some("acme")).await;
    assert_eq!(error_code(s.get(&acme_admin, "/metrics").send().await.unwrap(), 403).await.0, "forbidden");
    let r = s.client.get(s.url("/metrics")).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(error_code(r, 401).await.0, "invalid_api_key");

    // Scoring a model that does not exist is a 404 and leaves no series behind.
    for name in ["no_such_model_1", "no_such_model_2"] {
        let r = s.post(&k, &format!("/v1/models/{name}/versions/1/invocations")).json(&json!({"instances": [[1.0]]})).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let r = s.post(&k, &format!("/v1/models/{name}@champion/invocations")).json(&json!({"instances": [[1.0]]})).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
    let scraped = s.client.get(s.url("/metrics")).bearer_auth(token).header("x-request-id", "scrape-1").send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    assert!(text.contains("lakeledger_http_requests_total"), "{text}");
    assert!(!text.contains("no_such_model"), "{text}");
    let by_operator = s.get(&k, "/metrics").send().await.unwrap();
    assert_eq!(by_operator.status(), 200);

    // The scrape is recorded with who scraped.
    let all = wait_for_outcomes(&s, &["scrape-1".into()]).await;
    let intent = find(&all, "scrape-1", "intent").unwrap();
    assert_eq!((intent["actor"]["principal"].as_str(), intent["actor"]["auth_method"].as_str()), (Some("metrics-token"), Some("metrics_token")));
}

#[tokio::test]
async fn bodies_over_their_route_limit_get_413_with_the_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.max_json_body_bytes = 2048;
    config.max_scoring_body_bytes = 4096;
    config.max_body_bytes = 64 * 1024;
    config.max_spine_bytes = 1024;
    config.max_model_bytes = 1024;
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;

    let long = "x".repeat(4096);
    let r = s.post(&k, "/v1/feature-groups").json(&json!({"name": "big", "entity_keys": [], "event_time": "ts", "description": long})).send().await.unwrap();
    let (code, message) = error_code(r, 413).await;
    assert_eq!(code, "payload_too_large");
    assert!(message.contains("2048"), "{message}");
    let r = s.post(&k, "/v1/sql").json(&json!({"sql": format!("SELECT '{long}'")})).send().await.unwrap();
    assert_eq!(error_code(r, 413).await.0, "payload_too_large");

    // Scoring: its own limit, and the error body rather than plain text.
    let rows: Vec<Vec<f64>> = (0..400).map(|i| vec![i as f64; 4]).collect();
    let r = s.post(&k, "/v1/models/any/versions/1/invocations").json(&json!({"instances": rows})).send().await.unwrap();
    let (code, message) = error_code(r, 413).await;
    assert_eq!(code, "payload_too_large");
    assert!(message.contains("4096"), "{message}");

    // Spines and model artifacts are decoded whole: their own, smaller limits.
    let spine: String = std::iter::once("id,ts\n".to_string()).chain((0..200).map(|i| format!("{i},2026-01-01T00:00:00Z\n"))).collect();
    let r = s.post(&k, "/v1/spines?time=ts").header("content-type", "text/csv").body(spine).send().await.unwrap();
    assert!(error_code(r, 413).await.1.contains("1024"));
    let r = s.post(&k, "/v1/models").json(&json!({"name": "m"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = s.post(&k, "/v1/models/m/versions").header("content-type", "application/json").body("x".repeat(2048)).send().await.unwrap();
    assert!(error_code(r, 413).await.1.contains("1024"));

    // Data uploads take the (larger) upload limit, far above the control limit...
    let rows: Vec<Value> = (0..200).map(|i| json!({"user_id": i, "ts": "2026-01-01T00:00:00Z", "country": "NL"})).collect();
    let r = s.ingest_json(&k, "clicks", "append", json!(rows)).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // ... and stop at it, writing nothing.
    let rows: Vec<Value> = (0..3000).map(|i| json!({"user_id": i, "ts": "2026-01-01T00:00:00Z", "country": "NL"})).collect();
    let r = s.ingest_json(&k, "clicks", "append", json!(rows)).await;
    assert_eq!(error_code(r, 413).await.0, "payload_too_large");
    assert_eq!(s.read_json(&k, "/v1/feature-groups/clicks/data").await.len(), 200);

    // Parameters of the wrong type or range are refused with the error body, not plain text.
    for path in ["/v1/feature-groups/clicks/data?limit=-1", "/v1/feature-groups?include_archived=maybe", "/v1/models/m/versions/x"] {
        let r = s.get(&k, path).send().await.unwrap();
        assert_eq!(error_code(r, 400).await.0, "bad_request", "{path}");
    }
    let r = s.client.request(reqwest::Method::OPTIONS, s.url("/v1/training-jobs/job_1")).bearer_auth(&k).send().await.unwrap();
    assert_eq!(r.headers()["allow"].to_str().unwrap(), "GET,HEAD");
    assert_eq!(error_code(r, 405).await.0, "bad_request");
}

/// An ingest whose body the client keeps open: the request is in flight until `finish`.
struct OpenUpload {
    tx: futures::channel::mpsc::UnboundedSender<Result<bytes::Bytes, std::io::Error>>,
    response: tokio::task::JoinHandle<reqwest::Response>,
}

impl OpenUpload {
    fn start(s: &Server, key: &str, group: &str) -> OpenUpload {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let body = reqwest::Body::wrap_stream(rx);
        let request = s.post(key, &format!("/v1/feature-groups/{group}/data")).header("content-type", "application/x-ndjson").body(body);
        OpenUpload { tx, response: tokio::spawn(async move { request.send().await.unwrap() }) }
    }

    async fn finish(self, rows: &str) -> reqwest::Response {
        self.tx.unbounded_send(Ok(bytes::Bytes::from(rows.to_string()))).unwrap();
        drop(self.tx);
        self.response.await.unwrap()
    }
}

/// Sends `whoami` until the answer has `status` (the uploads before it are admitted by
/// then); bounded. Returns the answer and the request id it was sent with.
async fn until_status(s: &Server, key: &str, status: u16, request_id: &str) -> (Value, String) {
    for i in 0..400 {
        let id = format!("{request_id}-{i}");
        let r = s.get(key, "/v1/whoami").header("x-request-id", &id).send().await.unwrap();
        if r.status() == status {
            return (r.json().await.unwrap(), id);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never answered {status}");
}

#[tokio::test]
async fn requests_over_the_tenant_or_server_bound_are_refused_at_once_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.max_concurrent_requests = 2;
    config.max_concurrent_requests_per_tenant = 1;
    let s = Server::start_with(config, None).await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    assert_eq!(s.post(&k, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap().status(), 201);
    assert_eq!(s.post(&k, "/v1/tenants").json(&json!({"name": "zeta"})).send().await.unwrap().status(), 201);
    let acme = s.create_key("admin", Some("acme")).await;
    let zeta = s.create_key("reader", Some("zeta")).await;
    let r = s.post(&acme, "/v1/feature-groups").json(&json!({"name": "clicks", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts"})).send().await.unwrap();
    assert_eq!(r.status(), 201);

    // The default tenant has one request in flight: its next one is refused with 429.
    let first = OpenUpload::start(&s, &k, "clicks");
    let (refused, over_tenant) = until_status(&s, &k, 429, "over-tenant").await;
    assert_eq!(refused["error"]["code"], "too_many_requests");
    assert!(refused["error"]["message"].as_str().unwrap().contains("tenant `default`"), "{refused}");
    // Another tenant is not held up by it...
    assert_eq!(s.get(&zeta, "/v1/whoami").send().await.unwrap().status(), 200);
    // The bounds are the server's, whatever the protocol: a Flight SQL query of the busy
    // tenant is refused the same way.
    let flight = crate::flight::client(&s, &k).await.execute("SELECT 1".into(), None).await;
    let refused = flight.expect_err("over the tenant's bound").to_string();
    assert!(refused.contains("resource has been exhausted") && refused.contains("too_many_requests"), "{refused}");
    // ... until the server's own bound is reached: 503, and probes still answer.
    let second = OpenUpload::start(&s, &acme, "clicks");
    let (busy, over_server) = until_status(&s, &zeta, 503, "over-server").await;
    assert_eq!(busy["error"]["code"], "overloaded");
    assert_eq!(s.client.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    let flight = crate::flight::client(&s, &zeta).await.execute("SELECT 1".into(), None).await;
    let refused = flight.expect_err("over the server's bound").to_string();
    assert!(refused.contains("unavailable") && refused.contains("overloaded"), "{refused}");

    // The refusals are recorded: the tenant's as denied.
    let all = wait_for_outcomes(&s, &[over_tenant.clone(), over_server.clone()]).await;
    let o = &find(&all, &over_tenant, "outcome").unwrap()["outcome"];
    assert_eq!((o["status"].as_u64(), o["result"].as_str(), o["error_code"].as_str()), (Some(429), Some("denied"), Some("too_many_requests")));
    assert_eq!(find(&all, &over_server, "outcome").unwrap()["outcome"]["status"], 503);

    // The held requests finish normally and free their places.
    let row = "{\"user_id\": 1, \"ts\": \"2026-01-01T00:00:00Z\"}\n";
    assert_eq!(first.finish(row).await.status(), 201);
    assert_eq!(second.finish(row).await.status(), 201);
    until_status(&s, &k, 200, "after").await;
    assert_eq!(s.get(&zeta, "/v1/whoami").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_read_that_takes_too_long_is_answered_504_with_the_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.request_timeout = Duration::from_secs(1);
    let s = Server::start_with(config, None).await;
    // A read that never finishes on its own.
    let addr = s.serve_with_routes(axum::Router::new().route("/v1/stalls", axum::routing::get(std::future::pending::<()>))).await;
    let r = s.client.get(format!("http://{addr}/v1/stalls")).bearer_auth(&s.admin_key).header("x-request-id", "stalled").send().await.unwrap();
    let (code, message) = error_code(r, 504).await;
    assert_eq!(code, "deadline_exceeded");
    assert!(message.contains("limit of 1 s"), "{message}");
    let all = wait_for_outcomes(&s, &["stalled".into()]).await;
    assert_eq!(find(&all, "stalled", "outcome").unwrap()["outcome"]["status"], 504);
}

#[tokio::test]
async fn the_docs_page_loads_nothing_from_elsewhere() {
    let s = Server::start().await;
    let r = s.client.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let policy = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"), "{policy}");
    let page = r.text().await.unwrap();
    assert!(page.contains("/openapi.json"));
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "no asset from another origin");
}

#[tokio::test]
async fn a_vacuum_retention_too_long_to_compute_is_refused_not_a_crash() {
    let s = Server::start().await;
    let k = s.admin_key.clone();
    s.create_clicks(&k).await;
    let r = s.post(&k, "/v1/feature-groups/clicks/vacuum").json(&json!({"retention_hours": 9223372036854775806u64})).send().await.unwrap();
    let (code, message) = error_code(r, 422).await;
    assert_eq!(code, "unprocessable");
    assert!(message.contains("retention_hours"), "{message}");
    let r = s.post(&k, "/v1/feature-groups/clicks/vacuum").json(&json!({"retention_hours": 876000, "dry_run": true})).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Limits from the config file (`[quotas.<tenant>]`) are applied at every start and
/// recorded as the config file's doing, once per change; a file naming a tenant that does
/// not exist, an unknown limit or a bad value stops the server at start, saying which.
#[tokio::test]
async fn tenant_quotas_come_from_the_config_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let limits = |text: &str| -> Vec<(String, toml::Table)> { toml::from_str::<toml::Table>(text).unwrap().into_iter().map(|(k, v)| (k, v.as_table().unwrap().clone())).collect() };
    let mut config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    config.tenant_quotas = limits("[default]\nmax_running_jobs = 3\ningest_bytes_per_day = 1000\n");
    let s = Server::start_with(config.clone(), None).await;
    let k = s.admin_key.clone();
    let q: Value = s.get(&k, "/v1/tenants/default/quotas").send().await.unwrap().json().await.unwrap();
    assert_eq!((&q["max_running_jobs"], &q["ingest_bytes_per_day"]), (&json!(3), &json!(1000)));
    let set_by_file = |s: &Server| crate::audit::records(s).into_iter().filter(|r| r["kind"] == "tenant.set_quotas" && r["actor"]["principal"] == "config-file").count();
    assert_eq!(set_by_file(&s), 1);
    s.stop().await;
    // Unchanged at the next start: nothing new recorded.
    let s = Server::start_with(config.clone(), Some(k.clone())).await;
    assert_eq!(set_by_file(&s), 1, "an unchanged file records nothing new");
    s.stop().await;

    for (text, says) in [
        ("[acme]\nmax_running_jobs = 3\n", "no tenant `acme`"),
        ("[default]\nmax_jobs = 3\n", "max_jobs"),
        ("[default]\nburst = 0\n", "burst must be at least 1"),
    ] {
        let mut bad = config.clone();
        bad.tenant_quotas = limits(text);
        let err = lakeledger::app::server::prepare(bad).await.err().expect("start refused").to_string();
        assert!(err.contains("[quotas.") && err.contains(says), "{err}");
    }
}

/// Limits an operator sets per tenant: request rate, requests in flight, bytes ingested per
/// day, bytes stored and training jobs at once. Over one: 429 `quota_exceeded` with `Retry-After`, the
/// error body, recorded as denied; the tenant's admins read their limits, only operators
/// set them.
#[tokio::test]
async fn tenant_quotas_refuse_what_is_over_them_and_say_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    let s = Server::start_with(config.clone(), None).await;
    let op = s.admin_key.clone();
    assert_eq!(s.post(&op, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap().status(), 201);
    let acme = s.create_key("admin", Some("acme")).await;
    let create = json!({"name": "events", "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts", "features": [{"name": "x", "type": "string"}]});
    assert_eq!(s.post(&acme, "/v1/feature-groups").json(&create).send().await.unwrap().status(), 201);
    let quotas = |q: Value| s.client.put(s.url("/v1/tenants/acme/quotas")).bearer_auth(&op).json(&q).send();

    let none: Value = s.get(&acme, "/v1/tenants/acme/quotas").send().await.unwrap().json().await.unwrap();
    assert_eq!(none["requests_per_second"], Value::Null);
    let r = s.client.put(s.url("/v1/tenants/acme/quotas")).bearer_auth(&acme).json(&json!({"burst": 1000})).send().await.unwrap();
    assert_eq!(error_code(r, 403).await.0, "forbidden", "a tenant's admin does not set its own limits");
    assert_eq!(error_code(quotas(json!({"burst": 0})).await.unwrap(), 422).await.0, "unprocessable");

    // A rate that barely refills, with a burst of three: three requests, then 429.
    assert_eq!(quotas(json!({"requests_per_second": 0.0001, "burst": 3})).await.unwrap().status(), 200);
    for _ in 0..3 {
        assert_eq!(s.get(&acme, "/v1/whoami").send().await.unwrap().status(), 200);
    }
    let r = s.get(&acme, "/v1/whoami").header("x-request-id", "over-rate").send().await.unwrap();
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let (code, message) = error_code(r, 429).await;
    assert_eq!(code, "quota_exceeded");
    assert!(message.contains("rate"), "{message}");
    assert_eq!(s.get(&op, "/v1/whoami").send().await.unwrap().status(), 200, "other tenants are not held up");
    let all = wait_for_outcomes(&s, &["over-rate".into()]).await;
    let o = &find(&all, "over-rate", "outcome").unwrap()["outcome"];
    assert_eq!((o["status"].as_u64(), o["result"].as_str(), o["error_code"].as_str()), (Some(429), Some("denied"), Some("quota_exceeded")));

    // Bytes per day: the ingest that crosses the limit goes through, the next is refused
    // until midnight (UTC).
    assert_eq!(quotas(json!({"ingest_bytes_per_day": 100})).await.unwrap().status(), 200);
    let rows = json!([{"id": 1, "ts": "2026-01-01T00:00:00Z", "x": "a fairly long string to pass one hundred bytes in a single upload"}]);
    assert_eq!(s.ingest_json(&acme, "events", "append", rows.clone()).await.status(), 201);
    let r = s.ingest_json(&acme, "events", "append", rows.clone()).await;
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let (code, message) = error_code(r, 429).await;
    assert!(code == "quota_exceeded" && message.contains("midnight"), "{message}");
    assert_eq!(s.read_json(&acme, "/v1/feature-groups/events/data").await.len(), 1, "the refused ingest wrote nothing");

    // Jobs at once, counted in the catalog (any replica's).
    assert_eq!(quotas(json!({"max_running_jobs": 1})).await.unwrap().status(), 200);
    let catalog = lakeledger::platform::catalog::connect(config.catalog_url.expose()).await.unwrap();
    let tenant = catalog.tenant_by_name("acme").await.unwrap().unwrap();
    catalog
        .insert_job(&lakeledger::platform::catalog::JobRecord {
            id: "job_busy".into(),
            tenant_id: tenant.id.clone(),
            model_name: "m".into(),
            state: "running".into(),
            spec_json: "{}".into(),
            progress_json: "null".into(),
            error: None,
            model_version: None,
            created_at: 1,
            started_at: Some(1),
            finished_at: None,
            created_by: "acme/x".into(),
            worker: Some("replica_elsewhere".into()),
            lease_until: Some(i64::MAX),
            cancel_requested: false,
        })
        .await
        .unwrap();
    let job = json!({"model": "m", "training_set_id": "ts_x", "label": "y", "config": {"task": "classification"}});
    let (code, message) = error_code(s.post(&acme, "/v1/training-jobs").json(&job).send().await.unwrap(), 429).await;
    assert!(code == "quota_exceeded" && message.contains("training jobs"), "{message}");

    // Bytes stored, measured from the storage: the table acme wrote holds more than one
    // byte, so a limit of one refuses the next write of every kind, whatever it is.
    assert_eq!(quotas(json!({"max_stored_bytes": 1})).await.unwrap().status(), 200);
    let r = s.ingest_json(&acme, "events", "append", rows.clone()).await;
    assert_eq!(r.headers()["retry-after"], "60");
    let (code, message) = error_code(r, 429).await;
    assert!(code == "quota_exceeded" && message.contains("stores") && message.contains("limit of 1"), "{message}");
    let spine = s.post(&acme, "/v1/spines?time=ts").header("content-type", "application/json").body(r#"[{"id": 1, "ts": "2026-01-02T00:00:00Z"}]"#).send().await.unwrap();
    assert_eq!(error_code(spine, 429).await.0, "quota_exceeded");
    assert_eq!(s.read_json(&acme, "/v1/feature-groups/events/data").await.len(), 1, "the refused ingest wrote nothing");
    // (A `PUT` replaces every limit: the day's bytes are no longer limited either.)
    assert_eq!(quotas(json!({"max_stored_bytes": 1_000_000_000})).await.unwrap().status(), 200);
    assert_eq!(s.ingest_json(&acme, "events", "append", rows.clone()).await.status(), 201, "under a larger limit");

    // Requests in flight: one at a time for acme.
    assert_eq!(quotas(json!({"max_concurrent_requests": 1})).await.unwrap().status(), 200);
    let held = OpenUpload::start(&s, &acme, "events");
    let (refused, _) = until_status(&s, &acme, 429, "acme-busy").await;
    assert_eq!(refused["error"]["code"], "too_many_requests");
    drop(held);
    // Lifted again: everything goes through.
    assert_eq!(quotas(json!({})).await.unwrap().status(), 200);
    until_status(&s, &acme, 200, "acme-free").await;
}

/// Limits on one API key, within its tenant's: a key shared by a batch job cannot take
/// its tenant's whole rate or all its places. The tenant's admins set them (an operator any
/// tenant's); a key over its rate or its requests in flight is answered 429 with
/// `Retry-After` and recorded as denied, and the tenant's other keys go on.
#[tokio::test]
async fn key_limits_hold_one_key_back_without_holding_up_its_tenant() {
    let s = Server::start().await;
    let op = s.admin_key.clone();
    let mint = |name: &str, tenant: Option<&str>| {
        let mut body = json!({"name": name, "role": "writer"});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let r = s.post(&op, "/v1/keys").json(&body).send();
        async move {
            let v: Value = r.await.unwrap().json().await.unwrap();
            (v["id"].as_str().unwrap().to_string(), v["secret"].as_str().unwrap().to_string())
        }
    };
    let (batch_id, batch) = mint("batch", None).await;
    let (_, other) = mint("dashboard", None).await;
    s.create_clicks(&op).await;
    let limits = |key: &str, id: &str, l: Value| s.client.put(s.url(&format!("/v1/keys/{id}/limits"))).bearer_auth(key).json(&l).send();

    let none: Value = s.get(&op, &format!("/v1/keys/{batch_id}/limits")).send().await.unwrap().json().await.unwrap();
    assert_eq!(none, json!({"requests_per_second": null, "burst": null, "max_concurrent_requests": null}));
    let (code, _) = error_code(limits(&batch, &batch_id, json!({"burst": 10})).await.unwrap(), 403).await;
    assert_eq!(code, "forbidden", "a writer does not set limits, not even its own key's");
    assert_eq!(error_code(limits(&op, &batch_id, json!({"burst": 0})).await.unwrap(), 422).await.0, "unprocessable");
    assert_eq!(error_code(limits(&op, &batch_id, json!({"requests_per_secnd": 1})).await.unwrap(), 422).await.0, "unprocessable");
    assert_eq!(error_code(limits(&op, "key_nosuch", json!({})).await.unwrap(), 404).await.0, "key_not_found");
    // Another tenant's admin cannot see or set this tenant's keys' limits.
    assert_eq!(s.post(&op, "/v1/tenants").json(&json!({"name": "acme"})).send().await.unwrap().status(), 201);
    let acme = s.create_key("admin", Some("acme")).await;
    assert_eq!(error_code(limits(&acme, &batch_id, json!({})).await.unwrap(), 404).await.0, "key_not_found");
    assert_eq!(error_code(s.get(&acme, &format!("/v1/keys/{batch_id}/limits")).send().await.unwrap(), 404).await.0, "key_not_found");
    // An operator sets another tenant's keys' limits by naming the tenant.
    let (acme_key_id, _) = mint("acme batch", Some("acme")).await;
    let r = s.client.put(s.url(&format!("/v1/keys/{acme_key_id}/limits?tenant=acme"))).bearer_auth(&op).json(&json!({"burst": 5})).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A rate that barely refills, with a burst of two: two requests, then 429, while the
    // tenant's other key is not held up.
    let set = json!({"requests_per_second": 0.0001, "burst": 2});
    let answered: Value = limits(&op, &batch_id, set).await.unwrap().json().await.unwrap();
    assert_eq!(answered, json!({"requests_per_second": 0.0001, "burst": 2, "max_concurrent_requests": null}));
    for _ in 0..2 {
        assert_eq!(s.get(&batch, "/v1/whoami").send().await.unwrap().status(), 200);
    }
    let r = s.get(&batch, "/v1/whoami").header("x-request-id", "key-over-rate").send().await.unwrap();
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let (code, message) = error_code(r, 429).await;
    assert!(code == "quota_exceeded" && message.contains(&format!("key `{batch_id}`")) && message.contains("rate"), "{message}");
    for _ in 0..5 {
        assert_eq!(s.get(&other, "/v1/whoami").send().await.unwrap().status(), 200, "the tenant's other keys go on");
    }
    let all = wait_for_outcomes(&s, &["key-over-rate".into()]).await;
    let o = &find(&all, "key-over-rate", "outcome").unwrap()["outcome"];
    assert_eq!((o["status"].as_u64(), o["result"].as_str(), o["error_code"].as_str()), (Some(429), Some("denied"), Some("quota_exceeded")));
    let set_record = all.iter().find(|r| r["kind"] == "api_key.set_limits" && r["phase"] == "outcome" && r["resource"]["name"] == batch_id.as_str());
    assert!(set_record.is_some(), "setting a key's limits is in the ledger, naming the key");

    // Requests in flight: one at a time for the batch key; the dashboard key still gets in.
    assert_eq!(limits(&op, &batch_id, json!({"max_concurrent_requests": 1})).await.unwrap().status(), 200);
    let held = OpenUpload::start(&s, &batch, "clicks");
    let (refused, _) = until_status(&s, &batch, 429, "key-busy").await;
    assert_eq!(refused["error"]["code"], "too_many_requests");
    assert!(refused["error"]["message"].as_str().unwrap().contains(&format!("key `{batch_id}`")), "{refused}");
    assert_eq!(s.get(&other, "/v1/whoami").send().await.unwrap().status(), 200);
    drop(held);
    // A bound beyond counting is no bound (not a panic in admission).
    assert_eq!(limits(&op, &batch_id, json!({"max_concurrent_requests": i64::MAX})).await.unwrap().status(), 200);
    until_status(&s, &batch, 200, "key-huge").await;
    // Lifted: the key goes through again.
    assert_eq!(limits(&op, &batch_id, json!({})).await.unwrap().status(), 200);
    until_status(&s, &batch, 200, "key-free").await;
}
