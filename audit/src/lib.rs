//! The lakeledger audit ledger: an append-only log of every read and change that an
//! auditor can take away and verify offline, that loses no acknowledged record in a crash,
//! and that shows any edit, deletion, reordering or truncation.
//!
//! # Structure
//!
//! Every record is a *leaf* ([`leaf`]) whose bytes carry the previous leaf's hash (a hash
//! chain). The same leaf hashes are the leaves of an RFC 6962 Merkle tree ([`merkle`]), so
//! any record can be proven to be in the log, and any later log proven to extend an
//! earlier one. The tree's head is a *checkpoint* — origin, size and root — signed with
//! Ed25519 as a C2SP signed note ([`note`]), every second while the log grows and when it
//! closes.
//!
//! Leaves are stored in segment files of CRC32C-checked frames ([`segment`]). One writer
//! thread assigns sequence numbers and commits in groups: it takes every waiting record,
//! writes them with one `fdatasync`, then hands out receipts `(seq, leaf hash)`
//! ([`ledger`]). Opening the ledger checks everything and cuts a torn tail; any other
//! damage refuses to open.
//!
//! Event payloads ([`event`]) are canonical JSON built by our own writer: fixed field
//! order, integers only. Export packages ([`package`]) hold the exact leaf bytes,
//! checkpoints and proofs; [`verify`] checks one offline, as does the independent
//! `tools/verify_audit_package.py`.
//!
//! All integers in the binary formats are big-endian.

pub mod archive;
pub mod checkpoints;
pub mod error;
pub mod event;
pub mod leaf;
pub mod ledger;
pub mod lru;
pub mod merge;
pub mod merkle;
pub mod note;
pub mod package;
pub mod scrub;
pub mod search;
pub mod segment;
pub mod seq_index;
pub mod store;
pub mod tiles;
pub mod verify;

pub use error::{Error, ProofError, Result};
pub use event::{Event, Phase};
pub use leaf::{RecordType, StoredLeaf};
pub use checkpoints::StoredCheckpoint;
pub use ledger::{Ledger, LedgerConfig, LiveCheck, OpenReport, PendingReceipt, Receipt, SearchPage, SegmentInfo, key_file, write_atomically};
pub use merkle::Hash;
pub use note::{Checkpoint, SignerKey, VerifierKey};
pub use package::{DirSink, Export, ExportSummary, JsonSink, Package, RecordFilter, Sink};
pub use verify::{DirSource, JsonFileSource, Source, Summary, open_source, verify, verify_package};
