//! Starting the server: the ledger, catalog and storage, first-start bootstrap,
//! reconciliation, and the router with its layers; stopping it gracefully.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::response::IntoResponse;
use lakeledger_query::tables::TableStore;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_http::catch_panic::CatchPanicLayer;

use super::config::Config;
use crate::error::{Error, Result};
use crate::http::AppState;
use crate::identity::MintedKey;
use crate::platform::audit::AuditLog;
use crate::platform::catalog;
use crate::serving::drift::DriftCheck;

/// The Prometheus recorder is process-wide; tests start several servers in one process.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("valid buckets")
                .set_buckets_for_metric(Matcher::Suffix("_rows".into()), &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0])
                .expect("valid buckets");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (an embedding program): keep our own handle.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// A started but not yet listening server.
pub struct Prepared {
    pub state: AppState,
    /// The admin key minted on first start, if this was one.
    pub first_admin_key: Option<MintedKey>,
    /// What opening the audit ledger found (created, repaired) and its public key.
    pub audit_report: lakeledger_audit::OpenReport,
    listen: SocketAddr,
    /// Where Arrow Flight SQL listens, if it does.
    flight: Option<crate::flight::FlightSettings>,
    /// Where signed checkpoints are copied, if anywhere.
    checkpoint_mirror: Option<TableStore>,
    /// Where sealed audit segments are archived, if anywhere, and how long local copies stay.
    audit_archive: Option<(std::sync::Arc<crate::platform::audit::ObjectArchive>, Option<std::time::Duration>)>,
    /// How often the log is re-verified in the background, if at all.
    audit_check_interval: Option<std::time::Duration>,
    drift_checks: Vec<DriftCheck>,
}

/// Opens the catalog and storage, creates the default tenant and its first admin key on
/// first start, and reconciles the catalog with the Delta logs.
pub async fn prepare(config: Config) -> Result<Prepared> {
    // Model versions record the binary's hash; reading the executable takes seconds, so it
    // starts now, off the request path.
    tokio::task::spawn_blocking(crate::models::build_id);
    // The ledger first: recovery must finish, and refuse a damaged log, before anything
    // else can happen.
    let audit_archive = match &config.audit_archive {
        Some(url) => Some(std::sync::Arc::new(crate::platform::audit::ObjectArchive::new(
            url.clone(),
            config.storage_options.clone(),
            tokio::runtime::Handle::current(),
        )?)),
        None => None,
    };
    let (dir, key, timeout) = (config.audit_dir.clone(), config.audit_key_path.clone(), config.audit_timeout);
    let fetch_from = audit_archive.clone().map(|a| a as std::sync::Arc<dyn lakeledger_audit::archive::ArchiveStore>);
    let (audit, audit_report) = tokio::task::spawn_blocking(move || AuditLog::open(&dir, &key, timeout, fetch_from))
        .await
        .map_err(|e| Error::Internal(format!("opening the audit ledger: {e}")))??;
    let catalog = catalog::connect(config.catalog_url.expose()).await?;
    let tables = TableStore::new(config.data_root.clone(), config.storage_options.clone())?.with_spool_dir(config.data_dir.join("tmp"));
    let drift_checks = super::services::drift_checks(&config)?;
    let checkpoint_mirror = match &config.audit_checkpoint_mirror {
        Some(url) => Some(TableStore::new(url.clone(), config.storage_options.clone())?),
        None => None,
    };
    let state = super::services::build(&config, std::sync::Arc::new(audit), catalog, tables, metrics_handle())?;
    let first_admin_key = state.identity.bootstrap().await?;
    let set = state.quotas.apply_configured(&config.tenant_quotas, &state.audit).await?;
    if set > 0 {
        tracing::info!(tenants = set, "tenant limits set from the config file");
    }
    let failed = state.jobs.fail_abandoned(true).await?;
    if failed > 0 {
        tracing::warn!(failed, "training jobs nobody runs any more (left by this replica's previous run, or with a lapsed lease) were marked failed");
    }
    let report = state.features.reconcile().await?;
    if report.recovered_versions + report.completed_creations + report.removed_creations > 0 {
        tracing::warn!(?report, "reconciled the catalog with the Delta logs");
    }
    state.online.rebuild_all().await?;
    let audit_archive = audit_archive.map(|a| (a, config.audit_archive_retention));
    Ok(Prepared {
        state,
        first_admin_key,
        audit_report,
        listen: config.listen,
        flight: config.flight_listen.map(|listen| crate::flight::FlightSettings { listen, tls: config.flight_tls.clone() }),
        checkpoint_mirror,
        audit_archive,
        audit_check_interval: config.audit_check_interval,
        drift_checks,
    })
}

/// The full application: routes, recording layer, panic catcher, fallbacks.
pub fn app(state: AppState) -> Router {
    app_with_routes(state, crate::http::routes())
}

/// The application over a given route table, with the same layers and fallbacks (tests
/// add routes, e.g. one that panics, to check the layers around them).
pub fn app_with_routes(state: AppState, routes: Router<AppState>) -> Router {
    routes
        .fallback(|| async { Error::NotFound { kind: "route", name: "no such endpoint".into() } })
        // A method the route does not take: axum's 405 with its `Allow` header, given the
        // error body by the recording layer.
        // Inside the recording layer so that a panic is recorded as the 500 it becomes.
        .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
            Error::Internal("handler panicked".into()).into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::http::audit_layer::record))
        // Each extractor states its own limit (control JSON, scoring, uploads), answered
        // with the error body; axum's implicit 2 MB would answer plain text.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Where a started server listens.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub http: SocketAddr,
    /// Flight SQL's address and whether it speaks TLS, when it is on.
    pub flight: Option<(SocketAddr, bool)>,
}

