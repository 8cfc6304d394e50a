//! Logs and traces. Logs go to stdout (text or JSON lines). With an OTLP endpoint, spans
//! (requests, commits, SQL, training-set builds, jobs, scoring) also go to an OpenTelemetry
//! collector over OTLP/gRPC, batched off the request path. A request's span continues the
//! trace its caller sent (W3C `traceparent`), so one trace follows a request from a client
//! through every replica it reaches; each request span carries the request id and the audit
//! event id of its intent record, so a trace leads into the ledger.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, propagation::Extractor};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::{Error, Result};

/// Where spans go, and what the process is to the collector.
pub struct Otlp {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// This replica's id (`service.instance.id`).
    pub instance: String,
}

/// The installed telemetry; [`Telemetry::shutdown`] sends the spans still buffered.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(&self) {
        if let Some(p) = &self.traces
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: spans not sent at shutdown: {e}");
        }
    }
}

/// Installs the process's log output and, with `otlp`, the span exporter. Must be called
/// on the async runtime (the exporter's connection lives there), once per process.
pub fn init(json_logs: bool, otlp: Option<Otlp>) -> Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKELEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,deltalake=warn,datafusion=warn"));
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = if json_logs { fmt.json().boxed() } else { fmt.boxed() };
    let Some(otlp) = otlp else {
        tracing_subscriber::registry().with(fmt.with_filter(filter)).init();
        return Ok(Telemetry { traces: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint.clone())
        .build()
        .map_err(|e| Error::BadRequest(format!("OTLP endpoint `{}`: {e}", otlp.endpoint)))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("lakeledger")
        .with_attribute(KeyValue::new("service.instance.id", otlp.instance))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Spans of this crate at info and above; the log filter applies to log lines only.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("lakeledger"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("lakeledger", tracing::Level::INFO));
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(spans).init();
    Ok(Telemetry { traces: Some(provider) })
}

/// Makes `span` continue the trace named by the request's `traceparent` header, if any.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(cx);
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
