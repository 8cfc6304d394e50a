//! Export packages: a self-contained set of text files an auditor verifies offline.
//!
//! ```text
//! manifest.json      {"format":"lakeledger-audit-package/2","origin","log_id","complete",
//!                     "end_size","records","filter":{…},"files":{"<name>":"<sha256 hex>",…}}
//! leaves.jsonl       one line per record, in seq order:
//!                    {"seq","leaf_hash":"<hex>","leaf":"<base64 of the exact leaf bytes>",
//!                     "record_type","ts_unix_ns","prev_leaf":"<hex>",
//!                     ["inclusion":["<hex>",…],] "payload":{…}}
//!                    (everything after "leaf" is a decoded view the verifier checks
//!                    against the bytes; "inclusion" proves the record against the end
//!                    checkpoint and is present in partial packages only)
//! checkpoints.jsonl  {"size","note"} in increasing size; the last covers end_size
//! proofs.json        {"consistency":[{"old","new","proof":["<hex>",…]}]}
//! keys.txt           the log's verifier keys, oldest first (informational: the auditor
//!                    supplies the keys they trust)
//! ```
//!
//! A package is *complete* when it holds every record `0..end_size`; the verifier then
//! recomputes the root at every checkpoint. Otherwise (a filter or a seq range was
//! given) each record carries an inclusion proof against the end checkpoint.
//! A package travels as a directory of these files or as one JSON object
//! `{"format":…,"files":{"<name>":"<content>",…}}`.
//!
//! Both ends stream: an export writes each record as it reads it (into a [`Sink`]: a
//! directory, a JSON document on any writer, or memory), and the verifier reads each file
//! front to back, so neither holds more than a batch of records, however long the log.
//! Version 1 packages (inclusion proofs gathered in `proofs.json`) still verify.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::checkpoints::{self, StoredCheckpoint};
use crate::error::{Error, Result};
use crate::event::Obj;
use crate::leaf::{LeafView, RecordType, StoredLeaf};
use crate::ledger::Ledger;
use crate::merkle::Hash;

pub const FORMAT: &str = "lakeledger-audit-package/2";
/// The first format: inclusion proofs of partial packages gathered in `proofs.json`.
pub const FORMAT_V1: &str = "lakeledger-audit-package/1";
pub const FILES: [&str; 4] = [
    "leaves.jsonl",
    "checkpoints.jsonl",
    "proofs.json",
    "keys.txt",
];

/// Which records to select. All set conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    pub from_seq: Option<u64>,
    /// Exclusive.
    pub to_seq: Option<u64>,
    pub since_ns: Option<i64>,
    /// Exclusive.
    pub until_ns: Option<i64>,
    /// Principal id.
    pub actor: Option<String>,
    /// Event kind, or a prefix of it ending in `.` (`feature_group.`).
    pub action: Option<String>,
    pub resource: Option<String>,
    /// Matches the actor's or the resource's tenant.
    pub tenant: Option<String>,
}

impl RecordFilter {
    /// True when no condition narrows the selection beyond a seq range starting at 0.
    pub fn selects_everything(&self) -> bool {
        self.from_seq.unwrap_or(0) == 0
            && self.to_seq.is_none()
            && self.since_ns.is_none()
            && self.until_ns.is_none()
            && self.actor.is_none()
            && self.action.is_none()
            && self.resource.is_none()
            && self.tenant.is_none()
    }

