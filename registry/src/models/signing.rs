//! Model signatures: the server's Ed25519 model-signing key, the keys it signed with
//! before (kept so earlier versions stay verifiable after a rotation), the signed
//! statement over an artifact's SHA-256 (a C2SP signed note), and the build id stamped on
//! each version.
//!
//! The previous keys are public halves only, kept beside the key file in
//! `<key file>.previous`, one per line. A rotation writes that list first and then
//! replaces the key, so a crash in between leaves the old key current and also listed:
//! nothing becomes unverifiable. The old private half is not kept: nothing new may be
//! signed with it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lakeledger_audit::{SignerKey, VerifierKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const KEY_NAME: &str = "lakeledger-models";

/// The server's model-signing key and the public halves of the keys it replaced.
pub struct ModelSigner {
    key: SignerKey,
    previous: Vec<VerifierKey>,
}

fn previous_path(key_path: &Path) -> PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".previous");
    PathBuf::from(p)
}

fn read_previous(key_path: &Path) -> Result<Vec<VerifierKey>> {
    let path = previous_path(key_path);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Internal(format!("cannot read {}: {e}", path.display()))),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| VerifierKey::parse(l.trim()).map_err(|e| Error::Internal(format!("{}: {e}", path.display()))))
        .collect()
}

impl ModelSigner {
    pub fn load(path: &Path) -> Result<(ModelSigner, bool)> {
        let (key, created) = lakeledger_audit::key_file(path, KEY_NAME)?;
        Ok((ModelSigner { key, previous: read_previous(path)? }, created))
    }

    /// Replaces the key at `path` with a new one, keeping the old public half among the
    /// previous keys. Returns the old and the new public keys. The server must be stopped
    /// (it holds the key in memory).
    pub fn rotate(path: &Path) -> Result<(VerifierKey, VerifierKey)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::BadRequest(format!("cannot read the model-signing key {}: {e}", path.display())))?;
        let old = SignerKey::parse(&text)?.verifier().clone();
        let mut previous = read_previous(path)?;
        if !previous.contains(&old) {
            previous.push(old.clone());
        }
        let list: String = previous.iter().map(|k| format!("{}\n", k.encode())).collect();
        lakeledger_audit::write_atomically(&previous_path(path), list.as_bytes(), 0o644)?;
        let new = SignerKey::generate(KEY_NAME)?;
        lakeledger_audit::write_atomically(path, format!("{}\n", new.encode()).as_bytes(), 0o600)?;
        Ok((old, new.verifier().clone()))
    }

    pub fn verifier(&self) -> &VerifierKey {
        self.key.verifier()
    }

    /// The keys this server signed with before the current one, oldest first.
    pub fn previous(&self) -> &[VerifierKey] {
        &self.previous
    }

    fn statement(tenant: &str, model: &str, sha256: &str) -> String {
        format!("lakeledger model artifact\n{tenant}/{model}\nsha256:{sha256}\n")
    }

    pub(super) fn sign(&self, tenant: &str, model: &str, sha256: &str) -> Result<String> {
        Ok(self.key.sign_note(&Self::statement(tenant, model, sha256))?)
    }

    /// Checks that `note` is a signature over exactly this artifact by the key the version
    /// names (`key_id`), which must be this server's current or a previous key. Says what
    /// failed otherwise.
    pub(super) fn verify(&self, note: &str, key_id: &str, tenant: &str, model: &str, sha256: &str) -> std::result::Result<(), String> {
        let key = std::iter::once(self.verifier())
            .chain(&self.previous)
            .find(|k| k.encode() == key_id)
            .ok_or_else(|| format!("it names signing key `{key_id}`, which is not one of this server's model-signing keys"))?;
        match lakeledger_audit::note::open_note(note, std::slice::from_ref(key)) {
            Ok((text, _)) if text == Self::statement(tenant, model, sha256) => Ok(()),
            Ok(_) => Err("its signature is over a different artifact".into()),
            Err(e) => Err(format!("its signature does not verify with key `{key_id}`: {e}")),
        }
    }
}

/// An identifier of the running binary: its version and the SHA-256 of the executable.
/// Reads the whole executable the first time (hundreds of megabytes for a debug build), so
/// async code asks for it through [`build_id_async`], and the server computes it in the
/// background at start.
pub fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let digest = std::env::current_exe()
            .and_then(std::fs::read)
            .map(|bytes| hex::encode(&Sha256::digest(bytes)[..8]))
            .unwrap_or_else(|_| "unknown".into());
        format!("lakeledger {} ({digest})", env!("CARGO_PKG_VERSION"))
    })
}

/// [`build_id`] off the async runtime's threads.
pub async fn build_id_async() -> &'static str {
    tokio::task::spawn_blocking(build_id).await.unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_keeps_earlier_signatures_verifiable_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-signing.key");
        let (first, created) = ModelSigner::load(&path).unwrap();
        assert!(created);
        let note = first.sign("default", "wine", "ab").unwrap();
        let first_id = first.verifier().encode();

        let (old, new) = ModelSigner::rotate(&path).unwrap();
        assert_eq!(old.encode(), first_id);
        let (second, _) = ModelSigner::load(&path).unwrap();
        assert_eq!(second.verifier(), &new);
        assert_eq!(second.previous(), std::slice::from_ref(&old));
        // Signed before the rotation, still verified, by the key it names.
        second.verify(&note, &first_id, "default", "wine", "ab").unwrap();
        let e = second.verify(&note, &first_id, "default", "wine", "cd").unwrap_err();
        assert!(e.contains("different artifact"), "{e}");
        // The note does not verify under a key it was not signed by, and a key the
        // server never had is refused by name.
        let e = second.verify(&note, &new.encode(), "default", "wine", "ab").unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let stranger = SignerKey::generate(KEY_NAME).unwrap();
        let forged = stranger.sign_note(&ModelSigner::statement("default", "wine", "ab")).unwrap();
        let e = second.verify(&forged, &stranger.verifier().encode(), "default", "wine", "ab").unwrap_err();
        assert!(e.contains("not one of this server's"), "{e}");

        // A second rotation keeps both earlier keys.
        ModelSigner::rotate(&path).unwrap();
        let (third, _) = ModelSigner::load(&path).unwrap();
        assert_eq!(third.previous().len(), 2);
        third.verify(&note, &first_id, "default", "wine", "ab").unwrap();
    }
}
