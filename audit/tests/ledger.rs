//! The ledger against real files: durability, recovery, tamper detection and offline
//! verification.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lakeledger_audit::{
    Error, Event, Ledger, LedgerConfig, Package, Phase, Receipt, RecordFilter, RecordType,
    SignerKey, VerifierKey, verify_package,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(10);

fn config(dir: &Path) -> LedgerConfig {
    let mut c = LedgerConfig::new(dir.join("audit"), dir.join("keys/audit.key"));
    // Only the startup, explicit and closing checkpoints: tests decide what is covered.
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

/// Opens a ledger just closed in this process. Another test here spawns processes: a
/// child holds the parent's descriptors (the lock's among them) from its fork until its
/// exec closes them, so a lock released a moment ago can still be held for that moment.
/// Waits that out (bounded) instead of failing.
fn open_unlocked(c: LedgerConfig) -> (Ledger, lakeledger_audit::OpenReport) {
    for _ in 0..500 {
        match Ledger::open(c.clone()) {
            Err(lakeledger_audit::Error::Locked(_)) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.unwrap(),
        }
    }
    panic!("{} stayed locked", c.dir.display());
}

fn event(i: usize) -> Event {
    let mut e = Event::new(
        if i.is_multiple_of(2) {
            "data.read"
        } else {
            "feature_group.create"
        },
        Phase::Intent,
    );
    e.actor.principal = Some(format!("key-{}", i % 3));
    e.actor.principal_type = "api_key".into();
    e.actor.tenant = Some(
        if i.is_multiple_of(4) {
            "acme"
        } else {
            "default"
        }
        .into(),
    );
    e.actor.auth_method = "bearer".into();
    e.resource.kind = Some("feature_group".into());
    e.resource.name = Some(format!("group_{i}"));
    e
}

fn append_events(ledger: &Ledger, n: usize) -> Vec<Receipt> {
    let pending: Vec<_> = (0..n)
        .map(|i| ledger.append_event(&event(i)).unwrap())
        .collect();
    pending.into_iter().map(|p| p.wait(WAIT).unwrap()).collect()
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && p.file_name().unwrap() != "LOCK" {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// A copy of the audit directory as a crash would leave it: whatever is on disk now.
fn snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for (p, bytes) in files(from) {
        std::fs::write(to.join(p.file_name().unwrap()), bytes).unwrap();
    }
}

fn keys(ledger: &Ledger) -> Vec<VerifierKey> {
    vec![ledger.public_key()]
}

#[test]
fn records_survive_reopen_with_their_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, report) = Ledger::open(config(tmp.path())).unwrap();
    assert!(report.created_log && report.created_key);
    let receipts = append_events(&ledger, 50);
    drop(ledger);

    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(tmp.path().join("keys/audit.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the signing key is private");

    let (ledger, report) = Ledger::open(config(tmp.path())).unwrap();
    assert!(!report.created_log && report.repaired.is_none());
    let leaves = ledger.read(0, ledger.size()).unwrap();
    for r in &receipts {
        assert_eq!(leaves[r.seq as usize].hash, r.leaf_hash);
    }
    let kinds: Vec<_> = leaves
        .iter()
        .map(|l| l.view().unwrap().record_type)
        .collect();
    assert_eq!(kinds[0], RecordType::Genesis);
    assert_eq!(kinds[1], RecordType::Startup);
    assert!(kinds.contains(&RecordType::Shutdown));
    assert_eq!(*kinds.last().unwrap(), RecordType::Startup);
}

#[test]
fn concurrent_producers_get_distinct_durable_receipts_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 16 << 10;
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let receipts: Vec<Receipt> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| s.spawn(|| append_events(&ledger, 100)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 1600);
    drop(ledger);
    let segments = std::fs::read_dir(&cfg.dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("seg-")
        })
        .count();
    assert!(segments > 3, "small segments rotate ({segments})");

    let (ledger, _) = Ledger::open(cfg).unwrap();
    let leaves = ledger.read(0, ledger.size()).unwrap();
    for r in receipts {
        assert_eq!(leaves[r.seq as usize].hash, r.leaf_hash);
    }
    let pkg = Package::export(&ledger, &RecordFilter::default(), None).unwrap();
    verify_package(&pkg, &keys(&ledger), None).unwrap();
}

#[test]
fn a_torn_tail_is_cut_at_every_offset_and_nothing_acknowledged_before_it_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let receipts = append_events(&ledger, 6);
    let crashed = tmp.path().join("crashed");
    snapshot(&cfg.dir, &crashed);
    drop(ledger);

    let seg = crashed.join("seg-00000001.log");
    let full = std::fs::read(&seg).unwrap();
    let frames: Vec<usize> = {
        // Frame start offsets, found by walking the length fields.
        let mut v = Vec::new();
        let mut o = 96;
        while o < full.len() {
            v.push(o);
            let len = u32::from_be_bytes(full[o..o + 4].try_into().unwrap()) as usize;
            o += (8 + len).div_ceil(8) * 8;
        }
        v
    };
    let last_two = frames[frames.len() - 2];
    let mut repaired = 0;
    for cut in last_two..full.len() {
        let dir = tmp.path().join(format!("cut-{cut}"));
        snapshot(&crashed, &dir);
        std::fs::write(dir.join("seg-00000001.log"), &full[..cut]).unwrap();
        let mut c = cfg.clone();
        c.dir = dir.clone();
        let (ledger, report) = open_unlocked(c.clone());
        // Whole frames before the cut survive; a partial frame is cut away.
        let expected =
            frames.iter().filter(|f| **f < cut).count() as u64 - u64::from(!frames.contains(&cut));
        assert_eq!(report.size, expected, "cut at {cut}");
        assert_eq!(
            report.repaired.is_some(),
            !frames.contains(&cut),
            "cut at {cut}"
        );
        repaired += usize::from(report.repaired.is_some());
        let leaves = ledger.read(0, expected).unwrap();
        for r in receipts.iter().filter(|r| r.seq < expected) {
            assert_eq!(leaves[r.seq as usize].hash, r.leaf_hash);
        }
        drop(ledger);
        // A second recovery finds nothing more to cut.
        let (again, report2) = open_unlocked(c);
        assert!(report2.repaired.is_none(), "cut at {cut}");
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(repaired > 100, "{repaired}");
}

