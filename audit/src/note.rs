//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519, and checkpoints
//! (<https://c2sp.org/tlog-checkpoint>) carried in them.
//!
//! - Verifier key: `<name>+<hex key id>+<base64(0x01 || public key)>`.
//! - Signer key (the key file): `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`.
//! - Key id: the first 4 bytes of `SHA-256(name || "\n" || 0x01 || public key)`.
//! - A note is its text (ending in a newline), a blank line, then one line per signature:
//!   `— <name> <base64(key id || 64-byte signature)>`; the signature covers the text.
//! - A checkpoint's text is `<origin>\n<tree size>\n<base64 root hash>\n`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::merkle::Hash;

const ALG_ED25519: u8 = 1;
const SIG_PREFIX: &str = "\u{2014} ";

fn key_id(name: &str, public: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('+')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Splits `a+b+c` where the last part (base64) may itself contain '+'.
fn split_key(s: &str, parts: usize) -> Option<Vec<&str>> {
    let v: Vec<&str> = s.splitn(parts, '+').collect();
    (v.len() == parts).then_some(v)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    pub name: String,
    pub id: u32,
    pub public: [u8; 32],
}

impl VerifierKey {
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = |why: &str| Error::Key(format!("verifier key {s:?} is not valid: {why}"));
        let parts = split_key(s, 3).ok_or_else(|| bad("expected <name>+<key id>+<key>"))?;
        let (name, id_hex, b64) = (parts[0], parts[1], parts[2]);
        if !valid_name(name) {
            return Err(bad("bad name"));
        }
        if id_hex.len() != 8 {
            return Err(bad("key id must be 8 hex digits"));
        }
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("key id must be 8 hex digits"))?;
        let raw = B64.decode(b64).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let public: [u8; 32] = raw[1..].try_into().expect("32 bytes");
        if key_id(name, &public) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_string(),
            id,
            public,
        })
    }

    pub fn encode(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.public);
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(msg, sig)
            .is_ok()
    }
}

/// An Ed25519 signer named as the log's origin.
pub struct SignerKey {
    name: String,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
    verifier: VerifierKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerKey")
            .field("verifier", &self.verifier.encode())
            .finish_non_exhaustive()
    }
}

impl SignerKey {
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self> {
        if !valid_name(name) {
            return Err(Error::Key(format!(
                "key name {name:?} must be non-empty with no '+' or spaces"
            )));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| Error::Key(format!("bad seed: {e}")))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("32-byte Ed25519 key");
        let verifier = VerifierKey {
            name: name.to_string(),
            id: key_id(name, &public),
            public,
        };
        Ok(Self {
            name: name.to_string(),
            seed,
            pair,
            verifier,
        })
    }

    pub fn generate(name: &str) -> Result<Self> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| Error::Key("the system random source failed".into()))?;
        Self::from_seed(name, seed)
    }

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = |why: &str| Error::Key(format!("signing key is not valid: {why}"));
        let parts =
            split_key(s, 5).ok_or_else(|| bad("expected PRIVATE+KEY+<name>+<key id>+<key>"))?;
        if parts[0] != "PRIVATE" || parts[1] != "KEY" {
            return Err(bad("expected PRIVATE+KEY+ prefix"));
        }
        let raw = B64.decode(parts[4]).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let key = Self::from_seed(parts[2], raw[1..].try_into().expect("32 bytes"))?;
        if format!("{:08x}", key.verifier.id) != parts[3] {
            return Err(bad("key id does not match the key"));
        }
        Ok(key)
    }

    /// The key file form. It is a secret: callers store it with mode 0600.
    pub fn encode(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.verifier.id,
            B64.encode(raw)
        )
    }

    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// Signs `text` (which must end in a newline) as a note.
    pub fn sign_note(&self, text: &str) -> Result<String> {
        if !text.ends_with('\n') {
            return Err(Error::Note("note text must end in a newline".into()));
        }
        let sig = self.pair.sign(text.as_bytes());
        let mut blob = self.verifier.id.to_be_bytes().to_vec();
        blob.extend_from_slice(sig.as_ref());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

/// Checks a note's signatures and returns its text and the keys that signed it. At least
/// one signature must be by a key in `keys`; a signature line claiming a known key's
/// name and id that fails to verify is an error even if another signature is good.
pub fn open_note<'a>(note: &'a str, keys: &[VerifierKey]) -> Result<(&'a str, Vec<VerifierKey>)> {
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| Error::Note("no blank line before the signatures".into()))?;
    let text = &note[..split + 1];
    let sigs = &note[split + 2..];
    if !sigs.ends_with('\n') || sigs.len() < 2 {
        return Err(Error::Note(
            "signature block is empty or not newline-terminated".into(),
        ));
    }
    let mut signed_by = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| Error::Note(format!("malformed signature line {line:?}")))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| Error::Note(format!("malformed signature line {line:?}")))?;
        let blob = B64
            .decode(b64)
            .map_err(|_| Error::Note(format!("signature for {name} is not base64")))?;
        if blob.len() < 5 {
            return Err(Error::Note(format!("signature for {name} is too short")));
        }
        let id = u32::from_be_bytes(blob[..4].try_into().expect("4 bytes"));
        if let Some(k) = keys.iter().find(|k| k.name == name && k.id == id) {
            if !k.verify(text.as_bytes(), &blob[4..]) {
                return Err(Error::Note(format!(
                    "signature by {name} ({id:08x}) does not verify"
                )));
            }
            signed_by.push(k.clone());
        }
    }
    if signed_by.is_empty() {
        return Err(Error::Note("not signed by any trusted key".into()));
    }
    Ok((text, signed_by))
}

