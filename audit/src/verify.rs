//! Offline verification of an export package: no server, no network.
//!
//! Checks, in order: the manifest's file hashes; every checkpoint's signature by a
//! trusted key (following recorded key rotations that an already-trusted checkpoint
//! covers); each record's bytes against its hash, seq and decoded view; the hash chain;
//! the Merkle root at every checkpoint (complete packages) or each record's inclusion
//! proof (partial ones); consistency between checkpoints; and consistency with a
//! checkpoint the auditor kept from before.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::leaf::{self, RecordType};
use crate::merkle::{Hash, Tree, leaf_hash, verify_consistency, verify_inclusion};
use crate::note::{Checkpoint, VerifierKey};
use crate::package::{FILES, FORMAT, Package};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub end_size: u64,
    pub complete: bool,
    pub checkpoints: usize,
    pub trusted_checkpoint_size: Option<u64>,
}

fn fail(seq: impl Into<Option<u64>>, reason: impl Into<String>) -> Error {
    Error::verify(seq, reason)
}

fn hex_hash(v: &Value) -> Option<Hash> {
    hex::decode(v.as_str()?).ok()?.try_into().ok()
}

fn hex_eq(text: &str, hash: &Hash) -> bool {
    let mut buf = [0u8; 32];
    hex::decode_to_slice(text, &mut buf).is_ok() && &buf == hash
}

fn hash_list(v: &Value) -> Option<Vec<Hash>> {
    v.as_array()?.iter().map(hex_hash).collect()
}

/// One line of leaves.jsonl. The payload is kept as written: when its text is exactly
/// the payload bytes (as exported) no re-parse is needed; otherwise it must parse to the
/// same JSON value.
#[derive(serde::Deserialize)]
struct Line<'a> {
    seq: u64,
    leaf: &'a str,
    leaf_hash: &'a str,
    record_type: &'a str,
    ts_unix_ns: i64,
    prev_leaf: &'a str,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

struct Record {
    seq: u64,
    hash: Hash,
    prev: Hash,
    rotation: Option<(String, String)>,
}

/// Checks one line of leaves.jsonl on its own: bytes, hash, seq and decoded view.
fn check_line(i: usize, line: &str) -> Result<Record> {
    let v: Line<'_> = serde_json::from_str(line)
        .map_err(|e| fail(None, format!("leaves.jsonl line {}: {e}", i + 1)))?;
    let claimed = v.seq;
    let bytes = B64
        .decode(v.leaf)
        .map_err(|_| fail(claimed, "leaf bytes are not base64"))?;
    let view =
        leaf::decode(&bytes).map_err(|e| fail(claimed, format!("leaf bytes do not parse: {e}")))?;
    if view.seq != claimed {
        return Err(fail(
            claimed,
            format!("the leaf bytes say seq {}", view.seq),
        ));
    }
    let hash = leaf_hash(&bytes);
    if !hex_eq(v.leaf_hash, &hash) {
        return Err(fail(claimed, "leaf_hash is not the hash of the leaf bytes"));
    }
    // Exported packages carry the payload text verbatim; anything else must at least
    // be the same JSON value.
    let payload_matches = v.payload.get().as_bytes() == view.payload || {
        let shown: Value = serde_json::from_str(v.payload.get())
            .map_err(|e| fail(claimed, format!("payload view: {e}")))?;
        serde_json::from_slice::<Value>(view.payload).is_ok_and(|p| p == shown)
    };
    if v.record_type != view.record_type.name()
        || v.ts_unix_ns != view.ts_unix_ns
        || !hex_eq(v.prev_leaf, &view.prev_leaf)
        || !payload_matches
    {
        return Err(fail(
            claimed,
            "the decoded view does not match the leaf bytes",
        ));
    }
    let rotation = (view.record_type == RecordType::KeyRotation).then(|| {
        let payload: Value = serde_json::from_slice(view.payload).unwrap_or_default();
        (
            payload["old_key"].as_str().unwrap_or_default().to_string(),
            payload["new_key"].as_str().unwrap_or_default().to_string(),
        )
    });
    Ok(Record {
        seq: claimed,
        hash,
        prev: view.prev_leaf,
        rotation,
    })
}

