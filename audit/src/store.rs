//! The segment files as the ledger reads them: the open segment and freshly sealed ones
//! as written (`seg-<n>.log`), older ones compressed (`seg-<n>.zst`) once a checkpoint
//! covers them. Both give the same bytes: a compressed segment holds the exact bytes of
//! the written one, so every frame CRC, chain link and leaf hash is checked the same way.
//!
//! ```text
//! seg-<number>.zst
//!      0    8 magic            "LLAUDZ01"
//!      8    4 segment number
//!     12    4 block size       uncompressed bytes per block (the last may be shorter)
//!     16    8 raw length       bytes of the segment as written
//!     24    8 first seq
//!     32    4 block count
//!     36    4 table crc        CRC32C of the block table
//!     40    4 header crc       CRC32C of bytes 0..40
//!     44    4 zero
//!     48 16·b block table      per block: u64 file offset, u32 compressed length,
//!                              u32 CRC32C of the uncompressed block
//!      …      blocks           each a zstd frame
//! ```
//!
//! Blocks keep a single record read cheap: it decompresses one block.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::segment::{self, FRAME_HEADER_LEN, HEADER_LEN, MAX_LEAF, SegmentHeader};

pub const MAGIC: &[u8; 8] = b"LLAUDZ01";
const ZHEADER_LEN: u64 = 48;
/// Uncompressed bytes per block: one record read decompresses at most this much.
pub const BLOCK_SIZE: usize = 128 << 10;
/// zstd level for sealed segments. On request records level 3 gives output within 4% of
/// level 6's in a third of the time, so sealing takes little CPU from a busy server.
const LEVEL: i32 = 3;

pub fn compressed_name(number: u32) -> String {
    format!("seg-{number:08}.zst")
}

pub fn parse_compressed_name(name: &str) -> Option<u32> {
    let n = name.strip_prefix("seg-")?.strip_suffix(".zst")?;
    (n.len() == 8 && n.bytes().all(|c| c.is_ascii_digit())).then(|| n.parse().ok()).flatten()
}

/// What stays on the node of a sealed segment whose local copy was dropped once it was
/// archived: enough to list it, read its header, and check the copy fetched back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    pub header: SegmentHeader,
    /// SHA-256 and length of the `.zst` file as archived.
    pub sha256: [u8; 32],
    pub len: u64,
}

pub fn stub_name(number: u32) -> String {
    format!("seg-{number:08}.archived")
}

fn parse_stub_name(name: &str) -> Option<u32> {
    let n = name.strip_prefix("seg-")?.strip_suffix(".archived")?;
    (n.len() == 8 && n.bytes().all(|c| c.is_ascii_digit())).then(|| n.parse().ok()).flatten()
}

impl Stub {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut o = crate::event::Obj::new();
        o.str("header", &hex::encode(self.header.encode())).str("sha256", &hex::encode(self.sha256)).u64("bytes", self.len);
        let path = dir.join(stub_name(self.header.number));
        let tmp = path.with_extension("archived.tmp");
        let mut f = File::create(&tmp).map_err(Error::io(format!("create {}", tmp.display())))?;
        f.write_all(o.finish().as_bytes()).and_then(|_| f.sync_all()).map_err(Error::io(format!("write {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(Error::io(format!("rename {}", tmp.display())))?;
        crate::ledger::sync_dir(dir)
    }

    pub fn read(dir: &Path, number: u32) -> Result<Option<Stub>> {
        let path = dir.join(stub_name(number));
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io { context: format!("read {}", path.display()), source: e }),
        };
        let bad = || Error::Corrupt(format!("{} is damaged", path.display()));
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(|_| bad())?;
        let header = hex::decode(v["header"].as_str().unwrap_or_default()).ok().and_then(|b| SegmentHeader::decode(&b).ok()).ok_or_else(bad)?;
        let sha256 = hex::decode(v["sha256"].as_str().unwrap_or_default()).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        Ok(Some(Stub { header, sha256, len: v["bytes"].as_u64().ok_or_else(bad)? }))
    }
}

