//! Export packages: a self-contained set of text files an auditor verifies offline.
//!
//! ```text
//! manifest.json      {"format":"lakeledger-audit-package/1","origin","log_id","complete",
//!                     "end_size","filter":{…},"files":{"<name>":"<sha256 hex>",…}}
//! leaves.jsonl       one line per record, in seq order:
//!                    {"seq","leaf_hash":"<hex>","leaf":"<base64 of the exact leaf bytes>",
//!                     "record_type","ts_unix_ns","prev_leaf":"<hex>","payload":{…}}
//!                    (everything after "leaf" is a decoded view the verifier checks
//!                    against the bytes)
//! checkpoints.jsonl  {"size","note"} in increasing size; the last covers end_size
//! proofs.json        {"consistency":[{"old","new","proof":["<hex>",…]}],
//!                     "inclusion":{"<seq>":["<hex>",…]}}
//! keys.txt           the log's verifier keys, oldest first (informational: the auditor
//!                    supplies the keys they trust)
//! ```
//!
//! A package is *complete* when it holds every record `0..end_size`; the verifier then
//! recomputes the root at every checkpoint. Otherwise (a filter or a seq range was
//! given) each record carries an inclusion proof against the end checkpoint.
//! A package travels as a directory of these files or as one JSON object
//! `{"files":{"<name>":"<content>",…}}`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::event::Obj;
use crate::leaf::{LeafView, RecordType, StoredLeaf};
use crate::ledger::Ledger;
use crate::merkle::Hash;

pub const FORMAT: &str = "lakeledger-audit-package/1";
pub const FILES: [&str; 4] = [
    "leaves.jsonl",
    "checkpoints.jsonl",
    "proofs.json",
    "keys.txt",
];

/// Which records to select. All set conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    pub from_seq: Option<u64>,
    /// Exclusive.
    pub to_seq: Option<u64>,
    pub since_ns: Option<i64>,
    /// Exclusive.
    pub until_ns: Option<i64>,
    /// Principal id.
    pub actor: Option<String>,
    /// Event kind, or a prefix of it ending in `.` (`feature_group.`).
    pub action: Option<String>,
    pub resource: Option<String>,
    /// Matches the actor's or the resource's tenant.
    pub tenant: Option<String>,
}

impl RecordFilter {
    /// True when no condition narrows the selection beyond a seq range starting at 0.
    pub fn selects_everything(&self) -> bool {
        self.from_seq.unwrap_or(0) == 0
            && self.to_seq.is_none()
            && self.since_ns.is_none()
            && self.until_ns.is_none()
            && self.actor.is_none()
            && self.action.is_none()
            && self.resource.is_none()
            && self.tenant.is_none()
    }

    pub fn matches(&self, view: &LeafView<'_>) -> bool {
        if self.from_seq.is_some_and(|f| view.seq < f) || self.to_seq.is_some_and(|t| view.seq >= t)
        {
            return false;
        }
        if self.since_ns.is_some_and(|s| view.ts_unix_ns < s)
            || self.until_ns.is_some_and(|u| view.ts_unix_ns >= u)
        {
            return false;
        }
        if self.actor.is_none()
            && self.action.is_none()
            && self.resource.is_none()
            && self.tenant.is_none()
        {
            return true;
        }
        // Records other than events (genesis, startup, …) carry no actor or resource.
        if view.record_type != RecordType::Event {
            return false;
        }
        let Ok(p) = serde_json::from_slice::<serde_json::Value>(view.payload) else {
            return false;
        };
        let eq = |v: &serde_json::Value, want: &str| v.as_str() == Some(want);
        if let Some(a) = &self.actor
            && !eq(&p["actor"]["principal"], a)
        {
            return false;
        }
        if let Some(a) = &self.action {
            let kind = p["kind"].as_str().unwrap_or("");
            let ok = if a.ends_with('.') {
                kind.starts_with(a.as_str())
            } else {
                kind == a
            };
            if !ok {
                return false;
            }
        }
        if let Some(r) = &self.resource
            && !eq(&p["resource"]["name"], r)
        {
            return false;
        }
        if let Some(t) = &self.tenant
            && !eq(&p["actor"]["tenant"], t)
            && !eq(&p["resource"]["tenant"], t)
        {
            return false;
        }
        true
    }