#[test]
fn damage_in_the_middle_refuses_to_open_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 20);
    drop(ledger);
    let seg = cfg.dir.join("seg-00000001.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let before = files(&cfg.dir);
    let err = Ledger::open(cfg.clone()).err().expect("must refuse");
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("intact records follow"), "{err}");
    assert_eq!(files(&cfg.dir), before, "nothing was changed");
}

/// Renames the feature group an event record names (`group_N` → `Xroup_N`), keeping the
/// payload valid JSON of the same length.
fn alter_group_name(leaf: &mut [u8]) {
    let at = leaf
        .windows(6)
        .position(|w| w == b"group_")
        .expect("an event record");
    leaf[at] = b'X';
}

/// Rewrites record `seq` in a segment file with a new payload byte and a recomputed CRC,
/// as an attacker with file access but no signing key would.
fn edit_record_fixing_crc(dir: &Path, seq: u64) {
    let seg = dir.join("seg-00000001.log");
    let mut b = std::fs::read(&seg).unwrap();
    let salt: [u8; 16] = b[72..88].try_into().unwrap();
    let mut o = 96;
    loop {
        let len = u32::from_be_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        let leaf_seq = u64::from_be_bytes(b[o + 10..o + 18].try_into().unwrap());
        if leaf_seq == seq {
            let leaf = &mut b[o + 8..o + 8 + len];
            alter_group_name(leaf);
            let crc = crc32c::crc32c_append(
                crc32c::crc32c_append(crc32c::crc32c(&salt), &(len as u32).to_be_bytes()),
                leaf,
            );
            b[o + 4..o + 8].copy_from_slice(&crc.to_be_bytes());
            break;
        }
        o += (8 + len).div_ceil(8) * 8;
    }
    std::fs::write(&seg, b).unwrap();
}

#[test]
fn an_edited_record_with_a_fixed_crc_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 10);
    drop(ledger);
    edit_record_fixing_crc(&cfg.dir, 5);
    let before = files(&cfg.dir);
    let err = Ledger::open(cfg.clone()).err().expect("must refuse");
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert_eq!(files(&cfg.dir), before);
}

#[test]
fn truncation_below_the_last_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 10);
    let covered = ledger.checkpoint().unwrap().checkpoint.size;
    drop(ledger);
    // Cut cleanly at a frame boundary a few records below the checkpoint.
    let seg = cfg.dir.join("seg-00000001.log");
    let b = std::fs::read(&seg).unwrap();
    let mut o = 96;
    for _ in 0..covered - 3 {
        let len = u32::from_be_bytes(b[o..o + 4].try_into().unwrap()) as usize;
        o += (8 + len).div_ceil(8) * 8;
    }
    std::fs::write(&seg, &b[..o]).unwrap();
    let err = Ledger::open(cfg).err().expect("must refuse");
    assert!(
        err.to_string().contains("records were lost or removed"),
        "{err}"
    );
}

#[test]
fn open_refuses_a_second_process_a_missing_key_and_a_foreign_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    assert!(matches!(
        Ledger::open(cfg.clone()).err().unwrap(),
        Error::Locked(_)
    ));
    let name = ledger.origin().to_string();
    drop(ledger);

    let key_text = std::fs::read_to_string(&cfg.key_path).unwrap();
    std::fs::remove_file(&cfg.key_path).unwrap();
    let err = Ledger::open(cfg.clone()).err().unwrap();
    assert!(err.to_string().contains("is missing"), "{err}");

    std::fs::write(&cfg.key_path, SignerKey::generate(&name).unwrap().encode()).unwrap();
    let err = Ledger::open(cfg.clone()).err().unwrap();
    assert!(err.to_string().contains("rotate-key"), "{err}");
    std::fs::write(&cfg.key_path, key_text).unwrap();
    Ledger::open(cfg).unwrap();
}

#[test]
fn a_paused_writer_makes_appends_time_out_then_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(config(tmp.path())).unwrap();
    let guard = ledger.pause_writer();
    let pending = ledger.append_event(&event(0)).unwrap();
    let err = pending.wait(Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
    let second = ledger.append_event(&event(1)).unwrap();
    drop(guard);
    second.wait(WAIT).unwrap();
}

// ---- export packages -------------------------------------------------------------------

fn export(ledger: &Ledger) -> Package {
    Package::export(ledger, &RecordFilter::default(), None).unwrap()
}

/// Recomputes the manifest's file hashes, as anyone editing a package would.
fn reseal(pkg: &mut Package) {
    let mut m: Value = serde_json::from_str(&pkg.files["manifest.json"]).unwrap();
    for name in [
        "leaves.jsonl",
        "checkpoints.jsonl",
        "proofs.json",
        "keys.txt",
    ] {
        m["files"][name] = Value::String(hex::encode(Sha256::digest(pkg.files[name].as_bytes())));
    }
    pkg.files.insert("manifest.json".into(), m.to_string());
}

