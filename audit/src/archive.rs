//! The log away from its node: the layout of an archive copy, and verification of a log
//! directory or an archive from its segments and signed checkpoints alone.
//!
//! An archive holds what a sealed part of the log needs to be verified and served without
//! the node:
//!
//! ```text
//! seg-<n>.zst                     sealed segments, compressed, exactly as on the node
//! tile/<L>/<N>                    full hash tiles (tlog-tiles layout)
//! checkpoints/<size, 20 digits>   the signed checkpoint (a stored line) of each
//!                                 archived segment's end, and of each key rotation
//! ```
//!
//! Every sealed segment ends at a checkpoint of exactly its size (the writer signs one as
//! it seals), so the archive verifies on its own: objects are written once and never
//! overwritten, and a verifier needs the archive and the log's first public key (later
//! keys come from rotation records that a checkpoint by an already-trusted key covers).
//!
//! Once archived, a node may drop its local copy of a segment past a retention: a stub
//! (`seg-<n>.archived`: header, SHA-256, length) stays, and reads fetch the segment back
//! from the archive, checked against the stub.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::checkpoints::{self, StoredCheckpoint};
use crate::error::{Error, Result};
use crate::leaf::{self, RecordType};
use crate::ledger::Ledger;
use crate::merkle::{CompactRange, Hash, leaf_hash};
use crate::note::{Checkpoint, VerifierKey};
use crate::segment::{self, HEADER_LEN, SegmentHeader};
use crate::store::{self, SegmentFile, Stored, Stub};
use crate::tiles;
use crate::verify::Summary;

/// Where sealed segments are copied: object storage, another disk. Objects are written
/// once; writing a name that exists with other bytes is an error, never an overwrite.
pub trait ArchiveStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` as `name` unless it exists (then its bytes must be these).
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<()>;
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Names under `prefix`, in any order.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
}

/// An archive in a local directory (`file://`): files created exclusively and synced.
#[derive(Debug)]
pub struct DirArchive(pub PathBuf);

impl ArchiveStore for DirArchive {
    fn put_new(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.0.join(name);
        let parent = path.parent().expect("inside the archive");
        fs::create_dir_all(parent).map_err(Error::io(format!("create {}", parent.display())))?;
        // Written aside and linked into place: the name appears whole or not at all,
        // and linking fails rather than replace what is there.
        let tmp = parent.join(format!(".{}.{}.tmp", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(Error::io(format!("create {}", tmp.display())))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(Error::io(format!("write {}", tmp.display())))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => crate::ledger::sync_dir(parent),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => same_bytes(self, name, bytes),
            Err(e) => Err(Error::Io { context: format!("link {}", path.display()), source: e }),
        }
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.0.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { context: format!("read {name} from the archive"), source: e }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let (folder, start) = match prefix.rfind('/') {
            Some(i) => (self.0.join(&prefix[..i]), &prefix[i + 1..]),
            None => (self.0.clone(), prefix),
        };
        let base = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
        match fs::read_dir(&folder) {
            Ok(entries) => Ok(entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(start) && !n.starts_with('.'))
                .map(|n| format!("{base}{n}"))
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::Io { context: format!("list {}", folder.display()), source: e }),
        }
    }
}

/// For a write that found its name taken: fine when the bytes are the same (a pass cut
/// short and run again), an error otherwise.
pub fn same_bytes(store: &dyn ArchiveStore, name: &str, bytes: &[u8]) -> Result<()> {
    match store.get(name)? {
        Some(have) if have == bytes => Ok(()),
        _ => Err(Error::Corrupt(format!("the audit archive already holds a different {name}; it is never overwritten"))),
    }
}

/// Where an archive keeps its checkpoints, one object each.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// The object name of a checkpoint in an archive.
pub fn checkpoint_name(size: u64) -> String {
    format!("{CHECKPOINTS_DIR}/{size:020}")
}

