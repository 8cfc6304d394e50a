//! Offline verification of an export package: no server, no network, constant memory.
//!
//! Checks: every checkpoint's signature by a trusted key (following recorded key rotations
//! that an already-trusted checkpoint covers); each record's bytes against its hash, seq
//! and decoded view; the hash chain; the Merkle root at every checkpoint (complete
//! packages, from a compact range of the records read so far) or each record's inclusion
//! proof (partial ones); consistency between checkpoints; consistency with a checkpoint
//! the auditor kept from before; and the manifest's file hashes.
//!
//! Files are read front to back from a [`Source`] (a directory, a single-JSON file read in
//! place, or memory). Records are checked in batches on every core, then in order; memory
//! holds one batch, however large the package. The first failure in record order is
//! reported, naming the record.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::leaf::{self, RecordType};
use crate::merkle::{CompactRange, Hash, leaf_hash, verify_consistency, verify_inclusion};
use crate::note::{Checkpoint, VerifierKey};
use crate::package::{FILES, FORMAT, FORMAT_V1, Package};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub end_size: u64,
    pub complete: bool,
    pub checkpoints: usize,
    pub trusted_checkpoint_size: Option<u64>,
}

/// Records checked together on all cores before they are taken in order.
const BATCH: usize = 16_384;
/// A record line is at most a 64 KiB leaf in base64, its payload view and a proof.
const MAX_LINE: u64 = 1 << 20;
/// The manifest, proofs and key files are small by construction.
const MAX_SMALL_FILE: u64 = 16 << 20;

fn fail(seq: impl Into<Option<u64>>, reason: impl Into<String>) -> Error {
    Error::verify(seq, reason)
}

/// Where a package's files are read from.
pub trait Source: Sync {
    /// A reader over file `name`'s content, from its start; `None` when there is no such
    /// file. Each call opens a fresh reader.
    fn open(&self, name: &str) -> Result<Option<Box<dyn BufRead + Send + '_>>>;
}

impl Source for Package {
    fn open(&self, name: &str) -> Result<Option<Box<dyn BufRead + Send + '_>>> {
        Ok(self.files.get(name).map(|c| Box::new(Cursor::new(c.as_bytes())) as Box<dyn BufRead + Send>))
    }
}

/// A package written as a directory of files.
pub struct DirSource(pub PathBuf);

impl Source for DirSource {
    fn open(&self, name: &str) -> Result<Option<Box<dyn BufRead + Send + '_>>> {
        let path = self.0.join(name);
        match File::open(&path) {
            Ok(f) => Ok(Some(Box::new(BufReader::with_capacity(1 << 16, f)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { context: format!("open {}", path.display()), source: e }),
        }
    }
}

/// A package in its single-JSON form (`{"files":{"<name>":"<content>",…}}`), read in
/// place: one pass finds where each file's string starts, then each file is read from
/// there, unescaped on the fly.
pub struct JsonFileSource {
    path: PathBuf,
    starts: BTreeMap<String, u64>,
}

impl JsonFileSource {
    pub fn open(path: &Path) -> Result<JsonFileSource> {
        let f = File::open(path).map_err(Error::io(format!("open {}", path.display())))?;
        let mut scan = Scanner { r: BufReader::with_capacity(1 << 16, f), at: 0 };
        let starts = scan.file_starts().map_err(|e| match e {
            ScanError::Io(e) => Error::Io { context: format!("read {}", path.display()), source: e },
            ScanError::Syntax(why) => fail(None, format!("package is not JSON: {why}")),
        })?;
        Ok(JsonFileSource { path: path.to_path_buf(), starts })
    }
}

impl Source for JsonFileSource {
    fn open(&self, name: &str) -> Result<Option<Box<dyn BufRead + Send + '_>>> {
        let Some(&at) = self.starts.get(name) else { return Ok(None) };
        let mut f = File::open(&self.path).map_err(Error::io(format!("open {}", self.path.display())))?;
        f.seek(SeekFrom::Start(at)).map_err(Error::io(format!("seek {}", self.path.display())))?;
        let inner = BufReader::with_capacity(1 << 16, f);
        Ok(Some(Box::new(BufReader::with_capacity(1 << 16, Unescape { inner, done: false, pending: Vec::new() }))))
    }
}

