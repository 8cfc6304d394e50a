//! Traces: `lakeledger serve --otlp-endpoint` sends spans to an OpenTelemetry collector
//! (here one started by the test, speaking OTLP/gRPC). A request's span continues the
//! trace its caller sent, names its request id and the audit event id of its intent
//! record, and holds the commit or SQL spans of the work it caused.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::json;

use crate::audit::{lakeledger_bin, start_binary_with};
use crate::support::{Http, Remote, notice};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A received span, flattened.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: Vec<(String, String)>,
    resource: Vec<(String, String)>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn text(kv: &[KeyValue]) -> Vec<(String, String)> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

impl Collector {
    fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = rs.resource.as_ref().map(|r| text(&r.attributes)).unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(Span {
                            name: s.name.clone(),
                            trace_id: hex::encode(&s.trace_id),
                            span_id: hex::encode(&s.span_id),
                            parent: hex::encode(&s.parent_span_id),
                            attributes: text(&s.attributes),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits (bounded) until a span matching `want` has arrived (batches leave the server
    /// every few seconds).
    async fn wait_for(&self, what: &str, want: impl Fn(&Span) -> bool) -> Span {
        for _ in 0..300 {
            if let Some(s) = self.spans().into_iter().find(|s| want(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {what} span arrived; got {:#?}", self.spans().iter().map(|s| &s.name).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_commits_and_queries_are_traced_to_a_collector() {
    let Some(bin) = lakeledger_bin() else {
        assert_ne!(std::env::var("LAKELEDGER_REQUIRE_BIN").as_deref(), Ok("1"), "the lakeledger binary is required");
        notice("lakeledger binary not built; skipping the traces test");
        return;
    };
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_binary_with(&bin, &data, &[OsStr::new("--otlp-endpoint"), OsStr::new(&endpoint)]).await;
    let k = server.admin_key.clone().unwrap();
    let api = Remote { base: format!("http://{}", server.addr), client: reqwest::Client::new() };
    let r = api
        .post(&k, "/v1/feature-groups")
        .json(&json!({"name": "clicks", "entity_keys": [{"name": "user_id", "type": "int64"}], "event_time": "ts", "features": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The caller's trace continues in the server.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = api
        .post(&k, "/v1/feature-groups/clicks/data")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!([{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let event_id = r.headers()["x-audit-event-id"].to_str().unwrap().to_string();
    let request = collector.wait_for("ingest request", |s| s.name == "POST /v1/feature-groups/{name}/data").await;
    assert_eq!(request.trace_id, trace, "the span continues the caller's trace");
    assert_eq!(request.parent, "00f067aa0ba902b7");
    assert_eq!(request.attr("request_id"), Some(request_id.as_str()));
    assert_eq!(request.attr("audit_event_id"), Some(event_id.as_str()), "the span leads into the ledger");
    assert_eq!(request.attr("http.response.status_code"), Some("201"));
    let replica = std::fs::read_to_string(data.join("replica.id")).unwrap();
    assert!(request.resource.contains(&("service.name".into(), "lakeledger".into())), "{:?}", request.resource);
    assert!(request.resource.contains(&("service.instance.id".into(), replica.trim().into())), "{:?}", request.resource);
    let commit = collector.wait_for("commit", |s| s.name == "commit" && s.trace_id == trace).await;
    assert_eq!(commit.parent, request.span_id, "the commit is part of the request");
    assert_eq!((commit.attr("group"), commit.attr("delta_version")), (Some("clicks"), Some("1")), "{commit:?}");

    // A query without a caller's trace starts its own, with its planning inside.
    let r = api.post(&k, "/v1/sql").json(&json!({"sql": "SELECT count(*) AS n FROM clicks", "format": "json"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let sql = collector.wait_for("sql request", |s| s.attr("request_id") == Some(request_id.as_str())).await;
    assert_ne!(sql.trace_id, trace);
    collector.wait_for("sql.plan", |s| s.name == "sql.plan" && s.trace_id == sql.trace_id).await;
}