/// True when `path` is a log directory (or an archive copy of one) rather than a package.
pub fn is_log_dir(path: &Path) -> bool {
    path.is_dir()
        && !path.join("manifest.json").exists()
        && (path.join(checkpoints::FILE).exists() || path.join(CHECKPOINTS_DIR).is_dir() || store::list_read_only(path).is_ok_and(|l| !l.is_empty()))
}

fn fail(seq: impl Into<Option<u64>>, reason: impl Into<String>) -> Error {
    Error::verify(seq, reason)
}

/// A log to verify: its segments as written, and its signed checkpoints.
pub trait LogSource {
    /// The segment numbers, in order.
    fn segments(&self) -> Result<Vec<u32>>;
    /// A segment's bytes as written.
    fn segment(&self, number: u32) -> Result<Vec<u8>>;
    /// Up to `limit` signed checkpoints of at least `from_size` records, oldest first.
    fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>>;
}

/// A log directory, or an archive copied to (or kept in) a local directory.
pub struct DirLog(pub PathBuf);

impl LogSource for DirLog {
    fn segments(&self) -> Result<Vec<u32>> {
        Ok(store::list_read_only(&self.0)?.into_iter().map(|(n, _, _)| n).collect())
    }

    fn segment(&self, number: u32) -> Result<Vec<u8>> {
        let mut f = match SegmentFile::open(&self.0, number, Stored::Raw) {
            Ok(f) => f,
            Err(_) => SegmentFile::open(&self.0, number, Stored::Compressed).map_err(|e| match Stub::read(&self.0, number) {
                Ok(Some(_)) => Error::Unavailable(format!("segment {number} was moved to the archive; verify the archive")),
                _ => e,
            })?,
        };
        f.read_all()
    }

    fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
        if self.0.join(checkpoints::FILE).exists() {
            return checkpoints::from_size(&self.0, from_size, limit);
        }
        StoreLog(&DirArchive(self.0.clone())).checkpoints(from_size, limit)
    }
}

/// An archive read object by object through its store.
pub struct StoreLog<'a>(pub &'a dyn ArchiveStore);

impl LogSource for StoreLog<'_> {
    fn segments(&self) -> Result<Vec<u32>> {
        let mut n: Vec<u32> = self.0.list("seg-")?.iter().filter_map(|name| store::parse_compressed_name(name)).collect();
        n.sort_unstable();
        Ok(n)
    }

    fn segment(&self, number: u32) -> Result<Vec<u8>> {
        let name = store::compressed_name(number);
        let bytes = self.0.get(&name)?.ok_or_else(|| Error::Corrupt(format!("the archive lost {name}")))?;
        // Read through the same code as local segments, from a private scratch copy.
        let scratch = std::env::temp_dir().join(format!("lakeledger-verify-{}-{number}", std::process::id()));
        fs::create_dir_all(&scratch).map_err(Error::io(format!("create {}", scratch.display())))?;
        let _cleanup = crate::ledger::Discard(scratch.clone());
        fs::write(scratch.join(&name), &bytes).map_err(Error::io(format!("write {}", scratch.display())))?;
        SegmentFile::open(&scratch, number, Stored::Compressed)?.read_all()
    }

    fn checkpoints(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
        let mut sizes: Vec<(u64, String)> = self
            .0
            .list(&format!("{CHECKPOINTS_DIR}/"))?
            .into_iter()
            .filter_map(|name| {
                let digits = name.rsplit('/').next()?;
                (digits.len() == 20).then(|| digits.parse::<u64>().ok().map(|s| (s, name.clone()))).flatten()
            })
            .filter(|(s, _)| *s >= from_size)
            .collect();
        sizes.sort();
        let mut out = Vec::new();
        for (size, name) in sizes.into_iter().take(limit) {
            let text = self.0.get(&name)?.ok_or_else(|| Error::Corrupt(format!("the archive lost {name}")))?;
            let line = text.strip_suffix(b"\n").unwrap_or(&text);
            let cp = StoredCheckpoint::parse_line(line).filter(|c| c.checkpoint.size == size).ok_or_else(|| fail(None, format!("{name} in the archive is damaged")))?;
            out.push(cp);
        }
        Ok(out)
    }
}

