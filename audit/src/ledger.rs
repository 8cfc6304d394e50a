//! The ledger: recovery on open, one writer thread with group commit, signed checkpoints
//! over a tree persisted as tiles, and reads and proofs over what is durable.
//!
//! Directory layout:
//!
//! ```text
//! <dir>/LOCK                  held exclusively while the ledger is open
//! <dir>/FORMAT                "2": segments, tiles and indexes as below
//! <dir>/seg-00000001.log …    segments (see `segment`); sealed ones become .zst (see `store`)
//! <dir>/seg-00000001.idx …    seq → frame offset per segment (see `seq_index`)
//! <dir>/tile/…                the Merkle tree as C2SP tlog-tiles (see `tiles`)
//! <dir>/checkpoints.log       one JSON line per signed checkpoint (see `checkpoints`)
//! <dir>/keys.log              one JSON line per key that has signed the log:
//!                             {"seq":<the record that introduced it>,"key":"<verifier key>"}
//! <dir>/torn/                 copies of segments as they were before a torn tail was cut
//! ```
//!
//! Memory holds the right edge of the tree, the newest checkpoint, one small entry per
//! segment and bounded caches of tiles and decompressed blocks: it does not grow with
//! the log. Opening reads the newest checkpoint and its edge from the tiles, then checks
//! only the segment that checkpoint ends in and whatever follows it. A log directory of
//! the first format (no tiles) is upgraded once, at its first open: tiles, indexes and
//! the key list are built from the segments, and the upgrade is recorded in the log.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::checkpoints::{self, StoredCheckpoint};
use crate::error::{Error, Result};
use crate::event::{Event, Obj};
use crate::leaf::{self, MAX_PAYLOAD, RecordType, StoredLeaf};
use crate::merkle::{self, Hash, NodeSource, leaf_hash, verify_consistency, verify_inclusion};
use crate::note::{Checkpoint, SignerKey, VerifierKey};
use crate::segment::{self, HEADER_LEN, SegmentHeader};
use crate::search;
use crate::seq_index::{self, IndexWriter};
use crate::store::{self, BlockCache, SegmentFile, Stored};
use crate::tiles::{self, Edge, TileCache, TileDir, TileNodes};

const FORMAT_FILE: &str = "FORMAT";
const FORMAT: &str = "2";
const KEYS: &str = "keys.log";
/// How a scan says the tiles, not the segments, disagree with a record whose chain holds:
/// opening then rebuilds the tiles from the segments.
const TILES_DISAGREE: &str = "the tiles disagree with the segments";

#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub dir: PathBuf,
    /// The Ed25519 signing key in signed-note form; created with mode 0600 on first open.
    pub key_path: PathBuf,
    /// Name of the log in checkpoints; defaults to `lakeledger/audit-<log id>`. Only used
    /// when the log and its key are first created.
    pub origin: Option<String>,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_max_bytes: u64,
    /// Records waiting for the writer; when full, appends fail at once.
    pub queue_capacity: usize,
    /// A checkpoint is signed this often while the log grows, and at close.
    pub checkpoint_interval: Duration,
    /// Most records written under one fsync.
    pub max_batch: usize,
    /// Full tiles kept in memory (8 KiB each).
    pub tile_cache: usize,
    /// Decompressed segment blocks kept in memory (128 KiB each).
    pub block_cache: usize,
    /// Compress sealed segments once a checkpoint covers them.
    pub compress_sealed: bool,
    /// Where archived segments are fetched back from once their local copy is dropped
    /// (see [`crate::archive`]).
    pub archive: Option<Arc<dyn crate::archive::ArchiveStore>>,
}

impl LedgerConfig {
    pub fn new(dir: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            key_path: key_path.into(),
            origin: None,
            segment_max_bytes: 64 << 20,
            queue_capacity: 65_536,
            checkpoint_interval: Duration::from_secs(1),
            max_batch: 4096,
            tile_cache: 4096,
            block_cache: 64,
            compress_sealed: true,
            archive: None,
        }
    }
}

/// Proof that a record is durable: its position and leaf hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub leaf_hash: Hash,
}

/// What opening the ledger found and did.
#[derive(Clone, Debug)]
pub struct OpenReport {
    pub created_log: bool,
    pub created_key: bool,
    /// Set when a torn tail was cut: what, where, and where the original was copied.
    pub repaired: Option<String>,
    /// Set when the directory was upgraded from the first format, or its derived files
    /// (tiles, indexes) were rebuilt from the segments.
    pub rebuilt: Option<String>,
    /// Records in the log after recovery, before the startup record.
    pub size: u64,
    pub origin: String,
    pub public_key: String,
}

/// One segment as the ledger knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub number: u32,
    pub first_seq: u64,
    pub stored: Stored,
}

pub struct Ledger {
    shared: Arc<Shared>,
    tx: SyncSender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    compactor: Mutex<Option<JoinHandle<()>>>,
    /// The directory lock, released by `close` so the log can be reopened at once.
    lock: Mutex<Option<File>>,
}

struct Shared {
    dir: PathBuf,
    key_path: PathBuf,
    origin: String,
    log_id: [u8; 16],
    tiles: TileDir,
    tile_cache: Mutex<TileCache>,
    blocks: Arc<Mutex<BlockCache>>,
    state: RwLock<State>,
    /// Why the writer stopped taking records; once set, every append fails.
    failure: Mutex<Option<String>>,
    search: Mutex<SearchCache>,
    archive: Option<Arc<dyn crate::archive::ArchiveStore>>,
}

/// The search indexes in use: sealed segments' (bounded), and the open segment's, kept
/// in memory and caught up from the log when a query reaches it.
struct SearchCache {
    sealed: crate::lru::Lru<u32, search::Terms>,
    open: Option<(u32, search::Builder)>,
}

/// What [`Ledger::check_live`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveCheck {
    pub records: u64,
    pub checkpoints: u64,
    /// The first bad seq (when one is to blame) and what is wrong.
    pub problem: Option<(Option<u64>, String)>,
}

/// A page of records found by [`Ledger::search`].
#[derive(Debug)]
pub struct SearchPage {
    pub leaves: Vec<StoredLeaf>,
    /// Where the next page starts; `None` when the range was searched to its end.
    pub next_seq: Option<u64>,
    /// Records in the log when the search began.
    pub size: u64,
}

#[derive(Clone)]
struct State {
    edge: Edge,
    latest: Option<StoredCheckpoint>,
    /// Every key that has signed for this log, with the seq that introduced it.
    keys: Vec<(u64, VerifierKey)>,
    segments: Vec<SegmentInfo>,
}

enum Job {
    Append {
        record_type: RecordType,
        payload: Vec<u8>,
        slot: Arc<Slot>,
    },
    Checkpoint(mpsc::Sender<Result<StoredCheckpoint>>),
    RotateKey(Box<SignerKey>, mpsc::Sender<Result<()>>),
    Pause(Arc<Gate>),
    Shutdown,
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::Key("the system random source failed".into()))?;
    Ok(b)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io(format!("fsync directory {}", dir.display())))
}

/// Writes a file whole: temp file, fsync, rename, fsync the directory. A crash leaves
/// either the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(Error::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(Error::io(format!("rename {} into place", tmp.display())))?;
    sync_dir(dir)
}

/// Reads the Ed25519 signing key at `path`, or creates one (mode 0600) when there is none
/// yet; says whether it was created. For keys that sign things other than this log.
pub fn key_file(path: &Path, name: &str) -> Result<(SignerKey, bool)> {
    match fs::read_to_string(path) {
        Ok(text) => Ok((SignerKey::parse(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(Error::io(format!("create {}", parent.display())))?;
            }
            let key = SignerKey::generate(name)?;
            write_atomically(path, format!("{}\n", key.encode()).as_bytes(), 0o600)?;
            Ok((key, true))
        }
        Err(e) => Err(Error::Io { context: format!("read {}", path.display()), source: e }),
    }
}

fn load_or_create_key(cfg: &LedgerConfig, log_exists: bool, default_name: &str) -> Result<(SignerKey, bool)> {
    match fs::read_to_string(&cfg.key_path) {
        Ok(text) => Ok((SignerKey::parse(&text).map_err(|e| Error::Key(format!("{}: {e}", cfg.key_path.display())))?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if log_exists {
                return Err(Error::Key(format!(
                    "the audit log in {} exists but its signing key {} is missing; restore the key file (a new key cannot continue a log it did not sign)",
                    cfg.dir.display(),
                    cfg.key_path.display()
                )));
            }
            if let Some(parent) = cfg.key_path.parent() {
                fs::create_dir_all(parent).map_err(Error::io(format!("create {}", parent.display())))?;
            }
            let key = SignerKey::generate(default_name)?;
            write_atomically(&cfg.key_path, format!("{}\n", key.encode()).as_bytes(), 0o600)?;
            Ok((key, true))
        }
        Err(e) => Err(Error::Io { context: format!("read {}", cfg.key_path.display()), source: e }),
    }
}

fn next_key_path(key_path: &Path) -> PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

/// A rotation writes the new key beside the old one, records the change, then moves the
/// new key into place. If it was cut short after recording, finish the move now.
fn finish_interrupted_rotation(key_path: &Path, current: Option<&VerifierKey>, key: SignerKey) -> Result<SignerKey> {
    let next = next_key_path(key_path);
    let Ok(text) = fs::read_to_string(&next) else { return Ok(key) };
    let Ok(next_key) = SignerKey::parse(&text) else { return Ok(key) };
    if current != Some(next_key.verifier()) || current == Some(key.verifier()) {
        return Ok(key);
    }
    install_rotated_key(key_path, &next)?;
    Ok(next_key)
}

fn install_rotated_key(key_path: &Path, next: &Path) -> Result<()> {
    let mut retired = key_path.as_os_str().to_owned();
    retired.push(format!(".retired-{}", now_ns()));
    fs::copy(key_path, PathBuf::from(retired)).map_err(Error::io("keep a copy of the retired signing key"))?;
    fs::rename(next, key_path).map_err(Error::io("move the new signing key into place"))?;
    sync_dir(key_path.parent().unwrap_or(Path::new(".")))
}

fn parse_key_payload(payload: &[u8], field: &str, seq: u64) -> Result<VerifierKey> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| Error::Corrupt(format!("record {seq}: payload is not JSON: {e}")))?;
    let key = v[field].as_str().ok_or_else(|| Error::Corrupt(format!("record {seq}: no {field}")))?;
    VerifierKey::parse(key).map_err(|e| Error::Corrupt(format!("record {seq}: {e}")))
}

