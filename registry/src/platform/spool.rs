//! Stored objects copied to local temporary files on their way to a caller, hashed as
//! they arrive. A download is checked against its recorded SHA-256 before its first byte
//! is sent, and holds a few buffers in memory whatever its size: the file is the copy.
//! The file has no name (it goes when the last handle closes, even after a crash).

use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Bytes read from the spool per body chunk.
const CHUNK: usize = 256 << 10;

/// A complete local copy of an object, and the SHA-256 of its bytes.
pub struct Spooled {
    file: std::fs::File,
    pub len: u64,
    /// Lowercase hex, as manifests and catalog records keep it.
    pub sha256: String,
}

/// Copies `stream` into a new temporary file in `dir`.
pub async fn spool(mut stream: impl Stream<Item = lakeledger_query::Result<Bytes>> + Unpin, dir: &Path) -> Result<Spooled> {
    let failed = |what: &str, e: std::io::Error| Error::Internal(format!("spool {what} in {}: {e}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(|e| failed("folder", e))?;
    let owned = dir.to_path_buf();
    let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(owned))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| failed("file", e))?;
    let mut writer = tokio::fs::File::from_std(file.try_clone().map_err(|e| failed("file", e))?);
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
        writer.write_all(&chunk).await.map_err(|e| failed("write", e))?;
    }
    writer.flush().await.map_err(|e| failed("write", e))?;
    Ok(Spooled { file, len, sha256: hex::encode(hasher.finalize()) })
}

impl Spooled {
    /// The bytes from the start, in chunks, for a response body.
    pub async fn into_stream(self) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let mut file = tokio::fs::File::from_std(self.file);
        file.seek(SeekFrom::Start(0)).await.map_err(|e| Error::Internal(format!("spool seek: {e}")))?;
        Ok(tokio_util::io::ReaderStream::with_capacity(file, CHUNK))
    }

    /// A Parquet reader over the copy that many row-group readers may share at once:
    /// every read says where it starts (`pread`), so none moves another's position, as
    /// clones of one `File` would.
    pub fn into_parquet(self) -> PositionalFile {
        PositionalFile { file: Arc::new(self.file), len: self.len }
    }
}

#[derive(Clone)]
pub struct PositionalFile {
    file: Arc<std::fs::File>,
    len: u64,
}

/// A reader of a [`PositionalFile`] from one offset on.
pub struct PositionalRead {
    file: Arc<std::fs::File>,
    at: u64,
}

impl std::io::Read for PositionalRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl parquet::file::reader::Length for PositionalFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl parquet::file::reader::ChunkReader for PositionalFile {
    type T = std::io::BufReader<PositionalRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::with_capacity(64 << 10, PositionalRead { file: self.file.clone(), at: start }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut buf = vec![0u8; length];
        std::os::unix::fs::FileExt::read_exact_at(&*self.file, &mut buf, start)?;
        Ok(buf.into())
    }
}
