//! Scrub: re-verifies a whole log directory from its segments, trusting nothing derived:
//! every frame and chain link, the root and signature of every checkpoint, and every
//! tile, seq index and the key list against what the segments give. It names the first
//! bad seq. With `repair` the derived files are rewritten from the segments (the
//! segments and checkpoints themselves are never changed). Memory stays bounded by one
//! segment, however long the log.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::checkpoints::{self, StoredCheckpoint};
use crate::error::{Error, Result};
use crate::ledger::{Discard, commit_staging, read_keys, scan, segment_infos, write_keys};
use crate::note::{Checkpoint, VerifierKey};
use crate::tiles::{self, Edge, TileCache, TileDir, TileName};

/// What a scrub found (and did).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub records: u64,
    pub checkpoints: u64,
    pub tiles: u64,
    pub indexes: u64,
    /// Tiles that differ from what the segments give, or are missing.
    pub bad_tiles: Vec<String>,
    /// Seq indexes that differ from their segments, or are missing.
    pub bad_indexes: Vec<String>,
    /// The key list disagrees with the genesis and rotation records.
    pub bad_keys: bool,
    /// The first record found wrong (or the first a bad tile covers).
    pub first_bad_seq: Option<u64>,
    /// What is wrong with the log itself (segments or checkpoints), if anything.
    pub problem: Option<String>,
    /// The derived files were rewritten from the segments.
    pub repaired: bool,
}

impl ScrubReport {
    /// True when nothing was found wrong.
    pub fn clean(&self) -> bool {
        self.problem.is_none() && self.bad_tiles.is_empty() && self.bad_indexes.is_empty() && !self.bad_keys
    }
}

/// The checkpoints of `checkpoints.log`, read lazily, in file order.
struct Stream {
    lines: std::io::Lines<BufReader<File>>,
    error: Option<String>,
}

impl Stream {
    fn open(dir: &Path) -> Result<Option<Stream>> {
        match File::open(dir.join(checkpoints::FILE)) {
            Ok(f) => Ok(Some(Stream { lines: BufReader::new(f).lines(), error: None })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { context: format!("open {}", checkpoints::FILE), source: e }),
        }
    }
}

impl Iterator for Stream {
    type Item = StoredCheckpoint;
    fn next(&mut self) -> Option<StoredCheckpoint> {
        let line = match self.lines.next()? {
            Ok(l) => l,
            Err(e) => {
                self.error = Some(format!("{}: {e}", checkpoints::FILE));
                return None;
            }
        };
        let cp = StoredCheckpoint::parse_line(line.as_bytes());
        if cp.is_none() {
            self.error = Some(format!("{}: a line is damaged", checkpoints::FILE));
        }
        cp
    }
}

