//! Private key files: created once with mode 0600 and never rewritten.

use crate::error::{Error, Result};

/// Writes a new file readable by the owner only; fails if it exists.
#[cfg(unix)]
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Internal(format!("create {}: {e}", path.display())))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| Error::Internal(format!("write {}: {e}", path.display())))
}

#[cfg(not(unix))]
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::Internal(format!("write {}: {e}", path.display())))
}
