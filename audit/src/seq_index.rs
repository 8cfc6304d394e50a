//! The seq → location index of one segment: where each record's frame starts in the
//! segment's (uncompressed) bytes, so reading record N costs one lookup and one read.
//!
//! ```text
//! seg-<number>.idx
//!      0    8 magic        "LLAUDIX1"
//!      8    4 segment number
//!     12    4 zero
//!     16    8 first seq
//!     24  4·n offsets      u32 big-endian, the frame offset of record first_seq + i
//! ```
//!
//! Derived from the segment: written as records are appended (not synced), rebuilt
//! when missing or behind, and never trusted over the segment (a record read through it
//! is checked against the leaf hash the tiles committed to).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"LLAUDIX1";
pub const HEADER_LEN: u64 = 24;

pub fn file_name(number: u32) -> String {
    format!("seg-{number:08}.idx")
}

fn header(number: u32, first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&number.to_be_bytes());
    h[16..24].copy_from_slice(&first_seq.to_be_bytes());
    h
}

/// An index being appended to (the open segment's).
pub struct IndexWriter {
    file: File,
    path: PathBuf,
    count: u64,
}

impl IndexWriter {
    /// Opens the index of `number` for appending, keeping the first `keep` entries (a
    /// fresh file when it is missing, belongs to another segment, or is shorter).
    pub fn open(dir: &Path, number: u32, first_seq: u64, keep: u64) -> Result<IndexWriter> {
        let path = dir.join(file_name(number));
        let valid = read_header(&path).ok().flatten() == Some((number, first_seq)) && entries(&path)? >= keep;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io(format!("open {}", path.display())))?;
        let count = if valid { keep } else { 0 };
        if !valid {
            file.set_len(0).map_err(Error::io(format!("truncate {}", path.display())))?;
            file.write_all_at(&header(number, first_seq), 0).map_err(Error::io(format!("write {}", path.display())))?;
        }
        file.set_len(HEADER_LEN + 4 * count).map_err(Error::io(format!("truncate {}", path.display())))?;
        Ok(IndexWriter { file, path, count })
    }

    /// Entries held.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends the offsets of the next records.
    pub fn append(&mut self, offsets: &[u32]) -> Result<()> {
        let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_be_bytes()).collect();
        self.file
            .write_all_at(&bytes, HEADER_LEN + 4 * self.count)
            .map_err(Error::io(format!("write {}", self.path.display())))?;
        self.count += offsets.len() as u64;
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(Error::io(format!("fsync {}", self.path.display())))
    }
}

/// Reads an index file's header: `(segment number, first seq)`; `None` when missing.
pub fn read_header(path: &Path) -> Result<Option<(u32, u64)>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { context: format!("open {}", path.display()), source: e }),
    };
    let mut h = [0u8; HEADER_LEN as usize];
    if f.read_exact_at(&mut h, 0).is_err() || &h[0..8] != MAGIC {
        return Ok(None);
    }
    Ok(Some((u32::from_be_bytes(h[8..12].try_into().expect("4 bytes")), u64::from_be_bytes(h[16..24].try_into().expect("8 bytes")))))
}

/// Entries in an index file (0 when missing).
pub fn entries(path: &Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len().saturating_sub(HEADER_LEN) / 4),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::Io { context: format!("stat {}", path.display()), source: e }),
    }
}

/// Reads the offsets of entries `[from, from + n)`; `None` when the index does not hold
/// them (missing, another segment's, or behind).
pub fn read(dir: &Path, number: u32, first_seq: u64, from: u64, n: u64) -> Result<Option<Vec<u32>>> {
    let path = dir.join(file_name(number));
    if read_header(&path)? != Some((number, first_seq)) || entries(&path)? < from + n {
        return Ok(None);
    }
    let f = File::open(&path).map_err(Error::io(format!("open {}", path.display())))?;
    let mut bytes = vec![0u8; 4 * n as usize];
    f.read_exact_at(&mut bytes, HEADER_LEN + 4 * from).map_err(Error::io(format!("read {}", path.display())))?;
    Ok(Some(bytes.chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))).collect()))
}

/// Writes a whole index (rebuilt from its segment) and syncs it.
pub fn write_whole(dir: &Path, number: u32, first_seq: u64, offsets: &[u32]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    let path = dir.join(file_name(number));
    let tmp = path.with_extension("idx.tmp");
    let mut f = File::create(&tmp).map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(&header(number, first_seq))
        .and_then(|_| f.write_all(&offsets.iter().flat_map(|o| o.to_be_bytes()).collect::<Vec<u8>>()))
        .and_then(|_| f.sync_all())
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(format!("rename {} into place", tmp.display())))
}