/// Opens a segment; one that was moved to the archive is fetched back first, checked
/// against its stub, and kept locally again (a later archive pass drops it again).
pub fn open_or_fetch(dir: &Path, number: u32, stored: Stored, archive: Option<&dyn crate::archive::ArchiveStore>) -> Result<SegmentFile> {
    let missing = match SegmentFile::open(dir, number, stored) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    let Some(stub) = Stub::read(dir, number)? else { return Err(missing) };
    let name = compressed_name(number);
    let archive = archive.ok_or_else(|| Error::Unavailable(format!("segment {number} was moved to the audit archive, and no archive is configured")))?;
    let bytes = archive.get(&name)?.ok_or_else(|| Error::Corrupt(format!("the audit archive has no {name}")))?;
    if bytes.len() as u64 != stub.len || <sha2::Sha256 as sha2::Digest>::digest(&bytes)[..] != stub.sha256 {
        return Err(Error::Corrupt(format!("the audit archive's {name} is not the copy this node archived")));
    }
    let path = dir.join(&name);
    let tmp = path.with_extension("zst.tmp");
    let mut f = File::create(&tmp).map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(Error::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(Error::io(format!("rename {}", tmp.display())))?;
    SegmentFile::open(dir, number, Stored::Compressed)
}

/// How a segment is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Raw,
    Compressed,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    offset: u64,
    len: u32,
    crc: u32,
}

