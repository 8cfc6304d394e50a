//! A closed-loop HTTP load generator for the scoring benchmarks: `connections` clients
//! each POST one body in a loop for `seconds`, on kept-alive connections; prints one JSON
//! line with requests per second, p50 and p99 latency (ms) and the count of non-2xx
//! answers. The same binary drives every server compared, so their numbers differ only
//! by the server.
//!
//!     cargo bench -p lakeledger-tests --bench http_load -- <url> <body file> <content type> <connections> <seconds> [authorization]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [url, body, content_type, connections, seconds, rest @ ..] = args.as_slice() else {
        eprintln!("usage: http_load <url> <body file> <content type> <connections> <seconds> [authorization]");
        std::process::exit(2);
    };
    let body = bytes::Bytes::from(std::fs::read(body).expect("the body file"));
    let connections: usize = connections.parse().expect("connections");
    let seconds: f64 = seconds.parse().expect("seconds");
    let authorization = rest.first().cloned();
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).tcp_nodelay(true).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, body, content_type, authorization, stop, failures) =
                (client.clone(), url.clone(), body.clone(), content_type.clone(), authorization.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut request = client.post(&url).header("content-type", &content_type).body(body.clone());
                    if let Some(a) = &authorization {
                        request = request.header("authorization", a);
                    }
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                        }
                        Ok(r) => {
                            let _ = r.bytes().await;
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let ms = |p: f64| if all.is_empty() { 0.0 } else { all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0 };
    println!(
        "{}",
        serde_json::json!({"requests": all.len(), "rps": all.len() as f64 / elapsed, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "failures": failures.load(Ordering::Relaxed)})
    );
}
