//! The auditors' secondary index: which records name an actor, an action, a resource or
//! a tenant, and where a time range starts, per segment.
//!
//! Each sealed segment gets a `seg-<n>.terms` file, written once the segment is sealed
//! (and rebuilt from it whenever it is missing or damaged); the open segment's index is
//! kept in memory and caught up from the log when a query reaches it. The index only
//! narrows where to look: every record it points to is read back from the segments
//! (checked against the tree) and tested against the filter again, so a wrong index can
//! hide nothing it does not also fail to find, and can never add a record.
//!
//! ```text
//! seg-<n>.terms (integers big-endian)
//!   "LLTERMS2" | number u32 | count u32 | first_seq u64 | min_ts i64 | max_ts i64
//!   | samples u32 | kinds u32 | terms u32 | header crc32c u32
//!   ts of every 256th record: samples × i64
//!   event kinds (few; matched by prefix), sorted:
//!       len u16 | kind | postings u32 | bytes u32 | offset u64 | crc32c u32
//!   crc32c u32 of the samples and kinds
//!   other terms (many), sorted by a 64-bit FNV-1a hash of the term, 32 bytes each:
//!       hash u64 | postings u32 | bytes u32 | offset u64 | crc32c u32 of the first 28
//!   postings: record offsets in the segment, delta-coded as LEB128 varints, each
//!       list checked by the crc32c in its entry
//! ```
//!
//! Terms: `a:<principal>`, `k:<event kind>`, `r:<resource name>`, `t:<tenant>` (the
//! actor's and the resource's). Terms other than kinds are looked up by hash with a
//! binary search in the file, so a segment's index costs a few reads however many
//! distinct actors and resources it names; two terms sharing a hash share their
//! postings, which only adds candidates that the filter then drops.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::leaf::{LeafView, RecordType};
use crate::package::RecordFilter;

/// Every this many records, the index keeps a timestamp.
pub const SAMPLE: u64 = 256;
const MAGIC: &[u8; 8] = b"LLTERMS2";
/// The error a damaged postings list gives; the index is then rebuilt.
pub const DAMAGED: &str = "a search index is damaged";
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + 4;
const ENTRY_LEN: usize = 32;

/// FNV-1a, 64 bits: a stable hash of a term for the on-disk table.
fn term_hash(term: &str) -> u64 {
    term.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

pub fn file_name(number: u32) -> String {
    format!("seg-{number:08}.terms")
}

#[derive(serde::Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    actor: Option<Party<'a>>,
    #[serde(borrow)]
    resource: Option<Party<'a>>,
}

#[derive(serde::Deserialize)]
struct Party<'a> {
    #[serde(borrow)]
    principal: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tenant: Option<std::borrow::Cow<'a, str>>,
}

/// The terms a record is found by (events only; other records carry no actor).
pub fn terms_of(view: &LeafView<'_>, mut each: impl FnMut(String)) {
    if view.record_type != RecordType::Event {
        return;
    }
    let Ok(p) = serde_json::from_slice::<Payload<'_>>(view.payload) else { return };
    if let Some(k) = p.kind {
        each(format!("k:{k}"));
    }
    let mut tenants: Vec<&str> = Vec::new();
    if let Some(a) = &p.actor {
        if let Some(id) = &a.principal {
            each(format!("a:{id}"));
        }
        tenants.extend(a.tenant.as_deref());
    }
    if let Some(r) = &p.resource {
        if let Some(n) = &r.name {
            each(format!("r:{n}"));
        }
        tenants.extend(r.tenant.as_deref());
    }
    tenants.dedup();
    for t in tenants {
        each(format!("t:{t}"));
    }
}

/// The index of one segment as it is built, record by record.
#[derive(Clone, Debug, Default)]
pub struct Builder {
    first_seq: u64,
    count: u32,
    min_ts: i64,
    max_ts: i64,
    samples: Vec<i64>,
    postings: HashMap<String, Vec<u32>>,
}

impl Builder {
    pub fn new(first_seq: u64) -> Builder {
        Builder { first_seq, min_ts: i64::MAX, max_ts: i64::MIN, ..Default::default() }
    }