/// Serves Flight SQL and the inference protocol on one bound gRPC listener until `shutdown`
/// completes.
async fn serve_grpc(
    mut server: tonic::transport::Server,
    listener: tokio::net::TcpListener,
    flight: crate::flight::FlightSql,
    inference: crate::rpc::inference::Inference,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    server
        .add_service(arrow_flight::flight_service_server::FlightServiceServer::new(flight).max_decoding_message_size(16 * 1024 * 1024))
        .add_service(crate::rpc::inference::InferenceServer::new(inference))
        // Small answers (a plan, a catalog listing, one prediction) must not wait on
        // Nagle's algorithm.
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}

/// Binds, prints where the server listens, and serves until SIGTERM/Ctrl-C; in-flight
/// requests finish before it returns.
pub async fn serve(prepared: Prepared, on_bound: impl FnOnce(Bound)) -> Result<()> {
    serve_until(prepared, on_bound, shutdown_signal()).await
}

/// As [`serve`], stopping when `shutdown` completes instead of on a signal.
pub async fn serve_until(
    prepared: Prepared,
    on_bound: impl FnOnce(Bound),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Prepared { state, listen, flight, checkpoint_mirror, audit_archive, audit_check_interval, drift_checks, .. } = prepared;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| Error::Internal(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    // Flight stops with HTTP: both wait on one shutdown signal.
    let (stop_flight, flight_stopped) = tokio::sync::watch::channel(false);
    let (flight_task, flight_bound) = match flight {
        Some(settings) => {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| Error::Internal(format!("cannot listen for Flight on {}: {e}", settings.listen)))?;
            let bound = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
            let tls = settings.tls.is_some();
            let transport = crate::rpc::transport(settings.tls.as_ref())?;
            // Calls are authenticated, limited and recorded as HTTP requests are, in the
            // same bounds on requests in flight.
            let recorder = crate::rpc::audit::Recorder {
                identity: state.identity.clone(),
                quotas: state.quotas.clone(),
                admission: state.admission.clone(),
                audit: state.audit.clone(),
            };
            let flight = crate::flight::FlightSql::new(recorder.clone(), state.sql.clone(), state.features.clone(), state.training_sets.clone());
            let mut stopped = flight_stopped;
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let inference = crate::rpc::inference::Inference::new(recorder, state.serving.clone(), state.readiness.clone());
            let task = tokio::spawn(serve_grpc(transport, listener, flight, inference, stop));
            (Some(task), Some((bound, tls)))
        }
        None => (None, None),
    };
    let mirror = checkpoint_mirror.clone().map(|store| {
        tokio::spawn(crate::platform::audit::mirror_checkpoints(state.audit.ledger.clone(), store, std::time::Duration::from_secs(1)))
    });
    let checker = audit_check_interval.map(|every| tokio::spawn(crate::platform::audit::check_periodically(state.audit.clone(), every)));
    let archiver = audit_archive.map(|(archive, retention)| {
        tokio::spawn(crate::platform::audit::archive_segments(state.audit.ledger.clone(), archive, retention, std::time::Duration::from_secs(60)))
    });
    let (stop_inference_log, inference_log_stopped) = tokio::sync::watch::channel(false);
    let inference_log = tokio::spawn(state.inference_log.clone().run(inference_log_stopped));
    let online_refresh = tokio::spawn(state.online.clone().keep_fresh());
    let job_sweep = tokio::spawn(state.jobs.clone().sweep());
    let job_claims = tokio::spawn(state.jobs.clone().work());
    let change_listener = tokio::spawn(state.changes.clone().listen());
    // Histogram samples collect in the recorder until upkeep folds them into buckets;
    // without it a server nobody scrapes grows with every request it answers.
    let metrics_upkeep = {
        let handle = state.metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                handle.run_upkeep();
            }
        })
    };
    let drift_checks: Vec<_> = drift_checks.into_iter().map(|c| tokio::spawn(state.drift.clone().run_check(c))).collect();
    on_bound(Bound { http: addr, flight: flight_bound });
    let shutdown_state = state.clone();
    let served = axum::serve(listener, app(state.clone()).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            shutdown_state.readiness.stop_accepting();
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await
        .map_err(|e| Error::Internal(format!("server error: {e}")));
    let _ = stop_flight.send(true);
    if let Some(task) = flight_task {
        match task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the Flight server stopped with an error"),
            Err(e) => tracing::error!(error = %e, "the Flight server task failed"),
            Ok(Ok(())) => {}
        }
    }
    // Scored rows still buffered are committed while the ledger can record the commit;
    // a flush under way finishes first.
    let _ = stop_inference_log.send(true);
    let _ = inference_log.await;
    online_refresh.abort();
    job_sweep.abort();
    job_claims.abort();
    change_listener.abort();
    metrics_upkeep.abort();
    drift_checks.iter().for_each(|t| t.abort());
    // An archive pass cut short is safe: the next start's pass checks what is there.
    for task in [archiver, checker].into_iter().flatten() {
        task.abort();
    }
    state.inference_log.flush().await;
    // Records the shutdown and signs a final checkpoint.
    let ledger = state.audit.ledger.clone();
    let _ = tokio::task::spawn_blocking(move || ledger.close()).await;
    // Copy the final checkpoint, then stop mirroring.
    if let (Some(task), Some(store)) = (mirror, &checkpoint_mirror) {
        task.abort();
        if let Some(cp) = state.audit.ledger.latest_checkpoint() {
            let note = axum::body::Bytes::from(cp.checkpoint.note);
            let _ = store.put_object(&format!("checkpoints/{:020}.note", cp.checkpoint.size), note.clone()).await;
            let _ = store.put_object("checkpoint.latest.note", note).await;
        }
    }
    served
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