    pub fn matches(&self, view: &LeafView<'_>) -> bool {
        if self.from_seq.is_some_and(|f| view.seq < f) || self.to_seq.is_some_and(|t| view.seq >= t)
        {
            return false;
        }
        if self.since_ns.is_some_and(|s| view.ts_unix_ns < s)
            || self.until_ns.is_some_and(|u| view.ts_unix_ns >= u)
        {
            return false;
        }
        if self.actor.is_none()
            && self.action.is_none()
            && self.resource.is_none()
            && self.tenant.is_none()
        {
            return true;
        }
        // Records other than events (genesis, startup, …) carry no actor or resource.
        if view.record_type != RecordType::Event {
            return false;
        }
        let Ok(p) = serde_json::from_slice::<serde_json::Value>(view.payload) else {
            return false;
        };
        let eq = |v: &serde_json::Value, want: &str| v.as_str() == Some(want);
        if let Some(a) = &self.actor
            && !eq(&p["actor"]["principal"], a)
        {
            return false;
        }
        if let Some(a) = &self.action {
            let kind = p["kind"].as_str().unwrap_or("");
            let ok = if a.ends_with('.') {
                kind.starts_with(a.as_str())
            } else {
                kind == a
            };
            if !ok {
                return false;
            }
        }
        if let Some(r) = &self.resource
            && !eq(&p["resource"]["name"], r)
        {
            return false;
        }
        if let Some(t) = &self.tenant
            && !eq(&p["actor"]["tenant"], t)
            && !eq(&p["resource"]["tenant"], t)
        {
            return false;
        }
        true
    }

    fn describe(&self) -> String {
        let mut o = Obj::new();
        o.opt_u64("from_seq", self.from_seq)
            .opt_u64("to_seq", self.to_seq)
            .opt_str("since_ns", self.since_ns.map(|v| v.to_string()).as_deref())
            .opt_str("until_ns", self.until_ns.map(|v| v.to_string()).as_deref())
            .opt_str("actor", self.actor.as_deref())
            .opt_str("action", self.action.as_deref())
            .opt_str("resource", self.resource.as_deref())
            .opt_str("tenant", self.tenant.as_deref());
        o.finish()
    }
}

/// One record in the form the API and packages show it: the exact bytes plus a view.
pub fn leaf_json(leaf: &StoredLeaf) -> Result<String> {
    leaf_line(leaf, None)
}

/// A record's line, with its inclusion proof when the package is partial.
fn leaf_line(leaf: &StoredLeaf, inclusion: Option<&[Hash]>) -> Result<String> {
    let v = leaf.view()?;
    let mut o = Obj::new();
    o.u64("seq", leaf.seq)
        .str("leaf_hash", &hex::encode(leaf.hash))
        .str("leaf", &B64.encode(&leaf.bytes))
        .str("record_type", v.record_type.name())
        .i64("ts_unix_ns", v.ts_unix_ns)
        .str("prev_leaf", &hex::encode(v.prev_leaf));
    let mut s = o.finish();
    s.pop();
    if let Some(proof) = inclusion {
        s.push_str(",\"inclusion\":");
        s.push_str(&hashes_json(proof));
    }
    // The payload is canonical JSON as the ledger writes it: splice it in as it is. A
    // record whose payload is not JSON (only a damaged or forged log holds one) is shown
    // as null, so the line still parses and the verifier names that record.
    s.push_str(",\"payload\":");
    let payload = v.payload_str();
    s.push_str(if is_json(payload) { payload } else { "null" });
    s.push('}');
    Ok(s)
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}

fn hashes_json(proof: &[Hash]) -> String {
    let items: Vec<String> = proof.iter().map(|h| format!("\"{}\"", hex::encode(h))).collect();
    format!("[{}]", items.join(","))
}

/// Where an export writes: the package's files one after another, each in pieces.
/// `manifest.json` comes last, so a package with a manifest was written whole.
pub trait Sink {
    /// Starts the next file; what is written until the next call belongs to it.
    fn file(&mut self, name: &str) -> Result<()>;
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// After the last file.
    fn finish(&mut self) -> Result<()>;
}

/// Writes a package as a directory of files.
pub struct DirSink {
    dir: PathBuf,
    current: Option<(PathBuf, BufWriter<File>)>,
}

impl DirSink {
    pub fn create(dir: &Path) -> Result<DirSink> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        Ok(DirSink { dir: dir.to_path_buf(), current: None })
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((path, mut w)) = self.current.take() {
            w.flush().map_err(Error::io(format!("write {}", path.display())))?;
            w.get_ref().sync_all().map_err(Error::io(format!("sync {}", path.display())))?;
        }
        Ok(())
    }
}

