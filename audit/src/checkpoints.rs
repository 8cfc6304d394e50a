//! `checkpoints.log`: one JSON line per signed checkpoint, in increasing size:
//! `{"size":N,"root":"<hex>","ts_unix_ns":T,"note":"<signed note>"}`.
//!
//! A log signs a checkpoint every second it grows, so this file grows for years. It is
//! never read whole: the newest line comes from its tail, and lookups by size are binary
//! searches over byte offsets (sizes only increase down the file).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::note::Checkpoint;

pub const FILE: &str = "checkpoints.log";

/// A checkpoint as stored, with the time it was signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub checkpoint: Checkpoint,
    pub ts_unix_ns: i64,
}

impl StoredCheckpoint {
    /// The line this checkpoint is stored as, with its newline.
    pub fn line(&self) -> String {
        let mut o = crate::event::Obj::new();
        o.u64("size", self.checkpoint.size)
            .str("root", &hex::encode(self.checkpoint.root))
            .i64("ts_unix_ns", self.ts_unix_ns)
            .str("note", &self.checkpoint.note);
        let mut s = o.finish();
        s.push('\n');
        s
    }

    /// Parses a stored line (without its newline). The signature is not checked here.
    pub fn parse_line(line: &[u8]) -> Option<StoredCheckpoint> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        let note = v["note"].as_str()?;
        let checkpoint = Checkpoint::parse_unverified(note).ok()?;
        (v["size"].as_u64() == Some(checkpoint.size)).then_some(StoredCheckpoint { checkpoint, ts_unix_ns: v["ts_unix_ns"].as_i64()? })
    }
}

/// What the file's tail holds: the newest checkpoint, and where a torn last line (a
/// crash while appending) begins.
pub struct Tail {
    pub latest: Option<StoredCheckpoint>,
    pub cut_at: Option<u64>,
}

/// Reads the newest checkpoint from the end of the file. Only the last line may be torn;
/// a damaged line before it is an error.
pub fn tail(dir: &Path) -> Result<Tail> {
    let path = dir.join(FILE);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail { latest: None, cut_at: None }),
        Err(e) => return Err(Error::Io { context: format!("open {}", path.display()), source: e }),
    };
    let len = f.metadata().map_err(Error::io(format!("stat {}", path.display())))?.len();
    let mut window = 16 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        f.read_exact_at(&mut buf, start).map_err(Error::io(format!("read {}", path.display())))?;
        // Complete lines in the window (the first may be a fragment unless at 0).
        let mut lines: Vec<(u64, &[u8])> = Vec::new();
        let mut at = 0usize;
        if start > 0 {
            match buf.iter().position(|b| *b == b'\n') {
                Some(p) => at = p + 1,
                None => {
                    window *= 4;
                    continue;
                }
            }
        }
        while at < buf.len() {
            let end = buf[at..].iter().position(|b| *b == b'\n').map(|p| at + p + 1);
            match end {
                Some(e) => {
                    lines.push((start + at as u64, &buf[at..e - 1]));
                    at = e;
                }
                None => {
                    lines.push((start + at as u64, &buf[at..]));
                    at = buf.len();
                }
            }
        }
        let complete_last = buf.last() == Some(&b'\n');
        let parsed: Vec<(u64, Option<StoredCheckpoint>, bool)> = lines
            .iter()
            .enumerate()
            .map(|(i, (off, l))| (*off, StoredCheckpoint::parse_line(l), i + 1 == lines.len() && !complete_last))
            .collect();
        match parsed.as_slice() {
            [] if start == 0 => return Ok(Tail { latest: None, cut_at: (len > 0).then_some(0) }),
            [] => {
                window *= 4;
                continue;
            }
            [.., (_, Some(cp), false)] => return Ok(Tail { latest: Some(cp.clone()), cut_at: None }),
            [rest @ .., (off, _, _)] => {
                // The last line is torn (unterminated or unreadable): the one before must hold.
                match rest.last() {
                    Some((_, Some(cp), _)) => return Ok(Tail { latest: Some(cp.clone()), cut_at: Some(*off) }),
                    Some((_, None, _)) => return Err(Error::Corrupt(format!("{FILE}: a damaged line is followed by others"))),
                    None if start == 0 => return Ok(Tail { latest: None, cut_at: Some(*off) }),
                    None => {
                        window *= 4;
                        continue;
                    }
                }
            }
        }
    }
}

