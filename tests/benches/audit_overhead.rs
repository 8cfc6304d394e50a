//! What the audit ledger costs a cheap authenticated read: `GET /v1/whoami` at 64
//! concurrent connections, through the full server (durable intent before the handler,
//! outcome after) and through the same routes with authentication only. Runs alternate
//! so drift on the machine affects both sides alike.
//!
//!     cargo bench -p lakeledger-tests --bench audit_overhead [-- <seconds per run>]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::middleware::Next;
use axum::response::Response;
use lakeledger::http::auth::{AuthFailure, AuthOutcome};
use lakeledger::identity::Identity;

/// Authentication alone, through the same identity service (and key cache) the server's
/// audit layer uses, as the handlers need it; no records. So the two sides differ only
/// in the ledger.
async fn auth_only(State(identity): State<Arc<Identity>>, mut req: Request<Body>, next: Next) -> Response {
    let header = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let outcome = match identity.authenticate(header.as_deref()).await {
        Ok(p) => AuthOutcome::Ok(p),
        Err(_) => AuthOutcome::Failed(AuthFailure::Invalid),
    };
    req.extensions_mut().insert(outcome);
    next.run(req).await
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap() });
    format!("http://{addr}/v1/whoami")
}

/// (requests per second, p50 ms, p99 ms)
async fn load(url: &str, key: &str, connections: usize, secs: u64) -> (f64, f64, f64) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, key, stop) = (client.clone(), url.to_string(), key.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let ms = |p: f64| all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    (all.len() as f64 / elapsed, ms(0.5), ms(0.99))
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let config = lakeledger::app::config::Config::embedded(dir.path()).unwrap();
    let prepared = lakeledger::app::server::prepare(config).await.unwrap();
    let key = prepared.first_admin_key.as_ref().unwrap().secret.clone();
    let state = prepared.state.clone();
    let audited = serve(lakeledger::app::server::app(state.clone())).await;
    let bare = serve(
        lakeledger::http::routes()
            .layer(axum::middleware::from_fn_with_state(state.0.identity.clone(), auth_only))
            .with_state(state.clone()),
    )
    .await;
    // Warm both.
    load(&audited, &key, 8, 1).await;
    load(&bare, &key, 8, 1).await;
    println!("GET /v1/whoami, 64 connections, {secs} s per run");
    println!("{:>10} {:>12} {:>9} {:>9}", "", "req/s", "p50 ms", "p99 ms");
    let (mut a_total, mut b_total) = (0.0, 0.0);
    for round in 1..=2 {
        let a = load(&audited, &key, 64, secs).await;
        let b = load(&bare, &key, 64, secs).await;
        println!("{:>10} {:>12.0} {:>9.2} {:>9.2}", format!("ledger #{round}"), a.0, a.1, a.2);
        println!("{:>10} {:>12.0} {:>9.2} {:>9.2}", format!("none #{round}"), b.0, b.1, b.2);
        a_total += a.0;
        b_total += b.0;
    }
    println!("throughput with the ledger / without: {:.2}", a_total / b_total);
    println!("audit records written: {}", state.audit.ledger.size());
}