    fn describe(&self) -> String {
        let mut o = Obj::new();
        o.opt_u64("from_seq", self.from_seq)
            .opt_u64("to_seq", self.to_seq)
            .opt_str("since_ns", self.since_ns.map(|v| v.to_string()).as_deref())
            .opt_str("until_ns", self.until_ns.map(|v| v.to_string()).as_deref())
            .opt_str("actor", self.actor.as_deref())
            .opt_str("action", self.action.as_deref())
            .opt_str("resource", self.resource.as_deref())
            .opt_str("tenant", self.tenant.as_deref());
        o.finish()
    }
}

/// One record in the form the API and packages show it: the exact bytes plus a view.
pub fn leaf_json(leaf: &StoredLeaf) -> Result<String> {
    let v = leaf.view()?;
    let mut o = Obj::new();
    o.u64("seq", leaf.seq)
        .str("leaf_hash", &hex::encode(leaf.hash))
        .str("leaf", &B64.encode(&leaf.bytes))
        .str("record_type", v.record_type.name())
        .i64("ts_unix_ns", v.ts_unix_ns)
        .str("prev_leaf", &hex::encode(v.prev_leaf));
    let mut s = o.finish();
    // The payload is already canonical JSON: splice it in as it is.
    s.pop();
    s.push_str(",\"payload\":");
    s.push_str(v.payload_str());
    s.push('}');
    Ok(s)
}

fn hashes_json(proof: &[Hash]) -> String {
    let items: Vec<String> = proof
        .iter()
        .map(|h| format!("\"{}\"", hex::encode(h)))
        .collect();
    format!("[{}]", items.join(","))
}

/// An export package held in memory: file name → content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Package {
    pub files: BTreeMap<String, String>,
}