fn lines(pkg: &Package) -> Vec<Value> {
    pkg.files["leaves.jsonl"]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn set_lines(pkg: &mut Package, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    pkg.files.insert("leaves.jsonl".into(), text);
    reseal(pkg);
}

/// Changes one payload byte of a record and updates its hash and decoded view to match.
fn rewrite_line(line: &mut Value) {
    let mut bytes = B64.decode(line["leaf"].as_str().unwrap()).unwrap();
    alter_group_name(&mut bytes);
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(&bytes);
    line["leaf"] = Value::String(B64.encode(&bytes));
    line["leaf_hash"] = Value::String(hex::encode(h.finalize()));
    line["payload"] = serde_json::from_slice(&bytes[54..]).unwrap();
}

fn failing_seq(pkg: &Package, keys: &[VerifierKey], kept: Option<&str>) -> Option<u64> {
    match verify_package(pkg, keys, kept) {
        Err(Error::Verify { seq, .. }) => seq,
        other => panic!("verification should fail, got {other:?}"),
    }
}

#[test]
fn an_exported_package_verifies_and_every_tampering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(config(tmp.path())).unwrap();
    append_events(&ledger, 30);
    let kept = ledger.checkpoint().unwrap().checkpoint.note;
    append_events(&ledger, 10);
    let pkg = export(&ledger);
    let k = keys(&ledger);
    let s = verify_package(&pkg, &k, Some(&kept)).unwrap();
    assert!(s.complete);
    assert_eq!(s.records, s.end_size);

    // Edit a record (bytes, hash and view all made consistent).
    let mut p = pkg.clone();
    let mut l = lines(&p);
    rewrite_line(&mut l[12]);
    set_lines(&mut p, &l);
    assert_eq!(failing_seq(&p, &k, None), Some(12));

    // Edit without updating the decoded view.
    let mut p = pkg.clone();
    let mut l = lines(&p);
    l[7]["payload"]["kind"] = Value::String("data.delete".into());
    set_lines(&mut p, &l);
    assert_eq!(failing_seq(&p, &k, None), Some(7));

    // Delete.
    let mut p = pkg.clone();
    let mut l = lines(&p);
    l.remove(9);
    set_lines(&mut p, &l);
    assert_eq!(failing_seq(&p, &k, None), Some(9));

    // Reorder.
    let mut p = pkg.clone();
    let mut l = lines(&p);
    l.swap(14, 15);
    set_lines(&mut p, &l);
    assert_eq!(failing_seq(&p, &k, None), Some(14));

    // Insert a copy of a record.
    let mut p = pkg.clone();
    let mut l = lines(&p);
    let dup = l[20].clone();
    l.insert(21, dup);
    set_lines(&mut p, &l);
    assert_eq!(failing_seq(&p, &k, None), Some(20));

    // Truncate the package's records.
    let mut p = pkg.clone();
    let mut l = lines(&p);
    let n = l.len();
    l.truncate(n - 4);
    set_lines(&mut p, &l);
    assert_eq!(failing_seq(&p, &k, None), Some(n as u64 - 4));

    // A file changed without resealing the manifest.
    let mut p = pkg.clone();
    p.files.get_mut("keys.txt").unwrap().push('\n');
    assert!(
        verify_package(&p, &k, None)
            .unwrap_err()
            .to_string()
            .contains("keys.txt does not match")
    );

    // A checkpoint signed with another key.
    let forger = SignerKey::generate(ledger.origin()).unwrap();
    let end = ledger.latest_checkpoint().unwrap().checkpoint;
    let mut p = pkg.clone();
    let forged =
        lakeledger_audit::Checkpoint::sign(&forger, ledger.origin(), end.size, &end.root).unwrap();
    let mut cps: Vec<String> = p.files["checkpoints.jsonl"]
        .lines()
        .map(str::to_string)
        .collect();
    let last = cps.len() - 1;
    cps[last] = serde_json::json!({ "size": end.size, "note": forged.note }).to_string();
    p.files.insert(
        "checkpoints.jsonl".into(),
        cps.iter().map(|c| format!("{c}\n")).collect(),
    );
    reseal(&mut p);
    assert!(
        verify_package(&p, &k, None)
            .unwrap_err()
            .to_string()
            .contains("not signed by a trusted key")
    );
}

#[test]
fn a_resigned_rewrite_passes_alone_but_fails_against_a_kept_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 20);
    let kept = ledger.checkpoint().unwrap().checkpoint.note;
    append_events(&ledger, 5);
    let pkg = export(&ledger);
    let k = keys(&ledger);
    drop(ledger);

    // An insider with the signing key rewrites record 10 and re-signs a fresh history.
    let key = SignerKey::parse(&std::fs::read_to_string(&cfg.key_path).unwrap()).unwrap();
    let mut p = pkg.clone();
    let mut l = lines(&p);
    rewrite_line(&mut l[10]);
    // Re-chain everything after it.
    for i in 11..l.len() {
        let mut bytes = B64.decode(l[i]["leaf"].as_str().unwrap()).unwrap();
        let prev = hex::decode(l[i - 1]["leaf_hash"].as_str().unwrap()).unwrap();
        bytes[18..50].copy_from_slice(&prev);
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(&bytes);
        l[i]["leaf"] = Value::String(B64.encode(&bytes));
        l[i]["leaf_hash"] = Value::String(hex::encode(h.finalize()));
        l[i]["prev_leaf"] = Value::String(hex::encode(&prev));
    }
    let mut tree = lakeledger_audit::merkle::Tree::new();
    for line in &l {
        tree.push(
            hex::decode(line["leaf_hash"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        );
    }
    let cp = lakeledger_audit::Checkpoint::sign(
        &key,
        key.verifier().name.as_str(),
        tree.size(),
        &tree.root(),
    )
    .unwrap();
    p.files.insert(
        "checkpoints.jsonl".into(),
        format!(
            "{}\n",
            serde_json::json!({ "size": tree.size(), "note": cp.note })
        ),
    );
    set_lines(&mut p, &l);

    verify_package(&p, &k, None).expect("a consistent re-signed history verifies on its own");
    let err = verify_package(&p, &k, Some(&kept)).unwrap_err();
    assert!(err.to_string().contains("history was rewritten"), "{err}");
    verify_package(&pkg, &k, Some(&kept)).unwrap();
}

#[test]
fn filtered_exports_carry_inclusion_proofs() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(config(tmp.path())).unwrap();
    let kept = ledger.checkpoint().unwrap().checkpoint;
    append_events(&ledger, 40);
    let filter = RecordFilter {
        tenant: Some("acme".into()),
        action: Some("data.".into()),
        ..Default::default()
    };
    let pkg = Package::export(&ledger, &filter, Some(kept.size)).unwrap();
    let k = keys(&ledger);
    let s = verify_package(&pkg, &k, Some(&kept.note)).unwrap();
    assert!(!s.complete);
    assert_eq!(
        s.records, 10,
        "every fourth event is acme's, all of them reads"
    );
    for l in lines(&pkg) {
        assert_eq!(l["payload"]["actor"]["tenant"], "acme");
    }

    // A record from outside the log cannot be slipped in.
    let mut p = pkg.clone();
    let mut l = lines(&p);
    rewrite_line(&mut l[3]);
    let seq = l[3]["seq"].as_u64().unwrap();
    set_lines(&mut p, &l);
    assert_eq!(failing_seq(&p, &k, None), Some(seq));

    // Round trip through the single-JSON form.
    let back = Package::from_json(&pkg.to_json()).unwrap();
    assert_eq!(back, pkg);
}

