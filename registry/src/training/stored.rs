//! Immutable things kept under a tenant's area (training sets, uploaded spines): data
//! first, a manifest holding its SHA-256 last, and every read checked against it.

use std::path::Path;

use lakeledger_query::tables::TableStore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::platform::spool::{Spooled, spool};

/// Immutable things kept under a tenant's area as `<folder>/<id>/data.parquet` plus a
/// `manifest.json` holding the data's SHA-256. A thing exists once its manifest does.
#[derive(Clone, Copy)]
pub(super) struct Stored {
    kind: &'static str,
    folder: &'static str,
    /// Ids are this prefix and 32 hex digits.
    prefix: &'static str,
}

pub(super) const TRAINING_SETS: Stored = Stored { kind: "training set", folder: "training-sets", prefix: "ts_" };
pub(super) const SPINES: Stored = Stored { kind: "spine", folder: "spines", prefix: "sp_" };

impl Stored {
    pub(super) fn new_id(self) -> String {
        format!("{}{}", self.prefix, uuid::Uuid::now_v7().simple())
    }

    pub(super) fn root(self, tenant: &str) -> String {
        format!("tenants/{tenant}/{}", self.folder)
    }

    fn dir(self, tenant: &str, id: &str) -> String {
        format!("{}/{id}", self.root(tenant))
    }

    pub(super) fn valid(self, id: &str) -> bool {
        id.len() == self.prefix.len() + 32 && id.starts_with(self.prefix) && id[self.prefix.len()..].bytes().all(|c| c.is_ascii_hexdigit())
    }

    /// Data first, manifest last.
    pub(super) async fn write(self, tables: &TableStore, tenant: &str, id: &str, data: Vec<u8>, manifest: &impl Serialize) -> Result<()> {
        let dir = self.dir(tenant, id);
        tables.put_object(&format!("{dir}/data.parquet"), data.into()).await?;
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(tables.put_object(&format!("{dir}/manifest.json"), json.into()).await?)
    }

    pub(super) async fn manifest<T: serde::de::DeserializeOwned>(self, tables: &TableStore, tenant: &str, id: &str) -> Result<T> {
        let not_found = || Error::NotFound { kind: self.kind, name: id.to_string() };
        if !self.valid(id) {
            return Err(not_found());
        }
        let bytes = tables.get_object(&format!("{}/manifest.json", self.dir(tenant, id))).await?.ok_or_else(not_found)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Internal(format!("{} {id}: manifest unreadable: {e}", self.kind)))
    }

    /// The manifest of the caller's tenant's `id`; when there is none and other tenants
    /// hold that id, [`Error::NotVisible`] naming them (one listing per tenant, on this
    /// refusal only).
    pub(super) async fn manifest_for<T: serde::de::DeserializeOwned>(self, tables: &TableStore, tenant: &str, id: &str) -> Result<T> {
        let e = match self.manifest(tables, tenant, id).await {
            Err(e @ Error::NotFound { .. }) if self.valid(id) => e,
            other => return other,
        };
        let mut owners = Vec::new();
        for t in tables.list_children("tenants").await?.into_iter().filter(|t| t != tenant) {
            if !tables.list_objects(&self.dir(&t, id), "manifest.json").await?.is_empty() {
                owners.push(t);
            }
        }
        Err(if owners.is_empty() { e } else { Error::NotVisible { kind: self.kind, name: id.to_string(), owners } })
    }

    /// A local copy of the data, checked against the SHA-256 its manifest records before
    /// anything reads it; memory holds a few buffers whatever the size.
    pub(super) async fn open(self, tables: &TableStore, spool_dir: &Path, tenant: &str, id: &str, sha256: &str) -> Result<Spooled> {
        let stream = tables
            .get_stream(&format!("{}/data.parquet", self.dir(tenant, id)))
            .await?
            .ok_or_else(|| Error::Internal(format!("{} {id}: data file is missing", self.kind)))?;
        let copy = spool(stream, spool_dir).await?;
        if copy.sha256 != sha256 {
            return Err(Error::Internal(format!("{} {id}: data does not match its manifest's SHA-256", self.kind)));
        }
        Ok(copy)
    }

    /// The data in memory, checked against the SHA-256 its manifest records.
    pub(super) async fn data(self, tables: &TableStore, tenant: &str, id: &str, sha256: &str) -> Result<bytes::Bytes> {
        let bytes = tables
            .get_object(&format!("{}/data.parquet", self.dir(tenant, id)))
            .await?
            .ok_or_else(|| Error::Internal(format!("{} {id}: data file is missing", self.kind)))?;
        if hex::encode(Sha256::digest(&bytes)) != sha256 {
            return Err(Error::Internal(format!("{} {id}: data does not match its manifest's SHA-256", self.kind)));
        }
        Ok(bytes)
    }

    /// Manifest first: the thing stops existing before its data goes.
    pub(super) async fn delete(self, tables: &TableStore, tenant: &str, id: &str) -> Result<()> {
        let dir = self.dir(tenant, id);
        tables.delete_object(&format!("{dir}/manifest.json")).await?;
        Ok(tables.delete_object(&format!("{dir}/data.parquet")).await?)
    }
}
