//! The ledger: recovery on open, one writer thread with group commit, signed checkpoints,
//! and reads and proofs over what is durable.
//!
//! Directory layout:
//!
//! ```text
//! <dir>/LOCK                 held exclusively while the ledger is open
//! <dir>/seg-00000001.log …   segments (see `segment`)
//! <dir>/checkpoints.log      one JSON line per signed checkpoint:
//!                            {"size":N,"root":"<hex>","ts_unix_ns":T,"note":"<signed note>"}
//! <dir>/torn/                copies of segments as they were before a torn tail was cut
//! ```

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::event::{Event, Obj};
use crate::leaf::{self, MAX_PAYLOAD, RecordType, StoredLeaf};
use crate::merkle::{Hash, Tree, leaf_hash, verify_consistency};
use crate::note::{Checkpoint, SignerKey, VerifierKey};
use crate::segment::{self, HEADER_LEN, SegmentHeader};

const CHECKPOINTS: &str = "checkpoints.log";

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
    /// Records in the log after recovery, before the startup record.
    pub size: u64,
    pub origin: String,
    pub public_key: String,
}

/// A checkpoint as stored, with the time it was signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub checkpoint: Checkpoint,
    pub ts_unix_ns: i64,
}

pub struct Ledger {
    shared: Arc<Shared>,
    tx: SyncSender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The directory lock, released by `close` so the log can be reopened at once.
    lock: Mutex<Option<File>>,
}

struct Shared {
    dir: PathBuf,
    key_path: PathBuf,
    origin: String,
    log_id: [u8; 16],
    state: RwLock<State>,
    /// Why the writer stopped taking records; once set, every append fails.
    failure: Mutex<Option<String>>,
}

#[derive(Default)]
struct State {
    tree: Tree,
    /// Per seq: (segment number, frame offset).
    locations: Vec<(u32, u64)>,
    checkpoints: Vec<StoredCheckpoint>,
    /// Every key that has signed for this log, oldest first; the last is current.
    keys: Vec<VerifierKey>,
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::Key("the system random source failed".into()))?;
    Ok(b)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("fsync directory {}", dir.display())))
}

/// Writes a file whole: temp file, fsync, rename, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(Error::io(format!("write {}", tmp.display())))?;
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

fn load_or_create_key(
    cfg: &LedgerConfig,
    log_exists: bool,
    default_name: &str,
) -> Result<(SignerKey, bool)> {
    match fs::read_to_string(&cfg.key_path) {
        Ok(text) => Ok((
            SignerKey::parse(&text)
                .map_err(|e| Error::Key(format!("{}: {e}", cfg.key_path.display())))?,
            false,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if log_exists {
                return Err(Error::Key(format!(
                    "the audit log in {} exists but its signing key {} is missing; restore the key file (a new key cannot continue a log it did not sign)",
                    cfg.dir.display(),
                    cfg.key_path.display()
                )));
            }
            if let Some(parent) = cfg.key_path.parent() {
                fs::create_dir_all(parent)
                    .map_err(Error::io(format!("create {}", parent.display())))?;
            }
            let key = SignerKey::generate(default_name)?;
            write_atomically(
                &cfg.key_path,
                format!("{}\n", key.encode()).as_bytes(),
                0o600,
            )?;
            Ok((key, true))
        }
        Err(e) => Err(Error::Io {
            context: format!("read {}", cfg.key_path.display()),
            source: e,
        }),
    }
}

fn next_key_path(key_path: &Path) -> PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".next");
    PathBuf::from(p)
}

/// A rotation writes the new key beside the old one, records the change, then moves the
/// new key into place. If it was cut short after recording, finish the move now.
fn finish_interrupted_rotation(
    key_path: &Path,
    current: Option<&VerifierKey>,
    key: SignerKey,
) -> Result<SignerKey> {
    let next = next_key_path(key_path);
    let Ok(text) = fs::read_to_string(&next) else {
        return Ok(key);
    };
    let Ok(next_key) = SignerKey::parse(&text) else {
        return Ok(key);
    };
    if current != Some(next_key.verifier()) || current == Some(key.verifier()) {
        return Ok(key);
    }
    install_rotated_key(key_path, &next)?;
    Ok(next_key)
}

