//! The leaf: the exact bytes that are hashed, chained and stored. Verifiers hash these
//! bytes as they are; nothing is ever re-serialized to be checked.
//!
//! ```text
//! offset size field
//!      0    1 leaf_version   (1)
//!      1    1 record_type    (see RecordType)
//!      2    8 seq            u64 big-endian; the Merkle leaf index
//!     10    8 ts_unix_ns     i64 big-endian; writer's clock, never decreasing
//!     18   32 prev_leaf      leaf hash of record seq-1; 32 zero bytes for seq 0
//!     50    4 payload_len    u32 big-endian
//!     54    n payload        UTF-8 canonical JSON
//! ```

use crate::error::{Error, Result};
use crate::merkle::{Hash, leaf_hash};

pub const LEAF_VERSION: u8 = 1;
pub const LEAF_HEADER_LEN: usize = 54;
/// Upper bound on one payload, so a whole leaf fits the 16-bit length of a C2SP
/// tlog-tiles entry bundle; larger payloads are refused before they reach the writer
/// (events split their largest details into continuation records to fit).
pub const MAX_PAYLOAD: usize = u16::MAX as usize - LEAF_HEADER_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordType {
    /// Record 0: origin, log id and the public key checkpoints are signed with.
    Genesis = 0,
    /// A request's intent or outcome, or another audited action.
    Event = 1,
    /// Startup repaired a torn tail; says what was cut.
    Recovery = 2,
    /// The ledger was opened.
    Startup = 3,
    /// The ledger was closed cleanly.
    Shutdown = 4,
    /// Checkpoints are signed with a new key from here on.
    KeyRotation = 5,
}

impl RecordType {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Genesis,
            1 => Self::Event,
            2 => Self::Recovery,
            3 => Self::Startup,
            4 => Self::Shutdown,
            5 => Self::KeyRotation,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Genesis => "genesis",
            Self::Event => "event",
            Self::Recovery => "recovery",
            Self::Startup => "startup",
            Self::Shutdown => "shutdown",
            Self::KeyRotation => "key_rotation",
        }
    }
}

/// A decoded view of leaf bytes that borrows the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafView<'a> {
    pub record_type: RecordType,
    pub seq: u64,
    pub ts_unix_ns: i64,
    pub prev_leaf: Hash,
    pub payload: &'a [u8],
}

impl LeafView<'_> {
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(self.payload).unwrap_or("")
    }
}

pub fn encode(
    record_type: RecordType,
    seq: u64,
    ts_unix_ns: i64,
    prev_leaf: &Hash,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(LEAF_HEADER_LEN + payload.len());
    out.push(LEAF_VERSION);
    out.push(record_type as u8);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts_unix_ns.to_be_bytes());
    out.extend_from_slice(prev_leaf);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn decode(bytes: &[u8]) -> Result<LeafView<'_>> {
    if bytes.len() < LEAF_HEADER_LEN {
        return Err(Error::Malformed(format!(
            "leaf is {} bytes, shorter than its {LEAF_HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if bytes[0] != LEAF_VERSION {
        return Err(Error::Malformed(format!(
            "unknown leaf version {}",
            bytes[0]
        )));
    }
    let record_type = RecordType::from_u8(bytes[1])
        .ok_or_else(|| Error::Malformed(format!("unknown record type {}", bytes[1])))?;
    let seq = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let ts_unix_ns = i64::from_be_bytes(bytes[10..18].try_into().expect("8 bytes"));
    let prev_leaf: Hash = bytes[18..50].try_into().expect("32 bytes");
    let len = u32::from_be_bytes(bytes[50..54].try_into().expect("4 bytes")) as usize;
    if bytes.len() - LEAF_HEADER_LEN != len {
        return Err(Error::Malformed(format!(
            "payload length field says {len} bytes, leaf holds {}",
            bytes.len() - LEAF_HEADER_LEN
        )));
    }
    let payload = &bytes[LEAF_HEADER_LEN..];
    if std::str::from_utf8(payload).is_err() {
        return Err(Error::Malformed("payload is not UTF-8".into()));
    }
    Ok(LeafView {
        record_type,
        seq,
        ts_unix_ns,
        prev_leaf,
        payload,
    })
}

/// The stored form of one record: its bytes and their leaf hash.
#[derive(Clone, Debug)]
pub struct StoredLeaf {
    pub seq: u64,
    pub bytes: Vec<u8>,
    pub hash: Hash,
}

impl StoredLeaf {
    pub fn new(seq: u64, bytes: Vec<u8>) -> Self {
        let hash = leaf_hash(&bytes);
        Self { seq, bytes, hash }
    }

    pub fn view(&self) -> Result<LeafView<'_>> {
        decode(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_lengths() {
        let mut b = Vec::new();
        encode(RecordType::Event, 7, -3, &[9; 32], br#"{"a":1}"#, &mut b);
        let v = decode(&b).unwrap();
        assert_eq!(
            (v.record_type, v.seq, v.ts_unix_ns, v.prev_leaf, v.payload),
            (RecordType::Event, 7, -3, [9; 32], &br#"{"a":1}"#[..])
        );
        assert!(decode(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(b'x');
        assert!(decode(&longer).is_err());
        let mut bad_type = b.clone();
        bad_type[1] = 99;
        assert!(decode(&bad_type).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
