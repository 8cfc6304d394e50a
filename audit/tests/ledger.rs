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
        let (ledger, report) = Ledger::open(c.clone()).unwrap();
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
        let (again, report2) = Ledger::open(c).unwrap();
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