/// A compressed segment's header and block table.
#[derive(Clone, Debug)]
struct Table {
    number: u32,
    block_size: usize,
    raw_len: u64,
    first_seq: u64,
    blocks: Vec<Block>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_table(f: &File, name: &str) -> Result<Table> {
    let mut h = [0u8; ZHEADER_LEN as usize];
    f.read_exact_at(&mut h, 0).map_err(Error::io(format!("read {name}")))?;
    if &h[0..8] != MAGIC || u32_at(&h, 40) != crc32c::crc32c(&h[..40]) {
        return Err(Error::Corrupt(format!("{name}: not a compressed segment, or its header is damaged")));
    }
    let count = u32_at(&h, 32) as usize;
    let block_size = u32_at(&h, 12) as usize;
    let raw_len = u64_at(&h, 16);
    if block_size == 0 || count as u64 != raw_len.div_ceil(block_size as u64) {
        return Err(Error::Corrupt(format!("{name}: the block table does not fit the segment's length")));
    }
    let mut t = vec![0u8; 16 * count];
    f.read_exact_at(&mut t, ZHEADER_LEN).map_err(Error::io(format!("read {name}")))?;
    if crc32c::crc32c(&t) != u32_at(&h, 36) {
        return Err(Error::Corrupt(format!("{name}: the block table is damaged")));
    }
    let blocks = t.chunks_exact(16).map(|c| Block { offset: u64_at(c, 0), len: u32_at(c, 8), crc: u32_at(c, 12) }).collect();
    Ok(Table { number: u32_at(&h, 8), block_size, raw_len, first_seq: u64_at(&h, 24), blocks })
}

/// Compresses the sealed segment `number` into `seg-<n>.zst` (written whole and synced,
/// then checked by reading it back), then removes the written form. Returns the bytes
/// before and after.
pub fn compress(dir: &Path, number: u32) -> Result<(u64, u64)> {
    let raw_path = dir.join(segment::file_name(number));
    let raw = fs::read(&raw_path).map_err(Error::io(format!("read {}", raw_path.display())))?;
    let header = SegmentHeader::decode(&raw).map_err(|e| Error::Corrupt(format!("{}: {e}", raw_path.display())))?;
    let mut blocks = Vec::new();
    let mut body = Vec::with_capacity(raw.len() / 4);
    let table_len = 16 * raw.len().div_ceil(BLOCK_SIZE) as u64;
    for chunk in raw.chunks(BLOCK_SIZE) {
        let z = zstd::bulk::compress(chunk, LEVEL).map_err(Error::io("compress a segment block"))?;
        blocks.push(Block { offset: ZHEADER_LEN + table_len + body.len() as u64, len: z.len() as u32, crc: crc32c::crc32c(chunk) });
        body.extend_from_slice(&z);
    }
    let table: Vec<u8> = blocks
        .iter()
        .flat_map(|b| b.offset.to_be_bytes().into_iter().chain(b.len.to_be_bytes()).chain(b.crc.to_be_bytes()))
        .collect();
    let mut h = [0u8; ZHEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&number.to_be_bytes());
    h[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    h[16..24].copy_from_slice(&(raw.len() as u64).to_be_bytes());
    h[24..32].copy_from_slice(&header.first_seq.to_be_bytes());
    h[32..36].copy_from_slice(&(blocks.len() as u32).to_be_bytes());
    h[36..40].copy_from_slice(&crc32c::crc32c(&table).to_be_bytes());
    let crc = crc32c::crc32c(&h[..40]);
    h[40..44].copy_from_slice(&crc.to_be_bytes());
    let path = dir.join(compressed_name(number));
    let tmp = path.with_extension("zst.tmp");
    let mut f = File::create(&tmp).map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(&h)
        .and_then(|_| f.write_all(&table))
        .and_then(|_| f.write_all(&body))
        .and_then(|_| f.sync_all())
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(Error::io(format!("rename {} into place", tmp.display())))?;
    crate::ledger::sync_dir(dir)?;
    // Read back before the written form goes: the compressed copy must give its bytes.
    let mut check = SegmentFile::open(dir, number, Stored::Compressed)?;
    if check.read_all()? != raw {
        let _ = fs::remove_file(&path);
        return Err(Error::Corrupt(format!("{}: the compressed copy does not read back the same", path.display())));
    }
    fs::remove_file(&raw_path).map_err(Error::io(format!("remove {}", raw_path.display())))?;
    crate::ledger::sync_dir(dir)?;
    let after = ZHEADER_LEN + table_len + body.len() as u64;
    Ok((raw.len() as u64, after))
}

/// Decompressed blocks recently read, shared by the ledger's readers, bounded.
pub type BlockCache = crate::lru::Lru<(u32, usize), Vec<u8>>;

enum Inner {
    Raw(File),
    Compressed(File, Table),
}

/// Random access to one segment's bytes as written, whichever way it is stored.
pub struct SegmentFile {
    number: u32,
    name: String,
    inner: Inner,
    cache: Option<Arc<Mutex<BlockCache>>>,
}

impl SegmentFile {
    pub fn open(dir: &Path, number: u32, stored: Stored) -> Result<SegmentFile> {
        let name = match stored {
            Stored::Raw => segment::file_name(number),
            Stored::Compressed => compressed_name(number),
        };
        let path = dir.join(&name);
        let f = File::open(&path).map_err(Error::io(format!("open {}", path.display())))?;
        let inner = match stored {
            Stored::Raw => Inner::Raw(f),
            Stored::Compressed => {
                let table = read_table(&f, &name)?;
                if table.number != number {
                    return Err(Error::Corrupt(format!("{name}: holds segment {}", table.number)));
                }
                Inner::Compressed(f, table)
            }
        };
        Ok(SegmentFile { number, name, inner, cache: None })
    }

    /// Shares decompressed blocks through `cache`.
    pub fn with_cache(mut self, cache: Arc<Mutex<BlockCache>>) -> SegmentFile {
        self.cache = Some(cache);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of the segment as written.
    pub fn len(&self) -> Result<u64> {
        match &self.inner {
            Inner::Raw(f) => Ok(f.metadata().map_err(Error::io(format!("stat {}", self.name)))?.len()),
            Inner::Compressed(_, t) => Ok(t.raw_len),
        }
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The first seq a compressed segment's header names (the written form keeps it in
    /// the segment header).
    pub fn first_seq_hint(&self) -> Option<u64> {
        match &self.inner {
            Inner::Compressed(_, t) => Some(t.first_seq),
            Inner::Raw(_) => None,
        }
    }

    fn block(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let Inner::Compressed(f, t) = &self.inner else { unreachable!("only compressed segments have blocks") };
        if let Some(b) = self.cache.as_ref().and_then(|c| c.lock().unwrap_or_else(|e| e.into_inner()).get((self.number, i))) {
            return Ok(b);
        }
        let b = t.blocks[i];
        let mut z = vec![0u8; b.len as usize];
        f.read_exact_at(&mut z, b.offset).map_err(Error::io(format!("read {}", self.name)))?;
        let want = if i + 1 == t.blocks.len() { (t.raw_len - (i * t.block_size) as u64) as usize } else { t.block_size };
        let raw = zstd::bulk::decompress(&z, want).map_err(|e| Error::Corrupt(format!("{}: block {i} does not decompress ({e})", self.name)))?;
        if raw.len() != want || crc32c::crc32c(&raw) != b.crc {
            return Err(Error::Corrupt(format!("{}: block {i} is damaged", self.name)));
        }
        let raw = Arc::new(raw);
        if let Some(c) = &self.cache {
            c.lock().unwrap_or_else(|e| e.into_inner()).put((self.number, i), raw.clone());
        }
        Ok(raw)
    }

    /// `len` bytes at `offset` of the segment as written.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        match &self.inner {
            Inner::Raw(f) => {
                let mut b = vec![0u8; len];
                f.read_exact_at(&mut b, offset).map_err(Error::io(format!("read {} at {offset}", self.name)))?;
                Ok(b)
            }
            Inner::Compressed(_, t) => {
                if offset + len as u64 > t.raw_len {
                    return Err(Error::Corrupt(format!("{}: a read at {offset} runs past its end", self.name)));
                }
                let mut out = Vec::with_capacity(len);
                let mut at = offset;
                while out.len() < len {
                    let i = (at / t.block_size as u64) as usize;
                    let block = self.block(i)?;
                    let start = (at - (i * t.block_size) as u64) as usize;
                    let take = (len - out.len()).min(block.len() - start);
                    out.extend_from_slice(&block[start..start + take]);
                    at += take as u64;
                }
                Ok(out)
            }
        }
    }

    /// The whole segment as written.
    pub fn read_all(&mut self) -> Result<Vec<u8>> {
        match &mut self.inner {
            Inner::Raw(f) => {
                let mut b = Vec::new();
                f.read_to_end(&mut b).map_err(Error::io(format!("read {}", self.name)))?;
                Ok(b)
            }
            Inner::Compressed(_, t) => {
                let len = t.raw_len as usize;
                self.read_at(0, len)
            }
        }
    }

    /// The leaf of the frame at `offset`, its CRC checked against the segment's salt.
    pub fn leaf_at(&self, salt: &[u8; 16], offset: u64) -> Result<Vec<u8>> {
        let head = self.read_at(offset, FRAME_HEADER_LEN)?;
        let len = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_LEAF {
            return Err(Error::Corrupt(format!("{}: the record at {offset} has an impossible length", self.name)));
        }
        let frame = self.read_at(offset, segment::padded_len(len))?;
        match segment::read_frame(salt, &frame, 0) {
            Ok(Some(leaf)) => Ok(leaf.to_vec()),
            Ok(None) => Err(Error::Corrupt(format!("{}: no record at {offset}", self.name))),
            Err(e) => Err(Error::Corrupt(format!("{}: the record at {offset} is damaged ({e})", self.name))),
        }
    }

    /// The segment's header.
    pub fn header(&self) -> Result<SegmentHeader> {
        let b = self.read_at(0, HEADER_LEN)?;
        SegmentHeader::decode(&b).map_err(|e| Error::Corrupt(format!("{}: {e}", self.name)))
    }
}

/// The segments of a directory: `(number, how it is stored)`, in order. A segment found
/// both ways (a compression cut short) counts as written; its compressed copy is removed.
pub fn list(dir: &Path) -> Result<Vec<(u32, Stored, PathBuf)>> {
    list_in(dir, true)
}

/// [`list`] without tidying anything: for directories this process does not own (an
/// archive copy, a log being verified).
pub fn list_read_only(dir: &Path) -> Result<Vec<(u32, Stored, PathBuf)>> {
    list_in(dir, false)
}

fn list_in(dir: &Path, tidy: bool) -> Result<Vec<(u32, Stored, PathBuf)>> {
    let mut raw = Vec::new();
    let mut compressed = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io(format!("list {}", dir.display())))? {
        let entry = entry.map_err(Error::io(format!("list {}", dir.display())))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if let Some(n) = segment::parse_file_name(&name) {
            raw.push(n);
        } else if let Some(n) = parse_compressed_name(&name).or_else(|| parse_stub_name(&name)) {
            // A segment moved to the archive counts as its compressed form; reading it
            // fetches that back (see `open_or_fetch`).
            if !compressed.contains(&n) {
                compressed.push(n);
            }
        } else if tidy && name.ends_with(".zst.tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    let mut out: Vec<(u32, Stored, PathBuf)> = Vec::new();
    for n in &compressed {
        if raw.contains(n) {
            if tidy {
                let _ = fs::remove_file(dir.join(compressed_name(*n)));
            }
        } else {
            out.push((*n, Stored::Compressed, dir.join(compressed_name(*n))));
        }
    }
    out.extend(raw.iter().map(|n| (*n, Stored::Raw, dir.join(segment::file_name(*n)))));
    out.sort_by_key(|(n, _, _)| *n);
    Ok(out)
}