impl Sink for DirSink {
    fn file(&mut self, name: &str) -> Result<()> {
        self.close_current()?;
        let path = self.dir.join(name);
        let f = File::create(&path).map_err(Error::io(format!("create {}", path.display())))?;
        self.current = Some((path, BufWriter::with_capacity(1 << 16, f)));
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let (path, w) = self.current.as_mut().expect("a file was started");
        w.write_all(bytes).map_err(Error::io(format!("write {}", path.display())))
    }

    fn finish(&mut self) -> Result<()> {
        self.close_current()
    }
}

/// Writes a package as one JSON document, `{"format":…,"files":{"<name>":"<content>",…}}`,
/// to any writer (a file, an HTTP response), escaping the files' text as it goes.
pub struct JsonSink<W: Write> {
    out: BufWriter<W>,
    files: usize,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Result<JsonSink<W>> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        write!(out, "{{\"format\":\"{FORMAT}\",\"files\":{{").map_err(Error::io("write the package"))?;
        Ok(JsonSink { out, files: 0 })
    }

    /// The writer, once `finish` has flushed everything into it.
    pub fn into_inner(self) -> Result<W> {
        self.out.into_inner().map_err(|e| Error::Io { context: "write the package".into(), source: e.into_error() })
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn file(&mut self, name: &str) -> Result<()> {
        let sep = if self.files > 0 { "\"," } else { "" };
        self.files += 1;
        write!(self.out, "{sep}{}:\"", serde_json::Value::from(name)).map_err(Error::io("write the package"))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        // Bytes outside ASCII pass through (the text is UTF-8 and stays so); quotes,
        // backslashes and control characters are escaped.
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escaped: Option<&[u8]> = match b {
                b'"' => Some(b"\\\""),
                b'\\' => Some(b"\\\\"),
                b'\n' => Some(b"\\n"),
                b'\r' => Some(b"\\r"),
                b'\t' => Some(b"\\t"),
                0..=0x1f => None,
                _ => continue,
            };
            self.out.write_all(&bytes[run..i]).map_err(Error::io("write the package"))?;
            match escaped {
                Some(e) => self.out.write_all(e),
                None => write!(self.out, "\\u{b:04x}"),
            }
            .map_err(Error::io("write the package"))?;
            run = i + 1;
        }
        self.out.write_all(&bytes[run..]).map_err(Error::io("write the package"))
    }

    fn finish(&mut self) -> Result<()> {
        let close: &[u8] = if self.files > 0 { b"\"}}" } else { b"}}" };
        self.out.write_all(close).and_then(|_| self.out.flush()).map_err(Error::io("write the package"))
    }
}

/// Hashes each file as it passes to the sink, for the manifest.
struct Hashing<'s> {
    sink: &'s mut dyn Sink,
    current: Option<(String, Sha256)>,
    hashes: Vec<(String, String)>,
}

impl Hashing<'_> {
    fn file(&mut self, name: &str) -> Result<()> {
        self.close();
        self.current = Some((name.to_string(), Sha256::new()));
        self.sink.file(name)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some((_, h)) = self.current.as_mut() {
            h.update(bytes);
        }
        self.sink.write(bytes)
    }

    fn close(&mut self) {
        if let Some((name, h)) = self.current.take() {
            self.hashes.push((name, hex::encode(h.finalize())));
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub records: u64,
    pub end_size: u64,
    pub complete: bool,
}

/// An export, checked and pinned to a freshly signed checkpoint before anything is
/// written, so a caller can refuse a bad request before it starts a response.
pub struct Export<'l> {
    ledger: &'l Ledger,
    filter: RecordFilter,
    since_size: Option<u64>,
    end: StoredCheckpoint,
}