#[test]
fn key_rotation_is_recorded_and_followed_by_the_verifier() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let old = ledger.public_key();
    append_events(&ledger, 5);
    let new_key = SignerKey::generate(ledger.origin()).unwrap();
    let new_pub = new_key.verifier().clone();
    ledger.rotate_key(new_key).unwrap();
    append_events(&ledger, 5);
    let pkg = export(&ledger);
    verify_package(&pkg, std::slice::from_ref(&old), None)
        .expect("trust passes from the old key to the recorded new one");
    assert!(
        verify_package(&pkg, std::slice::from_ref(&new_pub), None).is_err(),
        "the old checkpoints need the old key"
    );
    assert_eq!(ledger.public_keys(), vec![old, new_pub]);
}

#[test]
fn a_forged_newest_checkpoint_refuses_to_open() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 3);
    let origin = ledger.origin().to_string();
    drop(ledger);
    // Re-sign the newest checkpoint (same size and root) with another key.
    let path = cfg.dir.join("checkpoints.log");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let root: [u8; 32] = hex::decode(last["root"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let forger = SignerKey::generate(&origin).unwrap();
    let forged =
        lakeledger_audit::Checkpoint::sign(&forger, &origin, last["size"].as_u64().unwrap(), &root)
            .unwrap();
    last["note"] = Value::String(forged.note);
    *lines.last_mut().unwrap() = last.to_string();
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let err = Ledger::open(cfg).err().expect("must refuse");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

// ---- tiles, indexes, compression, scrub, upgrade ---------------------------------------

/// Appends records until the log holds exactly `size`, then signs a checkpoint there.
fn grow_to(ledger: &Ledger, size: u64) {
    let have = ledger.size();
    let pending: Vec<_> = (have..size).map(|i| ledger.append_event(&event(i as usize)).unwrap()).collect();
    for p in pending {
        p.wait(WAIT).unwrap();
    }
    assert_eq!(ledger.checkpoint().unwrap().checkpoint.size, size);
}

/// The in-memory reference tree over every record of the log.
fn reference(ledger: &Ledger) -> lakeledger_audit::merkle::Tree {
    let mut t = lakeledger_audit::merkle::Tree::new();
    for l in ledger.read(0, ledger.size()).unwrap() {
        t.push(l.hash);
    }
    t
}

/// Every tile the log should hold at its size, byte for byte as the naive tree gives it.
fn assert_tiles_match(ledger: &Ledger, dir: &Path) {
    use lakeledger_audit::merkle::NodeSource;
    use lakeledger_audit::tiles::{HEIGHT, WIDTH, tile_path};
    let tree = reference(ledger);
    let size = tree.size();
    for level in 0..4u32 {
        let nodes = size >> (HEIGHT * level);
        if nodes == 0 {
            break;
        }
        for index in 0..nodes.div_ceil(WIDTH) {
            let width = (nodes - index * WIDTH).min(WIDTH);
            let want: Vec<u8> = (0..width).flat_map(|i| tree.node(HEIGHT * level, index * WIDTH + i).unwrap()).collect();
            let path = dir.join(tile_path(level, index, width));
            assert_eq!(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())), want, "{} at size {size}", path.display());
            // Served the same way, too.
            assert_eq!(ledger.tile(level, index, width).unwrap().unwrap(), want);
        }
    }
}

#[test]
fn tiles_are_byte_identical_to_a_naive_tree_around_every_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    for size in [255, 256, 257, 65535, 65536, 65537] {
        grow_to(&ledger, size);
        assert_tiles_match(&ledger, &cfg.dir);
    }
    // Entry bundles hold the exact leaf bytes, each after its 16-bit length.
    let bundle = ledger.entry_bundle(1, 256).unwrap().unwrap();
    let leaves = ledger.read(256, 512).unwrap();
    let mut at = 0;
    for l in &leaves {
        let len = u16::from_be_bytes([bundle[at], bundle[at + 1]]) as usize;
        assert_eq!(&bundle[at + 2..at + 2 + len], &l.bytes[..]);
        at += 2 + len;
    }
    assert_eq!(at, bundle.len());
    assert!(ledger.entry_bundle(257, 1).unwrap().is_none(), "beyond the log");
}

#[test]
fn proofs_from_tiles_equal_proofs_from_the_in_memory_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    grow_to(&ledger, 70_000);
    // Reopened: nothing of the tree is in memory but the edge.
    drop(ledger);
    let (ledger, _) = Ledger::open(cfg).unwrap();
    let tree = reference(&ledger);
    let size = ledger.size();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % bound
    };
    for _ in 0..300 {
        let n = 1 + next(size);
        let m = next(n);
        assert_eq!(ledger.inclusion_proof(m, n).unwrap(), tree.inclusion_proof(m, n).unwrap(), "inclusion {m} in {n}");
        assert_eq!(ledger.consistency_proof(m, n).unwrap(), tree.consistency_proof(m, n).unwrap(), "consistency {m} → {n}");
        assert_eq!(ledger.root_at(n), tree.root_at(n), "root at {n}");
    }
    // Served proofs are checked against a signed checkpoint first.
    let (leaf, root, proof) = ledger.prove_inclusion(12_345, size).unwrap();
    lakeledger_audit::merkle::verify_inclusion(12_345, size, &leaf.hash, &proof, &root).unwrap();
    assert!(ledger.cached_tiles() <= 4096);
}

fn tile_file(dir: &Path, level: u32, index: u64) -> PathBuf {
    dir.join(lakeledger_audit::tiles::tile_path(level, index, 256))
}