/// Verifies a log directory or an archive copy: every segment's frames and chain, and
/// every signed checkpoint's signature and root, recomputed from the records. Memory
/// holds one segment. Records after the newest checkpoint are chain-checked but, being
/// signed by nothing yet, not counted in `end_size`.
pub fn verify_log(src: &dyn LogSource, trusted_keys: &[VerifierKey], trusted_checkpoint: Option<&str>) -> Result<Summary> {
    if trusted_keys.is_empty() {
        return Err(fail(None, "no trusted public key was given"));
    }
    let mut trusted = trusted_keys.to_vec();
    let kept = trusted_checkpoint.map(|n| Checkpoint::open(n, trusted_keys).map_err(|e| fail(None, format!("the kept checkpoint: {e}")))).transpose()?;
    let segments = src.segments()?;
    let mut range = CompactRange::new();
    let mut prev: Hash = [0u8; 32];
    let mut log_id: Option<[u8; 16]> = None;
    let mut origin: Option<String> = None;
    let mut rotations: Vec<(u64, String, String)> = Vec::new();
    let mut kept_ok = kept.as_ref().is_some_and(|k| k.size == 0);

    // Checkpoints, opened as the records reach them.
    let mut pending: Vec<StoredCheckpoint> = Vec::new();
    let mut checked = 0usize;
    let mut last_size = 0u64;
    let mut reach = |range: &CompactRange, trusted: &mut Vec<VerifierKey>, rotations: &mut Vec<(u64, String, String)>, origin: &Option<String>, pending: &mut Vec<StoredCheckpoint>| -> Result<()> {
        while let Some(c) = pending.first() {
            if c.checkpoint.size > range.size() {
                break;
            }
            let c = pending.remove(0);
            let cp = Checkpoint::open(&c.checkpoint.note, trusted).map_err(|e| fail(None, format!("the checkpoint of size {} is not signed by a trusted key: {e}", c.checkpoint.size)))?;
            if origin.as_deref().is_some_and(|o| o != cp.origin) {
                return Err(fail(None, format!("the checkpoint of size {} is for log {}", cp.size, cp.origin)));
            }
            if cp.size < last_size {
                return Err(fail(None, format!("checkpoint of size {} follows one of size {last_size}", cp.size)));
            }
            if cp.size == range.size() && range.root() != cp.root {
                return Err(fail(last_size, format!("the records from seq {last_size} up to {} do not match the signed checkpoint of size {}", cp.size, cp.size)));
            }
            crate::verify::follow_rotations(rotations, trusted, cp.size);
            last_size = cp.size;
            checked += 1;
        }
        Ok(())
    };

    // Feeds checkpoints into `pending` a window at a time, so memory stays small.
    let mut next_from = 0u64;
    let mut refill = |pending: &mut Vec<StoredCheckpoint>, at_least: u64| -> Result<()> {
        if !pending.is_empty() || next_from > at_least {
            return Ok(());
        }
        let got = src.checkpoints(next_from, 4096)?;
        if let Some(l) = got.last() {
            next_from = l.checkpoint.size + 1;
        } else {
            next_from = u64::MAX;
        }
        pending.extend(got);
        Ok(())
    };

    refill(&mut pending, 0)?;
    reach(&range, &mut trusted, &mut rotations, &origin, &mut pending)?;
    for (i, number) in segments.iter().enumerate() {
        let name = store::compressed_name(*number);
        if *number as usize != i + 1 {
            return Err(fail(range.size(), format!("segment {number} found where segment {} was expected", i + 1)));
        }
        let bytes = src.segment(*number).map_err(|e| fail(range.size(), format!("segment {number}: {e}")))?;
        let header = SegmentHeader::decode(&bytes).map_err(|e| fail(range.size(), format!("{name}: {e}")))?;
        if *log_id.get_or_insert(header.log_id) != header.log_id {
            return Err(fail(range.size(), format!("{name} belongs to another log")));
        }
        if header.first_seq != range.size() || header.prev_leaf != prev {
            return Err(fail(range.size(), format!("{name} does not continue the log: it starts at seq {}", header.first_seq)));
        }
        let mut offset = HEADER_LEN;
        loop {
            let seq = range.size();
            let frame = match segment::read_frame(&header.salt, &bytes, offset) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                // A torn tail ends the last segment, as opening the log would cut it.
                Err(_) if i + 1 == segments.len() && !segment::any_valid_frame_after(&header.salt, &bytes, offset + 8) => break,
                Err(why) => return Err(fail(seq, format!("{name}: the record at byte {offset} is damaged ({why})"))),
            };
            let view = leaf::decode(frame).map_err(|e| fail(seq, format!("the record does not parse: {e}")))?;
            if view.seq != seq {
                return Err(fail(seq, format!("record {seq} is missing (found record {} in its place)", view.seq)));
            }
            if view.prev_leaf != prev {
                return Err(fail(seq.saturating_sub(1), format!("record {} does not match the hash that record {seq} links to", seq.saturating_sub(1))));
            }
            match view.record_type {
                RecordType::Genesis => {
                    let p: serde_json::Value = serde_json::from_slice(view.payload).unwrap_or_default();
                    origin = p["origin"].as_str().map(str::to_string);
                }
                RecordType::KeyRotation => {
                    let p: serde_json::Value = serde_json::from_slice(view.payload).unwrap_or_default();
                    rotations.push((seq, p["old_key"].as_str().unwrap_or_default().to_string(), p["new_key"].as_str().unwrap_or_default().to_string()));
                }
                _ => {}
            }
            prev = leaf_hash(frame);
            range.push(prev);
            offset += segment::padded_len(frame.len());
            if let Some(k) = kept.as_ref()
                && k.size == range.size()
            {
                if k.root != range.root() {
                    return Err(fail(None, format!("history was rewritten: the first {} records differ from the kept checkpoint", k.size)));
                }
                kept_ok = true;
            }
            refill(&mut pending, range.size())?;
            reach(&range, &mut trusted, &mut rotations, &origin, &mut pending)?;
        }
    }
    let records = range.size();
    if let Some(c) = pending.first() {
        return Err(fail(records, format!("the log holds {records} records but a signed checkpoint covers {}; records were lost or removed", c.checkpoint.size)));
    }
    if let Some(k) = kept.as_ref()
        && !kept_ok
    {
        return Err(fail(records, format!("the kept checkpoint covers {} records but this log has only {records}: records were removed", k.size)));
    }
    if checked == 0 {
        return Err(fail(None, "the log holds no signed checkpoint"));
    }
    Ok(Summary { records, end_size: last_size, complete: true, checkpoints: checked, trusted_checkpoint_size: kept.map(|k| k.size) })
}