pub(crate) fn write_keys(dir: &Path, keys: &[(u64, VerifierKey)]) -> Result<()> {
    let text: String = keys
        .iter()
        .map(|(seq, k)| {
            let mut o = Obj::new();
            o.u64("seq", *seq).str("key", &k.encode());
            o.finish() + "\n"
        })
        .collect();
    write_atomically(&dir.join(KEYS), text.as_bytes(), 0o644)
}

pub(crate) fn read_keys(dir: &Path) -> Result<Option<Vec<(u64, VerifierKey)>>> {
    let text = match fs::read_to_string(dir.join(KEYS)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { context: format!("read {KEYS}"), source: e }),
    };
    let mut keys = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Corrupt(format!("{KEYS}: {e}")))?;
        let (Some(seq), Some(key)) = (v["seq"].as_u64(), v["key"].as_str()) else {
            return Err(Error::Corrupt(format!("{KEYS}: a line lacks seq or key")));
        };
        keys.push((seq, VerifierKey::parse(key)?));
    }
    Ok(Some(keys))
}

/// The segments of a log directory with their first seqs, checked to number 1, 2, 3, …
pub(crate) fn segment_infos(dir: &Path) -> Result<Vec<(SegmentInfo, SegmentHeader)>> {
    let mut out: Vec<(SegmentInfo, SegmentHeader)> = Vec::new();
    for (i, (number, stored, _)) in store::list(dir)?.into_iter().enumerate() {
        let name = match stored {
            Stored::Raw => segment::file_name(number),
            Stored::Compressed => store::compressed_name(number),
        };
        if number as usize != i + 1 {
            return Err(Error::Corrupt(format!("segment {name} found where segment {} was expected", i + 1)));
        }
        // A segment moved to the archive left its header behind in a stub.
        let header = match SegmentFile::open(dir, number, stored) {
            Ok(f) => f.header()?,
            Err(e) => store::Stub::read(dir, number)?.ok_or(e)?.header,
        };
        if header.number != number {
            return Err(Error::Corrupt(format!("{name}: header says segment {}", header.number)));
        }
        if out.first().is_some_and(|(_, h)| h.log_id != header.log_id) {
            return Err(Error::Corrupt(format!("{name} belongs to another log")));
        }
        if let Some((prev, _)) = out.last()
            && header.first_seq < prev.first_seq
        {
            return Err(Error::Corrupt(format!("{name} does not continue the previous segment (starts at seq {})", header.first_seq)));
        }
        out.push((SegmentInfo { number, first_seq: header.first_seq, stored }, header));
    }
    Ok(out)
}

/// The segment holding `seq` (or where it would be appended): the last one starting at
/// or before it.
fn segment_of(segments: &[SegmentInfo], seq: u64) -> Option<usize> {
    let i = segments.partition_point(|s| s.first_seq <= seq);
    i.checked_sub(1)
}

/// What a scan of segments found and built.
pub(crate) struct Scan {
    pub(crate) edge: Edge,
    pub(crate) last_hash: Hash,
    pub(crate) last_ts: i64,
    pub(crate) keys: Vec<(u64, VerifierKey)>,
    pub(crate) origin: Option<String>,
    /// (segment, path, offset to cut at, bytes cut, reason)
    pub(crate) torn: Option<(u32, PathBuf, u64, u64, String)>,
    /// Length of the last segment as written, after a cut.
    pub(crate) last_len: u64,
    /// Records found: the seq after the last whole one.
    pub(crate) end: u64,
}

/// Reads segments `from..` whole, checking every frame (CRC, seq, chain link) from the
/// first one's start; `prev` is the hash of the record before it. `roots` is called with
/// the tree whenever it reaches one of `sizes` (increasing). Records the `edge`
/// already holds are checked against the tiles; later ones are fed to it, writing the
/// tiles they complete; each segment's seq index is rebuilt. What is built goes to
/// `staging` and is moved into place by [`commit_staging`] only once every check has
/// passed. Damage anywhere but the tail of the last segment is an error; the tail's
/// damage is reported for the caller to cut.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan(
    dir: &Path,
    segments: &[(SegmentInfo, SegmentHeader)],
    from: usize,
    mut edge: Edge,
    prev: Hash,
    tiles: &TileDir,
    tile_cache: &Mutex<TileCache>,
    mut keys: Vec<(u64, VerifierKey)>,
    roots: &mut dyn FnMut(u64, &Edge) -> Result<()>,
    sizes: &mut dyn Iterator<Item = u64>,
    staging: &TileDir,
    archive: Option<&dyn crate::archive::ArchiveStore>,
) -> Result<Scan> {
    let mut last_hash = prev;
    let mut seq = segments.get(from).map_or(edge.size(), |(info, _)| info.first_seq);
    let mut out = Scan { edge: Edge::new(), last_hash, last_ts: i64::MIN, keys: Vec::new(), origin: None, torn: None, last_len: 0, end: 0 };
    let mut want = sizes.peekable();
    while let Some(&s) = want.peek() {
        if s > edge.size() {
            break;
        }
        if s == edge.size() {
            roots(s, &edge)?;
        }
        want.next();
    }
    let count = segments.len();
    for (i, (info, header)) in segments.iter().enumerate().skip(from) {
        let mut file = store::open_or_fetch(dir, info.number, info.stored, archive)?;
        let name = file.name().to_string();
        let bytes = file.read_all()?;
        if header.first_seq != seq || header.prev_leaf != last_hash {
            return Err(Error::Corrupt(format!("{name} does not continue the previous segment (starts at seq {}, expected {seq})", header.first_seq)));
        }
        let mut offset = HEADER_LEN;
        let mut offsets: Vec<u32> = Vec::new();
        loop {
            let problem = match segment::read_frame(&header.salt, &bytes, offset) {
                Ok(None) => break,
                Err(e) => e,
                Ok(Some(leaf_bytes)) => match leaf::decode(leaf_bytes) {
                    Err(e) => e.to_string(),
                    Ok(v) if v.seq != seq => format!("record says seq {}, expected {seq}", v.seq),
                    Ok(v) if v.prev_leaf != last_hash => "record does not link to the previous record's hash".to_string(),
                    Ok(v) => {
                        match v.record_type {
                            RecordType::Genesis if seq == 0 => {
                                let p: serde_json::Value = serde_json::from_slice(v.payload).unwrap_or_default();
                                out.origin = p["origin"].as_str().map(str::to_string);
                                if keys.is_empty() {
                                    keys.push((0, parse_key_payload(v.payload, "public_key", seq)?));
                                }
                            }
                            RecordType::KeyRotation if !keys.iter().any(|(s, _)| *s == seq) => {
                                keys.push((seq, parse_key_payload(v.payload, "new_key", seq)?))
                            }
                            RecordType::Genesis => return Err(Error::Corrupt(format!("record {seq} is a second genesis"))),
                            _ if seq == 0 => return Err(Error::Corrupt("record 0 is not a genesis record".into())),
                            _ => {}
                        }
                        let h = leaf_hash(leaf_bytes);
                        if seq < edge.size() {
                            // Already in the tree: the tiles must agree with the bytes.
                            let nodes = TileNodes { dir: tiles, edge: &edge, cache: tile_cache };
                            if nodes.node(0, seq)? != h {
                                return Err(Error::Corrupt(format!("{TILES_DISAGREE}: {name}: record {seq} does not match the tile that holds its hash")));
                            }
                        } else {
                            for t in edge.push(h) {
                                staging.write(t.level, t.index, &t.hashes)?;
                            }
                            while want.peek() == Some(&edge.size()) {
                                roots(edge.size(), &edge)?;
                                want.next();
                            }
                        }
                        offsets.push(offset as u32);
                        out.last_ts = out.last_ts.max(v.ts_unix_ns);
                        last_hash = h;
                        seq += 1;
                        offset += segment::padded_len(leaf_bytes.len());
                        continue;
                    }
                },
            };
            if i + 1 != count {
                return Err(Error::Corrupt(format!("{name}: record {seq} at offset {offset} is damaged ({problem}) and later segments follow")));
            }
            if segment::any_valid_frame_after(&header.salt, &bytes, offset + 8) {
                return Err(Error::Corrupt(format!(
                    "{name}: record {seq} at offset {offset} is damaged ({problem}) and intact records follow it; this is not a torn write"
                )));
            }
            out.torn = Some((info.number, dir.join(&name), offset as u64, (bytes.len() - offset) as u64, problem));
            break;
        }
        seq_index::write_whole(staging.root(), info.number, header.first_seq, &offsets)?;
        out.last_len = match &out.torn {
            Some((n, _, cut, _, _)) if *n == info.number => *cut,
            _ => bytes.len() as u64,
        };
    }
    out.edge = edge;
    out.last_hash = last_hash;
    out.keys = keys;
    out.end = seq;
    Ok(out)
}

