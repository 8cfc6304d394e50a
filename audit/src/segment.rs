//! Segment files: a header, then 8-byte-aligned frames each holding one leaf.
//!
//! ```text
//! header (96 bytes, integers big-endian)
//!      0    8 magic            "LLAUDIT1"
//!      8    2 format version   1
//!     10    2 reserved         0
//!     12    4 segment number   1, 2, 3, … (file name seg-<number, 8 digits>.log)
//!     16   16 log id           the same in every segment of a log
//!     32    8 first seq        seq of the first frame in this segment
//!     40   32 prev leaf hash   leaf hash of record first_seq-1 (zeros for segment 1)
//!     72   16 salt             random per segment; mixed into every frame CRC
//!     88    4 header crc       CRC32C of bytes 0..88
//!     92    4 zero
//!
//! frame
//!      0    4 leaf length n    u32 big-endian
//!      4    4 crc              CRC32C(salt || length field || leaf)
//!      8    n leaf             see `leaf`
//!    8+n    p zero padding     so the frame ends on a multiple of 8
//! ```
//!
//! The salt makes a frame copied from another segment, or stale bytes from an earlier
//! file, fail its CRC.

use crate::error::{Error, Result};
use crate::leaf::{LEAF_HEADER_LEN, MAX_PAYLOAD};
use crate::merkle::Hash;

pub const MAGIC: &[u8; 8] = b"LLAUDIT1";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 96;
pub const FRAME_HEADER_LEN: usize = 8;
pub const MAX_LEAF: usize = LEAF_HEADER_LEN + MAX_PAYLOAD;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub number: u32,
    pub log_id: [u8; 16],
    pub first_seq: u64,
    pub prev_leaf: Hash,
    pub salt: [u8; 16],
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        b[12..16].copy_from_slice(&self.number.to_be_bytes());
        b[16..32].copy_from_slice(&self.log_id);
        b[32..40].copy_from_slice(&self.first_seq.to_be_bytes());
        b[40..72].copy_from_slice(&self.prev_leaf);
        b[72..88].copy_from_slice(&self.salt);
        let crc = crc32c::crc32c(&b[..88]);
        b[88..92].copy_from_slice(&crc.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < HEADER_LEN {
            return Err(Error::Corrupt(format!(
                "segment header is {} bytes, expected {HEADER_LEN}",
                b.len()
            )));
        }
        if &b[0..8] != MAGIC {
            return Err(Error::Corrupt(
                "segment does not start with the LLAUDIT1 magic".into(),
            ));
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "segment format version {version} is not supported"
            )));
        }
        let crc = u32::from_be_bytes(b[88..92].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[..88]) {
            return Err(Error::Corrupt("segment header CRC does not match".into()));
        }
        Ok(Self {
            number: u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
            log_id: b[16..32].try_into().expect("16 bytes"),
            first_seq: u64::from_be_bytes(b[32..40].try_into().expect("8 bytes")),
            prev_leaf: b[40..72].try_into().expect("32 bytes"),
            salt: b[72..88].try_into().expect("16 bytes"),
        })
    }
}

pub fn file_name(number: u32) -> String {
    format!("seg-{number:08}.log")
}

