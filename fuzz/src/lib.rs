//! Fuzz targets: each takes arbitrary bytes and drives one parser the way the server does.
//! A target may refuse its input with an error; it must never panic, hang or exhaust
//! memory, and where an input is accepted, what comes out must hold together (a leaf
//! re-encodes to its bytes, a ledger that opens exports a package that verifies, a batch
//! has the group's exact schema).
//!
//! `cargo fuzz run <target>` explores (see `fuzz/README.md`); `tests/corpus.rs` replays
//! the committed corpus and the seeds below as ordinary tests, so every input that once
//! found a bug stays a regression test.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use lakeledger_audit::leaf::{self, LEAF_HEADER_LEN, LEAF_VERSION};
use lakeledger_audit::segment::{self, HEADER_LEN, SegmentHeader};
use lakeledger_audit::{
    Checkpoint, Event, Ledger, LedgerConfig, Package, Phase, RecordFilter, SignerKey, StoredCheckpoint, VerifierKey, note, tiles,
    verify_package,
};
use lakeledger_query::arrow::record_batch::RecordBatch;
use lakeledger_query::ingest::{self, Conformer, IngestFormat};
use lakeledger_query::{Column, ColumnType, FeatureSchema};

mod seeds;
pub use seeds::seeds;

/// Every target, by the name `cargo fuzz` knows it by.
pub const TARGETS: [&str; 9] = [
    "audit_frames",
    "audit_recovery",
    "audit_package",
    "audit_notes",
    "ingest_json",
    "ingest_csv",
    "ingest_arrow",
    "ingest_parquet",
    "sql_guard",
];

/// Runs `target` on one input.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "audit_frames" => audit_frames(data),
        "audit_recovery" => audit_recovery(data),
        "audit_package" => audit_package(data),
        "audit_notes" => audit_notes(data),
        "ingest_json" => ingest_json(data),
        "ingest_csv" => ingest_csv(data),
        "ingest_arrow" => ingest_arrow(data),
        "ingest_parquet" => ingest_parquet(data),
        "sql_guard" => sql_guard(data),
        other => panic!("no fuzz target {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// The ledger

const WAIT: Duration = Duration::from_secs(30);
/// The salt frames are sealed with when the input does not bring a segment header.
const FUZZ_SALT: [u8; 16] = *b"lakeledger-fuzz!";

/// A segment's bytes as the readers meet them (search, export, archive): a header, then
/// frames until the end or a damaged one. With the low bit of the first byte set, the rest
/// is a list of leaves (`[u16 length][bytes]`, then a raw tail) sealed into valid frames
/// here, so the leaf decoder sees inputs past the CRC that random bytes never pass.
pub fn audit_frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (salt, bytes, start) = if mode & 1 == 1 {
        let (leaves, tail) = length_prefixed(rest);
        let mut bytes = vec![0u8; HEADER_LEN];
        for l in &leaves {
            if l.len() <= segment::MAX_LEAF {
                segment::encode_frame(&FUZZ_SALT, l, &mut bytes);
            }
        }
        bytes.extend_from_slice(tail);
        (FUZZ_SALT, bytes, HEADER_LEN)
    } else {
        match SegmentHeader::decode(rest) {
            Ok(h) => (h.salt, rest.to_vec(), HEADER_LEN),
            Err(_) => (FUZZ_SALT, rest.to_vec(), 0),
        }
    };
    let mut offset = start;
    while let Ok(Some(leaf_bytes)) = segment::read_frame(&salt, &bytes, offset) {
        if let Ok(v) = leaf::decode(leaf_bytes) {
            let mut again = Vec::new();
            leaf::encode(v.record_type, v.seq, v.ts_unix_ns, &v.prev_leaf, v.payload, &mut again);
            assert_eq!(again, leaf_bytes, "a decoded leaf re-encodes to the same bytes");
            let _ = serde_json::from_slice::<serde_json::Value>(v.payload);
        }
        offset += segment::padded_len(leaf_bytes.len());
    }
    let _ = segment::any_valid_frame_after(&salt, &bytes, offset.saturating_add(8));
}