/// Removes a directory when dropped (a staging directory nobody committed).
pub(crate) struct Discard(pub(crate) PathBuf);

impl Drop for Discard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Moves what a scan built (tiles and seq indexes under `staging`) into the log
/// directory, then removes the staging directory.
pub(crate) fn commit_staging(dir: &Path, staging: &Path) -> Result<()> {
    fn walk(from: &Path, to: &Path, dirs: &mut Vec<PathBuf>) -> Result<()> {
        let entries = match fs::read_dir(from) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::Io { context: format!("list {}", from.display()), source: e }),
        };
        for e in entries {
            let e = e.map_err(Error::io(format!("list {}", from.display())))?;
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if src.is_dir() {
                fs::create_dir_all(&dst).map_err(Error::io(format!("create {}", dst.display())))?;
                walk(&src, &dst, dirs)?;
                dirs.push(dst);
            } else {
                File::open(&src).and_then(|f| f.sync_all()).map_err(Error::io(format!("fsync {}", src.display())))?;
                fs::rename(&src, &dst).map_err(Error::io(format!("move {} into place", src.display())))?;
            }
        }
        Ok(())
    }
    let mut dirs = vec![dir.to_path_buf()];
    walk(staging, dir, &mut dirs)?;
    for d in &dirs {
        sync_dir(d)?;
    }
    let _ = fs::remove_dir_all(staging);
    Ok(())
}

/// Where opening starts checking, and the tree up to there.
struct Start {
    /// The first segment to read whole.
    from: usize,
    edge: Edge,
    /// Hash of the record before that segment's first.
    prev: Hash,
    keys: Vec<(u64, VerifierKey)>,
}

/// The quick start: the newest checkpoint's edge from the tiles, checked against its
/// root, and the segment its last record is in. `Err(why)` when the tiles cannot give it
/// (the caller then rebuilds them from the segments).
fn quick_start(
    segments: &[(SegmentInfo, SegmentHeader)],
    cp: &StoredCheckpoint,
    keys: &[(u64, VerifierKey)],
    tiles: &TileDir,
    cache: &Mutex<TileCache>,
) -> std::result::Result<Start, String> {
    let size = cp.checkpoint.size;
    let edge = Edge::load(size, |level, index, width| {
        tiles.read(level, index, width)?.ok_or_else(|| Error::Corrupt(format!("tile {} is missing", tiles::tile_path(level, index, width))))
    })
    .map_err(|e| e.to_string())?;
    if edge.root() != cp.checkpoint.root {
        return Err(format!("the tiles do not give the root of the newest checkpoint (size {size})"));
    }
    let nodes = TileNodes { dir: tiles, edge: &edge, cache };
    // The newest full tile of each level may have been written just before a crash:
    // each must hash to the node its parent level holds.
    for level in 0..8u32 {
        let full = size >> (tiles::HEIGHT * (level + 1));
        if full == 0 {
            break;
        }
        let index = full - 1;
        let tile = tiles.read(level, index, tiles::WIDTH).map_err(|e| e.to_string())?.ok_or_else(|| format!("tile {} is missing", tiles::tile_path(level, index, tiles::WIDTH)))?;
        let parent = nodes.node(tiles::HEIGHT * (level + 1), index).map_err(|e| e.to_string())?;
        if merkle::range_root(&tiles::Slice(&tile), 0, tiles::WIDTH).map_err(|e| e.to_string())? != parent {
            return Err(format!("tile {} does not match the level above it", tiles::tile_path(level, index, tiles::WIDTH)));
        }
    }
    let infos: Vec<SegmentInfo> = segments.iter().map(|(i, _)| *i).collect();
    let Some(from) = segment_of(&infos, size - 1) else {
        return Err("no segment holds the records the newest checkpoint covers".into());
    };
    // Every segment boundary up to there must link to the record before it.
    for (info, header) in &segments[1..=from] {
        let prev = nodes.node(0, info.first_seq - 1).map_err(|e| e.to_string())?;
        if header.prev_leaf != prev {
            let name = store::compressed_name(info.number);
            return Err(format!("segment {} ({name}) does not link to the record before it", info.number));
        }
    }
    let first = segments[from].0.first_seq;
    let prev = if first == 0 { [0u8; 32] } else { nodes.node(0, first - 1).map_err(|e| e.to_string())? };
    Ok(Start { from, edge, prev, keys: keys.iter().filter(|(seq, _)| *seq < size).cloned().collect() })
}

impl Ledger {
    /// Opens (or creates) the ledger: takes the directory lock, reads the newest
    /// checkpoint and the tree's edge from the tiles, checks the segment that checkpoint
    /// ends in and everything after it, cuts a torn tail (keeping a copy), appends
    /// `recovery` and `startup` records and signs a checkpoint. Any other damage is an
    /// error and nothing on disk is changed. A directory of the first format is upgraded:
    /// its tiles and indexes are built from every segment, once.
    pub fn open(cfg: LedgerConfig) -> Result<(Ledger, OpenReport)> {
        fs::create_dir_all(&cfg.dir).map_err(Error::io(format!("create {}", cfg.dir.display())))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.dir.join("LOCK"))
            .map_err(Error::io("open the audit lock file"))?;
        lock.try_lock().map_err(|_| Error::Locked(cfg.dir.clone()))?;

        let tiles = TileDir::new(&cfg.dir);
        tiles.clean_temporaries();
        let staging_dir = cfg.dir.join("rebuild");
        let _ = fs::remove_dir_all(&staging_dir);
        // Whatever the scan builds is dropped unless every check passes.
        let _discard = Discard(staging_dir.clone());
        let staging = TileDir::new(&staging_dir);
        let tile_cache = Mutex::new(TileCache::new(cfg.tile_cache));

        let segments = segment_infos(&cfg.dir)?;
        let log_exists = !segments.is_empty();
        let tail = checkpoints::tail(&cfg.dir)?;
        let first_format = log_exists && !cfg.dir.join(FORMAT_FILE).exists();
        let stored_keys = if first_format { None } else { read_keys(&cfg.dir)? };

        let mut rebuilt = None;
        let start = match (&tail.latest, &stored_keys) {
            (Some(cp), Some(keys)) if cp.checkpoint.size > 0 && log_exists => match quick_start(&segments, cp, keys, &tiles, &tile_cache) {
                Ok(s) => Some(s),
                Err(why) => {
                    rebuilt = Some(format!("rebuilt the tiles and indexes from the segments: {why}"));
                    None
                }
            },
            _ => None,
        };
        if first_format {
            rebuilt = Some("upgraded the log directory to format 2: built its tiles and indexes from the segments".into());
        }
        let start = start.unwrap_or(Start { from: 0, edge: Edge::new(), prev: [0u8; 32], keys: Vec::new() });
        // Rebuilt from nothing, the tree must reach the newest checkpoint's root.
        let rebuilding = start.from == 0 && start.edge.size() == 0;
        let mut root_at_checkpoint = None;
        let mut sizes = tail.latest.iter().map(|c| c.checkpoint.size).filter(|_| rebuilding);
        let mut note_root = |_: u64, e: &Edge| {
            root_at_checkpoint = Some(e.root());
            Ok(())
        };
        let quick = !rebuilding;
        let scanned = scan(&cfg.dir, &segments, start.from, start.edge, start.prev, &tiles, &tile_cache, start.keys, &mut note_root, &mut sizes, &staging, cfg.archive.as_deref());
        let (scan, rebuilding) = match scanned {
            // A record's chain holds but its tile does not: the tiles are rebuilt.
            Err(Error::Corrupt(why)) if quick && why.starts_with(TILES_DISAGREE) => {
                rebuilt = Some(format!("rebuilt the tiles and indexes from the segments: {why}"));
                let _ = fs::remove_dir_all(&staging_dir);
                let mut sizes = tail.latest.iter().map(|c| c.checkpoint.size);
                let scan = scan(&cfg.dir, &segments, 0, Edge::new(), [0u8; 32], &tiles, &tile_cache, Vec::new(), &mut note_root, &mut sizes, &staging, cfg.archive.as_deref())?;
                (scan, true)
            }
            other => (other?, rebuilding),
        };
        // Fewer records than the tree held: whatever the tiles say, records are gone.
        let size = scan.end.min(scan.edge.size());

