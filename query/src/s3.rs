//! S3 and S3-compatible object storage for Delta tables through object_store's own S3
//! client. Commits are conditional writes (`If-None-Match`), which S3 and the common
//! S3-compatible stores honour, so concurrent writers need no lock service.
//!
//! Credentials come from the storage options, the `AWS_*` environment, web identity
//! (EKS service accounts), the container (ECS) or instance metadata (EC2). Shared
//! profiles and SSO sessions need the AWS SDK: build with `--features s3-aws-sdk`.

use std::str::FromStr;
use std::sync::Arc;

use deltalake::logstore::{LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore};
use deltalake::{DeltaResult, DeltaTableError};
use object_store::ObjectStoreScheme;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::SpawnedReqwestConnector;
use object_store::path::Path;
use url::Url;

/// Builds the S3 client for a table's URL from its storage options.
#[derive(Debug, Default)]
struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(&self, url: &Url, config: &StorageConfig) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = AmazonS3Builder::from_env().with_url(url.to_string());
        if let Some(runtime) = &config.runtime {
            builder = builder.with_http_connector(SpawnedReqwestConnector::new(runtime.get_handle()));
        }
        for (key, value) in &config.raw {
            if let Ok(key) = AmazonS3ConfigKey::from_str(&key.to_ascii_lowercase()) {
                builder = builder.with_config(key, value.clone());
            }
        }
        let (_, path) = ObjectStoreScheme::parse(url).map_err(|e| DeltaTableError::GenericError { source: Box::new(e) })?;
        Ok((Arc::new(builder.build()?), Path::parse(path)?))
    }
}

/// Delta's default log store: every commit is a conditional put of the next version.
#[derive(Debug, Default)]
struct S3Logs;

impl LogStoreFactory for S3Logs {
    fn with_options(&self, prefixed: ObjectStoreRef, root: ObjectStoreRef, location: &Url, options: &StorageConfig) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed, root, location, options))
    }
}

/// Registers `s3://` and `s3a://` with Delta's store registries.
pub(crate) fn register() {
    let (stores, logs) = (Arc::new(S3Stores), Arc::new(S3Logs));
    for scheme in ["s3", "s3a"] {
        let url = Url::parse(&format!("{scheme}://")).expect("a valid scheme URL");
        deltalake::logstore::object_store_factories().insert(url.clone(), stores.clone());
        deltalake::logstore::logstore_factories().insert(url, logs.clone());
    }
}
