//! HTTP clients for Streamable HTTP upstreams, and TLS for `https://` ones.
//!
//! TLS is rustls (TLS 1.2 and 1.3 only) with the `ring` provider. Everything Warden itself signs
//! and hashes stays on RustCrypto; TLS is the one place a second implementation of primitives
//! is used, because no audited RustCrypto provider for rustls exists (docs/mcp.md, "TLS").
//!
//! The server's certificate is verified (chain, expiry, name) against the system's roots, or —
//! when the upstream names a `ca_file` — against those CA certificates only. There is no
//! setting that turns verification off.

use reqwest::Client;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1024 * 1024;

/// Makes `ring` the process's rustls provider (idempotent). Clients Warden builds carry their
/// own configuration; this covers any other rustls user in the process (the `rustls` build of
/// reqwest needs one).
pub fn install_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Err: another provider was installed first; it is then the process's choice.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The system's trusted roots, loaded once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_string(), ToString::to_string);
                return Err(format!(
                    "no system CA certificates could be loaded ({why}); give the upstream a `ca_file`"
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// The CA certificates in the PEM file `path`.
fn roots_from(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("ca_file `{shown}`: {e}"))?;
    if meta.len() > MAX_CA_BYTES {
        return Err(format!(
            "ca_file `{shown}` is larger than {MAX_CA_BYTES} bytes"
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("ca_file `{shown}`: {e}"))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("ca_file `{shown}` is not valid PEM: {e}"))?;
        store.add(cert).map_err(|e| {
            format!("ca_file `{shown}` holds a certificate that cannot be a root: {e}")
        })?;
    }
    if store.is_empty() {
        return Err(format!("ca_file `{shown}` holds no certificate"));
    }
    Ok(Arc::new(store))
}

/// The rustls configuration trusting `roots`.
fn config(roots: Arc<RootCertStore>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Streamable HTTP over HTTP/1.1 (what reqwest speaks here).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The HTTP client for the upstream at `url`: for `https://`, TLS as described above. Every
/// client is built with an explicit configuration, so none depends on a process default.
///
/// # Errors
/// A message naming what is wrong: an unreadable or invalid `ca_file`, no system roots.
pub fn http_client(url: &str, ca_file: Option<&Path>) -> Result<Client, String> {
    install_provider();
    let roots = if url.starts_with("https://") {
        match ca_file {
            Some(p) => roots_from(p)?,
            None => system_roots()?,
        }
    } else {
        // Plain http never uses TLS: no roots to load.
        Arc::new(RootCertStore::empty())
    };
    Client::builder()
        .tls_backend_preconfigured(config(roots)?)
        .build()
        .map_err(|e| format!("cannot build the HTTP client for `{url}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_checked_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = http_client("https://example.org/mcp", Some(&missing)).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = http_client("https://example.org/mcp", Some(&empty)).unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = http_client("https://example.org/mcp", Some(&broken)).unwrap_err();
        assert!(e.contains("broken.pem"), "{e}");
        // Plain http needs no roots at all.
        assert!(http_client("http://127.0.0.1:1/mcp", Some(&missing)).is_ok());
    }

    #[test]
    fn the_system_roots_load_on_this_machine() {
        // Debian's ca-certificates (installed on the CI machine): an https upstream without a
        // ca_file trusts them.
        if !Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            eprintln!("notice: no system CA bundle here; skipping");
            return;
        }
        assert!(!system_roots().unwrap().is_empty());
        assert!(http_client("https://example.org/mcp", None).is_ok());
    }
}