/// Opens a package from a directory or a single-JSON file.
pub fn open_source(path: &Path) -> Result<Box<dyn Source>> {
    if path.is_dir() {
        Ok(Box::new(DirSource(path.to_path_buf())))
    } else {
        Ok(Box::new(JsonFileSource::open(path)?))
    }
}

enum ScanError {
    Io(std::io::Error),
    Syntax(String),
}

impl From<std::io::Error> for ScanError {
    fn from(e: std::io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Just enough of a JSON reader to walk the package object without holding its strings.
struct Scanner<R: BufRead> {
    r: R,
    at: u64,
}

impl<R: BufRead> Scanner<R> {
    fn peek(&mut self) -> Result<Option<u8>, ScanError> {
        Ok(self.r.fill_buf()?.first().copied())
    }

    fn next(&mut self) -> Result<u8, ScanError> {
        let b = self.peek()?.ok_or_else(|| ScanError::Syntax(format!("the document ends early at byte {}", self.at)))?;
        self.r.consume(1);
        self.at += 1;
        Ok(b)
    }

    fn skip_ws(&mut self) -> Result<(), ScanError> {
        while let Some(b) = self.peek()? {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.r.consume(1);
            self.at += 1;
        }
        Ok(())
    }

    fn expect(&mut self, want: u8) -> Result<(), ScanError> {
        self.skip_ws()?;
        let at = self.at;
        let b = self.next()?;
        if b != want {
            return Err(ScanError::Syntax(format!("expected `{}` at byte {at}, found `{}`", want as char, b as char)));
        }
        Ok(())
    }

    /// The rest of a string after its opening quote, kept when short (keys).
    fn string(&mut self, keep: bool) -> Result<String, ScanError> {
        let mut raw = Vec::new();
        loop {
            let buf = self.r.fill_buf()?;
            if buf.is_empty() {
                return Err(ScanError::Syntax("a string is not closed".into()));
            }
            let mut i = 0;
            let mut end = None;
            while i < buf.len() {
                match buf[i] {
                    b'"' => {
                        end = Some(i);
                        break;
                    }
                    // An escape and the byte it escapes are taken together.
                    b'\\' if i + 1 < buf.len() => i += 2,
                    b'\\' => break,
                    _ => i += 1,
                }
            }
            let take = end.unwrap_or(i);
            if keep {
                raw.extend_from_slice(&buf[..take]);
            }
            let consumed = if end.is_some() { take + 1 } else { take };
            self.r.consume(consumed);
            self.at += consumed as u64;
            if end.is_some() {
                break;
            }
            if take == 0 {
                // A backslash at the end of the buffer: take it with the next byte.
                let a = self.next()?;
                let b = self.next()?;
                if keep {
                    raw.extend_from_slice(&[a, b]);
                }
            }
        }
        if !keep {
            return Ok(String::new());
        }
        raw.insert(0, b'"');
        raw.push(b'"');
        serde_json::from_slice(&raw).map_err(|e| ScanError::Syntax(format!("a key: {e}")))
    }

    fn skip_value(&mut self) -> Result<(), ScanError> {
        self.skip_ws()?;
        let mut depth = 0usize;
        loop {
            match self.next()? {
                b'"' => {
                    self.string(false)?;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.checked_sub(1).ok_or_else(|| ScanError::Syntax(format!("unbalanced at byte {}", self.at)))?,
                _ => {}
            }
            if depth == 0 {
                match self.peek()? {
                    Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') | None => return Ok(()),
                    _ => {}
                }
            }
        }
    }

    /// Walks `{…,"files":{"<name>":"…",…},…}` and returns where each file's text starts.
    fn file_starts(&mut self) -> Result<BTreeMap<String, u64>, ScanError> {
        let mut starts = BTreeMap::new();
        self.expect(b'{')?;
        self.skip_ws()?;
        if self.peek()? == Some(b'}') {
            return Ok(starts);
        }
        loop {
            self.expect(b'"')?;
            let key = self.string(true)?;
            self.expect(b':')?;
            if key == "files" {
                self.expect(b'{')?;
                self.skip_ws()?;
                if self.peek()? == Some(b'}') {
                    self.next()?;
                } else {
                    loop {
                        self.expect(b'"')?;
                        let name = self.string(true)?;
                        self.expect(b':')?;
                        self.expect(b'"')?;
                        starts.insert(name, self.at);
                        self.string(false)?;
                        self.skip_ws()?;
                        match self.next()? {
                            b',' => continue,
                            b'}' => break,
                            b => return Err(ScanError::Syntax(format!("unexpected `{}` at byte {}", b as char, self.at - 1))),
                        }
                    }
                }
            } else {
                self.skip_value()?;
            }
            self.skip_ws()?;
            match self.next()? {
                b',' => continue,
                b'}' => return Ok(starts),
                b => return Err(ScanError::Syntax(format!("unexpected `{}` at byte {}", b as char, self.at - 1))),
            }
        }
    }
}

/// The text of a JSON string, unescaped as it is read, ending at its closing quote.
struct Unescape<R: BufRead> {
    inner: R,
    done: bool,
    /// Bytes of an escape already decoded but not yet handed out.
    pending: Vec<u8>,
}

impl<R: BufRead> Unescape<R> {
    fn byte(&mut self) -> std::io::Result<u8> {
        let b = *self.inner.fill_buf()?.first().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the package ends inside a string"))?;
        self.inner.consume(1);
        Ok(b)
    }

    fn hex4(&mut self) -> std::io::Result<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = (self.byte()? as char).to_digit(16).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "a bad \\u escape"))?;
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn escape(&mut self) -> std::io::Result<()> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        let c = match self.byte()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if self.byte()? != b'\\' || self.byte()? != b'u' {
                        return Err(bad("a lone surrogate in a \\u escape"));
                    }
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(bad("a lone surrogate in a \\u escape"));
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                char::from_u32(code).ok_or_else(|| bad("a \\u escape that is no character"))?
            }
            _ => return Err(bad("an unknown escape")),
        };
        let mut buf = [0u8; 4];
        self.pending.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
}