#[test]
fn a_torn_tile_or_index_is_repaired_from_the_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    grow_to(&ledger, 700);
    drop(ledger);
    // The newest full tile was being written when the power went.
    let newest = tile_file(&cfg.dir, 0, 1);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..100]).unwrap();
    // And the segment's index lost its tail.
    let idx = cfg.dir.join("seg-00000001.idx");
    let len = std::fs::metadata(&idx).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&idx).unwrap().set_len(len - 40).unwrap();
    let (ledger, report) = Ledger::open(cfg.clone()).unwrap();
    assert!(report.rebuilt.as_deref().unwrap().contains("tile/0/001"), "{report:?}");
    assert_eq!(std::fs::read(&newest).unwrap(), bytes, "rebuilt from the segments");
    assert_tiles_match(&ledger, &cfg.dir);
    // Records read through the rebuilt index; a wrong index entry is rebuilt on read too.
    drop(ledger);
    let mut b = std::fs::read(&idx).unwrap();
    b[24 + 4 * 10] ^= 0x08;
    std::fs::write(&idx, &b).unwrap();
    let (ledger, _) = Ledger::open(cfg).unwrap();
    assert_eq!(ledger.read(10, 11).unwrap()[0].seq, 10);
}

#[test]
fn a_tampered_tile_is_found_by_scrub_and_never_served_as_a_proof() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    // Small segments: the first tile covers records of a sealed segment, which opening
    // does not read again.
    cfg.segment_max_bytes = 64 << 10;
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    grow_to(&ledger, 1200);
    drop(ledger);
    let clean = lakeledger_audit::scrub::scrub(&cfg.dir, false).unwrap();
    assert!(clean.clean(), "{clean:?}");
    assert!(clean.records > 1200 && clean.checkpoints >= 2 && clean.tiles >= 5, "{clean:?}");

    // An old full tile is changed: opening does not look at it, but no proof built
    // from it is served, and scrub names it.
    let old = tile_file(&cfg.dir, 0, 0);
    let mut b = std::fs::read(&old).unwrap();
    b[32 * 7] ^= 1;
    std::fs::write(&old, &b).unwrap();
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let size = ledger.size();
    let err = ledger.prove_inclusion(7, size).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert!(ledger.prove_inclusion(900, size).is_ok(), "proofs that do not use it are served");
    drop(ledger);
    let found = lakeledger_audit::scrub::scrub(&cfg.dir, false).unwrap();
    assert_eq!(found.bad_tiles, vec!["tile/0/000".to_string()], "{found:?}");
    assert_eq!(found.first_bad_seq, Some(0));
    // An index entry changed is named too; repair rewrites both from the segments.
    let idx = cfg.dir.join("seg-00000001.idx");
    let mut b = std::fs::read(&idx).unwrap();
    b[24 + 4 * 3] ^= 0x10;
    std::fs::write(&idx, &b).unwrap();
    let found = lakeledger_audit::scrub::scrub(&cfg.dir, true).unwrap();
    assert_eq!(found.bad_indexes, vec!["seg-00000001.idx".to_string()], "{found:?}");
    assert!(found.repaired);
    assert!(lakeledger_audit::scrub::scrub(&cfg.dir, false).unwrap().clean());
    let (ledger, _) = Ledger::open(cfg).unwrap();
    assert!(ledger.prove_inclusion(7, ledger.size()).is_ok());
}

#[test]
fn scrub_names_the_first_edited_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 10);
    drop(ledger);
    edit_record_fixing_crc(&cfg.dir, 6);
    let report = lakeledger_audit::scrub::scrub(&cfg.dir, true).unwrap();
    assert_eq!(report.first_bad_seq, Some(7), "{report:?}");
    assert!(!report.repaired, "segments are never rewritten");
}

#[test]
fn sealed_segments_are_compressed_and_read_back_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 64 << 10;
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let receipts = append_events(&ledger, 3000);
    ledger.checkpoint().unwrap();
    let before = ledger.read(0, ledger.size()).unwrap();
    // The compactor works off the write path; wait for it.
    let sealed = ledger.segments().len() - 1;
    for _ in 0..500 {
        if ledger.segments().iter().filter(|s| s.stored == lakeledger_audit::store::Stored::Compressed).count() == sealed {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let names: Vec<String> = std::fs::read_dir(&cfg.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".zst")).count(), sealed, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".log") && n.starts_with("seg-")).count(), 1);
    let raw: u64 = before.iter().map(|l| l.bytes.len() as u64).sum();
    let stored: u64 = names.iter().filter(|n| n.starts_with("seg-")).map(|n| std::fs::metadata(cfg.dir.join(n)).unwrap().len()).sum();
    assert!(stored * 3 < raw, "compressed {stored} bytes for {raw} bytes of records");
    let after = ledger.read(0, ledger.size()).unwrap();
    assert_eq!(before.iter().map(|l| l.hash).collect::<Vec<_>>(), after.iter().map(|l| l.hash).collect::<Vec<_>>());
    drop(ledger);
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    for r in &receipts {
        assert_eq!(ledger.read(r.seq, r.seq + 1).unwrap()[0].hash, r.leaf_hash);
    }
    drop(ledger);
    assert!(lakeledger_audit::scrub::scrub(&cfg.dir, false).unwrap().clean());
}

#[test]
fn a_first_format_directory_is_upgraded_once_and_the_upgrade_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let receipts = append_events(&ledger, 600);
    drop(ledger);
    // The first format had segments and checkpoints only.
    for e in std::fs::read_dir(&cfg.dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name == "tile" {
            std::fs::remove_dir_all(&p).unwrap();
        } else if name == "FORMAT" || name == "keys.log" || name.ends_with(".idx") {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let (ledger, report) = Ledger::open(cfg.clone()).unwrap();
    assert!(report.rebuilt.as_deref().unwrap().contains("upgraded"), "{report:?}");
    let size = ledger.size();
    let records = ledger.read(0, size).unwrap();
    let upgrade = records.iter().rev().find(|l| l.view().unwrap().record_type == RecordType::Recovery).expect("the upgrade is recorded");
    assert!(upgrade.view().unwrap().payload_str().contains("upgraded"));
    for r in &receipts {
        assert_eq!(records[r.seq as usize].hash, r.leaf_hash);
    }
    assert_tiles_match(&ledger, &cfg.dir);
    drop(ledger);
    let (_, again) = Ledger::open(cfg).unwrap();
    assert!(again.rebuilt.is_none(), "only once");
}

#[test]
fn an_event_too_large_for_one_record_moves_its_details_into_continuations() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(config(tmp.path())).unwrap();
    let mut e = event(0);
    let big: String = (0..30_000).map(|i| format!("{:x},", i % 4096)).collect();
    e.details.push(("entity_key_hashes".into(), big.clone()));
    let receipt = ledger.append_event(&e).unwrap().wait(WAIT).unwrap();
    let records = ledger.read(0, ledger.size()).unwrap();
    let main: Value = serde_json::from_slice(records[receipt.seq as usize].view().unwrap().payload).unwrap();
    let moved = main["details"]["entity_key_hashes"].as_str().unwrap().to_string();
    assert!(moved.starts_with("moved to "), "{moved}");
    let mut joined = String::new();
    for l in &records[..receipt.seq as usize] {
        let v: Value = serde_json::from_slice(l.view().unwrap().payload).unwrap_or_default();
        if v["kind"] == "audit.continuation" && v["details"]["continues"] == main["event_id"] {
            joined.push_str(v["details"]["value"].as_str().unwrap());
        }
    }
    assert_eq!(joined, big, "nothing is dropped");
}