impl Package {
    /// Builds a package from the ledger. A fresh checkpoint is signed first so the
    /// package covers everything durable at this moment. `since_size` adds a
    /// consistency proof from an older checkpoint the auditor kept.
    pub fn export(
        ledger: &Ledger,
        filter: &RecordFilter,
        since_size: Option<u64>,
    ) -> Result<Package> {
        let end = ledger.checkpoint()?;
        let end_size = end.checkpoint.size;
        let complete = filter.selects_everything();
        let from = filter.from_seq.unwrap_or(0).min(end_size);
        let to = filter.to_seq.unwrap_or(end_size).min(end_size);

        let mut leaves = String::new();
        let mut inclusion = Vec::new();
        let mut count = 0u64;
        let mut at = from;
        while at < to {
            let chunk_end = (at + 4096).min(to);
            for leaf in ledger.read(at, chunk_end)? {
                if !complete && !filter.matches(&leaf.view()?) {
                    continue;
                }
                leaves.push_str(&leaf_json(&leaf)?);
                leaves.push('\n');
                count += 1;
                if !complete {
                    let proof = ledger.inclusion_proof(leaf.seq, end_size)?;
                    inclusion.push(format!("\"{}\":{}", leaf.seq, hashes_json(&proof)));
                }
            }
            at = chunk_end;
        }

        // Complete packages carry the whole checkpoint history (each root is recomputed);
        // partial ones the newest checkpoint at or below `from`, and the end.
        let mut history = Vec::new();
        ledger.each_checkpoint(|c| {
            history.push(c);
            Ok(())
        })?;
        let mut cps: Vec<(u64, String)> = if complete {
            history
                .iter()
                .filter(|c| c.checkpoint.size <= end_size)
                .map(|c| (c.checkpoint.size, c.checkpoint.note.clone()))
                .collect()
        } else {
            history
                .iter()
                .rfind(|c| c.checkpoint.size <= from && c.checkpoint.size > 0)
                .map(|c| vec![(c.checkpoint.size, c.checkpoint.note.clone())])
                .unwrap_or_default()
        };
        if cps.last().map(|c| c.0) != Some(end_size) {
            cps.push((end_size, end.checkpoint.note.clone()));
        }
        let mut checkpoints = String::new();
        for (size, note) in &cps {
            let mut o = Obj::new();
            o.u64("size", *size).str("note", note);
            checkpoints.push_str(&o.finish());
            checkpoints.push('\n');
        }

        let mut consistency = Vec::new();
        let mut pairs: Vec<(u64, u64)> = if complete {
            Vec::new()
        } else {
            cps.windows(2).map(|w| (w[0].0, w[1].0)).collect()
        };
        if let Some(s) = since_size {
            if s > end_size {
                return Err(Error::Malformed(format!(
                    "since_size {s} is beyond the log's size {end_size}"
                )));
            }
            pairs.push((s, end_size));
        }
        for (old, new) in pairs {
            let proof = ledger.consistency_proof(old, new)?;
            consistency.push(format!(
                "{{\"old\":{old},\"new\":{new},\"proof\":{}}}",
                hashes_json(&proof)
            ));
        }
        let proofs = format!(
            "{{\"consistency\":[{}],\"inclusion\":{{{}}}}}\n",
            consistency.join(","),
            inclusion.join(",")
        );
        let keys: String = ledger
            .public_keys()
            .iter()
            .map(|k| format!("{}\n", k.encode()))
            .collect();

        let mut pkg = Package::default();
        pkg.files.insert("leaves.jsonl".into(), leaves);
        pkg.files.insert("checkpoints.jsonl".into(), checkpoints);
        pkg.files.insert("proofs.json".into(), proofs);
        pkg.files.insert("keys.txt".into(), keys);
        let mut hashes = Obj::new();
        for name in FILES {
            hashes.str(
                name,
                &hex::encode(Sha256::digest(pkg.files[name].as_bytes())),
            );
        }
        let mut m = Obj::new();
        m.str("format", FORMAT)
            .str("origin", ledger.origin())
            .str("log_id", &hex::encode(ledger.log_id()))
            .bool("complete", complete)
            .u64("end_size", end_size)
            .u64("records", count);
        let mut manifest = m.finish();
        manifest.pop();
        manifest.push_str(&format!(
            ",\"filter\":{},\"files\":{}}}\n",
            filter.describe(),
            hashes.finish()
        ));
        pkg.files.insert("manifest.json".into(), manifest);
        Ok(pkg)
    }

    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        for (name, content) in &self.files {
            let p = dir.join(name);
            std::fs::write(&p, content).map_err(Error::io(format!("write {}", p.display())))?;
        }
        Ok(())
    }

    /// Reads a package from a directory, or from a file holding the single-JSON form.
    pub fn read(path: &Path) -> Result<Package> {
        let mut pkg = Package::default();
        if path.is_dir() {
            for name in std::iter::once("manifest.json").chain(FILES) {
                let p = path.join(name);
                if let Ok(c) = std::fs::read_to_string(&p) {
                    pkg.files.insert(name.to_string(), c);
                }
            }
        } else {
            let text = std::fs::read_to_string(path)
                .map_err(Error::io(format!("read {}", path.display())))?;
            pkg = Self::from_json(&text)?;
        }
        Ok(pkg)
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({ "format": FORMAT, "files": self.files }).to_string()
    }

    pub fn from_json(text: &str) -> Result<Package> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::verify(None, format!("package is not JSON: {e}")))?;
        let files = v["files"]
            .as_object()
            .ok_or_else(|| Error::verify(None, "package JSON has no \"files\" object"))?;
        let mut pkg = Package::default();
        for (k, c) in files {
            pkg.files.insert(
                k.clone(),
                c.as_str()
                    .ok_or_else(|| Error::verify(None, format!("file {k} is not text")))?
                    .to_string(),
            );
        }
        Ok(pkg)
    }
}
