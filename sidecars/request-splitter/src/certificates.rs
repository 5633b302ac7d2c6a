//! The serving certificate from a `kubernetes.io/tls` Secret (`tls.secret`), watched through the
//! API server (the kubelet's Secret volumes lag by up to a minute). Each accepted version is swapped
//! into [`Certificates`]; a Secret that goes missing or holds a bad certificate leaves the last good
//! one in force, and says so in the log, in `tls_certificate_reloads_total{result}` and in an Event
//! on the owning service.

use std::sync::Arc;

use outrigger_sidecar_runtime::{
    apiserver::{
        watcher::{Event, Watcher},
        Api, ApiClient, ObjectRef, Secret, Selector,
    },
    events::Recorder,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rustls::sign::CertifiedKey;
use tokio::{sync::watch, task::JoinHandle};

use crate::transport::tls::{certified_key, Certificates, TlsError};

/// Keys of a `kubernetes.io/tls` Secret.
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The certificate source's metrics, under `outrigger_splitter_tls_`.
#[derive(Clone, Default)]
pub struct TlsMetrics {
    /// Versions of the Secret seen, by result: `applied`, `rejected` (a bad certificate or key) or
    /// `missing` (the Secret is gone or was never there).
    pub reloads: Family<ResultLabels, Counter>,
    /// 1 while a certificate is loaded.
    pub loaded: Gauge,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> TlsMetrics {
        let metrics = TlsMetrics::default();
        let r = registry.sub_registry_with_prefix("outrigger_splitter_tls");
        r.register(
            "certificate_reloads",
            "Versions of the TLS Secret seen, by result",
            metrics.reloads.clone(),
        );
        r.register(
            "certificate_loaded",
            "1 while a serving certificate is loaded",
            metrics.loaded.clone(),
        );
        metrics
    }

    fn count(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Reads the certificate and key of a Secret.
pub fn load(secret: &Secret, reference: &ObjectRef) -> Result<CertifiedKey, TlsError> {
    let origin = format!("Secret {reference}");
    let value = |key: &'static str| {
        secret.decoded(key).ok_or_else(|| TlsError::MissingKey {
            origin: origin.clone(),
            key,
        })
    };
    certified_key(&value(CERT_KEY)?, &value(KEY_KEY)?, &origin)
}

/// What a version of the Secret does to the certificate in force.
struct Apply {
    reference: ObjectRef,
    certificates: Arc<Certificates>,
    metrics: TlsMetrics,
    events: Recorder,
}

impl Apply {
    fn secret(&self, secret: Option<&Secret>) {
        let Some(secret) = secret else {
            self.metrics.count("missing");
            let kept = self.certificates.is_loaded();
            tracing::warn!(
                secret = %self.reference,
                kept_last_good = kept,
                "The TLS Secret does not exist; the last good certificate stays in force."
            );
            self.events.warning(
                "TlsSecretMissing",
                format!(
                    "the TLS Secret {} does not exist; {}",
                    self.reference,
                    if kept {
                        "the last good certificate stays in force"
                    } else {
                        "TLS handshakes fail until it does"
                    }
                ),
            );
            return;
        };
        match load(secret, &self.reference) {
            Ok(key) => {
                self.certificates.set(key);
                self.metrics.loaded.set(1);
                self.metrics.count("applied");
                tracing::info!(
                    secret = %self.reference,
                    resource_version = secret.metadata.resource_version.as_deref().unwrap_or(""),
                    "Serving the TLS certificate of the Secret."
                );
            }
            Err(error) => {
                self.metrics.count("rejected");
                tracing::warn!(
                    %error,
                    secret = %self.reference,
                    category = error.category(),
                    "Rejected the TLS Secret; the last good certificate stays in force."
                );
                self.events.warning(
                    "TlsCertificateRejected",
                    format!("{error}; the last good certificate stays in force"),
                );
            }
        }
    }
}

/// Watches the Secret until `shutdown`, swapping each good version into `certificates`.
pub fn watch_secret(
    client: ApiClient,
    reference: ObjectRef,
    certificates: Arc<Certificates>,
    metrics: TlsMetrics,
    events: Recorder,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let api = Api::secrets(client, &reference.namespace);
    let watcher = Watcher::new(api, Selector::Named(reference.name.clone()));
    let apply = Apply {
        reference,
        certificates,
        metrics,
        events,
    };
    tokio::spawn(async move {
        let sink = move |event: Event<Secret>| match event {
            Event::Restarted(secrets) => apply.secret(secrets.first()),
            Event::Applied(secret) => apply.secret(Some(&secret)),
            Event::Deleted(_) => apply.secret(None),
        };
        let failed = |error: &outrigger_sidecar_runtime::apiserver::watcher::WatchError| {
            tracing::warn!(%error, "Watching the TLS Secret failed; retrying.");
        };
        watcher.run_with_failures(sink, failed, shutdown).await;
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn secret(pairs: &[(&str, Vec<u8>)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), base64(value)))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn apply() -> (Apply, Arc<Certificates>, TlsMetrics) {
        let certificates = Certificates::new();
        let metrics = TlsMetrics::default();
        let apply = Apply {
            reference: "shop/web-tls".parse().unwrap(),
            certificates: certificates.clone(),
            metrics: metrics.clone(),
            events: Recorder::disabled(),
        };
        (apply, certificates, metrics)
    }

    fn count(metrics: &TlsMetrics, result: &'static str) -> u64 {
        metrics.reloads.get_or_create(&ResultLabels { result }).get()
    }

    #[test]
    fn a_good_secret_is_served_and_a_bad_or_missing_one_keeps_the_last_good_certificate() {
        let (apply, certificates, metrics) = apply();
        let good = secret(&[
            (CERT_KEY, fixture("localhost.crt")),
            (KEY_KEY, fixture("localhost.key")),
        ]);
        apply.secret(Some(&good));
        let served = certificates.leaf().unwrap();
        assert_eq!(count(&metrics, "applied"), 1);
        for bad in [
            secret(&[(CERT_KEY, fixture("localhost.crt"))]),
            secret(&[
                (CERT_KEY, b"garbage".to_vec()),
                (KEY_KEY, fixture("localhost.key")),
            ]),
            secret(&[(CERT_KEY, fixture("ca.crt")), (KEY_KEY, fixture("localhost.key"))]),
        ] {
            apply.secret(Some(&bad));
            assert_eq!(certificates.leaf().as_ref(), Some(&served));
        }
        apply.secret(None);
        assert_eq!(certificates.leaf(), Some(served));
        assert_eq!((count(&metrics, "rejected"), count(&metrics, "missing")), (3, 1));
        assert_eq!(metrics.loaded.get(), 1);
    }

    #[test]
    fn a_secret_without_its_keys_names_the_missing_one() {
        let reference: ObjectRef = "shop/web-tls".parse().unwrap();
        let error = load(&secret(&[(KEY_KEY, fixture("localhost.key"))]), &reference).unwrap_err();
        assert_eq!(error.to_string(), "Secret shop/web-tls has no tls.crt");
    }
}