impl<R: BufRead> Read for Unescape<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(out.len());
                out[..n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the package ends inside a string"));
            }
            let stop = buf.iter().position(|&b| b == b'"' || b == b'\\').unwrap_or(buf.len());
            if stop > 0 {
                let n = stop.min(out.len());
                out[..n].copy_from_slice(&buf[..n]);
                self.inner.consume(n);
                return Ok(n);
            }
            let b = buf[0];
            self.inner.consume(1);
            if b == b'"' {
                self.done = true;
            } else {
                self.escape()?;
            }
        }
    }
}

/// Reads one line (without its newline) into `line`, feeding the raw bytes to `hash`.
/// False at the end of the file.
fn read_line(r: &mut dyn BufRead, line: &mut Vec<u8>, hash: &mut Sha256, file: &str, number: usize) -> Result<bool> {
    line.clear();
    let n = r.take(MAX_LINE + 1).read_until(b'\n', line).map_err(|e| fail(None, format!("{file} line {number}: {e}")))?;
    if n == 0 {
        return Ok(false);
    }
    if n as u64 > MAX_LINE {
        return Err(fail(None, format!("{file} line {number} is longer than {MAX_LINE} bytes")));
    }
    hash.update(&line[..]);
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(true)
}

fn read_small(src: &dyn Source, name: &str) -> Result<Vec<u8>> {
    let mut r = src.open(name)?.ok_or_else(|| fail(None, format!("package has no {name}")))?;
    let mut out = Vec::new();
    r.by_ref().take(MAX_SMALL_FILE + 1).read_to_end(&mut out).map_err(|e| fail(None, format!("{name}: {e}")))?;
    if out.len() as u64 > MAX_SMALL_FILE {
        return Err(fail(None, format!("{name} is larger than {MAX_SMALL_FILE} bytes")));
    }
    Ok(out)
}