fn install_rotated_key(key_path: &Path, next: &Path) -> Result<()> {
    let mut retired = key_path.as_os_str().to_owned();
    retired.push(format!(".retired-{}", now_ns()));
    fs::copy(key_path, PathBuf::from(retired))
        .map_err(Error::io("keep a copy of the retired signing key"))?;
    fs::rename(next, key_path).map_err(Error::io("move the new signing key into place"))?;
    sync_dir(key_path.parent().unwrap_or(Path::new(".")))
}

/// What a read-only scan of a log directory found.
struct Scan {
    log_id: Option<[u8; 16]>,
    origin: Option<String>,
    segments: Vec<(u32, PathBuf, SegmentHeader, u64)>,
    tree: Tree,
    locations: Vec<(u32, u64)>,
    keys: Vec<VerifierKey>,
    last_ts: i64,
    /// (segment number, path, offset to cut at, bytes cut, reason)
    torn: Option<(u32, PathBuf, u64, u64, String)>,
    checkpoints: Vec<StoredCheckpoint>,
    /// Length of checkpoints.log up to its last complete line, when a torn line follows.
    checkpoints_cut: Option<u64>,
}

fn parse_key_payload(payload: &[u8], field: &str, seq: u64) -> Result<VerifierKey> {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| Error::Corrupt(format!("record {seq}: payload is not JSON: {e}")))?;
    let key = v[field]
        .as_str()
        .ok_or_else(|| Error::Corrupt(format!("record {seq}: no {field}")))?;
    VerifierKey::parse(key).map_err(|e| Error::Corrupt(format!("record {seq}: {e}")))
}

