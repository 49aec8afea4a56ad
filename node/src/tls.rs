//! TLS termination: certificate loading with precise errors, a certificate
//! store that reloads on SIGHUP without dropping connections, and the
//! rustls server config (ring provider, ALPN h2 and http/1.1).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The one crypto provider of the process. quinn and rustls would otherwise
/// disagree on a default (see the crate notes), so it is always explicit.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {}: {reason}", path.display())]
    Certs { path: PathBuf, reason: String },
    #[error("{} holds no certificate", .0.display())]
    NoCerts(PathBuf),
    #[error("cannot read a private key from {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("certificate {} and key {} do not belong together: {reason}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Reads a PEM certificate chain (leaf first) and its private key, and
/// checks that they match.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs_err = |reason: String| TlsError::Certs {
        path: cert.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| certs_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| certs_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCerts(cert.to_path_buf()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Which file of a cluster identity is wrong, and why.
#[derive(Debug)]
pub struct IdentityProblem {
    pub file: &'static str,
    pub error: TlsError,
}

/// Checks a node's replication identity as its peers will: the CA file
/// holds certificates, the node's certificate and key belong together, and
/// the certificate chains to the CA and names `node_id`. Expiry is left to
/// the handshakes (and their logs): a node restarted with an expired
/// certificate still serves traffic.
pub fn check_cluster_identity(ca: &Path, cert: &Path, key: &Path, node_id: &str) -> Result<(), IdentityProblem> {
    let problem = |file, error| IdentityProblem { file, error };
    let ca_err = |reason: String| TlsError::Certs {
        path: ca.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| problem("ca", ca_err(e.to_string())))? {
        let c = c.map_err(|e| problem("ca", ca_err(e.to_string())))?;
        roots.add(c).map_err(|e| problem("ca", ca_err(e.to_string())))?;
    }
    if roots.is_empty() {
        return Err(problem("ca", TlsError::NoCerts(ca.to_path_buf())));
    }
    let certified = load_certified_key(cert, key).map_err(|e| match e {
        TlsError::Key { .. } => problem("key", e),
        e => problem("cert", e),
    })?;
    let name = rustls_pki_types::ServerName::try_from(node_id.to_string()).map_err(|e| {
        problem(
            "cert",
            TlsError::Certs {
                path: cert.to_path_buf(),
                reason: format!("node id {node_id:?} cannot be a certificate name: {e}"),
            },
        )
    })?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| problem("ca", ca_err(e.to_string())))?;
    let (leaf, intermediates) = certified
        .cert
        .split_first()
        .ok_or_else(|| problem("cert", TlsError::NoCerts(cert.to_path_buf())))?;
    let verified = verifier.verify_server_cert(leaf, intermediates, &name, &[], rustls_pki_types::UnixTime::now());
    use rustls::CertificateError as E;
    use rustls::client::danger::ServerCertVerifier;
    match verified {
        Ok(_)
        | Err(rustls::Error::InvalidCertificate(
            E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. },
        )) => Ok(()),
        Err(rustls::Error::InvalidCertificate(E::NotValidForName | E::NotValidForNameContext { .. })) => Err(problem(
            "cert",
            TlsError::Certs {
                path: cert.to_path_buf(),
                reason: format!("it does not name this node ({node_id:?}), so peers would refuse it"),
            },
        )),
        Err(e) => Err(problem(
            "cert",
            TlsError::Certs {
                path: cert.to_path_buf(),
                reason: format!("it does not verify against the CA in {}: {e}", ca.display()),
            },
        )),
    }
}

/// A listener's certificate, swapped atomically on reload: handshakes in
/// progress keep the key they started with.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let current = load_certified_key(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(current),
        })
    }

    /// Re-reads the files; on error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.cert, &self.key)?;
        self.replace(fresh);
        Ok(())
    }

    /// Puts a certificate loaded elsewhere (e.g. while checking a reload)
    /// into service.
    pub fn replace(&self, fresh: CertifiedKey) {
        self.current.store(Arc::new(fresh));
    }

    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A server config serving `store`'s certificate, offering HTTP/2 and
/// HTTP/1.1 by ALPN.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a fresh self-signed certificate and key; returns their paths.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap_or_else(|e| panic!("rcgen: {e}"));
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, generated.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        (cert, key)
    }

    #[test]
    fn loads_a_matching_pair_and_refuses_mismatches_and_garbage() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert_a, key_a) = write_pair(dir.path(), "a");
        let (_, key_b) = write_pair(dir.path(), "b");
        assert!(load_certified_key(&cert_a, &key_a).is_ok());
        assert!(matches!(
            load_certified_key(&cert_a, &key_b),
            Err(TlsError::Mismatch { .. })
        ));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            load_certified_key(&garbage, &key_a),
            Err(TlsError::NoCerts(_))
        ));
        assert!(matches!(
            load_certified_key(&cert_a, &garbage),
            Err(TlsError::Key { .. })
        ));
        let missing = dir.path().join("missing.pem");
        let err = load_certified_key(&missing, &key_a)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = write_pair(dir.path(), "site");
        let store = CertStore::load(&cert, &key).unwrap_or_else(|e| panic!("{e}"));
        let before = store.current.load_full();
        write_pair(dir.path(), "site");
        assert!(store.reload().is_ok());
        let after = store.current.load_full();
        assert_ne!(before.cert, after.cert);
        std::fs::write(&cert, "broken").unwrap_or_else(|e| panic!("{e}"));
        assert!(store.reload().is_err());
        assert_eq!(store.current.load_full().cert, after.cert);
    }
}