/// The child half of the kill -9 test: appends until killed, printing each receipt as
/// soon as it is durable. Does nothing unless started by that test.
#[test]
fn child_appender() {
    use std::io::Write;
    let Ok(dir) = std::env::var("LAKELEDGER_AUDIT_CHILD_DIR") else { return };
    let mut cfg = config(Path::new(&dir));
    // Many segments, tiles and checkpoints, so the kill lands amid all of them.
    cfg.segment_max_bytes = 128 << 10;
    cfg.checkpoint_interval = Duration::from_millis(20);
    let (ledger, _) = Ledger::open(cfg).unwrap();
    let mut out = std::io::stdout();
    let mut i = 0;
    loop {
        let pending: Vec<_> = (0..50)
            .map(|_| {
                i += 1;
                ledger.append_event(&event(i)).unwrap()
            })
            .collect();
        for p in pending {
            let r = p.wait(WAIT).unwrap();
            writeln!(out, "receipt {} {}", r.seq, hex::encode(r.leaf_hash)).unwrap();
        }
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_while_tiles_and_segments_are_written_loses_no_receipt() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let mut receipts: BTreeMap<u64, String> = BTreeMap::new();
    for round in 0..6 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["child_appender", "--exact", "--nocapture", "--test-threads=1"])
            .env("LAKELEDGER_AUDIT_CHILD_DIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in reader.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("receipt ") else { continue };
            let (seq, hash) = rest.split_once(' ').unwrap();
            receipts.insert(seq.parse().unwrap(), hash.to_string());
            seen += 1;
            // Kill at a different point each round.
            if seen >= 1500 + 377 * round {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    assert!(ledger.segments().len() > 3);
    let records = ledger.read(0, ledger.size()).unwrap();
    for (seq, hash) in &receipts {
        assert_eq!(&hex::encode(records[*seq as usize].hash), hash, "receipt {seq} is durable with its hash");
    }
    drop(ledger);
    let report = lakeledger_audit::scrub::scrub(&cfg.dir, false).unwrap();
    assert!(report.clean(), "{report:?}");
}

/// An event whose payload needs every kind of JSON escaping on its way into a package.
fn awkward_event() -> Event {
    let mut e = Event::new("data.read", Phase::Intent);
    e.resource.name = Some("group_\"quoted\"\\back\nslash\ttab\u{1}é😀".into());
    e.actor.tenant = Some("acme".into());
    e
}

#[test]
fn packages_stream_to_a_directory_or_a_json_file_and_verify_in_place() {
    use lakeledger_audit::{DirSink, DirSource, Export, JsonFileSource, JsonSink, verify};
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 64 << 10;
    let (ledger, _) = Ledger::open(cfg).unwrap();
    append_events(&ledger, 500);
    let kept = ledger.checkpoint().unwrap().checkpoint;
    ledger.append_event(&awkward_event()).unwrap().wait(WAIT).unwrap();
    append_events(&ledger, 2500);
    let k = keys(&ledger);
    let acme = RecordFilter { tenant: Some("acme".into()), ..Default::default() };

    for (name, filter) in [("complete", RecordFilter::default()), ("acme", acme)] {
        let dir = tmp.path().join(format!("{name}-dir"));
        let summary = Export::prepare(&ledger, &filter, Some(kept.size)).unwrap().write_to(&mut DirSink::create(&dir).unwrap()).unwrap();
        let from_dir = verify(&DirSource(dir.clone()), &k, Some(&kept.note)).unwrap();
        assert_eq!((from_dir.records, from_dir.end_size, from_dir.complete), (summary.records, summary.end_size, summary.complete));

        let file = tmp.path().join(format!("{name}.json"));
        let mut sink = JsonSink::new(std::fs::File::create(&file).unwrap()).unwrap();
        let summary = Export::prepare(&ledger, &filter, Some(kept.size)).unwrap().write_to(&mut sink).unwrap();
        sink.into_inner().unwrap();
        // The streamed document is plain JSON holding the same files as the directory.
        let text = std::fs::read_to_string(&file).unwrap();
        let pkg = Package::from_json(&text).unwrap();
        assert!(pkg.files["leaves.jsonl"].contains("\\\"quoted\\\""), "the awkward payload survives escaping");
        let in_place = verify(&JsonFileSource::open(&file).unwrap(), &k, Some(&kept.note)).unwrap();
        assert_eq!(in_place, verify_package(&pkg, &k, Some(&kept.note)).unwrap());
        assert_eq!(in_place.records, summary.records);
        if name == "acme" {
            assert!(!in_place.complete && in_place.records > 100);
            let line: Value = serde_json::from_str(pkg.files["leaves.jsonl"].lines().next().unwrap()).unwrap();
            assert!(line["inclusion"].is_array(), "each record carries its own proof");
        }

        // An edited record in the JSON file is named, read in place.
        let mut bad = pkg.clone();
        let mut l = lines(&bad);
        rewrite_line(&mut l[40]);
        let seq = l[40]["seq"].as_u64().unwrap();
        set_lines(&mut bad, &l);
        std::fs::write(&file, bad.to_json()).unwrap();
        match verify(&JsonFileSource::open(&file).unwrap(), &k, None) {
            Err(Error::Verify { seq: s, .. }) => assert_eq!(s, Some(seq)),
            other => panic!("{name}: an edited record must fail, got {other:?}"),
        }
    }
}

#[test]
fn a_first_format_package_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = Ledger::open(config(tmp.path())).unwrap();
    append_events(&ledger, 40);
    let filter = RecordFilter { tenant: Some("acme".into()), ..Default::default() };
    let pkg = Package::export(&ledger, &filter, None).unwrap();
    // The first format kept inclusion proofs in proofs.json, by seq.
    let mut v1 = pkg.clone();
    let mut inclusion = serde_json::Map::new();
    let mut l = lines(&v1);
    for line in &mut l {
        inclusion.insert(line["seq"].to_string(), line.as_object_mut().unwrap().remove("inclusion").unwrap());
    }
    let mut proofs: Value = serde_json::from_str(&v1.files["proofs.json"]).unwrap();
    proofs["inclusion"] = Value::Object(inclusion);
    v1.files.insert("proofs.json".into(), proofs.to_string());
    set_lines(&mut v1, &l);
    let mut m: Value = serde_json::from_str(&v1.files["manifest.json"]).unwrap();
    m["format"] = "lakeledger-audit-package/1".into();
    v1.files.insert("manifest.json".into(), m.to_string());
    let s = verify_package(&v1, &keys(&ledger), None).unwrap();
    assert_eq!(s.records, 10);
    assert!(!s.complete);
}

/// A copy of a log's segments and checkpoints, nothing derived (no tiles, indexes or key
/// list): what an archive or a backup holds.
fn segments_and_checkpoints(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for (p, bytes) in files(from) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("seg-") && !name.ends_with(".idx") || name == "checkpoints.log" {
            std::fs::write(to.join(&name), bytes).unwrap();
        }
    }
}