fn hex_hash(v: &Value) -> Option<Hash> {
    hex::decode(v.as_str()?).ok()?.try_into().ok()
}

fn hex_eq(text: &str, hash: &Hash) -> bool {
    let mut buf = [0u8; 32];
    hex::decode_to_slice(text, &mut buf).is_ok() && &buf == hash
}

fn hash_list(v: &Value) -> Option<Vec<Hash>> {
    v.as_array()?.iter().map(hex_hash).collect()
}

fn hash_strs(v: &[&str]) -> Option<Vec<Hash>> {
    v.iter().map(|s| hex::decode(s).ok()?.try_into().ok()).collect()
}

/// One line of leaves.jsonl. The payload is kept as written: when its text is exactly
/// the payload bytes (as exported) no re-parse is needed; otherwise it must parse to the
/// same JSON value.
#[derive(serde::Deserialize)]
struct Line<'a> {
    seq: u64,
    leaf: &'a str,
    leaf_hash: &'a str,
    record_type: &'a str,
    ts_unix_ns: i64,
    prev_leaf: &'a str,
    #[serde(borrow, default)]
    inclusion: Option<Vec<&'a str>>,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

struct Record {
    seq: u64,
    hash: Hash,
    prev: Hash,
    rotation: Option<(String, String)>,
}

/// What a line's inclusion proof is checked against (partial packages).
struct Inclusion<'p> {
    end_size: u64,
    end_root: Hash,
    /// Version 1 packages keep the proofs in proofs.json, by seq.
    v1_proofs: Option<&'p Value>,
}

/// Checks one line of leaves.jsonl on its own: bytes, hash, seq, decoded view and, in a
/// partial package, the inclusion proof.
fn check_line(number: usize, line: &[u8], inclusion: Option<&Inclusion<'_>>) -> Result<Record> {
    let v: Line<'_> = serde_json::from_slice(line).map_err(|e| fail(None, format!("leaves.jsonl line {number}: {e}")))?;
    let claimed = v.seq;
    let bytes = B64.decode(v.leaf).map_err(|_| fail(claimed, "leaf bytes are not base64"))?;
    let view = leaf::decode(&bytes).map_err(|e| fail(claimed, format!("leaf bytes do not parse: {e}")))?;
    if view.seq != claimed {
        return Err(fail(claimed, format!("the leaf bytes say seq {}", view.seq)));
    }
    let hash = leaf_hash(&bytes);
    if !hex_eq(v.leaf_hash, &hash) {
        return Err(fail(claimed, "leaf_hash is not the hash of the leaf bytes"));
    }
    // Exported packages carry the payload text verbatim; anything else must at least
    // be the same JSON value.
    let payload_matches = v.payload.get().as_bytes() == view.payload || {
        let shown: Value = serde_json::from_str(v.payload.get()).map_err(|e| fail(claimed, format!("payload view: {e}")))?;
        serde_json::from_slice::<Value>(view.payload).is_ok_and(|p| p == shown)
    };
    if v.record_type != view.record_type.name() || v.ts_unix_ns != view.ts_unix_ns || !hex_eq(v.prev_leaf, &view.prev_leaf) || !payload_matches {
        if serde_json::from_slice::<&serde_json::value::RawValue>(view.payload).is_err() {
            return Err(fail(claimed, "the record's payload is not JSON: it is no event the ledger wrote"));
        }
        return Err(fail(claimed, "the decoded view does not match the leaf bytes"));
    }
    if let Some(inc) = inclusion {
        let proof = match inc.v1_proofs {
            Some(map) => hash_list(&map[claimed.to_string()]),
            None => v.inclusion.as_deref().and_then(hash_strs),
        }
        .ok_or_else(|| fail(claimed, "no inclusion proof for this record"))?;
        verify_inclusion(claimed, inc.end_size, &hash, &proof, &inc.end_root)
            .map_err(|e| fail(claimed, format!("record is not in the log of the end checkpoint: {e}")))?;
    }
    let rotation = (view.record_type == RecordType::KeyRotation).then(|| {
        let payload: Value = serde_json::from_slice(view.payload).unwrap_or_default();
        (payload["old_key"].as_str().unwrap_or_default().to_string(), payload["new_key"].as_str().unwrap_or_default().to_string())
    });
    Ok(Record { seq: claimed, hash, prev: view.prev_leaf, rotation })
}

