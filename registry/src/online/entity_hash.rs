//! Keyed hashes of entity keys for audit records.

use serde_json::Value;

use super::lookup::EntityRows;
use crate::error::{Error, Result};
use crate::platform::keyfile::write_private;


/// Keyed hashes of entity keys: an audit record says which entities were served without
/// holding their identifiers, and anyone with the key (auditors, through
/// `POST /v1/audit/entity-hash`) can check whether a given entity was among them. A plain
/// hash would not do: small integer keys are found by trying them all.
pub struct EntityHasher {
    key: ring::hmac::Key,
}

impl EntityHasher {
    /// Reads the key at `path`, creating it (32 random bytes, mode 0600) at first start.
    pub fn load(path: &std::path::Path) -> Result<EntityHasher> {
        let secret = match std::fs::read_to_string(path) {
            Ok(text) => hex::decode(text.trim()).map_err(|e| Error::Internal(format!("{}: not a hex key: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::Internal(format!("create {}: {e}", parent.display())))?;
                }
                write_private(path, format!("{}\n", hex::encode(raw)).as_bytes())?;
                raw.to_vec()
            }
            Err(e) => return Err(Error::Internal(format!("read {}: {e}", path.display()))),
        };
        Ok(EntityHasher { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret) })
    }

    /// The hash of one entity: HMAC-SHA256 over `column=value` pairs in the given column
    /// order, joined by newlines, values as JSON; the first 16 bytes, hex.
    pub fn hash(&self, pairs: &[(&str, &Value)]) -> String {
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let tag = ring::hmac::sign(&self.key, text.join("\n").as_bytes());
        hex::encode(&tag.as_ref()[..16])
    }

    /// Hashes of every row's key columns, comma separated.
    pub fn hash_rows(&self, entities: &EntityRows, key_columns: &[String]) -> String {
        let mut out = String::with_capacity(entities.rows * 33);
        for r in 0..entities.rows {
            let pairs: Vec<(&str, &Value)> =
                key_columns.iter().filter_map(|k| entities.get(r, k).map(|v| (k.as_str(), v))).collect();
            if r > 0 {
                out.push(',');
            }
            out.push_str(&self.hash(&pairs));
        }
        out
    }
}