        let origin_from_log = tail.latest.as_ref().map(|c| c.checkpoint.origin.clone()).or(scan.origin.clone());
        if let Some(cp) = &tail.latest {
            let cp = &cp.checkpoint;
            if cp.size > size {
                return Err(Error::Corrupt(format!(
                    "the log holds {size} records but a signed checkpoint covers {}; records were lost or removed",
                    cp.size
                )));
            }
            if rebuilding && root_at_checkpoint != Some(cp.root) {
                return Err(Error::Corrupt(format!("the records up to seq {} do not match the signed checkpoint of size {}", cp.size.saturating_sub(1), cp.size)));
            }
            let keys: Vec<VerifierKey> = scan.keys.iter().map(|(_, k)| k.clone()).collect();
            Checkpoint::open(&cp.note, &keys).map_err(|e| Error::Corrupt(format!("the newest checkpoint in {} does not verify: {e}", checkpoints::FILE)))?;
            if scan.origin.as_ref().is_some_and(|o| *o != cp.origin) {
                return Err(Error::Corrupt(format!("checkpoint origin {} is not the log's origin", cp.origin)));
            }
        }

        let log_id = match segments.first() {
            Some((_, h)) => h.log_id,
            None => random::<16>()?,
        };
        let default_origin = cfg.origin.clone().unwrap_or_else(|| format!("lakeledger/audit-{}", hex::encode(&log_id[..8])));
        let (key, created_key) = load_or_create_key(&cfg, log_exists, &default_origin)?;
        let origin = origin_from_log.unwrap_or_else(|| key.verifier().name.clone());
        if key.verifier().name != origin {
            return Err(Error::Key(format!("the signing key is named {} but the log's origin is {origin}", key.verifier().name)));
        }
        let key = finish_interrupted_rotation(&cfg.key_path, scan.keys.last().map(|(_, k)| k), key)?;
        if let Some((_, current)) = scan.keys.last()
            && current != key.verifier()
        {
            return Err(Error::Key(format!(
                "the signing key {} is not the key this log is signed with ({}); rotate keys with `lakeledger audit rotate-key`, which records the change",
                key.verifier().encode(),
                current.encode()
            )));
        }

        // Changes happen only now, after every check has passed.
        let mut repaired = None;
        if let Some((number, path, cut_at, cut_len, reason)) = &scan.torn {
            let torn_dir = cfg.dir.join("torn");
            fs::create_dir_all(&torn_dir).map_err(Error::io("create the torn-tail directory"))?;
            let copy = torn_dir.join(format!("{}.{}", segment::file_name(*number), cut_at));
            fs::copy(path, &copy).map_err(Error::io(format!("copy {} aside", path.display())))?;
            File::open(&copy).and_then(|f| f.sync_all()).map_err(Error::io("fsync the torn-tail copy"))?;
            sync_dir(&torn_dir)?;
            let f = OpenOptions::new().write(true).open(path).map_err(Error::io(format!("open {}", path.display())))?;
            f.set_len(*cut_at).and_then(|_| f.sync_all()).map_err(Error::io(format!("truncate {}", path.display())))?;
            repaired = Some(format!(
                "cut {cut_len} bytes at offset {cut_at} of {} ({reason}); the original is kept at {}",
                segment::file_name(*number),
                copy.display()
            ));
        }
        if let Some(len) = tail.cut_at {
            let p = cfg.dir.join(checkpoints::FILE);
            let f = OpenOptions::new().write(true).open(&p).map_err(Error::io(format!("open {}", p.display())))?;
            f.set_len(len).and_then(|_| f.sync_all()).map_err(Error::io(format!("truncate {}", p.display())))?;
        }
        commit_staging(&cfg.dir, &staging_dir)?;
        // Tiles read while checking may have been the ones just rebuilt.
        let tile_cache = Mutex::new(TileCache::new(cfg.tile_cache));

        let mut keys = scan.keys.clone();
        if keys.is_empty() {
            keys.push((0, key.verifier().clone()));
        }
        write_keys(&cfg.dir, &keys)?;
        if !cfg.dir.join(FORMAT_FILE).exists() {
            write_atomically(&cfg.dir.join(FORMAT_FILE), format!("{FORMAT}\n").as_bytes(), 0o644)?;
        }