/// Splits `[u16 big-endian length][bytes]…`; what does not fit a whole item is the tail.
fn length_prefixed(mut data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut items = Vec::new();
    while data.len() >= 2 {
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        if data.len() - 2 < len {
            break;
        }
        items.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    (items, data)
}

/// A closed ledger's key and segment, which every recovery input starts from. Its
/// tiles, indexes and checkpoints are left out: opening rebuilds them from the segment,
/// so records the input makes up can be accepted, not only refused for disagreeing with
/// tiles of the template's records.
struct Template {
    files: Vec<(PathBuf, Vec<u8>)>,
    segment: PathBuf,
    header: SegmentHeader,
    genesis: Vec<u8>,
}

fn ledger_config(root: &Path) -> LedgerConfig {
    let mut c = LedgerConfig::new(root.join("audit"), root.join("keys/audit.key"));
    c.origin = Some("fuzz.lakeledger.invalid/audit".into());
    // Only the opening and closing checkpoints: no timer thread races the input.
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

fn all_files(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("read the template") {
        let p = e.expect("read the template").path();
        if p.is_dir() {
            all_files(root, &p, out);
        } else if p.file_name().is_some_and(|n| n != "LOCK") {
            out.push((p.strip_prefix(root).expect("inside").to_path_buf(), std::fs::read(&p).expect("read the template")));
        }
    }
}

static TEMPLATE: LazyLock<Template> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (ledger, _) = Ledger::open(ledger_config(dir.path())).expect("open the template ledger");
    ledger.close();
    drop(ledger);
    let mut files = Vec::new();
    all_files(dir.path(), dir.path(), &mut files);
    let is_segment = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| segment::parse_file_name(n).is_some());
    files.retain(|(p, _)| p.starts_with("keys") || is_segment(p));
    let (segment, bytes) = files.iter().find(|(p, _)| is_segment(p)).expect("the template has a segment");
    let header = SegmentHeader::decode(bytes).expect("the template's header");
    let genesis = segment::read_frame(&header.salt, bytes, HEADER_LEN).expect("a frame").expect("the genesis record").to_vec();
    Template { segment: segment.clone(), header, genesis, files }
});

/// Opening a ledger whose only segment the input rewrites: the ledger either refuses to
/// open, naming the damage, or opens (cutting a torn tail), and then everything it holds
/// exports as a package that verifies against its key.
///
/// The first byte chooses the form. Bit 0 clear: the rest is the segment file, byte for
/// byte. Bit 0 set: the rest is records (`[type][u16 length][payload]`) that are made
/// into leaves and frames here, after the template's genesis record unless bit 1 is set,
/// chained to each other unless bit 2 is set, and followed by the input's leftover bytes
/// (a torn tail) when bit 3 is set.
pub fn audit_recovery(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let t = &*TEMPLATE;
    let segment_bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut bytes = t.header.encode().to_vec();
        let mut prev = t.header.prev_leaf;
        let mut seq = t.header.first_seq;
        if mode & 2 == 0 {
            segment::encode_frame(&t.header.salt, &t.genesis, &mut bytes);
            prev = lakeledger_audit::merkle::leaf_hash(&t.genesis);
            seq += 1;
        }
        let mut data = rest;
        while data.len() >= 3 {
            let len = u16::from_be_bytes([data[1], data[2]]) as usize;
            if data.len() - 3 < len || LEAF_HEADER_LEN + len > segment::MAX_LEAF {
                break;
            }
            let mut leaf = vec![LEAF_VERSION, data[0]];
            leaf.extend_from_slice(&seq.to_be_bytes());
            leaf.extend_from_slice(&(seq as i64).to_be_bytes());
            leaf.extend_from_slice(if mode & 4 == 0 { &prev } else { &[0u8; 32] });
            leaf.extend_from_slice(&(len as u32).to_be_bytes());
            leaf.extend_from_slice(&data[3..3 + len]);
            segment::encode_frame(&t.header.salt, &leaf, &mut bytes);
            prev = lakeledger_audit::merkle::leaf_hash(&leaf);
            seq += 1;
            data = &data[3 + len..];
        }
        if mode & 8 != 0 {
            bytes.extend_from_slice(data);
        }
        bytes
    };

    let dir = tempfile::tempdir().expect("a temporary directory");
    for (p, bytes) in &t.files {
        let to = dir.path().join(p);
        std::fs::create_dir_all(to.parent().expect("in a folder")).expect("create the folder");
        std::fs::write(&to, if *p == t.segment { &segment_bytes } else { bytes }).expect("write the file");
    }
    let Ok((ledger, _)) = Ledger::open(ledger_config(dir.path())) else { return };
    let size = ledger.size();
    let held = ledger.read(0, size).expect("an opened ledger reads back what it holds");
    assert_eq!(held.len() as u64, size);
    let pkg = Package::export(&ledger, &RecordFilter::default(), None).expect("an opened ledger exports");
    // Chained, hashed and framed records whose payload is not an event's JSON open (the
    // chain is intact); the export still parses, and its verification names the first.
    let not_json = held.iter().find(|l| l.view().is_ok_and(|v| serde_json::from_slice::<serde_json::Value>(v.payload).is_err())).map(|l| l.seq);
    match (verify_package(&pkg, &ledger.public_keys(), None), not_json) {
        (Ok(_), None) => {}
        (Err(lakeledger_audit::Error::Verify { seq: Some(seq), .. }), Some(first)) if seq == first => {}
        (verified, first) => panic!("an opened ledger's export verifies, or fails at its first record that is not JSON ({first:?}): {verified:?}"),
    }
    ledger.close();
}