pub fn parse_file_name(name: &str) -> Option<u32> {
    let n = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    (n.len() == 8 && n.bytes().all(|c| c.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

fn frame_crc(salt: &[u8; 16], len_field: &[u8; 4], leaf: &[u8]) -> u32 {
    let c = crc32c::crc32c(salt);
    let c = crc32c::crc32c_append(c, len_field);
    crc32c::crc32c_append(c, leaf)
}

pub fn padded_len(leaf_len: usize) -> usize {
    (FRAME_HEADER_LEN + leaf_len).div_ceil(8) * 8
}

pub fn encode_frame(salt: &[u8; 16], leaf: &[u8], out: &mut Vec<u8>) {
    let len_field = (leaf.len() as u32).to_be_bytes();
    out.extend_from_slice(&len_field);
    out.extend_from_slice(&frame_crc(salt, &len_field, leaf).to_be_bytes());
    out.extend_from_slice(leaf);
    let pad = padded_len(leaf.len()) - FRAME_HEADER_LEN - leaf.len();
    out.extend_from_slice(&[0u8; 8][..pad]);
}

/// Reads the frame at `offset` in a segment's bytes. `Ok(None)` at a clean end of file.
pub fn read_frame<'a>(
    salt: &[u8; 16],
    bytes: &'a [u8],
    offset: usize,
) -> Result<Option<&'a [u8]>, String> {
    if offset == bytes.len() {
        return Ok(None);
    }
    if bytes.len() - offset < FRAME_HEADER_LEN {
        return Err(format!(
            "{} stray bytes where a frame header should be",
            bytes.len() - offset
        ));
    }
    let len_field: [u8; 4] = bytes[offset..offset + 4].try_into().expect("4 bytes");
    let len = u32::from_be_bytes(len_field) as usize;
    if !(LEAF_HEADER_LEN..=MAX_LEAF).contains(&len) {
        return Err(format!("frame length {len} is out of bounds"));
    }
    let end = offset + padded_len(len);
    if end > bytes.len() {
        return Err(format!(
            "frame of {len} bytes runs past the end of the file"
        ));
    }
    let crc = u32::from_be_bytes(bytes[offset + 4..offset + 8].try_into().expect("4 bytes"));
    let leaf = &bytes[offset + FRAME_HEADER_LEN..offset + FRAME_HEADER_LEN + len];
    if crc != frame_crc(salt, &len_field, leaf) {
        return Err("frame CRC does not match".into());
    }
    if bytes[offset + FRAME_HEADER_LEN + len..end]
        .iter()
        .any(|b| *b != 0)
    {
        return Err("frame padding is not zero".into());
    }
    Ok(Some(leaf))
}

/// True when any 8-aligned offset at or after `from` holds a frame whose CRC checks:
/// the sign that damage is followed by real records, not a torn tail.
pub fn any_valid_frame_after(salt: &[u8; 16], bytes: &[u8], from: usize) -> bool {
    let mut o = from.div_ceil(8) * 8;
    while o + FRAME_HEADER_LEN <= bytes.len() {
        if matches!(read_frame(salt, bytes, o), Ok(Some(_))) {
            return true;
        }
        o += 8;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = SegmentHeader {
            number: 3,
            log_id: [1; 16],
            first_seq: 99,
            prev_leaf: [2; 32],
            salt: [3; 16],
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        b[40] ^= 1;
        assert!(SegmentHeader::decode(&b).is_err());
    }

    #[test]
    fn frames_are_aligned_and_checked() {
        let salt = [5; 16];
        let leaf = vec![7u8; LEAF_HEADER_LEN + 3];
        let mut b = Vec::new();
        encode_frame(&salt, &leaf, &mut b);
        assert_eq!(b.len() % 8, 0);
        assert_eq!(read_frame(&salt, &b, 0).unwrap(), Some(&leaf[..]));
        assert_eq!(read_frame(&salt, &b, b.len()).unwrap(), None);
        assert!(
            read_frame(&[6; 16], &b, 0).is_err(),
            "another segment's salt"
        );
        let mut flipped = b.clone();
        flipped[20] ^= 1;
        assert!(read_frame(&salt, &flipped, 0).is_err());
        for cut in 1..b.len() {
            assert!(read_frame(&salt, &b[..cut], 0).is_err(), "cut at {cut}");
        }
        assert!(any_valid_frame_after(
            &salt,
            &[vec![0; 8], b.clone()].concat(),
            1
        ));
        assert!(!any_valid_frame_after(&salt, &b[..b.len() - 1], 0));
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    proptest::proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), off in 0usize..300) {
            let off = off.min(bytes.len());
            let _ = read_frame(&[0; 16], &bytes, off);
            let _ = SegmentHeader::decode(&bytes);
            let _ = any_valid_frame_after(&[0; 16], &bytes, off);
        }
    }
}