/// Reads the whole log and checks it, changing nothing. Damage anywhere but the tail of
/// the last segment is an error.
fn scan(dir: &Path) -> Result<Scan> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io(format!("list {}", dir.display())))? {
        let entry = entry.map_err(Error::io(format!("list {}", dir.display())))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_file_name)
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    let mut s = Scan {
        log_id: None,
        origin: None,
        segments: Vec::new(),
        tree: Tree::new(),
        locations: Vec::new(),
        keys: Vec::new(),
        last_ts: i64::MIN,
        torn: None,
        checkpoints: Vec::new(),
        checkpoints_cut: None,
    };
    let mut last_hash = [0u8; 32];
    let count = numbers.len();
    for (i, number) in numbers.into_iter().enumerate() {
        let name = segment::file_name(number);
        if number as usize != i + 1 {
            return Err(Error::Corrupt(format!(
                "segment {name} found where segment {} was expected",
                i + 1
            )));
        }
        let path = dir.join(&name);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(Error::io(format!("read {}", path.display())))?;
        let header =
            SegmentHeader::decode(&bytes).map_err(|e| Error::Corrupt(format!("{name}: {e}")))?;
        if header.number != number {
            return Err(Error::Corrupt(format!(
                "{name}: header says segment {}",
                header.number
            )));
        }
        match s.log_id {
            None => s.log_id = Some(header.log_id),
            Some(id) if id != header.log_id => {
                return Err(Error::Corrupt(format!("{name} belongs to another log")));
            }
            Some(_) => {}
        }
        let next = s.tree.size();
        if header.first_seq != next || header.prev_leaf != last_hash {
            return Err(Error::Corrupt(format!(
                "{name} does not continue the previous segment (starts at seq {}, expected {next})",
                header.first_seq
            )));
        }
        let mut offset = HEADER_LEN;
        loop {
            let seq = s.tree.size();
            let problem = match segment::read_frame(&header.salt, &bytes, offset) {
                Ok(None) => break,
                Err(e) => e,
                Ok(Some(leaf_bytes)) => match leaf::decode(leaf_bytes) {
                    Err(e) => e.to_string(),
                    Ok(v) if v.seq != seq => format!("record says seq {}, expected {seq}", v.seq),
                    Ok(v) if v.prev_leaf != last_hash => {
                        "record does not link to the previous record's hash".to_string()
                    }
                    Ok(v) => {
                        match v.record_type {
                            RecordType::Genesis if seq == 0 => {
                                s.keys
                                    .push(parse_key_payload(v.payload, "public_key", seq)?);
                                let p: serde_json::Value =
                                    serde_json::from_slice(v.payload).unwrap_or_default();
                                s.origin = p["origin"].as_str().map(str::to_string);
                            }
                            RecordType::KeyRotation => {
                                s.keys.push(parse_key_payload(v.payload, "new_key", seq)?)
                            }
                            RecordType::Genesis => {
                                return Err(Error::Corrupt(format!(
                                    "record {seq} is a second genesis"
                                )));
                            }
                            _ if seq == 0 => {
                                return Err(Error::Corrupt(
                                    "record 0 is not a genesis record".into(),
                                ));
                            }
                            _ => {}
                        }
                        let h = leaf_hash(leaf_bytes);
                        s.tree.push(h);
                        s.locations.push((number, offset as u64));
                        s.last_ts = s.last_ts.max(v.ts_unix_ns);
                        last_hash = h;
                        offset += segment::padded_len(leaf_bytes.len());
                        continue;
                    }
                },
            };
            let is_last = i + 1 == count;
            if !is_last {
                return Err(Error::Corrupt(format!(
                    "{name}: record {seq} at offset {offset} is damaged ({problem}) and later segments follow"
                )));
            }
            if segment::any_valid_frame_after(&header.salt, &bytes, offset + 8) {
                return Err(Error::Corrupt(format!(
                    "{name}: record {seq} at offset {offset} is damaged ({problem}) and intact records follow it; this is not a torn write"
                )));
            }
            s.torn = Some((
                number,
                path.clone(),
                offset as u64,
                (bytes.len() - offset) as u64,
                problem,
            ));
            break;
        }
        s.segments.push((number, path, header, bytes.len() as u64));
    }

    let cp_path = dir.join(CHECKPOINTS);
    match fs::read(&cp_path) {
        Ok(bytes) => {
            let mut good_len = 0usize;
            let mut lines = bytes.split_inclusive(|b| *b == b'\n').peekable();
            while let Some(line) = lines.next() {
                let parsed = line
                    .strip_suffix(b"\n")
                    .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                    .and_then(|v| {
                        Some((v["note"].as_str()?.to_string(), v["ts_unix_ns"].as_i64()?))
                    });
                match parsed {
                    Some((note, ts)) => {
                        // Signatures of the history are checked on export; here only the
                        // newest (below), so startup stays fast however long the log is.
                        let cp = Checkpoint::parse_unverified(&note)
                            .map_err(|e| Error::Corrupt(format!("{CHECKPOINTS}: {e}")))?;
                        s.checkpoints.push(StoredCheckpoint {
                            checkpoint: cp,
                            ts_unix_ns: ts,
                        });
                        good_len += line.len();
                    }
                    // Only the very last line may be a torn write.
                    None if lines.peek().is_none() => s.checkpoints_cut = Some(good_len as u64),
                    None => {
                        return Err(Error::Corrupt(format!(
                            "{CHECKPOINTS}: a damaged line is followed by others"
                        )));
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Io {
                context: format!("read {}", cp_path.display()),
                source: e,
            });
        }
    }
    for pair in s.checkpoints.windows(2) {
        let (a, b) = (&pair[0].checkpoint, &pair[1].checkpoint);
        if b.size < a.size {
            return Err(Error::Corrupt(format!(
                "{CHECKPOINTS}: checkpoint of size {} follows one of size {}",
                b.size, a.size
            )));
        }
    }
    if let Some(latest) = s.checkpoints.last() {
        Checkpoint::open(&latest.checkpoint.note, &s.keys).map_err(|e| {
            Error::Corrupt(format!(
                "the newest checkpoint in {CHECKPOINTS} does not verify: {e}"
            ))
        })?;
        let cp = &latest.checkpoint;
        if cp.size > s.tree.size() {
            return Err(Error::Corrupt(format!(
                "the log holds {} records but a signed checkpoint covers {}; records were lost or removed",
                s.tree.size(),
                cp.size
            )));
        }
        if s.tree.root_at(cp.size) != Some(cp.root) {
            return Err(Error::Corrupt(format!(
                "the records up to seq {} do not match the signed checkpoint of size {}",
                cp.size - 1,
                cp.size
            )));
        }
        if Some(&cp.origin) != s.origin.as_ref() {
            return Err(Error::Corrupt(format!(
                "checkpoint origin {} is not the log's origin",
                cp.origin
            )));
        }
    }
    Ok(s)
}

impl Ledger {
    /// Opens (or creates) the ledger: takes the directory lock, checks every segment and
    /// the newest checkpoint, cuts a torn tail (keeping a copy), appends `recovery` and
    /// `startup` records and signs a checkpoint. Any other damage is an error and nothing
    /// on disk is changed.
    pub fn open(cfg: LedgerConfig) -> Result<(Ledger, OpenReport)> {
        fs::create_dir_all(&cfg.dir).map_err(Error::io(format!("create {}", cfg.dir.display())))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.dir.join("LOCK"))
            .map_err(Error::io("open the audit lock file"))?;
        lock.try_lock()
            .map_err(|_| Error::Locked(cfg.dir.clone()))?;

        let scan = scan(&cfg.dir)?;
        let log_exists = !scan.segments.is_empty();
        let log_id = match scan.log_id {
            Some(id) => id,
            None => random::<16>()?,
        };
        let default_origin = cfg
            .origin
            .clone()
            .unwrap_or_else(|| format!("lakeledger/audit-{}", hex::encode(&log_id[..8])));
        let (key, created_key) = load_or_create_key(&cfg, log_exists, &default_origin)?;
        let origin = scan
            .origin
            .clone()
            .unwrap_or_else(|| key.verifier().name.clone());
        if key.verifier().name != origin {
            return Err(Error::Key(format!(
                "the signing key is named {} but the log's origin is {origin}",
                key.verifier().name
            )));
        }
        let key = finish_interrupted_rotation(&cfg.key_path, scan.keys.last(), key)?;
        if let Some(current) = scan.keys.last()
            && current != key.verifier()
        {
            return Err(Error::Key(format!(
                "the signing key {} is not the key this log is signed with ({}); rotate keys with `lakeledger audit rotate-key`, which records the change",
                key.verifier().encode(),
                current.encode()
            )));
        }

        // Repair happens only now, after every check has passed.
        let mut repaired = None;
        if let Some((number, path, cut_at, cut_len, reason)) = &scan.torn {
            let torn_dir = cfg.dir.join("torn");
            fs::create_dir_all(&torn_dir).map_err(Error::io("create the torn-tail directory"))?;
            let copy = torn_dir.join(format!("{}.{}", segment::file_name(*number), cut_at));
            fs::copy(path, &copy).map_err(Error::io(format!("copy {} aside", path.display())))?;
            File::open(&copy)
                .and_then(|f| f.sync_all())
                .map_err(Error::io("fsync the torn-tail copy"))?;
            sync_dir(&torn_dir)?;
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(Error::io(format!("open {}", path.display())))?;
            f.set_len(*cut_at)
                .and_then(|_| f.sync_all())
                .map_err(Error::io(format!("truncate {}", path.display())))?;
            repaired = Some(format!(
                "cut {cut_len} bytes at offset {cut_at} of {} ({reason}); the original is kept at {}",
                segment::file_name(*number),
                copy.display()
            ));
        }
        if let Some(len) = scan.checkpoints_cut {
            let p = cfg.dir.join(CHECKPOINTS);
            let f = OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(Error::io(format!("open {}", p.display())))?;
            f.set_len(len)
                .and_then(|_| f.sync_all())
                .map_err(Error::io(format!("truncate {}", p.display())))?;
        }

        let size = scan.tree.size();
        let last_hash = if size == 0 {
            [0u8; 32]
        } else {
            scan.tree.leaf(size - 1).expect("leaf")
        };
        let (seg, file) = match scan.segments.last() {
            Some((number, path, header, len)) => {
                let len = match &scan.torn {
                    Some((_, _, cut_at, _, _)) => *cut_at,
                    None => *len,
                };
                let f = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(Error::io(format!("open {}", path.display())))?;
                (
                    OpenSegment {
                        number: *number,
                        salt: header.salt,
                        len,
                    },
                    f,
                )
            }
            None => create_segment(&cfg.dir, 1, log_id, 0, [0u8; 32])?,
        };
        let cp_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.dir.join(CHECKPOINTS))
            .map_err(Error::io("open the checkpoint file"))?;

        let mut keys = scan.keys.clone();
        if keys.is_empty() {
            keys.push(key.verifier().clone());
        }
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            key_path: cfg.key_path.clone(),
            origin: origin.clone(),
            log_id,
            state: RwLock::new(State {
                tree: scan.tree,
                locations: scan.locations,
                checkpoints: scan.checkpoints,
                keys,
            }),
            failure: Mutex::new(None),
        });
        let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity);
        let public_key = key.verifier().encode();
        let writer = Writer {
            shared: shared.clone(),
            rx,
            key,
            file,
            seg,
            cp_file,
            next_seq: size,
            last_hash,
            last_ts: scan.last_ts,
            segment_max_bytes: cfg.segment_max_bytes,
            max_batch: cfg.max_batch.max(1),
            interval: cfg.checkpoint_interval,
            last_checkpoint_at: Instant::now(),
            backlog: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run())
            .map_err(Error::io("start the audit writer thread"))?;
        let ledger = Ledger {
            shared,
            tx,
            thread: Mutex::new(Some(thread)),
            lock: Mutex::new(Some(lock)),
        };

        let wait = Duration::from_secs(30);
        if size == 0 {
            let mut p = Obj::new();
            p.str("origin", &origin)
                .str("log_id", &hex::encode(log_id))
                .str("public_key", &public_key)
                .u64("format", 1);
            ledger
                .append(RecordType::Genesis, p.finish().into_bytes())?
                .wait(wait)?;
        }
        if let Some(what) = &repaired {
            let mut p = Obj::new();
            p.str("repaired", what).u64("size_after_repair", size);
            ledger
                .append(RecordType::Recovery, p.finish().into_bytes())?
                .wait(wait)?;
        }
        let mut p = Obj::new();
        p.str(
            "software",
            concat!("lakeledger-audit ", env!("CARGO_PKG_VERSION")),
        )
        .u64("size_at_open", size);
        ledger
            .append(RecordType::Startup, p.finish().into_bytes())?
            .wait(wait)?;
        ledger.checkpoint()?;
        Ok((
            ledger,
            OpenReport {
                created_log: !log_exists,
                created_key,
                repaired,
                size,
                origin,
                public_key,
            },
        ))
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
        self.read_state()
            .keys
            .last()
            .cloned()
            .expect("a log always has a key")
    }

    /// Every key that has signed for this log, oldest first.
    pub fn public_keys(&self) -> Vec<VerifierKey> {
        self.read_state().keys.clone()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the ledger stopped taking records, if it has.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands a record to the writer. Fails at once when the writer has stopped or is so
    /// far behind that its queue is full; otherwise the returned receipt resolves once
    /// the record is on disk.
    pub fn append(&self, record_type: RecordType, payload: Vec<u8>) -> Result<PendingReceipt> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::Malformed(format!(
                "payload of {} bytes exceeds {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        if let Some(f) = self.failure() {
            return Err(Error::Unavailable(f));
        }
        let slot = Arc::new(Slot::default());
        match self.tx.try_send(Job::Append {
            record_type,
            payload,
            slot: slot.clone(),
        }) {
            Ok(()) => Ok(PendingReceipt(slot)),
            Err(TrySendError::Full(_)) => Err(Error::Unavailable(
                "the audit writer is behind and its queue is full".into(),
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(Error::Unavailable("the audit writer has stopped".into()))
            }
        }
    }

    pub fn append_event(&self, event: &Event) -> Result<PendingReceipt> {
        self.append(RecordType::Event, event.to_canonical_json())
    }

    /// Durable records.
    pub fn size(&self) -> u64 {
        self.read_state().tree.size()
    }

    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.read_state().tree.root_at(size)
    }

    /// Signs a checkpoint over everything durable now (or returns the latest one if the
    /// log has not grown since).
    pub fn checkpoint(&self) -> Result<StoredCheckpoint> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Job::Checkpoint(tx))
            .map_err(|_| Error::Unavailable("the audit writer has stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Unavailable("the audit writer has stopped".into()))?
    }

    pub fn latest_checkpoint(&self) -> Option<StoredCheckpoint> {
        self.read_state().checkpoints.last().cloned()
    }

    pub fn checkpoints(&self) -> Vec<StoredCheckpoint> {
        self.read_state().checkpoints.clone()
    }

    /// Up to `limit` checkpoints of at least `from_size` records, oldest first.
    pub fn checkpoints_from(&self, from_size: u64, limit: usize) -> Vec<StoredCheckpoint> {
        let st = self.read_state();
        let start = st.checkpoints.partition_point(|c| c.checkpoint.size < from_size);
        st.checkpoints[start..].iter().take(limit).cloned().collect()
    }

    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>> {
        Ok(self.read_state().tree.inclusion_proof(seq, size)?)
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        Ok(self.read_state().tree.consistency_proof(old, new)?)
    }

    /// Reads records `[from, to)` (clipped to what is durable) from disk, checking each
    /// against the hash held in memory.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<StoredLeaf>> {
        let (locs, hashes): (Vec<(u32, u64)>, Vec<Hash>) = {
            let st = self.read_state();
            let to = to.min(st.tree.size());
            (from..to)
                .map(|s| (st.locations[s as usize], st.tree.leaf(s).expect("leaf")))
                .unzip()
        };
        let mut out = Vec::with_capacity(locs.len());
        let mut open: Option<(u32, File)> = None;
        for (i, ((number, offset), want)) in locs.into_iter().zip(hashes).enumerate() {
            let seq = from + i as u64;
            if open.as_ref().map(|(n, _)| *n) != Some(number) {
                let p = self.shared.dir.join(segment::file_name(number));
                open = Some((
                    number,
                    File::open(&p).map_err(Error::io(format!("open {}", p.display())))?,
                ));
            }
            let f = &open.as_ref().expect("opened").1;
            let mut head = [0u8; 4];
            f.read_exact_at(&mut head, offset)
                .map_err(Error::io(format!("read record {seq}")))?;
            let len = u32::from_be_bytes(head) as usize;
            if len > segment::MAX_LEAF {
                return Err(Error::Corrupt(format!(
                    "record {seq} on disk has an impossible length"
                )));
            }
            let mut bytes = vec![0u8; len];
            f.read_exact_at(&mut bytes, offset + segment::FRAME_HEADER_LEN as u64)
                .map_err(Error::io(format!("read record {seq}")))?;
            let leaf = StoredLeaf::new(seq, bytes);
            if leaf.hash != want {
                return Err(Error::Corrupt(format!(
                    "record {seq} on disk no longer matches the hash the log committed to"
                )));
            }
            out.push(leaf);
        }
        Ok(out)
    }

    /// Records a key change and switches to `new_key`. The rotation record is covered by
    /// a checkpoint signed with the old key before the new key signs anything, so a
    /// verifier that trusts the old key can follow the change.
    pub fn rotate_key(&self, new_key: SignerKey) -> Result<()> {
        if new_key.verifier().name != self.shared.origin {
            return Err(Error::Key(format!(
                "the new key must be named {}",
                self.shared.origin
            )));
        }
        let next = next_key_path(&self.shared.key_path);
        write_atomically(&next, format!("{}\n", new_key.encode()).as_bytes(), 0o600)?;
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Job::RotateKey(Box::new(new_key), tx))
            .map_err(|_| Error::Unavailable("the audit writer has stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Unavailable("the audit writer has stopped".into()))??;
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
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

struct OpenSegment {
    number: u32,
    salt: [u8; 16],
    len: u64,
}

fn create_segment(
    dir: &Path,
    number: u32,
    log_id: [u8; 16],
    first_seq: u64,
    prev_leaf: Hash,
) -> Result<(OpenSegment, File)> {
    let salt = random::<16>()?;
    let header = SegmentHeader {
        number,
        log_id,
        first_seq,
        prev_leaf,
        salt,
    };
    let path = dir.join(segment::file_name(number));
    write_atomically(&path, &header.encode(), 0o640)?;
    let f = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(Error::io(format!("open {}", path.display())))?;
    Ok((
        OpenSegment {
            number,
            salt,
            len: HEADER_LEN as u64,
        },
        f,
    ))
}

struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Job>,
    key: SignerKey,
    file: File,
    seg: OpenSegment,
    cp_file: File,
    next_seq: u64,
    last_hash: Hash,
    last_ts: i64,
    segment_max_bytes: u64,
    max_batch: usize,
    interval: Duration,
    last_checkpoint_at: Instant,
    backlog: VecDeque<Job>,
}

/// A write or fsync of the log failed. The bytes on disk are now unknown, so the only
/// safe course is to stop and let recovery decide at the next start.
fn fatal(what: &str, e: &std::io::Error) -> ! {
    eprintln!(
        "audit ledger: {what} failed ({e}); aborting so that recovery can run at the next start"
    );
    std::process::abort();
}

impl Writer {
    fn run(mut self) {
        loop {
            let job = match self.backlog.pop_front() {
                Some(j) => j,
                None => {
                    let wait = self
                        .interval
                        .saturating_sub(self.last_checkpoint_at.elapsed());
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
                Job::Append {
                    record_type,
                    payload,
                    slot,
                } => {
                    let mut batch = vec![(record_type, payload, slot)];
                    // Group commit: take everything already waiting, up to the batch limit.
                    while batch.len() < self.max_batch {
                        match self.rx.try_recv() {
                            Ok(Job::Append {
                                record_type,
                                payload,
                                slot,
                            }) => batch.push((record_type, payload, slot)),
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
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fail(&self, why: &str) {
        let mut f = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why.to_string());
        }
    }

    fn write_batch(&mut self, batch: Vec<(RecordType, Vec<u8>, Arc<Slot>)>) {
        if let Some(why) = self.failed() {
            for (_, _, slot) in batch {
                slot.complete(Err(why.clone()));
            }
            return;
        }
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut written = Vec::with_capacity(batch.len());
        let mut leaf_bytes = Vec::with_capacity(1024);
        let mut failure = None;
        for (record_type, payload, slot) in batch {
            if failure.is_some() {
                written.push((None, 0, slot));
                continue;
            }
            // A full segment is finished (written and synced) before the next one starts.
            if self.seg.len + buf.len() as u64 >= self.segment_max_bytes
                && let Err(why) = self
                    .flush(&mut buf)
                    .and_then(|_| self.rotate_segment().map_err(|e| e.to_string()))
            {
                failure = Some(why);
                written.push((None, 0, slot));
                continue;
            }
            let ts = now_ns().max(self.last_ts);
            leaf_bytes.clear();
            leaf::encode(
                record_type,
                self.next_seq,
                ts,
                &self.last_hash,
                &payload,
                &mut leaf_bytes,
            );
            let h = leaf_hash(&leaf_bytes);
            let offset = self.seg.len + buf.len() as u64;
            segment::encode_frame(&self.seg.salt, &leaf_bytes, &mut buf);
            written.push((
                Some((
                    Receipt {
                        seq: self.next_seq,
                        leaf_hash: h,
                    },
                    self.seg.number,
                )),
                offset,
                slot,
            ));
            self.next_seq += 1;
            self.last_hash = h;
            self.last_ts = ts;
        }
        if failure.is_none()
            && let Err(why) = self.flush(&mut buf)
        {
            failure = Some(why);
        }
        if let Some(why) = failure {
            self.fail(&why);
            for (_, _, slot) in written {
                slot.complete(Err(why.clone()));
            }
            return;
        }
        {
            let mut st = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
            for (r, offset, _) in &written {
                let (r, number) = r.expect("written");
                st.tree.push(r.leaf_hash);
                st.locations.push((number, *offset));
            }
        }
        for (r, _, slot) in written {
            slot.complete(Ok(r.expect("written").0));
        }
    }

    /// Writes and syncs `buf` to the current segment. A write error (disk full) stops the
    /// ledger: a short write leaves a torn frame that recovery cuts at the next start,
    /// and nothing may be appended behind it. A failed fsync aborts.
    fn flush(&mut self, buf: &mut Vec<u8>) -> std::result::Result<(), String> {
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
        buf.clear();
        Ok(())
    }

    fn rotate_segment(&mut self) -> Result<()> {
        let (seg, file) = create_segment(
            &self.shared.dir,
            self.seg.number + 1,
            self.shared.log_id,
            self.next_seq,
            self.last_hash,
        )?;
        self.seg = seg;
        self.file = file;
        Ok(())
    }

    fn periodic_checkpoint(&mut self) {
        if self.last_checkpoint_at.elapsed() >= self.interval {
            let _ = self.sign_checkpoint();
        }
    }

    fn sign_checkpoint(&mut self) -> Result<StoredCheckpoint> {
        self.last_checkpoint_at = Instant::now();
        let (size, root, prev) = {
            let st = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
            (
                st.tree.size(),
                st.tree.root(),
                st.checkpoints.last().cloned(),
            )
        };
        if let Some(p) = &prev
            && p.checkpoint.size == size
        {
            return Ok(p.clone());
        }
        // Never sign a head that does not extend the previous one.
        if let Some(p) = &prev {
            let proof = self
                .shared
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .tree
                .consistency_proof(p.checkpoint.size, size)?;
            if verify_consistency(p.checkpoint.size, size, &p.checkpoint.root, &root, &proof)
                .is_err()
            {
                let why = "the log no longer extends its last signed checkpoint; refusing to sign"
                    .to_string();
                self.fail(&why);
                return Err(Error::Corrupt(why));
            }
        }
        let cp = Checkpoint::sign(&self.key, &self.shared.origin, size, &root)?;
        let stored = StoredCheckpoint {
            checkpoint: cp,
            ts_unix_ns: now_ns(),
        };
        let mut line = Obj::new();
        line.u64("size", size)
            .str("root", &hex::encode(root))
            .i64("ts_unix_ns", stored.ts_unix_ns)
            .str("note", &stored.checkpoint.note);
        let mut text = line.finish();
        text.push('\n');
        if let Err(e) = self.cp_file.write_all(text.as_bytes()) {
            let why = format!("writing a checkpoint failed: {e}");
            self.fail(&why);
            return Err(Error::Unavailable(why));
        }
        if let Err(e) = self.cp_file.sync_data() {
            fatal("fsync of the checkpoint file", &e);
        }
        self.shared
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoints
            .push(stored.clone());
        Ok(stored)
    }

    fn rotate(&mut self, new_key: SignerKey) -> Result<()> {
        let old = self.key.verifier().encode();
        let mut p = Obj::new();
        p.str("old_key", &old)
            .str("new_key", &new_key.verifier().encode());
        let slot = Arc::new(Slot::default());
        self.write_batch(vec![(
            RecordType::KeyRotation,
            p.finish().into_bytes(),
            slot.clone(),
        )]);
        slot.take()
            .ok_or_else(|| Error::Unavailable("rotation record was not written".into()))?
            .map_err(Error::Unavailable)?;
        self.sign_checkpoint()?;
        self.shared
            .state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .push(new_key.verifier().clone());
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
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .result
            .take()
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
            g = self
                .0
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
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
