//! The request recording layer: the one place every request passes through before and
//! after its handler. It assigns the request id, authenticates, records an intent before
//! the handler runs and an outcome after, and counts metrics. The audit ledger plugs in
//! here as a [`RequestSink`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::{AuthFailure, AuthOutcome, Principal, authenticate};
use crate::error::{Error, ErrorCode};
use crate::state::AppState;

pub const REQUEST_ID: &str = "x-request-id";

/// What is known about a request before its handler runs.
#[derive(Clone, Debug, Serialize)]
pub struct Intent {
    pub request_id: String,
    pub method: String,
    pub route: String,
    pub path: String,
    pub client: Option<String>,
    pub user_agent: Option<String>,
    pub principal: Option<Principal>,
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub request_id: String,
    pub status: u16,
    pub error_code: Option<String>,
    pub duration_us: u64,
}

/// Where request records go. Failing to record an intent refuses the request (503).
#[async_trait]
pub trait RequestSink: Send + Sync + 'static {
    async fn intent(&self, intent: &Intent) -> Result<(), String>;
    async fn outcome(&self, intent: &Intent, outcome: &Outcome) -> Result<(), String>;
}

pub type SharedSink = Arc<dyn RequestSink>;

/// Writes records to the structured log under the `lakeledger::requests` target.
pub struct LogSink;

#[async_trait]
impl RequestSink for LogSink {
    async fn intent(&self, i: &Intent) -> Result<(), String> {
        tracing::debug!(target: "lakeledger::requests", request_id = %i.request_id, method = %i.method, route = %i.route,
            actor = i.principal.as_ref().map(|p| p.actor()).unwrap_or_default(), "intent");
        Ok(())
    }
    async fn outcome(&self, i: &Intent, o: &Outcome) -> Result<(), String> {
        tracing::info!(target: "lakeledger::requests", request_id = %o.request_id, method = %i.method, route = %i.route,
            status = o.status, error_code = o.error_code.as_deref().unwrap_or(""), duration_us = o.duration_us,
            actor = i.principal.as_ref().map(|p| p.actor()).unwrap_or_default(), "request");
        Ok(())
    }
}

/// Routes that answer without a key: probes, metrics and the API description.
fn is_public(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics" | "/docs" | "/openapi.json")
}

pub async fn record(State(state): State<AppState>, mut req: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "<unmatched>".into());
    let method = req.method().to_string();

    let principal = if is_public(&route) {
        None
    } else {
        let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let outcome = match authenticate(&state.catalog, header).await {
            Ok(p) => AuthOutcome::Ok(p),
            Err(Error::Unauthenticated) => AuthOutcome::Failed(AuthFailure::Missing),
            Err(Error::InvalidKey) => AuthOutcome::Failed(AuthFailure::Invalid),
            Err(e) => {
                tracing::error!(error = %e, "authentication lookup failed");
                AuthOutcome::Failed(AuthFailure::Unavailable)
            }
        };
        let p = match &outcome {
            AuthOutcome::Ok(p) => Some(p.clone()),
            AuthOutcome::Failed(_) => None,
        };
        req.extensions_mut().insert(outcome);
        p
    };

    let intent = Intent {
        request_id: request_id.clone(),
        method: method.clone(),
        route: route.clone(),
        path: req.uri().path().to_string(),
        client: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.to_string()),
        user_agent: req.headers().get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string),
        principal,
    };
    req.extensions_mut().insert(RequestId(request_id.clone()));

    let mut response = match state.recorder.intent(&intent).await {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::error!(error = %e, "request could not be recorded; refusing it");
            Error::Unavailable("the request could not be recorded; it was not carried out".into()).into_response()
        }
    };

    let status = response.status().as_u16();
    let outcome = Outcome {
        request_id: request_id.clone(),
        status,
        error_code: response.extensions().get::<ErrorCode>().map(|c| c.0.clone()),
        duration_us: started.elapsed().as_micros() as u64,
    };
    if let Err(e) = state.recorder.outcome(&intent, &outcome).await {
        tracing::error!(error = %e, request_id = %request_id, "request outcome could not be recorded");
    }
    let labels = [("method", method), ("route", route), ("status", status.to_string())];
    metrics::counter!("lakeledger_http_requests_total", &labels).increment(1);
    metrics::histogram!("lakeledger_http_request_duration_seconds", &labels[..2]).record(started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The request id, for handlers that put it into commit metadata.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<RequestId>().cloned().unwrap_or_else(|| RequestId(uuid::Uuid::now_v7().to_string())))
    }
}