#[test]
fn a_log_directory_verifies_from_its_segments_and_checkpoints_alone() {
    use lakeledger_audit::archive::{DirLog, is_log_dir, verify_log};
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 64 << 10;
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let first_key = ledger.public_key();
    append_events(&ledger, 1500);
    let kept = ledger.checkpoint().unwrap().checkpoint;
    ledger.rotate_key(SignerKey::generate(ledger.origin()).unwrap()).unwrap();
    append_events(&ledger, 1500);
    ledger.checkpoint().unwrap();
    let size = ledger.size();
    drop(ledger);

    let copy = tmp.path().join("copy");
    segments_and_checkpoints(&cfg.dir, &copy);
    assert!(is_log_dir(&copy));
    let s = verify_log(&DirLog(copy.clone()), std::slice::from_ref(&first_key), Some(&kept.note)).unwrap();
    // Closing added the shutdown record, under a final checkpoint.
    assert_eq!((s.records, s.end_size), (size + 1, size + 1), "{s:?}");
    assert!(s.checkpoints >= 3);
    assert!(verify_log(&DirLog(copy.clone()), &[SignerKey::generate("someone").unwrap().verifier().clone()], None).is_err());

    // A lost segment is noticed; an edited record (CRC fixed up) is named.
    let small = config(&tmp.path().join("small"));
    let (ledger, _) = Ledger::open(small.clone()).unwrap();
    append_events(&ledger, 20);
    let small_key = ledger.public_key();
    drop(ledger);
    let edited = tmp.path().join("edited");
    segments_and_checkpoints(&small.dir, &edited);
    edit_record_fixing_crc(&edited, 7);
    match verify_log(&DirLog(edited.clone()), std::slice::from_ref(&small_key), None) {
        Err(Error::Verify { seq, .. }) => assert_eq!(seq, Some(7)),
        other => panic!("an edited record must fail, got {other:?}"),
    }
    let short = tmp.path().join("short");
    segments_and_checkpoints(&cfg.dir, &short);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&short).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-")).collect();
    segs.sort();
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    let err = verify_log(&DirLog(short.clone()), std::slice::from_ref(&first_key), None).unwrap_err().to_string();
    assert!(err.contains("records were lost or removed"), "{err}");
}

/// Every page of a search, followed to its end.
fn search_all(ledger: &Ledger, filter: &RecordFilter, limit: usize) -> Vec<u64> {
    let mut f = filter.clone();
    let mut out = Vec::new();
    loop {
        let page = ledger.search(&f, limit).unwrap();
        assert!(page.leaves.len() <= limit);
        out.extend(page.leaves.iter().map(|l| l.seq));
        match page.next_seq {
            Some(n) => f.from_seq = Some(n),
            None => return out,
        }
    }
}

fn scan_all(ledger: &Ledger, filter: &RecordFilter) -> Vec<u64> {
    let to = filter.to_seq.unwrap_or(ledger.size()).min(ledger.size());
    let from = filter.from_seq.unwrap_or(0).min(to);
    ledger.read(from, to).unwrap().into_iter().filter(|l| filter.matches(&l.view().unwrap())).map(|l| l.seq).collect()
}

#[test]
fn searches_through_the_index_find_exactly_what_a_scan_finds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 64 << 10;
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 1200);
    let middle = ledger.read(700, 701).unwrap()[0].view().unwrap().ts_unix_ns;
    append_events(&ledger, 1800);
    ledger.checkpoint().unwrap();
    assert!(ledger.segments().len() > 5, "sealed segments and an open one");

    let f = |actor: Option<&str>, action: Option<&str>, resource: Option<&str>, tenant: Option<&str>| RecordFilter {
        actor: actor.map(Into::into),
        action: action.map(Into::into),
        resource: resource.map(Into::into),
        tenant: tenant.map(Into::into),
        ..Default::default()
    };
    let mut filters = vec![
        RecordFilter::default(),
        f(Some("key-1"), None, None, None),
        f(None, Some("data.read"), None, None),
        f(None, Some("feature_group."), None, None),
        f(None, Some("feature_."), None, None),
        f(None, None, Some("group_1201"), None),
        f(None, None, None, Some("acme")),
        f(Some("key-2"), Some("data."), None, Some("acme")),
        f(Some("nobody"), None, None, None),
        RecordFilter { since_ns: Some(middle), tenant: Some("acme".into()), ..Default::default() },
        RecordFilter { until_ns: Some(middle), actor: Some("key-0".into()), ..Default::default() },
        RecordFilter { since_ns: Some(middle), until_ns: Some(middle + 1), ..Default::default() },
        RecordFilter { from_seq: Some(1000), to_seq: Some(2500), action: Some("data.read".into()), ..Default::default() },
    ];
    filters.push(RecordFilter { from_seq: Some(333), ..filters[6].clone() });
    for filter in &filters {
        let want = scan_all(&ledger, filter);
        for limit in [1, 7, 1000] {
            assert_eq!(search_all(&ledger, filter, limit), want, "{filter:?} in pages of {limit}");
        }
    }
    assert!(!scan_all(&ledger, &filters[1]).is_empty());

    // The indexes of sealed segments are on disk; damaged or missing ones are rebuilt,
    // and one that lies only narrows the search (it never adds a record).
    let terms: Vec<PathBuf> = std::fs::read_dir(&cfg.dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "terms")).collect();
    assert!(!terms.is_empty());
    drop(ledger);
    std::fs::write(&terms[0], b"garbage").unwrap();
    std::fs::remove_file(&terms[1]).unwrap();
    let mut b = std::fs::read(&terms[2]).unwrap();
    let n = b.len();
    b[n - 10] ^= 0xff;
    std::fs::write(&terms[2], b).unwrap();
    let (ledger, _) = Ledger::open(cfg).unwrap();
    for filter in &filters {
        assert_eq!(search_all(&ledger, filter, 50), scan_all(&ledger, filter), "{filter:?} after damage");
    }
}

