//! TLS for the client side: ALPN `h2` and `http/1.1`, and the serving certificate from PEM files or
//! from a Secret ([`crate::certificates`]). The acceptor is made once; its certificate resolver
//! ([`Certificates`]) holds the certificate in force and swaps it atomically when a new one is
//! accepted: connections already open keep their session, the next handshakes get the new
//! certificate, and nothing restarts.

use std::{fmt, path::Path, sync::Arc};

use arc_swap::ArcSwapOption;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why a certificate or the TLS configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the certificate chain of {origin} does not parse: {source}")]
    Certificate {
        origin: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{origin} holds no certificate")]
    NoCertificate { origin: String },
    #[error("the private key of {origin} does not parse: {source}")]
    Key {
        origin: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the private key of {origin} is not usable: {source}")]
    UnusableKey { origin: String, source: rustls::Error },
    #[error("the private key of {origin} does not belong to its certificate")]
    Mismatch { origin: String },
    #[error("{origin} has no {key}")]
    MissingKey { origin: String, key: &'static str },
    #[error("building the TLS configuration: {source}")]
    Config { source: rustls::Error },
    #[error("tls names neither certFile and keyFile nor a secret")]
    NoSource,
}

impl TlsError {
    /// A fixed category, for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "read",
            TlsError::Certificate { .. } | TlsError::NoCertificate { .. } => "certificate",
            TlsError::Key { .. } | TlsError::UnusableKey { .. } => "key",
            TlsError::Mismatch { .. } => "mismatch",
            TlsError::MissingKey { .. } => "missing_key",
            TlsError::Config { .. } | TlsError::NoSource => "config",
        }
    }
}

/// The certificate in force, for every worker's acceptor; none until one was loaded (handshakes
/// fail meanwhile).
#[derive(Default)]
pub struct Certificates {
    current: ArcSwapOption<CertifiedKey>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("loaded", &self.current.load().is_some())
            .finish()
    }
}

impl Certificates {
    pub fn new() -> Arc<Certificates> {
        Arc::new(Certificates::default())
    }

    /// Serves `key` from the next handshake on.
    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Some(Arc::new(key)));
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The leaf certificate in force (DER), if any.
    pub fn leaf(&self) -> Option<Vec<u8>> {
        let current = self.current.load();
        current.as_ref()?.cert.first().map(|leaf| leaf.as_ref().to_vec())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// Parses a PEM certificate chain (leaf first) and its PEM private key; `origin` names where they
/// came from in errors. Refuses a key that does not match the leaf.
pub fn certified_key(chain: &[u8], key: &[u8], origin: &str) -> Result<CertifiedKey, TlsError> {
    let certificate_error = |source| TlsError::Certificate {
        origin: origin.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(certificate_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| TlsError::Key {
        origin: origin.to_owned(),
        source,
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnusableKey {
            origin: origin.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            origin: origin.to_owned(),
        }),
        // `Unknown`: the key's algorithm cannot tell its public key; the handshake will.
        _ => Ok(certified),
    }
}

/// The certificate of the PEM files `certFile` and `keyFile`.
pub fn from_files(config: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsError::NoSource);
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    certified_key(
        &read(cert_file)?,
        &read(key_file)?,
        &cert_file.display().to_string(),
    )
}

/// The acceptor, serving what `certificates` holds at each handshake.
pub fn acceptor(certificates: Arc<Certificates>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config { source })?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    #[test]
    fn a_matching_chain_and_key_load_and_bad_ones_say_what_is_wrong() {
        let (cert, key) = (fixture("localhost.crt"), fixture("localhost.key"));
        assert!(certified_key(&cert, &key, "secret shop/web-tls").is_ok());
        let cases: [(&[u8], &[u8], &str); 4] = [
            (b"", &key, "certificate"),
            (
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                &key,
                "certificate",
            ),
            (&cert, b"no key here", "key"),
            // The CA's certificate with the leaf's key.
            (&fixture("ca.crt"), &key, "mismatch"),
        ];
        for (chain, private, category) in cases {
            let error = certified_key(chain, private, "secret shop/web-tls").unwrap_err();
            assert_eq!(error.category(), category, "{error}");
            assert!(error.to_string().contains("shop/web-tls"), "{error}");
        }
    }

    #[test]
    fn the_resolver_serves_the_last_certificate_set() {
        let certificates = Certificates::new();
        assert!(!certificates.is_loaded());
        let key = certified_key(&fixture("localhost.crt"), &fixture("localhost.key"), "files").unwrap();
        let leaf = key.cert[0].as_ref().to_vec();
        certificates.set(key);
        assert_eq!(certificates.leaf(), Some(leaf));
        assert!(acceptor(certificates).is_ok());
    }
}
