//! Ledger throughput: durable (fsynced) acknowledged records per second and ack latency
//! with 1, 16, 64 and 256 concurrent producers, then offline verification speed.
//!
//!     cargo bench -p lakeledger-audit --bench ledger [-- <seconds per run>]
//!
//! The log lives in a temporary directory under $LAKELEDGER_BENCH_DIR (default: the
//! system temp dir), so it measures the disk that directory is on.

use std::time::{Duration, Instant};

use lakeledger_audit::{Event, Ledger, LedgerConfig, Package, Phase, RecordFilter, verify_package};

fn event(i: usize) -> Event {
    let mut e = Event::new("data.read", Phase::Intent);
    e.actor.principal = Some(format!("key_{:032x}", i % 50));
    e.actor.principal_type = "api_key".into();
    e.actor.tenant = Some("default".into());
    e.actor.role = Some("reader".into());
    e.actor.auth_method = "bearer".into();
    e.source.client = Some("10.1.2.3".into());
    e.source.user_agent = Some("python-requests/2.32".into());
    e.source.request_id = Some(uuid::Uuid::now_v7().to_string());
    e.source.method = Some("GET".into());
    e.source.route = Some("/v1/feature-groups/{name}/data".into());
    e.source.path = Some("/v1/feature-groups/clicks/data".into());
    e.resource.kind = Some("feature_group".into());
    e.resource.name = Some("clicks".into());
    e.resource.tenant = Some("default".into());
    e
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let base = std::env::var("LAKELEDGER_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let tmp = tempfile::tempdir_in(base).unwrap();
    let mut cfg = LedgerConfig::new(tmp.path().join("audit"), tmp.path().join("audit.key"));
    cfg.checkpoint_interval = Duration::from_secs(1);
    // Baseline: one writer, one 640-byte append and one fdatasync at a time.
    let probe = tmp.path().join("fsync-probe");
    let mut f = std::fs::File::create(&probe).unwrap();
    let t = Instant::now();
    for _ in 0..500 {
        std::io::Write::write_all(&mut f, &[7u8; 640]).unwrap();
        f.sync_data().unwrap();
    }
    println!(
        "bare append+fdatasync: {:.3} ms each",
        t.elapsed().as_secs_f64() * 1000.0 / 500.0
    );
    drop(f);
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let sample = event(0).to_canonical_json().len();
    println!(
        "payload {sample} bytes; {secs} s per run; log in {}",
        tmp.path().display()
    );
    println!(
        "{:>10} {:>14} {:>10} {:>10} {:>10}",
        "producers", "acked rec/s", "p50 ms", "p99 ms", "max ms"
    );
    for producers in [1usize, 16, 64, 256] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut latencies: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..producers)
                .map(|p| {
                    let ledger = &ledger;
                    s.spawn(move || {
                        let mut lat = Vec::new();
                        let mut i = p;
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            ledger
                                .append_event(&event(i))
                                .unwrap()
                                .wait(Duration::from_secs(30))
                                .unwrap();
                            lat.push(t.elapsed());
                            i += producers;
                        }
                        lat
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>10} {:>14.0} {:>10.2} {:>10.2} {:>10.2}",
            producers,
            latencies.len() as f64 / elapsed,
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap_or(&Duration::ZERO))
        );
    }

    let size = ledger.size();
    let t = Instant::now();
    let pkg = Package::export(&ledger, &RecordFilter::default(), None).unwrap();
    let export_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let summary = verify_package(&pkg, &[ledger.public_key()], None).unwrap();
    let verify_s = t.elapsed().as_secs_f64();
    println!(
        "export: {size} records in {export_s:.2} s ({:.0} rec/s); verify: {} records in {verify_s:.2} s ({:.0} rec/s)",
        size as f64 / export_s,
        summary.records,
        summary.records as f64 / verify_s
    );
    drop(ledger);
    let t = Instant::now();
    let (reopened, _) = Ledger::open(cfg).unwrap();
    println!(
        "reopen with full recovery scan: {} records in {:.2} s",
        reopened.size(),
        t.elapsed().as_secs_f64()
    );
}