fn wait_for_compression(ledger: &Ledger) {
    let sealed = ledger.segments().len() - 1;
    for _ in 0..1000 {
        if ledger.segments().iter().filter(|s| s.stored == lakeledger_audit::store::Stored::Compressed).count() == sealed {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("sealed segments were not compressed");
}

#[test]
fn an_archived_log_verifies_from_the_archive_alone_and_dropped_segments_come_back() {
    use lakeledger_audit::archive::{ArchiveStore, DirArchive, DirLog, StoreLog, archive_pass, verify_log};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let archive_dir = tmp.path().join("archive");
    let archive = Arc::new(DirArchive(archive_dir.clone()));
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 64 << 10;
    cfg.archive = Some(archive.clone());
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let first_key = ledger.public_key();
    append_events(&ledger, 1500);
    ledger.rotate_key(SignerKey::generate(ledger.origin()).unwrap()).unwrap();
    append_events(&ledger, 1500);
    ledger.checkpoint().unwrap();
    wait_for_compression(&ledger);

    let report = archive_pass(&ledger, &*archive, None).unwrap();
    let sealed = ledger.segments().len() as u32 - 1;
    assert_eq!(report.segments, (1..=sealed).collect::<Vec<_>>());
    assert!(report.tiles >= 10, "{report:?}");
    assert!(archive_pass(&ledger, &*archive, None).unwrap().segments.is_empty(), "a second pass has nothing new");

    // The archive alone verifies, up to the end of its last segment, which a checkpoint
    // signed at the seal covers exactly.
    let archived_end = ledger.segments().last().unwrap().first_seq;
    for s in [verify_log(&DirLog(archive_dir.clone()), std::slice::from_ref(&first_key), None).unwrap(), verify_log(&StoreLog(&*archive), std::slice::from_ref(&first_key), None).unwrap()] {
        assert_eq!((s.records, s.end_size), (archived_end, archived_end), "{s:?}");
    }
    // Nothing in it is ever overwritten.
    let name = "seg-00000001.zst";
    assert!(archive.put_new(name, b"other bytes").is_err());

    // Past the retention the local copies go; reads fetch them back, checked.
    let before: Vec<_> = ledger.read(0, ledger.size()).unwrap().iter().map(|l| l.hash).collect();
    let dropped = archive_pass(&ledger, &*archive, Some(Duration::ZERO)).unwrap().dropped;
    assert_eq!(dropped, (1..=sealed).collect::<Vec<_>>());
    assert!(!cfg.dir.join(name).exists() && cfg.dir.join("seg-00000001.archived").exists());
    let size = ledger.size();
    drop(ledger);
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    let after: Vec<_> = ledger.read(0, size).unwrap().iter().map(|l| l.hash).collect();
    assert_eq!(before, after);
    assert!(cfg.dir.join(name).exists(), "a segment read is kept again until the next pass");
    let acme = RecordFilter { tenant: Some("acme".into()), ..Default::default() };
    assert_eq!(search_all(&ledger, &acme, 100).len(), 750, "search reads dropped segments too");

    // Without the archive a dropped segment cannot be read, and the error says why; an
    // archive whose copy changed is refused.
    archive_pass(&ledger, &*archive, Some(Duration::ZERO)).unwrap();
    drop(ledger);
    let mut no_archive = cfg.clone();
    no_archive.archive = None;
    let (ledger, _) = Ledger::open(no_archive).unwrap();
    let err = ledger.read(0, 1).unwrap_err().to_string();
    assert!(err.contains("archive"), "{err}");
    drop(ledger);
    let mut z = std::fs::read(archive_dir.join(name)).unwrap();
    let n = z.len();
    z[n - 1] ^= 1;
    std::fs::remove_file(archive_dir.join(name)).unwrap();
    std::fs::write(archive_dir.join(name), z).unwrap();
    let (ledger, _) = Ledger::open(cfg).unwrap();
    let err = ledger.read(0, 1).unwrap_err().to_string();
    assert!(err.contains("not the copy this node archived"), "{err}");
    assert!(verify_log(&DirLog(archive_dir), std::slice::from_ref(&first_key), None).is_err());
}

#[test]
fn the_live_check_passes_a_sound_log_and_names_an_edited_sealed_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.segment_max_bytes = 64 << 10;
    cfg.compress_sealed = false;
    let (ledger, _) = Ledger::open(cfg.clone()).unwrap();
    append_events(&ledger, 1200);
    ledger.checkpoint().unwrap();
    let report = ledger.check_live().unwrap();
    assert_eq!((report.records, report.problem.clone()), (ledger.size(), None), "{report:?}");
    assert!(report.checkpoints >= 2);
    // Edited under the running ledger (CRC fixed up): the read-back names it.
    edit_record_fixing_crc(&cfg.dir, 9);
    let report = ledger.check_live().unwrap();
    assert_eq!(report.problem.as_ref().and_then(|p| p.0), Some(9), "{report:?}");
}
