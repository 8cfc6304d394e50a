//! The gRPC edge: one port (`--flight-listen`) serving Arrow Flight SQL (the `flight` module)
//! and the Open Inference Protocol's `inference.GRPCInferenceService` ([`inference`]), with
//! optional TLS, and the recording every call passes through ([`audit`]).
//!
//! Sees the services it calls; no domain sees it.

pub mod audit;
pub mod inference;

use crate::error::{Error, Result};

/// The gRPC server, with TLS when a certificate and key are given. The files are read
/// here, before the server starts, so a bad one stops the start.
pub fn transport(tls: Option<&(std::path::PathBuf, std::path::PathBuf)>) -> Result<tonic::transport::Server> {
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        // Several crates in the tree enable rustls; name the provider rather than let it guess.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::BadRequest(format!("gRPC TLS file {}: {e}", p.display())));
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::BadRequest(format!("gRPC TLS: {e}")))?;
    }
    Ok(server)
}