/// How far the archive reaches, kept beside the log so a pass continues where the last
/// one stopped: `{"segments":<last archived>,"tiles_end":<records its tiles cover>}`.
const STATE_FILE: &str = "archive.json";

fn read_state(dir: &Path) -> Result<(u32, u64)> {
    match fs::read(dir.join(STATE_FILE)) {
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b).map_err(|_| Error::Corrupt(format!("{STATE_FILE} is damaged")))?;
            Ok((v["segments"].as_u64().unwrap_or(0) as u32, v["tiles_end"].as_u64().unwrap_or(0)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, 0)),
        Err(e) => Err(Error::Io { context: format!("read {STATE_FILE}"), source: e }),
    }
}

fn write_state(dir: &Path, segments: u32, tiles_end: u64) -> Result<()> {
    let mut o = crate::event::Obj::new();
    o.u64("segments", segments as u64).u64("tiles_end", tiles_end);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    fs::write(&tmp, o.finish()).map_err(Error::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(STATE_FILE)).map_err(Error::io(format!("rename {}", tmp.display())))
}

/// What one archive pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Segments copied to the archive in this pass.
    pub segments: Vec<u32>,
    pub tiles: u64,
    /// Segments whose local copy was dropped (a stub stays; reads fetch them back).
    pub dropped: Vec<u32>,
    /// Every segment up to this one is in the archive.
    pub archived_through: u32,
}