/// Streams leaves.jsonl: each batch is checked line by line on every core, then handed
/// to `each` in file order.
fn each_record(
    src: &dyn Source,
    hash: &mut Sha256,
    inclusion: Option<&Inclusion<'_>>,
    mut each: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    let mut r = src.open("leaves.jsonl")?.ok_or_else(|| fail(None, "package has no leaves.jsonl"))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut number = 0usize;
    loop {
        let first = number + 1;
        let mut filled = 0;
        while filled < BATCH {
            if batch.len() == filled {
                batch.push(Vec::new());
            }
            if !read_line(&mut *r, &mut batch[filled], hash, "leaves.jsonl", number + 1)? {
                break;
            }
            number += 1;
            filled += 1;
        }
        if filled == 0 {
            return Ok(());
        }
        let lines = &batch[..filled];
        let checked: Vec<Result<Record>> = if threads == 1 || filled < 1024 {
            lines.iter().enumerate().map(|(i, l)| check_line(first + i, l, inclusion)).collect()
        } else {
            let chunk = filled.div_ceil(threads);
            std::thread::scope(|s| {
                let workers: Vec<_> = lines
                    .chunks(chunk)
                    .enumerate()
                    .map(|(c, part)| {
                        s.spawn(move || part.iter().enumerate().map(|(j, l)| check_line(first + c * chunk + j, l, inclusion)).collect::<Vec<_>>())
                    })
                    .collect();
                workers.into_iter().flat_map(|w| w.join().expect("verifier thread")).collect()
            })
        };
        for r in checked {
            each(r?)?;
        }
        if filled < BATCH {
            return Ok(());
        }
    }
}

/// Checkpoints as they stream from checkpoints.jsonl.
struct Notes<'s> {
    r: Box<dyn BufRead + Send + 's>,
    line: Vec<u8>,
    number: usize,
    hash: Sha256,
}

impl Notes<'_> {
    /// The next note and the size it claims (its signature is checked when it is used).
    fn next(&mut self) -> Result<Option<(String, u64)>> {
        self.number += 1;
        if !read_line(&mut *self.r, &mut self.line, &mut self.hash, "checkpoints.jsonl", self.number)? {
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(&self.line).map_err(|e| fail(None, format!("checkpoints.jsonl line {}: {e}", self.number)))?;
        let note = v["note"].as_str().ok_or_else(|| fail(None, format!("checkpoints.jsonl line {}: no note", self.number)))?;
        let size = Checkpoint::parse_unverified(note).map_err(|e| fail(None, format!("checkpoints.jsonl line {}: {e}", self.number)))?.size;
        Ok(Some((note.to_string(), size)))
    }
}

/// Verifies `pkg` against the keys the auditor trusts and, optionally, a checkpoint note
/// they kept from an earlier export.
pub fn verify_package(pkg: &Package, trusted_keys: &[VerifierKey], trusted_checkpoint: Option<&str>) -> Result<Summary> {
    verify(pkg, trusted_keys, trusted_checkpoint)
}