/// A real exported package (records, checkpoints, proofs) and the key it verifies with.
static PACKAGE: LazyLock<(Package, VerifierKey)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (ledger, _) = Ledger::open(ledger_config(dir.path())).expect("open a ledger");
    let pending: Vec<_> = (0..12)
        .map(|i| {
            let mut e = Event::new(if i % 2 == 0 { "data.read" } else { "feature_group.create" }, Phase::Intent);
            e.actor.principal = Some(format!("key-{}", i % 3));
            e.actor.tenant = Some(if i % 4 == 0 { "acme" } else { "default" }.into());
            e.resource.name = Some(format!("group_{i}"));
            ledger.append_event(&e).expect("append")
        })
        .collect();
    for p in pending {
        p.wait(WAIT).expect("durable");
    }
    ledger.checkpoint().expect("a checkpoint");
    let pkg = Package::export(&ledger, &RecordFilter { tenant: Some("acme".into()), ..Default::default() }, None).expect("export");
    let key = ledger.public_key();
    ledger.close();
    (pkg, key)
});

/// Verifying a package an auditor was handed. Low bit of the first byte clear: the rest
/// is the package's single-JSON form. Set: one edit to a real package (file, offset,
/// bytes removed, text inserted), so verification runs deep into a near-valid package.
/// Verification may fail; it must never panic, and an edited record never verifies.
pub fn audit_package(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (original, key) = &*PACKAGE;
    let keys = std::slice::from_ref(key);
    if mode & 1 == 0 {
        if let Ok(pkg) = Package::from_json(&String::from_utf8_lossy(rest)) {
            let _ = verify_package(&pkg, keys, None);
        }
        return;
    }
    if rest.len() < 4 {
        return;
    }
    let mut pkg = original.clone();
    let names: Vec<String> = pkg.files.keys().cloned().collect();
    let name = &names[rest[0] as usize % names.len()];
    let text = pkg.files.get_mut(name).expect("listed");
    let mut at = u16::from_be_bytes([rest[1], rest[2]]) as usize % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let mut end = (at + rest[3] as usize % 8).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text.replace_range(at..end, &String::from_utf8_lossy(&rest[4..]));
    let changed = pkg.files[name] != original.files[name];
    if verify_package(&pkg, keys, None).is_ok() && changed && name == "leaves.jsonl" {
        // Whitespace between JSON values is not part of what is signed; anything else is.
        let reparsed = |p: &Package| {
            p.files[name]
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        };
        assert_eq!(reparsed(&pkg), reparsed(original), "an edited record verified: {name}");
    }
}

/// Keys, signed notes, checkpoints, stored checkpoint lines and tile paths, as read from
/// configuration, packages and the tile-serving routes.
pub fn audit_notes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (_, key) = &*PACKAGE;
    let keys = std::slice::from_ref(key);
    let _ = VerifierKey::parse(&text);
    if let Ok(signer) = SignerKey::parse(&text) {
        let note = signer.sign_note("fuzz\n").expect("a parsed key signs");
        note::open_note(&note, std::slice::from_ref(signer.verifier())).expect("a note verifies with its own key");
    }
    let _ = note::open_note(&text, keys);
    let _ = Checkpoint::open(&text, keys);
    if let Some(c) = StoredCheckpoint::parse_line(data) {
        assert_eq!(StoredCheckpoint::parse_line(c.line().trim_end().as_bytes()).map(|again| again.checkpoint), Some(c.checkpoint));
    }
    match tiles::parse_path(&text) {
        Some(tiles::TileName::Hashes { level, index, width }) => assert_eq!(tiles::tile_path(level, index, width), text),
        Some(tiles::TileName::Entries { index, width }) => assert_eq!(tiles::entries_path(index, width), text),
        None => {}
    }
}