/// Copies each sealed, compressed segment not yet archived (in order) to `store`, with
/// the full tiles it completes and the signed checkpoint of its end; then, given a
/// retention, drops the local copy of each archived segment sealed longer ago than that,
/// once the archive is seen to hold the same bytes. Safe to run again after a failure:
/// objects already written are checked, not rewritten.
pub fn archive_pass(ledger: &Ledger, store: &dyn ArchiveStore, retention: Option<Duration>) -> Result<ArchiveReport> {
    let dir = ledger.dir();
    let (mut done, mut tiles_end) = read_state(dir)?;
    let segments = ledger.segments();
    let mut report = ArchiveReport::default();
    for w in segments.windows(2) {
        let (info, end) = (w[0], w[1].first_seq);
        if info.number <= done {
            continue;
        }
        // Segments are compressed once a checkpoint covers them, and archived in order.
        if info.stored != Stored::Compressed {
            break;
        }
        let Some(cp) = checkpoints::newest_at_most(dir, end)? else { break };
        let name = store::compressed_name(info.number);
        let bytes = fs::read(dir.join(&name)).map_err(Error::io(format!("read {name}")))?;
        store.put_new(&name, &bytes)?;
        for level in 0..7u32 {
            let span = 1u64 << (tiles::HEIGHT * (level + 1));
            for index in tiles_end / span..end / span {
                let tile = ledger.tile(level, index, tiles::WIDTH)?.ok_or_else(|| Error::Corrupt(format!("tile {level}/{index} is missing")))?;
                store.put_new(&tiles::tile_path(level, index, tiles::WIDTH), &tile)?;
                report.tiles += 1;
            }
        }
        // A key rotation inside the segment: the checkpoint that first covers it is
        // signed by the old key, and is what lets a verifier trust the new one.
        for (seq, _) in ledger.key_history().iter().filter(|(seq, _)| *seq >= info.first_seq && *seq < end && *seq > 0) {
            if let Some(c) = checkpoints::from_size(dir, seq + 1, 1)?.into_iter().next()
                && c.checkpoint.size <= end
            {
                store.put_new(&checkpoint_name(c.checkpoint.size), c.line().as_bytes())?;
            }
        }
        store.put_new(&checkpoint_name(cp.checkpoint.size), cp.line().as_bytes())?;
        done = info.number;
        tiles_end = end;
        write_state(dir, done, tiles_end)?;
        report.segments.push(info.number);
    }
    report.archived_through = done;

    if let Some(retention) = retention {
        let cutoff = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().saturating_sub(retention).as_nanos() as i64;
        for w in segments.windows(2) {
            let (info, end) = (w[0], w[1].first_seq);
            if info.number > done {
                break;
            }
            let name = store::compressed_name(info.number);
            let path = dir.join(&name);
            if !path.exists() {
                continue;
            }
            // Sealed when the first checkpoint covering its end was signed.
            let sealed_at = checkpoints::from_size(dir, end, 1)?.first().map_or(i64::MAX, |c| c.ts_unix_ns);
            if sealed_at > cutoff {
                continue;
            }
            let bytes = fs::read(&path).map_err(Error::io(format!("read {name}")))?;
            same_bytes(store, &name, &bytes)?;
            let header = SegmentFile::open(dir, info.number, Stored::Compressed)?.header()?;
            Stub { header, sha256: Sha256::digest(&bytes).into(), len: bytes.len() as u64 }.write(dir)?;
            fs::remove_file(&path).map_err(Error::io(format!("remove {name}")))?;
            let _ = fs::remove_file(dir.join(crate::seq_index::file_name(info.number)));
            report.dropped.push(info.number);
        }
    }
    Ok(report)
}