/// A checkpoint: the log's size and root, signed as a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The full signed note.
    pub note: String,
}

impl Checkpoint {
    pub fn body(origin: &str, size: u64, root: &Hash) -> String {
        format!("{origin}\n{size}\n{}\n", B64.encode(root))
    }

    pub fn sign(key: &SignerKey, origin: &str, size: u64, root: &Hash) -> Result<Self> {
        let note = key.sign_note(&Self::body(origin, size, root))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root: *root,
            note,
        })
    }

    /// Parses and verifies a checkpoint note against trusted keys.
    pub fn open(note: &str, keys: &[VerifierKey]) -> Result<Self> {
        let (text, _) = open_note(note, keys)?;
        Self::parse_text(text, note)
    }

    /// Parses a checkpoint this log wrote itself without checking its signature (older
    /// history at startup; only the newest is verified there, every one on export).
    pub(crate) fn parse_unverified(note: &str) -> Result<Self> {
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| Error::Note("no blank line before the signatures".into()))?;
        Self::parse_text(&note[..split + 1], note)
    }

    fn parse_text(text: &str, note: &str) -> Result<Self> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| Error::Note("checkpoint has no origin".into()))?;
        let size = lines
            .next()
            .and_then(|s| {
                (s == "0" || !s.starts_with('0'))
                    .then(|| s.parse::<u64>().ok())
                    .flatten()
            })
            .ok_or_else(|| Error::Note("checkpoint size is not a decimal number".into()))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| Error::Note("checkpoint root is not a base64 SHA-256 hash".into()))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            note: note.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reference example of golang.org/x/mod/sumdb/note.
    const SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const SIGNED: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn signs_the_reference_note_byte_for_byte() {
        let k = SignerKey::parse(SKEY).unwrap();
        assert_eq!(k.verifier().encode(), VKEY);
        assert_eq!(k.encode(), SKEY);
        assert_eq!(k.sign_note(TEXT).unwrap(), SIGNED);
    }

    #[test]
    fn opens_the_reference_note_and_rejects_edits() {
        let v = VerifierKey::parse(VKEY).unwrap();
        let (text, by) = open_note(SIGNED, std::slice::from_ref(&v)).unwrap();
        assert_eq!((text, by.len()), (TEXT, 1));
        assert!(
            open_note(
                &SIGNED.replace("cryptography", "cryptographY"),
                std::slice::from_ref(&v)
            )
            .is_err()
        );
        let other = SignerKey::generate("PeterNeumann").unwrap();
        assert!(
            open_note(SIGNED, &[other.verifier().clone()]).is_err(),
            "a key with another id is not trusted"
        );
    }

    #[test]
    fn rejects_mangled_verifier_keys() {
        assert!(VerifierKey::parse(VKEY).is_ok());
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX",
            "PeterNeumann+c74f20a3",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+AhpcXcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checkpoints_round_trip_and_foreign_keys_fail() {
        let k = SignerKey::generate("example.org/log").unwrap();
        let cp = Checkpoint::sign(&k, "example.org/log", 42, &[7; 32]).unwrap();
        let back = Checkpoint::open(&cp.note, &[k.verifier().clone()]).unwrap();
        assert_eq!(back, cp);
        let forged = SignerKey::generate("example.org/log").unwrap();
        let f = Checkpoint::sign(&forged, "example.org/log", 42, &[7; 32]).unwrap();
        assert!(Checkpoint::open(&f.note, &[k.verifier().clone()]).is_err());
        assert!(
            Checkpoint::open(
                &cp.note.replace("\n42\n", "\n43\n"),
                &[k.verifier().clone()]
            )
            .is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_notes_never_panics(s in ".{0,300}") {
            let k = VerifierKey::parse(VKEY).unwrap();
            let _ = open_note(&s, std::slice::from_ref(&k));
            let _ = Checkpoint::open(&s, std::slice::from_ref(&k));
            let _ = VerifierKey::parse(&s);
        }
    }
}