    /// The next seq this index expects.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.count as u64
    }

    pub fn add(&mut self, view: &LeafView<'_>) {
        let at = self.count;
        if (at as u64).is_multiple_of(SAMPLE) {
            self.samples.push(view.ts_unix_ns);
        }
        self.min_ts = self.min_ts.min(view.ts_unix_ns);
        self.max_ts = self.max_ts.max(view.ts_unix_ns);
        terms_of(view, |t| {
            let list = self.postings.entry(t).or_default();
            if list.last() != Some(&at) {
                list.push(at);
            }
        });
        self.count += 1;
    }

    /// Writes the index of a sealed segment (to a temporary name, then renamed: a crash
    /// leaves either no index or a whole one; either way it is derived and rebuilt).
    pub fn write(&self, dir: &Path, number: u32) -> Result<()> {
        let mut kinds: Vec<(&String, &Vec<u32>)> = self.postings.iter().filter(|(t, _)| t.starts_with("k:")).collect();
        kinds.sort();
        let mut hashed: Vec<(u64, &Vec<u32>)> = self.postings.iter().filter(|(t, _)| !t.starts_with("k:")).map(|(t, l)| (term_hash(t), l)).collect();
        hashed.sort_by_key(|(h, _)| *h);
        let mut body = Vec::new();
        for ts in &self.samples {
            body.extend_from_slice(&ts.to_be_bytes());
        }
        let kinds_len: usize = kinds.iter().map(|(t, _)| 2 + t.len().min(u16::MAX as usize) + 20).sum();
        let mut offset = (HEADER_LEN + body.len() + kinds_len + 4 + hashed.len() * ENTRY_LEN) as u64;
        let mut blobs = Vec::new();
        let mut entry = |list: &Vec<u32>, blobs: &mut Vec<u8>| -> [u8; 20] {
            let blob = encode_postings(list);
            let mut e = [0u8; 20];
            e[0..4].copy_from_slice(&(list.len() as u32).to_be_bytes());
            e[4..8].copy_from_slice(&(blob.len() as u32).to_be_bytes());
            e[8..16].copy_from_slice(&offset.to_be_bytes());
            e[16..20].copy_from_slice(&crc32c::crc32c(&blob).to_be_bytes());
            offset += blob.len() as u64;
            blobs.extend_from_slice(&blob);
            e
        };
        for (term, list) in &kinds {
            let t = &term.as_bytes()[..term.len().min(u16::MAX as usize)];
            body.extend_from_slice(&(t.len() as u16).to_be_bytes());
            body.extend_from_slice(t);
            body.extend_from_slice(&entry(list, &mut blobs));
        }
        let body_crc = crc32c::crc32c(&body);
        body.extend_from_slice(&body_crc.to_be_bytes());
        for (hash, list) in &hashed {
            let mut e = [0u8; ENTRY_LEN];
            e[0..8].copy_from_slice(&hash.to_be_bytes());
            e[8..28].copy_from_slice(&entry(list, &mut blobs));
            let crc = crc32c::crc32c(&e[..28]);
            e[28..32].copy_from_slice(&crc.to_be_bytes());
            body.extend_from_slice(&e);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + blobs.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&number.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.min_ts.to_be_bytes());
        out.extend_from_slice(&self.max_ts.to_be_bytes());
        out.extend_from_slice(&(self.samples.len() as u32).to_be_bytes());
        out.extend_from_slice(&(kinds.len() as u32).to_be_bytes());
        out.extend_from_slice(&(hashed.len() as u32).to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&blobs);
        let path = dir.join(file_name(number));
        let tmp = dir.join(format!("{}.tmp", file_name(number)));
        std::fs::write(&tmp, &out).map_err(Error::io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(format!("rename {}", tmp.display())))
    }
}

impl Index for Builder {
    fn postings(&self, term: &str) -> Result<Vec<u32>> {
        Ok(self.postings.get(term).cloned().unwrap_or_default())
    }

    fn terms_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.postings.keys().filter(|t| t.starts_with(prefix)).cloned().collect()
    }

    fn time_range(&self, since: Option<i64>, until: Option<i64>) -> (u64, u64) {
        time_range(self.count as u64, self.min_ts, self.max_ts, &self.samples, since, until)
    }
}