        let mut infos: Vec<SegmentInfo> = segments.iter().map(|(i, _)| *i).collect();
        let (seg, file, idx) = match segments.last() {
            Some((info, header)) if info.stored == Stored::Raw => {
                let path = cfg.dir.join(segment::file_name(info.number));
                let f = OpenOptions::new().append(true).open(&path).map_err(Error::io(format!("open {}", path.display())))?;
                let idx = IndexWriter::open(&cfg.dir, info.number, info.first_seq, size - info.first_seq)?;
                (OpenSegment { number: info.number, salt: header.salt, len: scan.last_len }, f, idx)
            }
            // The last segment is compressed (or there is none): the next one starts here.
            last => {
                let number = last.map_or(1, |(i, _)| i.number + 1);
                let (seg, f) = create_segment(&cfg.dir, number, log_id, size, scan.last_hash)?;
                infos.push(SegmentInfo { number, first_seq: size, stored: Stored::Raw });
                let idx = IndexWriter::open(&cfg.dir, number, size, 0)?;
                (seg, f, idx)
            }
        };
        let cp_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.dir.join(checkpoints::FILE))
            .map_err(Error::io("open the checkpoint file"))?;

        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            key_path: cfg.key_path.clone(),
            origin: origin.clone(),
            log_id,
            tiles,
            tile_cache,
            blocks: Arc::new(Mutex::new(BlockCache::new(cfg.block_cache))),
            state: RwLock::new(State { edge: scan.edge.clone(), latest: tail.latest.clone(), keys, segments: infos.clone() }),
            failure: Mutex::new(None),
            search: Mutex::new(SearchCache { sealed: crate::lru::Lru::new(256), open: None }),
            archive: cfg.archive.clone(),
        });
        let (compact_tx, compact_rx) = mpsc::channel::<u32>();
        let compactor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("audit-compactor".into())
                .spawn(move || compact(shared, compact_rx))
                .map_err(Error::io("start the audit compactor thread"))?
        };
        let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity);
        let public_key = key.verifier().encode();
        let last_ts = scan.last_ts.max(tail.latest.as_ref().map_or(i64::MIN, |c| c.ts_unix_ns));
        // Sealed segments still as written: compressed once a checkpoint covers them.
        let mut sealed: Vec<(u32, u64)> = Vec::new();
        for w in infos.windows(2) {
            if w[0].stored == Stored::Raw {
                sealed.push((w[0].number, w[1].first_seq));
            }
        }
        let writer = Writer {
            shared: shared.clone(),
            rx,
            key,
            file,
            seg,
            idx,
            cp_file,
            next_seq: size,
            last_hash: scan.last_hash,
            last_ts,
            segment_max_bytes: cfg.segment_max_bytes,
            max_batch: cfg.max_batch.max(1),
            interval: cfg.checkpoint_interval,
            last_checkpoint_at: Instant::now(),
            backlog: VecDeque::new(),
            durable: size,
            edge: scan.edge,
            dirty: Vec::new(),
            compact: cfg.compress_sealed.then_some(compact_tx),
            sealed,
        };
        let thread = std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer.run()).map_err(Error::io("start the audit writer thread"))?;
        let ledger = Ledger { shared, tx, thread: Mutex::new(Some(thread)), compactor: Mutex::new(Some(compactor)), lock: Mutex::new(Some(lock)) };

        let wait = Duration::from_secs(30);
        if size == 0 {
            let mut p = Obj::new();
            p.str("origin", &origin).str("log_id", &hex::encode(log_id)).str("public_key", &public_key).u64("format", 1);
            ledger.append(RecordType::Genesis, p.finish().into_bytes())?.wait(wait)?;
        }
        if repaired.is_some() || rebuilt.is_some() {
            let mut p = Obj::new();
            if let Some(what) = &repaired {
                p.str("repaired", what);
            }
            if let Some(what) = &rebuilt {
                p.str("rebuilt", what).u64("format", 2);
            }
            p.u64("size_after_repair", size);
            ledger.append(RecordType::Recovery, p.finish().into_bytes())?.wait(wait)?;
        }
        let mut p = Obj::new();
        p.str("software", concat!("lakeledger-audit ", env!("CARGO_PKG_VERSION"))).u64("size_at_open", size);
        ledger.append(RecordType::Startup, p.finish().into_bytes())?.wait(wait)?;
        ledger.checkpoint()?;
        Ok((ledger, OpenReport { created_log: !log_exists, created_key, repaired, rebuilt, size, origin, public_key }))
    }

    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    pub fn log_id(&self) -> [u8; 16] {
        self.shared.log_id
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The key checkpoints are signed with now.
    pub fn public_key(&self) -> VerifierKey {
        self.read_state().keys.last().map(|(_, k)| k.clone()).expect("a log always has a key")
    }

    /// Every key that has signed for this log, oldest first.
    pub fn public_keys(&self) -> Vec<VerifierKey> {
        self.read_state().keys.iter().map(|(_, k)| k.clone()).collect()
    }

    /// Every key that has signed for this log, with the seq of the record that introduced
    /// it (the genesis record, then each rotation record).
    pub fn key_history(&self) -> Vec<(u64, VerifierKey)> {
        self.read_state().keys.clone()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the ledger stopped taking records, if it has.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Hands a record to the writer. Fails at once when the writer has stopped or is so
    /// far behind that its queue is full; otherwise the returned receipt resolves once
    /// the record is on disk.
    pub fn append(&self, record_type: RecordType, payload: Vec<u8>) -> Result<PendingReceipt> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::Malformed(format!("payload of {} bytes exceeds {MAX_PAYLOAD}", payload.len())));
        }
        if let Some(f) = self.failure() {
            return Err(Error::Unavailable(f));
        }
        let slot = Arc::new(Slot::default());
        match self.tx.try_send(Job::Append { record_type, payload, slot: slot.clone() }) {
            Ok(()) => Ok(PendingReceipt(slot)),
            Err(TrySendError::Full(_)) => Err(Error::Unavailable("the audit writer is behind and its queue is full".into())),
            Err(TrySendError::Disconnected(_)) => Err(Error::Unavailable("the audit writer has stopped".into())),
        }
    }

    /// Appends an event. One whose canonical form would not fit a record has its largest
    /// details moved into continuation records first (see [`Event::split_to_fit`]); the
    /// receipt is the event's own, and it is durable only after them.
    pub fn append_event(&self, event: &Event) -> Result<PendingReceipt> {
        let mut parts = event.split_to_fit(MAX_PAYLOAD);
        let main = parts.pop().expect("the event itself");
        for part in parts {
            self.append(RecordType::Event, part)?;
        }
        self.append(RecordType::Event, main)
    }

    /// Durable records.
    pub fn size(&self) -> u64 {
        self.read_state().edge.size()
    }

    /// The segments, in order.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.read_state().segments.clone()
    }

    /// Full tiles held in the tile cache now.
    pub fn cached_tiles(&self) -> usize {
        self.shared.tile_cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn with_nodes<T>(&self, f: impl FnOnce(&TileNodes<'_>, u64) -> Result<T>) -> Result<T> {
        let edge = self.read_state().edge.clone();
        let nodes = TileNodes { dir: &self.shared.tiles, edge: &edge, cache: &self.shared.tile_cache };
        f(&nodes, edge.size())
    }

    /// The root of the first `size` records, from the tiles.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.with_nodes(|n, have| if size > have { Err(Error::Malformed("beyond the log".into())) } else { merkle::range_root(n, 0, size) }).ok()
    }

    /// Inclusion proof for `seq` in the tree of `size` records, from the tiles.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>> {
        self.with_nodes(|n, have| {
            if size > have || seq >= size {
                return Err(crate::error::ProofError::OutOfRange { index: seq, size }.into());
            }
            merkle::inclusion_proof(n, seq, size)
        })
    }

    /// Consistency proof between the trees of `old` and `new` records, from the tiles.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        self.with_nodes(|n, have| {
            if new > have || old > new {
                return Err(crate::error::ProofError::BadSizes { old, new }.into());
            }
            merkle::consistency_proof(n, old, new)
        })
    }

    /// The root at `size` and proof that it is the root a signed checkpoint commits to:
    /// either that checkpoint's own root, or one consistent with it. Tiles are derived
    /// data; nothing computed from them leaves the ledger unchecked.
    fn checked_root(&self, size: u64) -> Result<Hash> {
        let latest = match self.latest_checkpoint() {
            Some(c) if c.checkpoint.size >= size => c,
            _ => self.checkpoint()?,
        };
        let cp = &latest.checkpoint;
        if size > cp.size {
            return Err(crate::error::ProofError::BadSizes { old: size, new: cp.size }.into());
        }
        let root = self.root_at(size).ok_or_else(|| Error::Corrupt(format!("no root for size {size}")))?;
        let proof = self.consistency_proof(size, cp.size)?;
        verify_consistency(size, cp.size, &root, &cp.root, &proof)
            .map_err(|_| Error::Corrupt(format!("the tiles do not agree with the signed checkpoint of size {}; run `lakeledger audit scrub`", cp.size)))?;
        Ok(root)
    }

    /// Proves record `seq` is in the log of `size` records: its leaf (read from its
    /// segment), the root and the proof, all checked against a signed checkpoint.
    pub fn prove_inclusion(&self, seq: u64, size: u64) -> Result<(StoredLeaf, Hash, Vec<Hash>)> {
        let root = self.checked_root(size)?;
        let proof = self.inclusion_proof(seq, size)?;
        let leaf = self.read(seq, seq + 1)?.pop().ok_or(crate::error::ProofError::OutOfRange { index: seq, size })?;
        verify_inclusion(seq, size, &leaf.hash, &proof, &root)
            .map_err(|_| Error::Corrupt(format!("the tiles give a proof for record {seq} that does not check; run `lakeledger audit scrub`")))?;
        Ok((leaf, root, proof))
    }

    /// Proves the log of `new` records extends the log of `old` records: both roots and
    /// the proof, checked against a signed checkpoint.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<(Hash, Hash, Vec<Hash>)> {
        let new_root = self.checked_root(new)?;
        let old_root = self.root_at(old).ok_or(crate::error::ProofError::BadSizes { old, new })?;
        let proof = self.consistency_proof(old, new)?;
        verify_consistency(old, new, &old_root, &new_root, &proof)
            .map_err(|_| Error::Corrupt(format!("the tiles give a consistency proof {old}→{new} that does not check; run `lakeledger audit scrub`")))?;
        Ok((old_root, new_root, proof))
    }

    /// Signs a checkpoint over everything durable now (or returns the latest one if the
    /// log has not grown since).
    pub fn checkpoint(&self) -> Result<StoredCheckpoint> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Job::Checkpoint(tx)).map_err(|_| Error::Unavailable("the audit writer has stopped".into()))?;
        rx.recv().map_err(|_| Error::Unavailable("the audit writer has stopped".into()))?
    }

    pub fn latest_checkpoint(&self) -> Option<StoredCheckpoint> {
        self.read_state().latest.clone()
    }

    /// Up to `limit` checkpoints of at least `from_size` records, oldest first.
    pub fn checkpoints_from(&self, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
        checkpoints::from_size(&self.shared.dir, from_size, limit)
    }

    /// Every checkpoint, oldest first, one at a time.
    pub fn each_checkpoint(&self, f: impl FnMut(StoredCheckpoint) -> Result<()>) -> Result<()> {
        checkpoints::each(&self.shared.dir, f)
    }

    fn open_segment(&self, info: SegmentInfo) -> Result<SegmentFile> {
        let other = match info.stored {
            Stored::Raw => Stored::Compressed,
            Stored::Compressed => Stored::Raw,
        };
        // A sealed segment may have been compressed since the state was read, or
        // moved to the archive.
        let f = match SegmentFile::open(&self.shared.dir, info.number, info.stored) {
            Ok(f) => f,
            Err(first) => match SegmentFile::open(&self.shared.dir, info.number, other) {
                Ok(f) => f,
                Err(_) => store::open_or_fetch(&self.shared.dir, info.number, Stored::Compressed, self.shared.archive.as_deref()).map_err(|e| match e {
                    Error::Io { .. } => first,
                    other => other,
                })?,
            },
        };
        Ok(f.with_cache(self.shared.blocks.clone()))
    }

    /// Reads records `[from, to)` (clipped to what is durable) from their segments, each
    /// found through its segment's seq index and checked against the hash the log
    /// committed to.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<StoredLeaf>> {
        let (segments, edge) = {
            let st = self.read_state();
            (st.segments.clone(), st.edge.clone())
        };
        let to = to.min(edge.size());
        let nodes = TileNodes { dir: &self.shared.tiles, edge: &edge, cache: &self.shared.tile_cache };
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        let mut seq = from;
        while seq < to {
            let k = segment_of(&segments, seq).ok_or_else(|| Error::Corrupt(format!("no segment holds record {seq}")))?;
            let info = segments[k];
            let end = segments.get(k + 1).map_or(to, |s| s.first_seq.min(to));
            let file = self.open_segment(info)?;
            let salt = file.header()?.salt;
            let range = (seq - info.first_seq) as usize..(end - info.first_seq) as usize;
            let rebuilt = |ledger: &Ledger| -> Result<Vec<u32>> {
                ledger.rebuild_index(info, &file)?
                    .get(range.clone())
                    .map(<[u32]>::to_vec)
                    .ok_or_else(|| Error::Corrupt(format!("{} holds fewer records than the log committed to", file.name())))
            };
            let (mut offsets, mut from_index) = match seq_index::read(&self.shared.dir, info.number, info.first_seq, range.start as u64, (range.end - range.start) as u64)? {
                Some(o) => (o, true),
                None => (rebuilt(self)?, false),
            };
            let start = out.len();
            let mut i = 0;
            while i < offsets.len() {
                let s = seq + i as u64;
                let read = file.leaf_at(&salt, offsets[i] as u64).map(|b| StoredLeaf::new(s, b));
                match read {
                    Ok(leaf) if leaf.hash == nodes.node(0, s)? => {
                        out.push(leaf);
                        i += 1;
                    }
                    // The index is derived: a wrong entry is rebuilt from the segment once.
                    _ if from_index => {
                        offsets = rebuilt(self)?;
                        from_index = false;
                        out.truncate(start);
                        i = 0;
                    }
                    Ok(_) => return Err(Error::Corrupt(format!("record {s} on disk no longer matches the hash the log committed to"))),
                    Err(e) => return Err(e),
                }
            }
            seq = end;
        }
        Ok(out)
    }

    /// Re-verifies the log while it runs (the background scrub): every local record read
    /// back from its segment and checked against the hash the tree holds for it and
    /// against its chain link, and every signed checkpoint's root against the tree.
    /// Segments moved to the archive are skipped (the archive verifies on its own). Reads
    /// go a chunk at a time through the bounded caches; appends are not held up.
    pub fn check_live(&self) -> Result<LiveCheck> {
        let (segments, size) = {
            let st = self.read_state();
            (st.segments.clone(), st.edge.size())
        };
        let mut report = LiveCheck::default();
        let mut prev: Option<Hash> = Some([0u8; 32]);
        for (k, info) in segments.iter().enumerate() {
            let end = segments.get(k + 1).map_or(size, |s| s.first_seq.min(size));
            let local = [Stored::Raw, Stored::Compressed].iter().any(|&st| SegmentFile::open(&self.shared.dir, info.number, st).is_ok());
            if !local {
                prev = None;
                continue;
            }
            let mut seq = info.first_seq;
            while seq < end {
                let to = (seq + 4096).min(end);
                let chunk = match self.read(seq, to) {
                    Ok(c) => c,
                    Err(_) => {
                        // Name the first record that does not read back.
                        let bad = (seq..to).find_map(|s| self.read(s, s + 1).err().map(|e| (s, e.to_string())));
                        let (at, why) = bad.unwrap_or((seq, "a record did not read back".into()));
                        report.problem = Some((Some(at), why));
                        return Ok(report);
                    }
                };
                for leaf in chunk {
                    let view = leaf.view()?;
                    if prev.is_some_and(|p| p != view.prev_leaf) {
                        report.problem = Some((Some(leaf.seq), format!("record {} does not link to record {}", leaf.seq, leaf.seq.saturating_sub(1))));
                        return Ok(report);
                    }
                    prev = Some(leaf.hash);
                    seq = leaf.seq + 1;
                    report.records += 1;
                }
            }
        }
        let mut problem = None;
        self.each_checkpoint(|c| {
            if problem.is_none() && c.checkpoint.size <= size {
                report.checkpoints += 1;
                if self.root_at(c.checkpoint.size) != Some(c.checkpoint.root) {
                    problem = Some((None, format!("the signed checkpoint of size {} does not match the tree", c.checkpoint.size)));
                }
            }
            Ok(())
        })?;
        report.problem = problem;
        Ok(report)
    }

    /// Records matching `filter`, oldest first, at most `limit`. The search index names
    /// the candidates; each is read back from its segment (checked against the tree) and
    /// tested against the filter again, so the index can narrow a search but never add a
    /// record to it.
    pub fn search(&self, filter: &crate::package::RecordFilter, limit: usize) -> Result<SearchPage> {
        let (segments, size) = {
            let st = self.read_state();
            (st.segments.clone(), st.edge.size())
        };
        let end = filter.to_seq.unwrap_or(size).min(size);
        let mut at = filter.from_seq.unwrap_or(0);
        let mut leaves = Vec::new();
        'segments: while at < end && leaves.len() < limit {
            let k = segment_of(&segments, at).ok_or_else(|| Error::Corrupt(format!("no segment holds record {at}")))?;
            let info = segments[k];
            let seg_end = segments.get(k + 1).map_or(end, |s| s.first_seq.min(end));
            let (lo, hi, candidates) = self.with_index(info, k + 1 == segments.len(), size, |idx| {
                let (tlo, thi) = idx.time_range(filter.since_ns, filter.until_ns);
                let lo = (at - info.first_seq).max(tlo);
                let hi = (seg_end - info.first_seq).min(thi);
                let c = if lo < hi { search::candidates(idx, filter, lo, hi)? } else { Some(Vec::new()) };
                Ok((lo, hi, c))
            })?;
            let take = |leaf: StoredLeaf, leaves: &mut Vec<StoredLeaf>| -> Result<bool> {
                if filter.matches(&leaf.view()?) {
                    leaves.push(leaf);
                }
                Ok(leaves.len() == limit)
            };
            match candidates {
                Some(offsets) => {
                    for o in offsets {
                        let seq = info.first_seq + o as u64;
                        if let Some(leaf) = self.read(seq, seq + 1)?.pop()
                            && take(leaf, &mut leaves)?
                        {
                            at = seq + 1;
                            continue 'segments;
                        }
                    }
                }
                None => {
                    let mut seq = info.first_seq + lo;
                    let stop = info.first_seq + hi;
                    while seq < stop {
                        for leaf in self.read(seq, (seq + 1024).min(stop))? {
                            seq = leaf.seq + 1;
                            if take(leaf, &mut leaves)? {
                                at = seq;
                                continue 'segments;
                            }
                        }
                    }
                }
            }
            at = seg_end;
        }
        Ok(SearchPage { leaves, next_seq: (at < end).then_some(at), size })
    }

    /// Runs `f` on a segment's search index: a sealed one's from its file (rebuilt from
    /// the segment when missing or damaged), the open one's caught up to `size`.
    fn with_index<T>(&self, info: SegmentInfo, open: bool, size: u64, f: impl Fn(&dyn search::Index) -> Result<T>) -> Result<T> {
        if !open {
            match f(&*self.sealed_index(info)?) {
                Err(Error::Corrupt(why)) if why == search::DAMAGED => {
                    let _ = fs::remove_file(self.shared.dir.join(search::file_name(info.number)));
                    self.shared.search.lock().unwrap_or_else(|e| e.into_inner()).sealed.remove(info.number);
                    return f(&*self.sealed_index(info)?);
                }
                other => return other,
            }
        }
        let mut cache = self.shared.search.lock().unwrap_or_else(|e| e.into_inner());
        if cache.open.as_ref().is_none_or(|(n, _)| *n != info.number) {
            cache.open = Some((info.number, search::Builder::new(info.first_seq)));
        }
        let (_, b) = cache.open.as_mut().expect("just set");
        while b.next_seq() < size {
            let from = b.next_seq();
            for leaf in self.read(from, (from + 4096).min(size))? {
                b.add(&leaf.view()?);
            }
        }
        f(&*b)
    }

    /// A sealed segment's search index, from the cache or its file, built from the
    /// segment when missing or not whole.
    fn sealed_index(&self, info: SegmentInfo) -> Result<Arc<search::Terms>> {
        let mut cache = self.shared.search.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.sealed.get(info.number) {
            return Ok(t);
        }
        let t = match search::Terms::load(&self.shared.dir, info.number, info.first_seq) {
            Some(t) => t,
            None => {
                let file = self.open_segment(info)?;
                search::build_from_segment(&file.read_at(0, file.len()? as usize)?, info.first_seq)?.write(&self.shared.dir, info.number)?;
                search::Terms::load(&self.shared.dir, info.number, info.first_seq)
                    .ok_or_else(|| Error::Corrupt(format!("the search index of segment {} does not read back", info.number)))?
            }
        };
        let t = Arc::new(t);
        cache.sealed.put(info.number, t.clone());
        Ok(t)
    }

    /// Rebuilds the seq index of a segment from its frames (it was missing or behind).
    fn rebuild_index(&self, info: SegmentInfo, file: &SegmentFile) -> Result<Vec<u32>> {
        let bytes = file.read_at(0, file.len()? as usize)?;
        let header = SegmentHeader::decode(&bytes).map_err(|e| Error::Corrupt(format!("{}: {e}", file.name())))?;
        let mut offsets = Vec::new();
        let mut at = HEADER_LEN;
        while let Ok(Some(leaf)) = segment::read_frame(&header.salt, &bytes, at) {
            offsets.push(at as u32);
            at += segment::padded_len(leaf.len());
        }
        if info.stored == Stored::Compressed || self.read_state().segments.last().map(|s| s.number) != Some(info.number) {
            seq_index::write_whole(&self.shared.dir, info.number, info.first_seq, &offsets)?;
        }
        Ok(offsets)
    }

    /// The bytes of a hash tile, `width` hashes of `(level, index)` (C2SP tlog-tiles),
    /// when the log holds them.
    pub fn tile(&self, level: u32, index: u64, width: u64) -> Result<Option<Vec<u8>>> {
        let edge = self.read_state().edge.clone();
        let nodes_at_level = if level < 8 { edge.size() >> (tiles::HEIGHT * level) } else { 0 };
        if width == 0 || width > tiles::WIDTH || index.saturating_mul(tiles::WIDTH).saturating_add(width) > nodes_at_level {
            return Ok(None);
        }
        let hashes = match edge.partial_tiles().find(|(l, i, _)| *l == level && *i == index) {
            Some((_, _, h)) => h[..width as usize].to_vec(),
            None => self.shared.tiles.read(level, index, width)?.ok_or_else(|| Error::Corrupt(format!("tile {} is missing", tiles::tile_path(level, index, width))))?,
        };
        Ok(Some(hashes.iter().flatten().copied().collect()))
    }

    /// An entry bundle (C2SP tlog-tiles): the exact leaf bytes of records
    /// `[256·index, 256·index + width)`, each prefixed by its length (u16, big-endian).
    pub fn entry_bundle(&self, index: u64, width: u64) -> Result<Option<Vec<u8>>> {
        let from = index.saturating_mul(tiles::WIDTH);
        if width == 0 || width > tiles::WIDTH || from.saturating_add(width) > self.size() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for leaf in self.read(from, from + width)? {
            let len = u16::try_from(leaf.bytes.len()).map_err(|_| Error::Malformed(format!("record {} is too long for an entry bundle", leaf.seq)))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&leaf.bytes);
        }
        Ok(Some(out))
    }

    /// Records a key change and switches to `new_key`. The rotation record is covered by
    /// a checkpoint signed with the old key before the new key signs anything, so a
    /// verifier that trusts the old key can follow the change.
    pub fn rotate_key(&self, new_key: SignerKey) -> Result<()> {
        if new_key.verifier().name != self.shared.origin {
            return Err(Error::Key(format!("the new key must be named {}", self.shared.origin)));
        }
        let next = next_key_path(&self.shared.key_path);
        write_atomically(&next, format!("{}\n", new_key.encode()).as_bytes(), 0o600)?;
        let (tx, rx) = mpsc::channel();
        self.tx.send(Job::RotateKey(Box::new(new_key), tx)).map_err(|_| Error::Unavailable("the audit writer has stopped".into()))?;
        rx.recv().map_err(|_| Error::Unavailable("the audit writer has stopped".into()))??;
        install_rotated_key(&self.shared.key_path, &next)
    }

    /// Holds the writer still until the guard is dropped: records queue up and their
    /// receipts wait. Used to prove that callers fail closed.
    #[doc(hidden)]
    pub fn pause_writer(&self) -> PauseGuard {
        let gate = Arc::new(Gate::default());
        let _ = self.tx.send(Job::Pause(gate.clone()));
        PauseGuard(gate)
    }

    /// Appends a `shutdown` record, signs a final checkpoint, stops the writer and
    /// releases the directory lock. Later appends fail.
    pub fn close(&self) {
        let _ = self.tx.send(Job::Shutdown);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        if let Some(t) = self.compactor.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

/// Compresses sealed segments the writer hands over, one at a time, off the write path.
/// Ends when the writer does.
/// Builds and writes a sealed segment's search index from its frames.
fn build_terms(dir: &Path, number: u32, stored: Stored, first_seq: u64) -> Result<search::Builder> {
    let mut file = SegmentFile::open(dir, number, stored)?;
    let b = search::build_from_segment(&file.read_all()?, first_seq)?;
    b.write(dir, number)?;
    Ok(b)
}

fn compact(shared: Arc<Shared>, rx: Receiver<u32>) {
    // Compression and indexing can wait; producers and the writer cannot. At a lower
    // priority this thread takes the CPU a busy server leaves over (and still a share
    // when there is none), so sealing never slows acknowledgements.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
    while let Ok(number) = rx.recv() {
        match store::compress(&shared.dir, number) {
            Ok(_) => {
                let first_seq = {
                    let mut st = shared.state.write().unwrap_or_else(|e| e.into_inner());
                    st.segments.iter_mut().find(|s| s.number == number).map(|s| {
                        s.stored = Stored::Compressed;
                        s.first_seq
                    })
                };
                // The search index of a sealed segment is written once, off the write path.
                if let Some(first_seq) = first_seq
                    && search::Terms::load(&shared.dir, number, first_seq).is_none()
                    && let Err(e) = build_terms(&shared.dir, number, Stored::Compressed, first_seq)
                {
                    eprintln!("audit ledger: indexing segment {number} failed ({e}); queries rebuild it");
                }
            }
            // Left as written; a later open hands it over again.
            Err(e) => eprintln!("audit ledger: compressing segment {number} failed ({e}); it stays as written"),
        }
    }
}

struct OpenSegment {
    number: u32,
    salt: [u8; 16],
    len: u64,
}

fn create_segment(dir: &Path, number: u32, log_id: [u8; 16], first_seq: u64, prev_leaf: Hash) -> Result<(OpenSegment, File)> {
    let salt = random::<16>()?;
    let header = SegmentHeader { number, log_id, first_seq, prev_leaf, salt };
    let path = dir.join(segment::file_name(number));
    write_atomically(&path, &header.encode(), 0o640)?;
    let f = OpenOptions::new().append(true).open(&path).map_err(Error::io(format!("open {}", path.display())))?;
    Ok((OpenSegment { number, salt, len: HEADER_LEN as u64 }, f))
}

struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Job>,
    key: SignerKey,
    file: File,
    seg: OpenSegment,
    idx: IndexWriter,
    cp_file: File,
    next_seq: u64,
    last_hash: Hash,
    last_ts: i64,
    segment_max_bytes: u64,
    max_batch: usize,
    interval: Duration,
    last_checkpoint_at: Instant,
    backlog: VecDeque<Job>,
    /// Records on disk and synced.
    durable: u64,
    /// The writer's own edge; published to readers once the tiles it completed are written.
    edge: Edge,
    /// Tiles written since the last checkpoint, synced before it is signed.
    dirty: Vec<PathBuf>,
    compact: Option<mpsc::Sender<u32>>,
    /// Sealed segments still as written: (number, first seq of the next segment).
    sealed: Vec<(u32, u64)>,
}