/// The first seq a message names (`record N` or `seq N`).
fn seq_in(message: &str) -> Option<u64> {
    for marker in ["record ", "seq "] {
        if let Some(at) = message.find(marker) {
            let digits: String = message[at + marker.len()..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

/// Files below `root`, as paths relative to it.
fn files_below(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Scrubs the log in `dir`, which no ledger may have open.
pub fn scrub(dir: &Path, repair: bool) -> Result<ScrubReport> {
    scrub_with(dir, repair, None)
}

/// [`scrub`], fetching segments moved to `archive` back to check them too.
pub fn scrub_with(dir: &Path, repair: bool, archive: Option<&dyn crate::archive::ArchiveStore>) -> Result<ScrubReport> {
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK")).map_err(Error::io("open the audit lock file"))?;
    lock.try_lock().map_err(|_| Error::Locked(dir.to_path_buf()))?;
    let mut report = ScrubReport::default();
    let segments = segment_infos(dir)?;
    let staging_dir = dir.join("scrub");
    let _ = fs::remove_dir_all(&staging_dir);
    let _discard = Discard(staging_dir.clone());
    let staging = TileDir::new(&staging_dir);
    let main = TileDir::new(dir);
    let cache = Mutex::new(TileCache::new(16));

    // Roots as the segments give them, checked against every checkpoint on the way.
    let mut sizes = Stream::open(dir)?.map(|s| s.map(|c| c.checkpoint.size));
    let mut expected = Stream::open(dir)?;
    let mut checked = 0u64;
    let mut mismatch: Option<(u64, String)> = None;
    let mut check_root = |size: u64, edge: &Edge| {
        let Some(stream) = expected.as_mut() else { return Ok(()) };
        for cp in stream.by_ref() {
            if cp.checkpoint.size != size {
                continue;
            }
            checked += 1;
            if mismatch.is_none() && edge.root() != cp.checkpoint.root {
                mismatch = Some((size.saturating_sub(1), format!("the records up to seq {} do not match the signed checkpoint of size {size}", size.saturating_sub(1))));
            }
            break;
        }
        Ok(())
    };
    let mut no_sizes = std::iter::empty();
    let sizes: &mut dyn Iterator<Item = u64> = match sizes.as_mut() {
        Some(s) => s,
        None => &mut no_sizes,
    };
    let scanned = scan(dir, &segments, 0, Edge::new(), [0u8; 32], &main, &cache, Vec::new(), &mut check_root, sizes, &staging, archive);
    report.checkpoints = checked;
    let scan = match scanned {
        Ok(s) => s,
        Err(e) => {
            let message = e.to_string();
            report.first_bad_seq = seq_in(&message);
            report.problem = Some(message);
            return Ok(report);
        }
    };
    report.records = scan.end;
    if let Some((number, _, at, _, why)) = &scan.torn {
        report.first_bad_seq = Some(scan.end);
        report.problem = Some(format!("segment {number} ends in a torn record at byte {at} ({why}); opening the log cuts it"));
    }
    if let Some((seq, why)) = mismatch {
        report.first_bad_seq = Some(report.first_bad_seq.map_or(seq, |s| s.min(seq)));
        report.problem = Some(why);
    }
    // Every checkpoint is signed by a key the log had named by its size.
    let keys: Vec<(u64, VerifierKey)> = scan.keys.clone();
    if let Some(stream) = Stream::open(dir)? {
        let mut last = 0u64;
        for cp in stream {
            let c = &cp.checkpoint;
            let known: Vec<VerifierKey> = keys.iter().filter(|(seq, _)| *seq < c.size.max(1)).map(|(_, k)| k.clone()).collect();
            if c.size < last {
                report.problem.get_or_insert(format!("{}: checkpoint of size {} follows one of size {last}", checkpoints::FILE, c.size));
            } else if c.size > scan.end {
                report.problem.get_or_insert(format!("the log holds {} records but a signed checkpoint covers {}; records were lost or removed", scan.end, c.size));
                report.first_bad_seq.get_or_insert(scan.end);
            } else if Checkpoint::open(&c.note, &known).is_err() {
                report.problem.get_or_insert(format!("the checkpoint of size {} is not signed by a key of this log", c.size));
            }
            last = c.size;
        }
    }

    // The partial tiles of the end of the log, as a checkpoint there would write them.
    for (level, index, hashes) in scan.edge.partial_tiles() {
        staging.write(level, index, hashes)?;
    }
    for rel in files_below(&staging_dir) {
        let name = rel.to_string_lossy().to_string();
        let built = fs::read(staging_dir.join(&rel)).map_err(Error::io(format!("read {name}")))?;
        if let Some(TileName::Hashes { level, index, width }) = tiles::parse_path(&name) {
            report.tiles += 1;
            let have = main.read(level, index, width).ok().flatten().map(|h| h.iter().flatten().copied().collect::<Vec<u8>>());
            if have.as_deref() != Some(&built[..]) {
                report.bad_tiles.push(name);
                let first = index.saturating_mul(1u64 << (tiles::HEIGHT * (level + 1)));
                report.first_bad_seq = Some(report.first_bad_seq.map_or(first, |s| s.min(first)));
            }
        } else if name.ends_with(".idx") {
            report.indexes += 1;
            if fs::read(dir.join(&rel)).ok().as_deref() != Some(&built[..]) {
                report.bad_indexes.push(name);
            }
        }
    }
    report.bad_keys = read_keys(dir)?.as_deref() != Some(&keys[..]);

    if repair && report.problem.is_none() {
        commit_staging(dir, &staging_dir)?;
        write_keys(dir, &keys)?;
        report.repaired = true;
    }
    Ok(report)
}
