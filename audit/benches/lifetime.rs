//! The ledger after a long life: a synthetic log of N records (default 100 million) with
//! small event payloads, appended without HTTP, then measured as an operator would see it:
//! memory while it grows, bytes on disk per record, time to reopen, inclusion proofs and
//! filtered searches from a freshly opened ledger (empty in-memory caches), and
//! verification speed of the whole log from its segments and checkpoints.
//!
//!     cargo bench -p lakeledger-audit --bench lifetime [-- <records>]
//!
//! The log lives in a temporary directory under $LAKELEDGER_BENCH_DIR (default: the
//! system temp dir) and is removed at the end; 100M records take about 12 GB there.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lakeledger_audit::archive::{DirLog, verify_log};
use lakeledger_audit::{Ledger, LedgerConfig, RecordFilter, RecordType};

/// Resident and peak memory of this process, in MB (from /proc/self/status).
fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A small event: ~64 bytes of canonical JSON naming an actor, a kind and a resource.
fn payload(i: u64) -> Vec<u8> {
    format!(
        "{{\"kind\":\"{}\",\"actor\":{{\"principal\":\"k{}\"}},\"resource\":{{\"name\":\"g{}\"}}}}",
        if i.is_multiple_of(10) { "data.write" } else { "data.read" },
        i % 1000,
        i % 100_000
    )
    .into_bytes()
}

fn bytes_in(dir: &Path, suffix: &str) -> u64 {
    fn walk(dir: &Path, suffix: &str, total: &mut u64) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, suffix, total);
            } else if p.to_string_lossy().ends_with(suffix) {
                *total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    let mut total = 0;
    walk(dir, suffix, &mut total);
    total
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// A small xorshift: reproducible picks without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn main() {
    let records: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100_000_000);
    let base = std::env::var("LAKELEDGER_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let tmp = tempfile::tempdir_in(base).unwrap();
    let cfg = LedgerConfig::new(tmp.path().join("audit"), tmp.path().join("audit.key"));
    println!("{records} records of {} byte payloads, log in {}", payload(7).len(), tmp.path().display());

    // Fill: producers keep a window of records in flight and wait for their receipts.
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let report_every = (records / 10).max(1);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let mut window = Vec::with_capacity(1024);
                loop {
                    let from = next.fetch_add(1024, Ordering::Relaxed);
                    if from >= records {
                        break;
                    }
                    for i in from..(from + 1024).min(records) {
                        window.push(ledger.append(RecordType::Event, payload(i)).unwrap());
                    }
                    for p in window.drain(..) {
                        p.wait(Duration::from_secs(60)).unwrap();
                    }
                    let done = (from + 1024).min(records);
                    if done / report_every != from / report_every {
                        let (rss, _) = memory_mb();
                        println!("  {:>11} records, {:>6.0} s, RSS {rss:.0} MB", done, started.elapsed().as_secs_f64());
                    }
                }
            });
        }
    });
    ledger.checkpoint().unwrap();
    let fill_s = started.elapsed().as_secs_f64();
    let size = ledger.size();
    let (rss, hwm) = memory_mb();
    println!("filled {size} records in {fill_s:.0} s ({:.0} rec/s); RSS {rss:.0} MB, peak {hwm:.0} MB", size as f64 / fill_s);
    // Sealed segments are compressed and indexed off the write path; let that finish.
    let t = Instant::now();
    while ledger.segments().iter().rev().skip(1).any(|s| s.stored != lakeledger_audit::store::Stored::Compressed) || {
        let dir = &cfg.dir;
        let sealed = ledger.segments().len().saturating_sub(1);
        (1..=sealed).any(|n| !dir.join(format!("seg-{n:08}.terms")).exists())
    } {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("compaction and indexing caught up {:.0} s after the last append", t.elapsed().as_secs_f64());
    drop(ledger);

    let dir = &cfg.dir;
    let total = bytes_in(dir, "");
    println!(
        "disk: {:.1} bytes/record in all ({:.2} GB): segments {:.1}, tiles {:.1}, seq index {:.1}, search index {:.1}",
        total as f64 / size as f64,
        total as f64 / 1e9,
        (bytes_in(dir, ".zst") + bytes_in(dir, ".log") - bytes_in(dir, "checkpoints.log")) as f64 / size as f64,
        bytes_in(&dir.join("tile"), "") as f64 / size as f64,
        bytes_in(dir, ".idx") as f64 / size as f64,
        bytes_in(dir, ".terms") as f64 / size as f64,
    );

    // Restart: time until the ledger takes records again.
    let t = Instant::now();
    let (ledger, report) = Ledger::open(cfg.clone()).unwrap();
    let open_s = t.elapsed().as_secs_f64();
    println!("reopen: {:.3} s to ready ({} records; rebuilt: {:?})", open_s, report.size, report.rebuilt);

    // Inclusion proofs against the newest checkpoint, from a ledger with empty caches.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let end = ledger.checkpoint().unwrap().checkpoint.size;
    let mut lat = Vec::new();
    for _ in 0..10_000 {
        let seq = rng.below(end);
        let t = Instant::now();
        ledger.prove_inclusion(seq, end).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    println!("inclusion proof (cold tile cache, 10k random): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms", percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 1.0));

    // Filtered pages of 100, as an auditor would ask for them.
    let mut lat = Vec::new();
    let mut found = 0usize;
    for q in 0..300u64 {
        let mut f = RecordFilter::default();
        match q % 3 {
            0 => f.actor = Some(format!("k{}", rng.below(1000))),
            1 => f.resource = Some(format!("g{}", rng.below(100_000))),
            _ => {
                f.action = Some("data.".into());
                f.actor = Some(format!("k{}", rng.below(1000)));
                f.from_seq = Some(rng.below(end));
            }
        }
        let t = Instant::now();
        found += ledger.search(&f, 100).unwrap().leaves.len();
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    let (rss, _) = memory_mb();
    println!(
        "filtered page of 100 (300 queries, {found} records found): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; RSS after queries {rss:.0} MB",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    let key = ledger.public_key();
    drop(ledger);

    // The whole log verified from its segments and checkpoints.
    let t = Instant::now();
    let s = verify_log(&DirLog(dir.clone()), &[key], None).unwrap();
    let verify_s = t.elapsed().as_secs_f64();
    let (_, hwm) = memory_mb();
    println!("verify the log directory: {} records in {verify_s:.0} s ({:.0} rec/s); peak RSS of the run {hwm:.0} MB", s.records, s.records as f64 / verify_s);
}
