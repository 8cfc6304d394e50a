//! Merged packages: one audit trail across replicas. Each replica keeps its own log (its
//! own origin and signing key); a merged package holds each replica's export package
//! unchanged, and a timeline of every record of every log, ordered by time.
//!
//! ```text
//! merged.json     {"format":"lakeledger-audit-merged/1",
//!                  "logs":[{"dir":"logs/<i>","origin","end_size","records",
//!                           "manifest_sha256":"<hex of logs/<i>/manifest.json>"},…],
//!                  "timeline_sha256":"<hex of timeline.jsonl>"}
//! logs/<i>/…      replica i's package, as `lakeledger audit export` wrote it
//! timeline.jsonl  one line per record of every log, ordered by (ts_unix_ns, log, seq):
//!                 {"ts_unix_ns","log","seq","leaf_hash":"<hex>"}
//! ```
//!
//! Verifying a merged package verifies each log's package on its own (with the keys the
//! auditor trusts; each log must be signed by one of them), then checks that the timeline
//! holds every record of every log exactly once, in order, with its leaf hash. The
//! timeline is rebuilt in memory to compare (some 80 bytes a record).

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::note::VerifierKey;
use crate::package::FILES;
use crate::verify::{DirSource, Source, Summary, open_source, verify};

pub const MERGED_FORMAT: &str = "lakeledger-audit-merged/1";
pub const MERGED_MANIFEST: &str = "merged.json";
const TIMELINE: &str = "timeline.jsonl";

/// One record's place in the timeline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    ts_unix_ns: i64,
    log: usize,
    seq: u64,
    leaf_hash: String,
}

/// What a merged package held.
#[derive(Clone, Debug)]
pub struct MergedSummary {
    pub logs: Vec<(String, Summary)>,
    pub records: u64,
}

fn fail(what: impl Into<String>) -> Error {
    Error::verify(None, what.into())
}

/// True when `path` is a merged package.
pub fn is_merged(path: &Path) -> bool {
    path.join(MERGED_MANIFEST).is_file()
}

/// Every record line's time, seq and leaf hash, from a package's `leaves.jsonl`.
fn entries(src: &dyn Source, log: usize) -> Result<Vec<Entry>> {
    let reader = src.open("leaves.jsonl")?.ok_or_else(|| fail(format!("log {log}: package has no leaves.jsonl")))?;
    let mut out = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(|e| fail(format!("log {log}: leaves.jsonl: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| fail(format!("log {log}: leaves.jsonl: {e}")))?;
        out.push(Entry {
            ts_unix_ns: v["ts_unix_ns"].as_i64().ok_or_else(|| fail(format!("log {log}: a record has no ts_unix_ns")))?,
            log,
            seq: v["seq"].as_u64().ok_or_else(|| fail(format!("log {log}: a record has no seq")))?,
            leaf_hash: v["leaf_hash"].as_str().ok_or_else(|| fail(format!("log {log}: a record has no leaf_hash")))?.to_string(),
        });
    }
    Ok(out)
}

fn timeline_line(e: &Entry) -> String {
    json!({"ts_unix_ns": e.ts_unix_ns, "log": e.log, "seq": e.seq, "leaf_hash": e.leaf_hash}).to_string()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(format!("create {}", parent.display())))?;
    }
    std::fs::write(path, bytes).map_err(Error::io(format!("write {}", path.display())))
}

