//! Model signatures: the server's Ed25519 model-signing key, the signed statement over an
//! artifact's SHA-256 (a C2SP signed note), and the build id stamped on each version.

use std::sync::OnceLock;

use lakeledger_audit::{SignerKey, VerifierKey};
use sha2::{Digest, Sha256};

use crate::error::Result;

/// The server's model-signing key and its public half.
pub struct ModelSigner {
    key: SignerKey,
}

impl ModelSigner {
    pub fn load(path: &std::path::Path) -> Result<(ModelSigner, bool)> {
        let (key, created) = lakeledger_audit::key_file(path, "lakeledger-models")?;
        Ok((ModelSigner { key }, created))
    }

    pub fn verifier(&self) -> &VerifierKey {
        self.key.verifier()
    }

    fn statement(tenant: &str, model: &str, sha256: &str) -> String {
        format!("lakeledger model artifact\n{tenant}/{model}\nsha256:{sha256}\n")
    }

    pub(super) fn sign(&self, tenant: &str, model: &str, sha256: &str) -> Result<String> {
        Ok(self.key.sign_note(&Self::statement(tenant, model, sha256))?)
    }

    /// Checks that `note` is this key's signature over exactly this artifact.
    pub(super) fn verify(&self, note: &str, tenant: &str, model: &str, sha256: &str) -> bool {
        match lakeledger_audit::note::open_note(note, std::slice::from_ref(self.verifier())) {
            Ok((text, _)) => text == Self::statement(tenant, model, sha256),
            Err(_) => false,
        }
    }
}

/// An identifier of the running binary: its version and the SHA-256 of the executable.
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