fn encode_postings(list: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    let mut prev = 0u32;
    for (i, &v) in list.iter().enumerate() {
        let mut d = if i == 0 { v } else { v - prev };
        prev = v;
        loop {
            let b = (d & 0x7f) as u8;
            d >>= 7;
            if d == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    out
}

fn decode_postings(bytes: &[u8], n: usize) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    let mut prev = 0u32;
    while out.len() < n {
        let mut d = 0u32;
        let mut shift = 0;
        loop {
            let b = *bytes.get(at)?;
            at += 1;
            d |= ((b & 0x7f) as u32).checked_shl(shift)?;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
        let v = if out.is_empty() { d } else { prev.checked_add(d)? };
        out.push(v);
        prev = v;
    }
    (at == bytes.len()).then_some(out)
}

/// What a query needs of a segment's index, sealed (on disk) or open (in memory).
pub trait Index {
    /// The offsets in the segment of the records carrying `term`, in order.
    fn postings(&self, term: &str) -> Result<Vec<u32>>;
    fn terms_with_prefix(&self, prefix: &str) -> Vec<String>;
    /// The offsets `[lo, hi)` in the segment that can hold records in `[since, until)`.
    fn time_range(&self, since: Option<i64>, until: Option<i64>) -> (u64, u64);
}

#[derive(Clone, Copy, Debug)]
struct Postings {
    n: u32,
    len: u32,
    offset: u64,
    crc: u32,
}

impl Postings {
    fn parse(e: &[u8]) -> Postings {
        Postings { n: be_u32(e, 0), len: be_u32(e, 4), offset: be_u64(e, 8), crc: be_u32(e, 16) }
    }
}

/// A sealed segment's index: its samples and event kinds in memory, other terms looked
/// up in the file.
#[derive(Debug)]
pub struct Terms {
    pub first_seq: u64,
    pub count: u64,
    min_ts: i64,
    max_ts: i64,
    samples: Vec<i64>,
    kinds: BTreeMap<String, Postings>,
    /// Where the hashed table starts, and its entries.
    table_at: u64,
    table_len: u64,
    file: File,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Terms {
    /// Loads a sealed segment's index; `None` when it is missing, damaged or not the
    /// index of this segment (then it is rebuilt from the segment).
    pub fn load(dir: &Path, number: u32, first_seq: u64) -> Option<Terms> {
        let file = File::open(dir.join(file_name(number))).ok()?;
        let len = file.metadata().ok()?.len();
        let mut head = [0u8; HEADER_LEN];
        file.read_exact_at(&mut head, 0).ok()?;
        if &head[0..8] != MAGIC || be_u32(&head, HEADER_LEN - 4) != crc32c::crc32c(&head[..HEADER_LEN - 4]) || be_u32(&head, 8) != number || be_u64(&head, 16) != first_seq {
            return None;
        }
        let count = be_u32(&head, 12) as u64;
        let min_ts = be_u64(&head, 24) as i64;
        let max_ts = be_u64(&head, 32) as i64;
        let n_samples = be_u32(&head, 40) as usize;
        let n_kinds = be_u32(&head, 44) as usize;
        let n_terms = be_u32(&head, 48) as u64;
        if n_samples as u64 != count.div_ceil(SAMPLE) || (n_kinds as u64).saturating_add(n_terms).saturating_mul(20) > len {
            return None;
        }
        // The samples and the kinds, read in one piece and checked as one.
        let mut body = vec![0u8; n_samples * 8];
        file.read_exact_at(&mut body, HEADER_LEN as u64).ok()?;
        let samples: Vec<i64> = (0..n_samples).map(|i| be_u64(&body, i * 8) as i64).collect();
        let mut at = (HEADER_LEN + body.len()) as u64;
        let mut crc = crc32c::crc32c(&body);
        let mut kinds = BTreeMap::new();
        let mut fixed = [0u8; 20];
        for _ in 0..n_kinds {
            let mut l = [0u8; 2];
            file.read_exact_at(&mut l, at).ok()?;
            let tl = u16::from_be_bytes(l) as usize;
            let mut term = vec![0u8; tl];
            file.read_exact_at(&mut term, at + 2).ok()?;
            file.read_exact_at(&mut fixed, at + 2 + tl as u64).ok()?;
            crc = crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c_append(crc, &l), &term), &fixed);
            at += 2 + tl as u64 + 20;
            kinds.insert(String::from_utf8(term).ok()?, Postings::parse(&fixed));
        }
        let mut stored = [0u8; 4];
        file.read_exact_at(&mut stored, at).ok()?;
        if u32::from_be_bytes(stored) != crc {
            return None;
        }
        let table_at = at + 4;
        if table_at + n_terms * ENTRY_LEN as u64 > len {
            return None;
        }
        Some(Terms { first_seq, count, min_ts, max_ts, samples, kinds, table_at, table_len: n_terms, file })
    }

    fn read_postings(&self, p: Postings) -> Result<Vec<u32>> {
        let mut b = vec![0u8; p.len as usize];
        self.file.read_exact_at(&mut b, p.offset).map_err(Error::io("read a search index"))?;
        if crc32c::crc32c(&b) != p.crc {
            return Err(Error::Corrupt(DAMAGED.into()));
        }
        decode_postings(&b, p.n as usize).ok_or_else(|| Error::Corrupt(DAMAGED.into()))
    }

    fn entry(&self, i: u64) -> Result<(u64, Postings)> {
        let mut e = [0u8; ENTRY_LEN];
        self.file.read_exact_at(&mut e, self.table_at + i * ENTRY_LEN as u64).map_err(Error::io("read a search index"))?;
        if crc32c::crc32c(&e[..28]) != be_u32(&e, 28) {
            return Err(Error::Corrupt(DAMAGED.into()));
        }
        Ok((be_u64(&e, 0), Postings::parse(&e[8..28])))
    }
}

impl Index for Terms {
    fn postings(&self, term: &str) -> Result<Vec<u32>> {
        if term.starts_with("k:") {
            return self.kinds.get(term).map_or(Ok(Vec::new()), |p| self.read_postings(*p));
        }
        // The first entry with this hash, by binary search in the file.
        let want = term_hash(term);
        let (mut lo, mut hi) = (0u64, self.table_len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 < want {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out: Vec<u32> = Vec::new();
        let mut merged = false;
        while lo < self.table_len {
            let (hash, p) = self.entry(lo)?;
            if hash != want {
                break;
            }
            merged |= !out.is_empty();
            out.extend(self.read_postings(p)?);
            lo += 1;
        }
        if merged {
            out.sort_unstable();
            out.dedup();
        }
        Ok(out)
    }

    fn terms_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.kinds.range(prefix.to_string()..).map(|(t, _)| t).take_while(|t| t.starts_with(prefix)).cloned().collect()
    }

    fn time_range(&self, since: Option<i64>, until: Option<i64>) -> (u64, u64) {
        time_range(self.count, self.min_ts, self.max_ts, &self.samples, since, until)
    }
}

/// Offsets in the segment of the records matching every condition of `filter` the index
/// knows (actor, action, resource, tenant), within `[lo, hi)`; `None` when the filter
/// names none of them (every record is a candidate).
pub fn candidates(idx: &dyn Index, filter: &RecordFilter, lo: u64, hi: u64) -> Result<Option<Vec<u32>>> {
    let mut lists: Vec<Vec<u32>> = Vec::new();
    for (prefix, v) in [("a:", &filter.actor), ("r:", &filter.resource), ("t:", &filter.tenant)] {
        if let Some(v) = v {
            lists.push(idx.postings(&format!("{prefix}{v}"))?);
        }
    }
    if let Some(a) = &filter.action {
        if a.ends_with('.') {
            // A prefix of kinds: the union of every kind it covers.
            let mut union: Vec<u32> = Vec::new();
            for term in idx.terms_with_prefix(&format!("k:{a}")) {
                union.extend(idx.postings(&term)?);
            }
            union.sort_unstable();
            union.dedup();
            lists.push(union);
        } else {
            lists.push(idx.postings(&format!("k:{a}"))?);
        }
    }
    if lists.is_empty() {
        return Ok(None);
    }
    lists.sort_by_key(Vec::len);
    let mut out: Vec<u32> = lists[0].iter().copied().filter(|&o| (o as u64) >= lo && (o as u64) < hi).collect();
    for other in &lists[1..] {
        let mut j = 0;
        out.retain(|&o| {
            while j < other.len() && other[j] < o {
                j += 1;
            }
            j < other.len() && other[j] == o
        });
    }
    Ok(Some(out))
}

/// The offsets `[lo, hi)` of a segment that can hold records in `[since, until)`:
/// timestamps never decrease along the log, and every `SAMPLE`th one is kept.
fn time_range(count: u64, min_ts: i64, max_ts: i64, samples: &[i64], since: Option<i64>, until: Option<i64>) -> (u64, u64) {
    if count == 0 || since.is_some_and(|s| max_ts < s) || until.is_some_and(|u| min_ts >= u) {
        return (0, 0);
    }
    // From the stretch of the last sample before `since`, to the first sample at or
    // after `until`.
    let lo = since.map_or(0, |s| samples.partition_point(|&t| t < s).saturating_sub(1) as u64 * SAMPLE);
    let hi = until.map_or(count, |u| (samples.partition_point(|&t| t < u) as u64 * SAMPLE).min(count));
    (lo, hi.max(lo))
}

/// Builds a sealed segment's index from its frames.
pub fn build_from_segment(bytes: &[u8], first_seq: u64) -> Result<Builder> {
    let header = crate::segment::SegmentHeader::decode(bytes)?;
    let mut b = Builder::new(first_seq);
    let mut at = crate::segment::HEADER_LEN;
    while let Ok(Some(leaf)) = crate::segment::read_frame(&header.salt, bytes, at) {
        b.add(&crate::leaf::decode(leaf)?);
        at += crate::segment::padded_len(leaf.len());
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_round_trip() {
        for list in [vec![], vec![0], vec![5, 6, 7, 300, 70_000, 70_001, u32::MAX]] {
            let e = encode_postings(&list);
            assert_eq!(decode_postings(&e, list.len()), Some(list));
        }
        assert_eq!(decode_postings(&[0x80], 1), None, "a cut varint");
    }
}