/// Writes a merged package of `packages` (directories or single-file JSON packages, one
/// per replica) into the directory `out`, after verifying each with `keys`.
pub fn merge(packages: &[PathBuf], keys: &[VerifierKey], out: &Path) -> Result<MergedSummary> {
    if packages.is_empty() {
        return Err(fail("give at least one package to merge"));
    }
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::Malformed(format!("{} exists and is not empty", out.display())));
    }
    let (mut logs, mut timeline, mut summaries) = (Vec::new(), Vec::new(), Vec::new());
    for (i, path) in packages.iter().enumerate() {
        let src = open_source(path)?;
        let summary = verify(&*src, keys, None).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        // Each log's package is kept whole, as a directory of its files.
        let dir = format!("logs/{i}");
        let mut files: Vec<&str> = vec!["manifest.json"];
        files.extend(FILES);
        for name in files {
            if let Some(mut r) = src.open(name)? {
                let mut bytes = Vec::new();
                r.read_to_end(&mut bytes).map_err(Error::io(format!("read {name} of {}", path.display())))?;
                write_file(&out.join(&dir).join(name), &bytes)?;
            }
        }
        let manifest = std::fs::read(out.join(&dir).join("manifest.json")).map_err(Error::io("read a copied manifest"))?;
        let m: Value = serde_json::from_slice(&manifest).map_err(|e| fail(format!("{}: manifest.json: {e}", path.display())))?;
        logs.push(json!({
            "dir": dir,
            "origin": m["origin"],
            "end_size": summary.end_size,
            "records": summary.records,
            "manifest_sha256": hex::encode(Sha256::digest(&manifest)),
        }));
        timeline.extend(entries(&*src, i)?);
        summaries.push((m["origin"].as_str().unwrap_or_default().to_string(), summary));
    }
    timeline.sort();
    let mut text = Vec::new();
    for e in &timeline {
        writeln!(text, "{}", timeline_line(e)).map_err(Error::io("write the timeline"))?;
    }
    write_file(&out.join(TIMELINE), &text)?;
    let manifest = json!({"format": MERGED_FORMAT, "logs": logs, "timeline_sha256": hex::encode(Sha256::digest(&text))});
    write_file(&out.join(MERGED_MANIFEST), serde_json::to_string_pretty(&manifest).expect("JSON").as_bytes())?;
    Ok(MergedSummary { logs: summaries, records: timeline.len() as u64 })
}

/// Verifies a merged package: each log on its own, then the timeline against them all.
pub fn verify_merged(dir: &Path, keys: &[VerifierKey]) -> Result<MergedSummary> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join(MERGED_MANIFEST)).map_err(Error::io("read merged.json"))?)
        .map_err(|e| fail(format!("merged.json: {e}")))?;
    if manifest["format"] != MERGED_FORMAT {
        return Err(fail(format!("merged.json: format {} is not {MERGED_FORMAT}", manifest["format"])));
    }
    let logs = manifest["logs"].as_array().ok_or_else(|| fail("merged.json has no logs"))?;
    let (mut expected, mut summaries) = (Vec::new(), Vec::new());
    for (i, log) in logs.iter().enumerate() {
        let sub = log["dir"].as_str().ok_or_else(|| fail(format!("log {i} names no dir")))?;
        if sub != format!("logs/{i}") {
            return Err(fail(format!("log {i}: dir `{sub}` is not logs/{i}")));
        }
        let path = dir.join(sub);
        let m = std::fs::read(path.join("manifest.json")).map_err(Error::io(format!("read {sub}/manifest.json")))?;
        if Some(hex::encode(Sha256::digest(&m)).as_str()) != log["manifest_sha256"].as_str() {
            return Err(fail(format!("log {i}: its manifest differs from the one merged.json names")));
        }
        let src = DirSource(path);
        let summary = verify(&src, keys, None).map_err(|e| fail(format!("log {i} ({}): {e}", log["origin"].as_str().unwrap_or("?"))))?;
        if log["records"].as_u64() != Some(summary.records) || log["end_size"].as_u64() != Some(summary.end_size) {
            return Err(fail(format!("log {i}: merged.json's record count or size differs from its package")));
        }
        expected.extend(entries(&src, i)?);
        summaries.push((log["origin"].as_str().unwrap_or_default().to_string(), summary));
    }
    expected.sort();
    let text = std::fs::read(dir.join(TIMELINE)).map_err(Error::io("read timeline.jsonl"))?;
    if Some(hex::encode(Sha256::digest(&text)).as_str()) != manifest["timeline_sha256"].as_str() {
        return Err(fail("timeline.jsonl differs from the one merged.json names"));
    }
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    if lines.len() != expected.len() {
        return Err(fail(format!("the timeline holds {} records; the logs hold {}", lines.len(), expected.len())));
    }
    for (n, (line, want)) in lines.iter().zip(&expected).enumerate() {
        let got: Value = serde_json::from_slice(line).map_err(|e| fail(format!("timeline line {}: {e}", n + 1)))?;
        let want_v: Value = serde_json::from_str(&timeline_line(want)).expect("JSON");
        if got != want_v {
            return Err(fail(format!("timeline line {}: expected log {} seq {}, found {got}", n + 1, want.log, want.seq)));
        }
    }
    Ok(MergedSummary { logs: summaries, records: expected.len() as u64 })
}