// ---------------------------------------------------------------------------------------
// Ingest

/// A feature group with a column of every kind.
pub fn schema() -> FeatureSchema {
    FeatureSchema {
        entity_keys: vec![Column::new("id", ColumnType::Int64), Column::new("region", ColumnType::String)],
        event_time: "ts".into(),
        features: vec![
            Column::new("x", ColumnType::Float64),
            Column::new("x32", ColumnType::Float32),
            Column::new("n", ColumnType::Int32),
            Column::new("s", ColumnType::String),
            Column::new("emb", ColumnType::ListFloat32),
            Column::new("b", ColumnType::Bool),
            Column::new("d", ColumnType::Date),
            Column::new("at", ColumnType::Timestamp),
        ],
    }
}

/// What upserts do with a body: decode (in chunks whose size the first byte chooses, as
/// they arrive off the network), conform to the group's schema, look for duplicate keys;
/// and what a spine upload does with the same body: decode with inferred types.
fn ingest(format: IngestFormat, data: &[u8]) {
    let Some((&chunking, body)) = data.split_first() else { return };
    let schema = schema();
    let mut conformer = Conformer::new(schema.clone());
    let mut batches = Vec::new();
    let decoded: lakeledger_query::Result<()> = (|| {
        match ingest::decoder_for(format, &schema) {
            Some(mut decoder) => {
                for part in body.chunks(1 + chunking as usize * 61) {
                    for b in decoder.push(part)? {
                        batches.push(conformer.conform(&b)?);
                    }
                }
                for b in decoder.finish()? {
                    batches.push(conformer.conform(&b)?);
                }
            }
            None => {
                let mut file = tempfile::tempfile().expect("a temporary file");
                std::io::Write::write_all(&mut file, body).expect("spool");
                for b in ingest::parquet_batches(file)? {
                    batches.push(conformer.conform(&b?)?);
                }
            }
        }
        Ok(())
    })();
    if decoded.is_ok() {
        check_conformed(&conformer, &batches);
        let _ = ingest::find_duplicate_keys(&batches, &schema);
    }
    if let Ok(spine) = ingest::decode_inferred(format, bytes::Bytes::copy_from_slice(body)) {
        let _ = ingest::spine_time_column(&spine, "ts");
    }
}

fn check_conformed(conformer: &Conformer, batches: &[RecordBatch]) {
    let target = conformer.target_schema();
    let mut rows = 0u64;
    for b in batches {
        assert_eq!(b.schema(), target, "a conformed batch has the group's exact schema");
        for key in ["id", "region", "ts"] {
            assert_eq!(b.column_by_name(key).expect("present").null_count(), 0, "{key} is never null once conformed");
        }
        rows += b.num_rows() as u64;
    }
    assert_eq!(rows, conformer.rows_seen());
}

pub fn ingest_json(data: &[u8]) {
    ingest(IngestFormat::Json, data)
}

pub fn ingest_csv(data: &[u8]) {
    ingest(IngestFormat::Csv, data)
}

pub fn ingest_arrow(data: &[u8]) {
    ingest(IngestFormat::ArrowIpc, data)
}

pub fn ingest_parquet(data: &[u8]) {
    ingest(IngestFormat::Parquet, data)
}

// ---------------------------------------------------------------------------------------
// SQL

/// The guard every statement passes before planning: anything it accepts is one query
/// that reads feature groups, and printing what it accepts gives a statement it accepts
/// again, reading the same groups.
pub fn sql_guard(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let Ok(parsed) = lakeledger_query::sql::parse(sql) else { return };
    if let Ok(again) = lakeledger_query::sql::parse(&parsed.normalized) {
        assert_eq!(again.tables, parsed.tables, "{sql:?} and its printed form read different groups");
    }
}