/// Verifies `pkg` against the keys the auditor trusts and, optionally, a checkpoint note
/// they kept from an earlier export.
pub fn verify_package(
    pkg: &Package,
    trusted_keys: &[VerifierKey],
    trusted_checkpoint: Option<&str>,
) -> Result<Summary> {
    if trusted_keys.is_empty() {
        return Err(fail(None, "no trusted public key was given"));
    }
    let file = |name: &str| {
        pkg.files
            .get(name)
            .ok_or_else(|| fail(None, format!("package has no {name}")))
    };
    let manifest: Value = serde_json::from_str(file("manifest.json")?)
        .map_err(|e| fail(None, format!("manifest.json: {e}")))?;
    if manifest["format"] != FORMAT {
        return Err(fail(
            None,
            format!(
                "manifest format is {}, expected {FORMAT}",
                manifest["format"]
            ),
        ));
    }
    let origin = manifest["origin"]
        .as_str()
        .ok_or_else(|| fail(None, "manifest has no origin"))?
        .to_string();
    let complete = manifest["complete"] == Value::Bool(true);
    let end_size = manifest["end_size"]
        .as_u64()
        .ok_or_else(|| fail(None, "manifest has no end_size"))?;

    // Checkpoints, in increasing size; signatures are checked below as trust allows.
    let mut notes = Vec::new();
    for (i, line) in file("checkpoints.jsonl")?.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| fail(None, format!("checkpoints.jsonl line {}: {e}", i + 1)))?;
        let note = v["note"]
            .as_str()
            .ok_or_else(|| fail(None, format!("checkpoints.jsonl line {}: no note", i + 1)))?;
        notes.push(note.to_string());
    }
    if notes.is_empty() {
        return Err(fail(None, "package holds no checkpoint"));
    }

    // Records are checked on every core (each line stands alone), while another thread
    // checks the manifest's file hashes. Failures are reported in file order.
    let leaves_text = file("leaves.jsonl")?;
    let lines: Vec<&str> = leaves_text.lines().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let chunk = lines.len().div_ceil(threads).max(1);
    let (manifest_check, checked) = std::thread::scope(|s| {
        let manifest_thread = s.spawn(|| -> Result<()> {
            for name in FILES {
                let want = manifest["files"][name]
                    .as_str()
                    .ok_or_else(|| fail(None, format!("manifest lists no hash for {name}")))?;
                if hex::encode(Sha256::digest(file(name)?.as_bytes())) != want {
                    return Err(fail(
                        None,
                        format!("{name} does not match its hash in the manifest"),
                    ));
                }
            }
            Ok(())
        });
        let workers: Vec<_> = lines
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(j, l)| check_line(c * chunk + j, l))
                        .collect::<Result<Vec<Record>>>()
                })
            })
            .collect();
        let checked: Vec<Result<Vec<Record>>> = workers
            .into_iter()
            .map(|w| w.join().expect("verifier thread"))
            .collect();
        (manifest_thread.join().expect("manifest thread"), checked)
    });
    manifest_check?;
    let mut records = Vec::with_capacity(lines.len());
    for part in checked {
        records.extend(part?);
    }

    // Order and chain.
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            let p = &records[i - 1];
            if r.seq <= p.seq {
                return Err(fail(
                    r.seq,
                    format!(
                        "record {} appears again or out of order after record {}",
                        r.seq, p.seq
                    ),
                ));
            }
            if r.seq == p.seq + 1 && r.prev != p.hash {
                return Err(fail(
                    p.seq,
                    format!(
                        "record {} does not match the hash that record {} links to",
                        p.seq, r.seq
                    ),
                ));
            }
        }
        if complete {
            if r.seq != i as u64 {
                let missing = i as u64;
                return Err(fail(
                    missing,
                    format!(
                        "record {missing} is missing (found record {} in its place)",
                        r.seq
                    ),
                ));
            }
            if i == 0 && r.prev != [0u8; 32] {
                return Err(fail(0, "record 0 links to a previous record"));
            }
        }
        if r.seq >= end_size {
            return Err(fail(
                r.seq,
                format!(
                    "record {} is beyond the end checkpoint of size {end_size}",
                    r.seq
                ),
            ));
        }
    }
    if complete && (records.len() as u64) < end_size {
        let missing = records.len() as u64;
        return Err(fail(
            missing,
            format!(
                "the package ends before record {missing} but its checkpoint covers {end_size} records"
            ),
        ));
    }

    // Checkpoints: each must be signed by a trusted key. Trust passes to a rotated key
    // only once a checkpoint signed by the old key covers the rotation record.
    let mut trusted: Vec<VerifierKey> = trusted_keys.to_vec();
    let mut tree = Tree::new();
    if complete {
        for r in &records {
            tree.push(r.hash);
        }
    }
    let mut rotations_seen = 0usize;
    let mut opened: Vec<Checkpoint> = Vec::new();
    for note in &notes {
        let cp = Checkpoint::open(note, &trusted).map_err(|e| {
            fail(
                None,
                format!("checkpoint is not signed by a trusted key: {e}"),
            )
        })?;
        if cp.origin != origin {
            return Err(fail(
                None,
                format!(
                    "checkpoint origin {} is not the package's origin {origin}",
                    cp.origin
                ),
            ));
        }
        if let Some(prev) = opened.last()
            && cp.size < prev.size
        {
            return Err(fail(None, "checkpoints are not in increasing size"));
        }
        if complete {
            if tree.root_at(cp.size) != Some(cp.root) {
                let first = opened.last().map_or(0, |p| p.size);
                return Err(fail(
                    first,
                    format!(
                        "the records from seq {first} up to {} do not match the signed checkpoint of size {}",
                        cp.size, cp.size
                    ),
                ));
            }
            // Each record is looked at once, when the first checkpoint covering it is.
            for r in records.iter().take(cp.size as usize).skip(rotations_seen) {
                if let Some((old, new)) = &r.rotation
                    && trusted.iter().any(|k| &k.encode() == old)
                    && let Ok(k) = VerifierKey::parse(new)
                    && !trusted.contains(&k)
                {
                    trusted.push(k);
                }
            }
            rotations_seen = rotations_seen.max(cp.size as usize);
        }
        opened.push(cp);
    }
    let end = opened.last().expect("at least one checkpoint").clone();
    if end.size != end_size {
        return Err(fail(
            None,
            format!(
                "the last checkpoint covers {} records, the manifest says {end_size}",
                end.size
            ),
        ));
    }

    let proofs: Value = serde_json::from_str(file("proofs.json")?)
        .map_err(|e| fail(None, format!("proofs.json: {e}")))?;
    let mut consistency: BTreeMap<(u64, u64), Vec<Hash>> = BTreeMap::new();
    for c in proofs["consistency"].as_array().into_iter().flatten() {
        let (Some(old), Some(new), Some(p)) =
            (c["old"].as_u64(), c["new"].as_u64(), hash_list(&c["proof"]))
        else {
            return Err(fail(
                None,
                "proofs.json holds a malformed consistency proof",
            ));
        };
        consistency.insert((old, new), p);
    }
    if !complete {
        for r in &records {
            let proof = hash_list(&proofs["inclusion"][r.seq.to_string()])
                .ok_or_else(|| fail(r.seq, "no inclusion proof for this record"))?;
            verify_inclusion(r.seq, end.size, &r.hash, &proof, &end.root).map_err(|e| {
                fail(
                    r.seq,
                    format!("record is not in the log of the end checkpoint: {e}"),
                )
            })?;
        }
        for pair in opened.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let proof = consistency.get(&(a.size, b.size)).ok_or_else(|| {
                fail(
                    None,
                    format!("no consistency proof from size {} to {}", a.size, b.size),
                )
            })?;
            verify_consistency(a.size, b.size, &a.root, &b.root, proof).map_err(|e| {
                fail(
                    a.size,
                    format!(
                        "the log of size {} does not extend the checkpoint of size {}: {e}",
                        b.size, a.size
                    ),
                )
            })?;
        }
    }

    let mut trusted_size = None;
    if let Some(note) = trusted_checkpoint {
        let kept = Checkpoint::open(note, trusted_keys)
            .map_err(|e| fail(None, format!("the kept checkpoint: {e}")))?;
        if kept.origin != origin {
            return Err(fail(
                None,
                format!(
                    "the kept checkpoint is for log {}, not {origin}",
                    kept.origin
                ),
            ));
        }
        if kept.size > end.size {
            return Err(fail(
                end.size,
                format!(
                    "the kept checkpoint covers {} records but this package's log has only {}: records were removed",
                    kept.size, end.size
                ),
            ));
        }
        if complete {
            if tree.root_at(kept.size) != Some(kept.root) {
                return Err(fail(
                    None,
                    format!(
                        "history was rewritten: the first {} records differ from the kept checkpoint",
                        kept.size
                    ),
                ));
            }
        } else {
            let proof = consistency
                .get(&(kept.size, end.size))
                .ok_or_else(|| fail(None, format!("the package has no consistency proof from size {}; export it with since_size={}", kept.size, kept.size)))?;
            verify_consistency(kept.size, end.size, &kept.root, &end.root, proof)
                .map_err(|e| fail(None, format!("history was rewritten: the log does not extend the kept checkpoint of size {}: {e}", kept.size)))?;
        }
        trusted_size = Some(kept.size);
    }

    Ok(Summary {
        records: records.len() as u64,
        end_size,
        complete,
        checkpoints: opened.len(),
        trusted_checkpoint_size: trusted_size,
    })
}