impl<'l> Export<'l> {
    /// Signs a checkpoint covering everything durable now (the package's end) and checks
    /// the request against it. `since_size` adds a consistency proof from an older
    /// checkpoint the auditor kept.
    pub fn prepare(ledger: &'l Ledger, filter: &RecordFilter, since_size: Option<u64>) -> Result<Export<'l>> {
        let end = ledger.checkpoint()?;
        if let Some(s) = since_size
            && s > end.checkpoint.size
        {
            return Err(Error::Malformed(format!("since_size {s} is beyond the log's size {}", end.checkpoint.size)));
        }
        Ok(Export { ledger, filter: filter.clone(), since_size, end })
    }

    pub fn end_size(&self) -> u64 {
        self.end.checkpoint.size
    }

    /// Writes the package: records as they are read, then checkpoints, proofs, keys and
    /// the manifest. Memory holds one batch of records.
    pub fn write_to(self, sink: &mut dyn Sink) -> Result<ExportSummary> {
        let ledger = self.ledger;
        let filter = &self.filter;
        let end_size = self.end.checkpoint.size;
        let complete = filter.selects_everything();
        let from = filter.from_seq.unwrap_or(0).min(end_size);
        let to = filter.to_seq.unwrap_or(end_size).min(end_size);
        let mut out = Hashing { sink, current: None, hashes: Vec::new() };

        out.file("leaves.jsonl")?;
        let mut count = 0u64;
        let mut at = from;
        let mut text = String::new();
        if complete {
            while at < to {
                let chunk_end = (at + 4096).min(to);
                text.clear();
                for leaf in ledger.read(at, chunk_end)? {
                    text.push_str(&leaf_line(&leaf, None)?);
                    text.push('\n');
                    count += 1;
                }
                out.write(text.as_bytes())?;
                at = chunk_end;
            }
        } else {
            // The search index finds the selected records without reading the others.
            let mut page_filter = filter.clone();
            page_filter.from_seq = Some(from);
            page_filter.to_seq = Some(to);
            loop {
                let page = ledger.search(&page_filter, 4096)?;
                text.clear();
                for leaf in &page.leaves {
                    let proof = ledger.inclusion_proof(leaf.seq, end_size)?;
                    text.push_str(&leaf_line(leaf, Some(&proof))?);
                    text.push('\n');
                    count += 1;
                }
                out.write(text.as_bytes())?;
                match page.next_seq {
                    Some(next) => page_filter.from_seq = Some(next),
                    None => break,
                }
            }
        }

        // Complete packages carry the whole checkpoint history (each root is recomputed);
        // partial ones the newest checkpoint at or below `from`, and the end.
        out.file("checkpoints.jsonl")?;
        let line = |size: u64, note: &str| {
            let mut o = Obj::new();
            o.u64("size", size).str("note", note);
            let mut s = o.finish();
            s.push('\n');
            s
        };
        let mut last = None;
        let mut start = None;
        if complete {
            let mut err = None;
            ledger.each_checkpoint(|c| {
                if c.checkpoint.size <= end_size && err.is_none() {
                    if let Err(e) = out.write(line(c.checkpoint.size, &c.checkpoint.note).as_bytes()) {
                        err = Some(e);
                    }
                    last = Some(c.checkpoint.size);
                }
                Ok(())
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        } else if from > 0
            && let Some(c) = checkpoints::newest_at_most(ledger.dir(), from)?
            && c.checkpoint.size < end_size
        {
            out.write(line(c.checkpoint.size, &c.checkpoint.note).as_bytes())?;
            last = Some(c.checkpoint.size);
            start = Some(c.checkpoint.size);
        }
        if last != Some(end_size) {
            out.write(line(end_size, &self.end.checkpoint.note).as_bytes())?;
        }

        out.file("proofs.json")?;
        let mut pairs: Vec<(u64, u64)> = start.map(|s| vec![(s, end_size)]).unwrap_or_default();
        if let Some(s) = self.since_size {
            pairs.push((s, end_size));
        }
        let mut consistency = Vec::new();
        for (old, new) in pairs {
            let proof = ledger.consistency_proof(old, new)?;
            consistency.push(format!("{{\"old\":{old},\"new\":{new},\"proof\":{}}}", hashes_json(&proof)));
        }
        out.write(format!("{{\"consistency\":[{}]}}\n", consistency.join(",")).as_bytes())?;

        out.file("keys.txt")?;
        let keys: String = ledger.public_keys().iter().map(|k| format!("{}\n", k.encode())).collect();
        out.write(keys.as_bytes())?;
        out.close();

        let mut hashes = Obj::new();
        for (name, hash) in &out.hashes {
            hashes.str(name, hash);
        }
        let mut m = Obj::new();
        m.str("format", FORMAT)
            .str("origin", ledger.origin())
            .str("log_id", &hex::encode(ledger.log_id()))
            .bool("complete", complete)
            .u64("end_size", end_size)
            .u64("records", count);
        let mut manifest = m.finish();
        manifest.pop();
        manifest.push_str(&format!(",\"filter\":{},\"files\":{}}}\n", filter.describe(), hashes.finish()));
        out.sink.file("manifest.json")?;
        out.sink.write(manifest.as_bytes())?;
        out.sink.finish()?;
        Ok(ExportSummary { records: count, end_size, complete })
    }
}

/// A package held in memory: file name → content. Small packages and tests; large ones
/// stream through a [`Sink`] and [`crate::verify::Source`] instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Package {
    pub files: BTreeMap<String, String>,
    current: Option<String>,
}

impl Sink for Package {
    fn file(&mut self, name: &str) -> Result<()> {
        self.files.insert(name.to_string(), String::new());
        self.current = Some(name.to_string());
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let name = self.current.as_ref().expect("a file was started");
        let text = std::str::from_utf8(bytes).map_err(|_| Error::Malformed(format!("{name} is not UTF-8")))?;
        self.files.get_mut(name).expect("started").push_str(text);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.current = None;
        Ok(())
    }
}

impl Package {
    /// Exports into memory (see [`Export`]).
    pub fn export(ledger: &Ledger, filter: &RecordFilter, since_size: Option<u64>) -> Result<Package> {
        let mut pkg = Package::default();
        Export::prepare(ledger, filter, since_size)?.write_to(&mut pkg)?;
        Ok(pkg)
    }

    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        let mut sink = DirSink::create(dir)?;
        for (name, content) in &self.files {
            sink.file(name)?;
            sink.write(content.as_bytes())?;
        }
        sink.finish()
    }

    /// Reads a package from a directory, or from a file holding the single-JSON form.
    pub fn read(path: &Path) -> Result<Package> {
        let mut pkg = Package::default();
        if path.is_dir() {
            for name in std::iter::once("manifest.json").chain(FILES) {
                let p = path.join(name);
                if let Ok(c) = std::fs::read_to_string(&p) {
                    pkg.files.insert(name.to_string(), c);
                }
            }
        } else {
            let text = std::fs::read_to_string(path).map_err(Error::io(format!("read {}", path.display())))?;
            pkg = Self::from_json(&text)?;
        }
        Ok(pkg)
    }

    pub fn to_json(&self) -> String {
        let mut sink = JsonSink::new(Vec::new()).expect("memory");
        for (name, content) in &self.files {
            sink.file(name).and_then(|_| sink.write(content.as_bytes())).expect("memory");
        }
        sink.finish().expect("memory");
        String::from_utf8(sink.into_inner().expect("memory")).expect("UTF-8 in, UTF-8 out")
    }

    pub fn from_json(text: &str) -> Result<Package> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::verify(None, format!("package is not JSON: {e}")))?;
        let files = v["files"].as_object().ok_or_else(|| Error::verify(None, "package JSON has no \"files\" object"))?;
        let mut pkg = Package::default();
        for (k, c) in files {
            pkg.files.insert(k.clone(), c.as_str().ok_or_else(|| Error::verify(None, format!("file {k} is not text")))?.to_string());
        }
        Ok(pkg)
    }
}