/// The first whole line starting at byte `at` or later: `(start, end, checkpoint)`.
fn line_at_or_after(f: &File, at: u64, len: u64) -> Result<Option<(u64, u64, StoredCheckpoint)>> {
    let mut r = BufReader::new(f);
    let mut start = 0;
    // The handle's position is shared by every call: always seek.
    if at == 0 {
        r.seek(SeekFrom::Start(0)).map_err(Error::io(format!("seek {FILE}")))?;
    } else {
        // A line starts at `at` exactly when the byte before it ends a line.
        r.seek(SeekFrom::Start(at - 1)).map_err(Error::io(format!("seek {FILE}")))?;
        let mut skipped = Vec::new();
        let n = r.read_until(b'\n', &mut skipped).map_err(Error::io(format!("read {FILE}")))?;
        start = at - 1 + n as u64;
    }
    if start >= len {
        return Ok(None);
    }
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).map_err(Error::io(format!("read {FILE}")))?;
    if line.last() != Some(&b'\n') {
        return Ok(None);
    }
    line.pop();
    let cp = StoredCheckpoint::parse_line(&line).ok_or_else(|| Error::Corrupt(format!("{FILE}: the line at byte {start} is damaged")))?;
    Ok(Some((start, start + n as u64, cp)))
}

/// Up to `limit` checkpoints of at least `from_size` records, oldest first.
pub fn from_size(dir: &Path, from_size: u64, limit: usize) -> Result<Vec<StoredCheckpoint>> {
    let path = dir.join(FILE);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { context: format!("open {}", path.display()), source: e }),
    };
    let len = f.metadata().map_err(Error::io(format!("stat {}", path.display())))?.len();
    // The smallest offset whose next line holds a size of at least `from_size`.
    let (mut lo, mut hi) = (0u64, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match line_at_or_after(&f, mid, len)? {
            Some((_, _, cp)) if cp.checkpoint.size < from_size => lo = mid + 1,
            _ => hi = mid,
        }
    }
    let mut out = Vec::new();
    let mut at = lo;
    while out.len() < limit {
        let Some((_, end, cp)) = line_at_or_after(&f, at, len)? else { break };
        if cp.checkpoint.size >= from_size {
            out.push(cp);
        }
        at = end;
    }
    Ok(out)
}

/// The newest checkpoint of at most `size` records, by binary search.
pub fn newest_at_most(dir: &Path, size: u64) -> Result<Option<StoredCheckpoint>> {
    let path = dir.join(FILE);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { context: format!("open {}", path.display()), source: e }),
    };
    let len = f.metadata().map_err(Error::io(format!("stat {}", path.display())))?.len();
    // The largest offset whose next line holds at most `size` records; that line is it.
    let at_most = |at: u64| -> Result<Option<StoredCheckpoint>> {
        Ok(line_at_or_after(&f, at, len)?.map(|(_, _, cp)| cp).filter(|cp| cp.checkpoint.size <= size))
    };
    let Some(mut best) = at_most(0)? else { return Ok(None) };
    let (mut lo, mut hi) = (0u64, len);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match at_most(mid)? {
            Some(cp) => {
                best = cp;
                lo = mid;
            }
            None => hi = mid,
        }
    }
    Ok(Some(best))
}

/// Every checkpoint, oldest first, one at a time (scrub, exports).
pub fn each(dir: &Path, mut f: impl FnMut(StoredCheckpoint) -> Result<()>) -> Result<()> {
    let path = dir.join(FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Io { context: format!("open {}", path.display()), source: e }),
    };
    let mut r = BufReader::new(file);
    let mut line = Vec::new();
    let mut at = 0u64;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).map_err(Error::io(format!("read {}", path.display())))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        line.pop();
        let cp = StoredCheckpoint::parse_line(&line).ok_or_else(|| Error::Corrupt(format!("{FILE}: the line at byte {at} is damaged")))?;
        f(cp)?;
        at += n as u64;
    }
}