/// A write or fsync of the log failed. The bytes on disk are now unknown, so the only
/// safe course is to stop and let recovery decide at the next start.
fn fatal(what: &str, e: &std::io::Error) -> ! {
    eprintln!("audit ledger: {what} failed ({e}); aborting so that recovery can run at the next start");
    std::process::abort();
}

type Batch = Vec<(RecordType, Vec<u8>, Arc<Slot>)>;

impl Writer {
    fn run(mut self) {
        loop {
            let job = match self.backlog.pop_front() {
                Some(j) => j,
                None => {
                    let wait = self.interval.saturating_sub(self.last_checkpoint_at.elapsed());
                    match self.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => {
                            self.periodic_checkpoint();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match job {
                Job::Append { record_type, payload, slot } => {
                    let mut batch = vec![(record_type, payload, slot)];
                    // Group commit: take everything already waiting, up to the batch limit.
                    while batch.len() < self.max_batch {
                        match self.rx.try_recv() {
                            Ok(Job::Append { record_type, payload, slot }) => batch.push((record_type, payload, slot)),
                            Ok(other) => {
                                self.backlog.push_back(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_batch(batch);
                    self.periodic_checkpoint();
                }
                Job::Checkpoint(reply) => {
                    let _ = reply.send(self.sign_checkpoint());
                }
                Job::RotateKey(key, reply) => {
                    let _ = reply.send(self.rotate(*key));
                }
                Job::Pause(gate) => gate.wait(),
                Job::Shutdown => break,
            }
        }
        if self.failed().is_none() {
            let mut p = Obj::new();
            p.u64("size_at_close", self.next_seq);
            let slot = Arc::new(Slot::default());
            self.write_batch(vec![(RecordType::Shutdown, p.finish().into_bytes(), slot)]);
            let _ = self.sign_checkpoint();
        }
        self.fail("the audit ledger is closed");
        // Anything sent after the shutdown request is refused, not left waiting.
        while let Ok(job) = self.rx.try_recv() {
            if let Job::Append { slot, .. } = job {
                slot.complete(Err("the audit ledger is closed".into()));
            }
        }
    }

    fn failed(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn fail(&self, why: &str) {
        let mut f = self.shared.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why.to_string());
        }
    }

    fn write_batch(&mut self, batch: Batch) {
        if let Some(why) = self.failed() {
            for (_, _, slot) in batch {
                slot.complete(Err(why.clone()));
            }
            return;
        }
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut offsets: Vec<u32> = Vec::with_capacity(batch.len());
        let mut written: Vec<(Option<Receipt>, Arc<Slot>)> = Vec::with_capacity(batch.len());
        let mut leaf_bytes = Vec::with_capacity(1024);
        let mut failure = None;
        // How many of `written` are in the tree.
        let mut pushed = 0;
        for (record_type, payload, slot) in batch {
            if failure.is_some() {
                written.push((None, slot));
                continue;
            }
            // A full segment is finished (written, synced, indexed, in the tree and under
            // a checkpoint of exactly its end) before the next one starts, so every
            // sealed segment can be verified, compressed and archived on its own.
            if self.seg.len + buf.len() as u64 >= self.segment_max_bytes {
                let sealed = self.flush(&mut buf, &mut offsets).and_then(|_| {
                    pushed = self.grow_edge(&written, pushed)?;
                    self.rotate_segment().map_err(|e| e.to_string())?;
                    self.sign_checkpoint().map(|_| ()).map_err(|e| e.to_string())
                });
                if let Err(why) = sealed {
                    failure = Some(why);
                    written.push((None, slot));
                    continue;
                }
            }
            let ts = now_ns().max(self.last_ts);
            leaf_bytes.clear();
            leaf::encode(record_type, self.next_seq, ts, &self.last_hash, &payload, &mut leaf_bytes);
            let h = leaf_hash(&leaf_bytes);
            offsets.push((self.seg.len + buf.len() as u64) as u32);
            segment::encode_frame(&self.seg.salt, &leaf_bytes, &mut buf);
            written.push((Some(Receipt { seq: self.next_seq, leaf_hash: h }), slot));
            self.next_seq += 1;
            self.last_hash = h;
            self.last_ts = ts;
        }
        if failure.is_none()
            && let Err(why) = self.flush(&mut buf, &mut offsets)
        {
            failure = Some(why);
        }
        if let Err(why) = self.grow_edge(&written, pushed) {
            failure.get_or_insert(why);
        }
        if let Some(why) = failure {
            // Records already on disk keep their place (recovery finds them); nothing more
            // is taken.
            self.fail(&why);
            for (r, slot) in written {
                slot.complete(match r {
                    Some(r) if self.edge.size() > r.seq => Ok(r),
                    _ => Err(why.clone()),
                });
            }
            return;
        }
        for (r, slot) in written {
            slot.complete(Ok(r.expect("written")));
        }
    }

    /// Puts the durable records of `written[from..]` into the tree; the tiles they
    /// complete are written before readers can ask for them. Returns how many of
    /// `written` are in the tree now.
    fn grow_edge(&mut self, written: &[(Option<Receipt>, Arc<Slot>)], from: usize) -> std::result::Result<usize, String> {
        let mut failure = None;
        let mut done = from;
        for (r, _) in &written[from..] {
            match r {
                Some(r) if r.seq < self.durable => {
                    for t in self.edge.push(r.leaf_hash) {
                        match self.shared.tiles.write(t.level, t.index, &t.hashes) {
                            Ok(paths) => self.dirty.extend(paths),
                            Err(e) => {
                                failure.get_or_insert_with(|| format!("writing a tile failed: {e}"));
                            }
                        }
                    }
                }
                Some(_) => break,
                None => {}
            }
            done += 1;
        }
        self.shared.state.write().unwrap_or_else(|e| e.into_inner()).edge = self.edge.clone();
        failure.map_or(Ok(done), Err)
    }

    /// Writes and syncs `buf` to the current segment and indexes its records. A write
    /// error (disk full) stops the ledger: a short write leaves a torn frame that
    /// recovery cuts at the next start, and nothing may be appended behind it. A failed
    /// fsync aborts.
    fn flush(&mut self, buf: &mut Vec<u8>, offsets: &mut Vec<u32>) -> std::result::Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(buf) {
            return Err(format!("writing the audit log failed: {e}"));
        }
        if let Err(e) = self.file.sync_data() {
            fatal("fsync of the audit log", &e);
        }
        self.seg.len += buf.len() as u64;
        self.durable += offsets.len() as u64;
        buf.clear();
        let indexed = self.idx.append(offsets).map_err(|e| format!("writing the seq index failed: {e}"));
        offsets.clear();
        indexed
    }

    fn rotate_segment(&mut self) -> Result<()> {
        self.idx.sync()?;
        let number = self.seg.number + 1;
        let (seg, file) = create_segment(&self.shared.dir, number, self.shared.log_id, self.next_seq, self.last_hash)?;
        self.idx = IndexWriter::open(&self.shared.dir, number, self.next_seq, 0)?;
        self.sealed.push((self.seg.number, self.next_seq));
        self.seg = seg;
        self.file = file;
        self.shared
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .segments
            .push(SegmentInfo { number, first_seq: self.next_seq, stored: Stored::Raw });
        Ok(())
    }

    fn periodic_checkpoint(&mut self) {
        if self.last_checkpoint_at.elapsed() >= self.interval {
            let _ = self.sign_checkpoint();
        }
    }

    fn sign_checkpoint(&mut self) -> Result<StoredCheckpoint> {
        self.last_checkpoint_at = Instant::now();
        let size = self.edge.size();
        let prev = self.shared.state.read().unwrap_or_else(|e| e.into_inner()).latest.clone();
        if let Some(p) = &prev
            && p.checkpoint.size == size
        {
            return Ok(p.clone());
        }
        // The tiles covering this head are on disk before it is signed.
        let partial: Vec<(u32, u64, Vec<Hash>)> = self.edge.partial_tiles().map(|(l, i, h)| (l, i, h.to_vec())).collect();
        for (level, index, hashes) in partial {
            match self.shared.tiles.write(level, index, &hashes) {
                Ok(paths) => self.dirty.extend(paths),
                Err(e) => return Err(self.stop(format!("writing a tile failed: {e}"))),
            }
        }
        if let Err(e) = self.shared.tiles.sync(&self.dirty).and_then(|_| self.idx.sync()) {
            return Err(self.stop(format!("syncing the tiles failed: {e}")));
        }
        self.dirty.clear();
        let root = self.edge.root();
        // Never sign a head that does not extend the previous one.
        if let Some(p) = &prev {
            let nodes = TileNodes { dir: &self.shared.tiles, edge: &self.edge, cache: &self.shared.tile_cache };
            let consistent = merkle::consistency_proof(&nodes, p.checkpoint.size, size)
                .and_then(|proof| Ok(verify_consistency(p.checkpoint.size, size, &p.checkpoint.root, &root, &proof)?));
            if consistent.is_err() {
                return Err(self.stop("the log no longer extends its last signed checkpoint; refusing to sign".into()));
            }
        }
        let cp = Checkpoint::sign(&self.key, &self.shared.origin, size, &root)?;
        let stored = StoredCheckpoint { checkpoint: cp, ts_unix_ns: now_ns() };
        if let Err(e) = self.cp_file.write_all(stored.line().as_bytes()) {
            return Err(self.stop(format!("writing a checkpoint failed: {e}")));
        }
        if let Err(e) = self.cp_file.sync_data() {
            fatal("fsync of the checkpoint file", &e);
        }
        self.shared.state.write().unwrap_or_else(|e| e.into_inner()).latest = Some(stored.clone());
        // Sealed segments this head covers can now be compressed.
        if let Some(tx) = &self.compact {
            let (ready, later): (Vec<_>, Vec<_>) = self.sealed.iter().partition(|(_, end)| *end <= size);
            for (number, _) in ready {
                let _ = tx.send(number);
            }
            self.sealed = later;
        }
        Ok(stored)
    }

    fn stop(&self, why: String) -> Error {
        self.fail(&why);
        Error::Unavailable(why)
    }

    fn rotate(&mut self, new_key: SignerKey) -> Result<()> {
        let old = self.key.verifier().encode();
        let mut p = Obj::new();
        p.str("old_key", &old).str("new_key", &new_key.verifier().encode());
        let slot = Arc::new(Slot::default());
        self.write_batch(vec![(RecordType::KeyRotation, p.finish().into_bytes(), slot.clone())]);
        let receipt = slot
            .take()
            .ok_or_else(|| Error::Unavailable("rotation record was not written".into()))?
            .map_err(Error::Unavailable)?;
        // The key list names the new key before any checkpoint covers the change.
        let mut keys = self.shared.state.read().unwrap_or_else(|e| e.into_inner()).keys.clone();
        keys.push((receipt.seq, new_key.verifier().clone()));
        write_keys(&self.shared.dir, &keys)?;
        self.sign_checkpoint()?;
        self.shared.state.write().unwrap_or_else(|e| e.into_inner()).keys = keys;
        self.key = new_key;
        Ok(())
    }
}

#[derive(Default)]
struct Slot {
    inner: Mutex<SlotInner>,
    cv: Condvar,
}

#[derive(Default)]
struct SlotInner {
    result: Option<std::result::Result<Receipt, String>>,
    waker: Option<Waker>,
}

impl Slot {
    fn complete(&self, r: std::result::Result<Receipt, String>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.result = Some(r);
        if let Some(w) = g.waker.take() {
            w.wake();
        }
        self.cv.notify_all();
    }

    fn take(&self) -> Option<std::result::Result<Receipt, String>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).result.take()
    }
}

/// A receipt that resolves once its record is durable. Await it, or `wait` on it from
/// a thread that may block.
pub struct PendingReceipt(Arc<Slot>);

impl PendingReceipt {
    pub fn wait(self, timeout: Duration) -> Result<Receipt> {
        let deadline = Instant::now() + timeout;
        let mut g = self.0.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = g.result.take() {
                return r.map_err(Error::Unavailable);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Unavailable(format!("no receipt within {timeout:?}")));
            }
            g = self.0.cv.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Future for PendingReceipt {
    type Output = Result<Receipt>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut g = self.0.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.result.take() {
            Some(r) => Poll::Ready(r.map_err(Error::Unavailable)),
            None => {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*g {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub struct PauseGuard(Arc<Gate>);

impl Drop for PauseGuard {
    fn drop(&mut self) {
        *self.0.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0.cv.notify_all();
    }
}