/// Verifies the package `src` holds (see the module comment).
pub fn verify(src: &dyn Source, trusted_keys: &[VerifierKey], trusted_checkpoint: Option<&str>) -> Result<Summary> {
    if trusted_keys.is_empty() {
        return Err(fail(None, "no trusted public key was given"));
    }
    let manifest: Value = serde_json::from_slice(&read_small(src, "manifest.json")?).map_err(|e| fail(None, format!("manifest.json: {e}")))?;
    let v1 = manifest["format"] == FORMAT_V1;
    if manifest["format"] != FORMAT && !v1 {
        return Err(fail(None, format!("manifest format is {}, expected {FORMAT}", manifest["format"])));
    }
    let origin = manifest["origin"].as_str().ok_or_else(|| fail(None, "manifest has no origin"))?.to_string();
    let complete = manifest["complete"] == Value::Bool(true);
    let end_size = manifest["end_size"].as_u64().ok_or_else(|| fail(None, "manifest has no end_size"))?;
    let mut hashes: BTreeMap<&str, String> = BTreeMap::new();

    let kept = trusted_checkpoint
        .map(|note| -> Result<Checkpoint> {
            let kept = Checkpoint::open(note, trusted_keys).map_err(|e| fail(None, format!("the kept checkpoint: {e}")))?;
            if kept.origin != origin {
                return Err(fail(None, format!("the kept checkpoint is for log {}, not {origin}", kept.origin)));
            }
            Ok(kept)
        })
        .transpose()?;

    let proofs_bytes = read_small(src, "proofs.json")?;
    hashes.insert("proofs.json", hex::encode(Sha256::digest(&proofs_bytes)));
    let proofs: Value = serde_json::from_slice(&proofs_bytes).map_err(|e| fail(None, format!("proofs.json: {e}")))?;
    drop(proofs_bytes);
    let mut consistency: BTreeMap<(u64, u64), Vec<Hash>> = BTreeMap::new();
    for c in proofs["consistency"].as_array().into_iter().flatten() {
        let (Some(old), Some(new), Some(p)) = (c["old"].as_u64(), c["new"].as_u64(), hash_list(&c["proof"])) else {
            return Err(fail(None, "proofs.json holds a malformed consistency proof"));
        };
        consistency.insert((old, new), p);
    }
    hashes.insert("keys.txt", hex::encode(Sha256::digest(read_small(src, "keys.txt")?)));

    let open_notes = || -> Result<Notes<'_>> {
        let r = src.open("checkpoints.jsonl")?.ok_or_else(|| fail(None, "package has no checkpoints.jsonl"))?;
        Ok(Notes { r, line: Vec::new(), number: 0, hash: Sha256::new() })
    };
    let check_origin = |cp: &Checkpoint| {
        if cp.origin != origin {
            return Err(fail(None, format!("checkpoint origin {} is not the package's origin {origin}", cp.origin)));
        }
        Ok(())
    };
    let mut leaves_hash = Sha256::new();
    let mut records = 0u64;
    let mut opened = 0usize;
    let end: Checkpoint;

    if complete {
        // Checkpoints are taken in step with the records: each is opened with the keys
        // trusted so far and its root compared when the records reach its size. Trust
        // passes to a rotated key once a checkpoint signed by the old key covers the
        // rotation record.
        let mut notes = open_notes()?;
        let mut trusted: Vec<VerifierKey> = trusted_keys.to_vec();
        let mut rotations: Vec<(u64, String, String)> = Vec::new();
        let mut range = CompactRange::new();
        let mut next_note = notes.next()?;
        let mut last: Option<Checkpoint> = None;
        let mut kept_ok = false;
        let mut prev: Option<(u64, Hash)> = None;
        // Opens and checks every checkpoint the records read so far reach.
        let mut take_checkpoints = |range: &CompactRange,
                                    notes: &mut Notes<'_>,
                                    next_note: &mut Option<(String, u64)>,
                                    last: &mut Option<Checkpoint>,
                                    trusted: &mut Vec<VerifierKey>,
                                    rotations: &mut Vec<(u64, String, String)>,
                                    all: bool|
         -> Result<()> {
            while let Some((note, size)) = next_note.as_ref() {
                if *size > range.size() && !all {
                    break;
                }
                let cp = Checkpoint::open(note, trusted).map_err(|e| fail(None, format!("checkpoint is not signed by a trusted key: {e}")))?;
                check_origin(&cp)?;
                if let Some(p) = last.as_ref()
                    && cp.size < p.size
                {
                    return Err(fail(None, "checkpoints are not in increasing size"));
                }
                if cp.size != range.size() || range.root() != cp.root {
                    let first = last.as_ref().map_or(0, |p| p.size);
                    return Err(fail(first, format!("the records from seq {first} up to {} do not match the signed checkpoint of size {}", cp.size, cp.size)));
                }
                follow_rotations(rotations, trusted, cp.size);
                *last = Some(cp);
                opened += 1;
                *next_note = notes.next()?;
            }
            Ok(())
        };
        let mut check_kept = |range: &CompactRange| {
            if let Some(k) = kept.as_ref()
                && k.size == range.size()
            {
                if range.root() != k.root {
                    return Err(fail(None, format!("history was rewritten: the first {} records differ from the kept checkpoint", k.size)));
                }
                kept_ok = true;
            }
            Ok(())
        };
        check_kept(&range)?;
        take_checkpoints(&range, &mut notes, &mut next_note, &mut last, &mut trusted, &mut rotations, false)?;
        each_record(src, &mut leaves_hash, None, |r| {
            if let Some((p_seq, p_hash)) = prev {
                if r.seq <= p_seq {
                    return Err(fail(r.seq, format!("record {} appears again or out of order after record {p_seq}", r.seq)));
                }
                if r.seq == p_seq + 1 && r.prev != p_hash {
                    return Err(fail(p_seq, format!("record {p_seq} does not match the hash that record {} links to", r.seq)));
                }
            }
            if r.seq != records {
                return Err(fail(records, format!("record {records} is missing (found record {} in its place)", r.seq)));
            }
            if records == 0 && r.prev != [0u8; 32] {
                return Err(fail(0, "record 0 links to a previous record"));
            }
            if r.seq >= end_size {
                return Err(fail(r.seq, format!("record {} is beyond the end checkpoint of size {end_size}", r.seq)));
            }
            range.push(r.hash);
            records += 1;
            if let Some((old, new)) = r.rotation {
                rotations.push((r.seq, old, new));
            }
            prev = Some((r.seq, r.hash));
            check_kept(&range)?;
            take_checkpoints(&range, &mut notes, &mut next_note, &mut last, &mut trusted, &mut rotations, false)
        })?;
        if records < end_size {
            return Err(fail(records, format!("the package ends before record {records} but its checkpoint covers {end_size} records")));
        }
        take_checkpoints(&range, &mut notes, &mut next_note, &mut last, &mut trusted, &mut rotations, true)?;
        if let Some(k) = kept.as_ref()
            && !kept_ok
            && k.size <= records
        {
            return Err(fail(None, format!("history was rewritten: the first {} records differ from the kept checkpoint", k.size)));
        }
        end = last.ok_or_else(|| fail(None, "package holds no checkpoint"))?;
        hashes.insert("checkpoints.jsonl", hex::encode(notes.hash.finalize()));
    } else {
        // A partial package proves each record against its end checkpoint, so the
        // checkpoints (few: where the selection starts, and the end) come first.
        let mut notes = open_notes()?;
        let mut last: Option<Checkpoint> = None;
        while let Some((note, _)) = notes.next()? {
            let cp = Checkpoint::open(&note, trusted_keys).map_err(|e| fail(None, format!("checkpoint is not signed by a trusted key: {e}")))?;
            check_origin(&cp)?;
            if let Some(a) = last.as_ref() {
                if cp.size < a.size {
                    return Err(fail(None, "checkpoints are not in increasing size"));
                }
                let proof = consistency
                    .get(&(a.size, cp.size))
                    .ok_or_else(|| fail(None, format!("no consistency proof from size {} to {}", a.size, cp.size)))?;
                verify_consistency(a.size, cp.size, &a.root, &cp.root, proof)
                    .map_err(|e| fail(a.size, format!("the log of size {} does not extend the checkpoint of size {}: {e}", cp.size, a.size)))?;
            }
            opened += 1;
            last = Some(cp);
        }
        hashes.insert("checkpoints.jsonl", hex::encode(notes.hash.finalize()));
        end = last.ok_or_else(|| fail(None, "package holds no checkpoint"))?;
        if end.size != end_size {
            return Err(fail(None, format!("the last checkpoint covers {} records, the manifest says {end_size}", end.size)));
        }
        let inclusion = Inclusion { end_size: end.size, end_root: end.root, v1_proofs: v1.then(|| &proofs["inclusion"]) };
        let mut prev: Option<(u64, Hash)> = None;
        each_record(src, &mut leaves_hash, Some(&inclusion), |r| {
            if let Some((p_seq, p_hash)) = prev {
                if r.seq <= p_seq {
                    return Err(fail(r.seq, format!("record {} appears again or out of order after record {p_seq}", r.seq)));
                }
                if r.seq == p_seq + 1 && r.prev != p_hash {
                    return Err(fail(p_seq, format!("record {p_seq} does not match the hash that record {} links to", r.seq)));
                }
            }
            if r.seq >= end_size {
                return Err(fail(r.seq, format!("record {} is beyond the end checkpoint of size {end_size}", r.seq)));
            }
            records += 1;
            prev = Some((r.seq, r.hash));
            Ok(())
        })?;
        if let Some(k) = kept.as_ref() {
            let proof = consistency.get(&(k.size, end.size)).ok_or_else(|| {
                fail(None, format!("the package has no consistency proof from size {}; export it with since_size={}", k.size, k.size))
            })?;
            verify_consistency(k.size, end.size, &k.root, &end.root, proof).map_err(|e| {
                fail(None, format!("history was rewritten: the log does not extend the kept checkpoint of size {}: {e}", k.size))
            })?;
        }
    }
    hashes.insert("leaves.jsonl", hex::encode(leaves_hash.finalize()));

    if end.size != end_size {
        return Err(fail(None, format!("the last checkpoint covers {} records, the manifest says {end_size}", end.size)));
    }
    if let Some(k) = kept.as_ref()
        && k.size > end.size
    {
        return Err(fail(
            end.size,
            format!("the kept checkpoint covers {} records but this package's log has only {}: records were removed", k.size, end.size),
        ));
    }
    for name in FILES {
        let want = manifest["files"][name].as_str().ok_or_else(|| fail(None, format!("manifest lists no hash for {name}")))?;
        if hashes.get(name).map(String::as_str) != Some(want) {
            return Err(fail(None, format!("{name} does not match its hash in the manifest")));
        }
    }
    if manifest["records"].as_u64().is_some_and(|n| n != records) {
        return Err(fail(None, format!("the manifest counts {} records, the package holds {records}", manifest["records"])));
    }
    Ok(Summary { records, end_size, complete, checkpoints: opened, trusted_checkpoint_size: kept.map(|k| k.size) })
}

/// Key rotations recorded before `size` (seq, old key, new key): each new key becomes trusted
/// when the key it replaces is, and is then dropped from the list; later ones stay.
pub(crate) fn follow_rotations(rotations: &mut Vec<(u64, String, String)>, trusted: &mut Vec<VerifierKey>, size: u64) {
    rotations.retain(|(seq, old, new)| {
        if *seq >= size {
            return true;
        }
        if trusted.iter().any(|k| &k.encode() == old)
            && let Ok(k) = VerifierKey::parse(new)
            && !trusted.contains(&k)
        {
            trusted.push(k);
        }
        false
    });
}

