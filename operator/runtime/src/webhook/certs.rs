//! The webhook's serving certificate: a private CA and a serving certificate it signs, kept in a
//! Secret so every replica serves the same one, rotated before expiry without a restart, with the
//! CA written into the MutatingWebhookConfiguration.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use k8s_openapi::{
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::{SignedDuration, Timestamp},
    ByteString,
};
use kube::{
    api::{Api, Patch, PatchParams, PostParams},
    Client,
};
use outrigger_core::{
    labels::FIELD_MANAGER,
    subset::is_subset,
    webhook_config::{self, FailurePolicy, WebhookEndpoint},
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Annotation on the Secret: when the serving certificate expires (RFC 3339).
const NOT_AFTER: &str = "outrigger.dev/not-after";
/// Annotation on the Secret: when the CA expires (RFC 3339).
const CA_NOT_AFTER: &str = "outrigger.dev/ca-not-after";
const CA_NAME: &str = "outrigger-webhook-ca";

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("loading the certificate into TLS: {0}")]
    Tls(String),
    #[error("reading or writing the certificate Secret: {0}")]
    Api(#[from] kube::Error),
    #[error("the Secret holds no usable certificate: {0}")]
    Malformed(&'static str),
}

/// A CA and a serving certificate, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub not_after: Timestamp,
    pub ca_not_after: Timestamp,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("not_after", &self.not_after)
            .field("ca_not_after", &self.ca_not_after)
            .finish()
    }
}

fn ca_params(not_after: Timestamp) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = to_offset(not_after);
    Ok(params)
}

fn to_offset(timestamp: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(timestamp.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Issues a bundle for `names` (DNS names and IP addresses), valid for `validity`; reuses the CA
/// of `previous` when it outlives the new certificate, so the caBundle need not change.
pub fn issue(
    names: &[String],
    validity: Duration,
    previous: Option<&Bundle>,
    now: Timestamp,
) -> Result<Bundle, CertError> {
    let validity = SignedDuration::try_from(validity).unwrap_or(SignedDuration::from_hours(24 * 365));
    let not_after = now.checked_add(validity).unwrap_or(now);
    let reusable_ca = previous.filter(|p| p.ca_not_after > not_after);
    let (ca_cert, ca_key, ca_not_after) = match reusable_ca {
        Some(previous) => (
            previous.ca_cert.clone(),
            previous.ca_key.clone(),
            previous.ca_not_after,
        ),
        None => {
            // The CA lives ten certificate lifetimes, so most rotations keep it.
            let ca_not_after = now.checked_add(validity.saturating_mul(10)).unwrap_or(not_after);
            let key = KeyPair::generate()?;
            let cert = ca_params(ca_not_after)?.self_signed(&key)?;
            (cert.pem(), key.serialize_pem(), ca_not_after)
        }
    };
    let issuer = Issuer::new(ca_params(ca_not_after)?, KeyPair::from_pem(&ca_key)?);
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "outrigger-webhook".to_owned()),
    );
    params.distinguished_name = name;
    params.not_before = to_offset(now.checked_sub(SignedDuration::from_mins(1)).unwrap_or(now));
    params.not_after = to_offset(not_after);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after,
        ca_not_after,
    })
}

/// Whether `bundle` should be replaced at `now`.
pub fn needs_renewal(bundle: &Bundle, renew_before: Duration, now: Timestamp) -> bool {
    let renew_before = SignedDuration::try_from(renew_before).unwrap_or(SignedDuration::ZERO);
    now.checked_add(renew_before)
        .map_or(true, |deadline| deadline >= bundle.not_after)
}

fn from_secret(secret: &Secret) -> Result<Bundle, CertError> {
    let data = secret.data.clone().unwrap_or_default();
    let field = |key: &'static str| -> Result<String, CertError> {
        data.get(key)
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
            .ok_or(CertError::Malformed(key))
    };
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let time = |key: &'static str| -> Result<Timestamp, CertError> {
        annotations
            .get(key)
            .and_then(|t| t.parse().ok())
            .ok_or(CertError::Malformed(key))
    };
    Ok(Bundle {
        ca_cert: field("ca.crt")?,
        ca_key: field("ca.key")?,
        cert: field("tls.crt")?,
        key: field("tls.key")?,
        not_after: time(NOT_AFTER)?,
        ca_not_after: time(CA_NOT_AFTER)?,
    })
}

fn to_secret(name: &str, namespace: &str, bundle: &Bundle, resource_version: Option<String>) -> Secret {
    let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            resource_version,
            annotations: Some(BTreeMap::from([
                (NOT_AFTER.to_owned(), bundle.not_after.to_string()),
                (CA_NOT_AFTER.to_owned(), bundle.ca_not_after.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_owned(), bytes(&bundle.ca_cert)),
            ("ca.key".to_owned(), bytes(&bundle.ca_key)),
            ("tls.crt".to_owned(), bytes(&bundle.cert)),
            ("tls.key".to_owned(), bytes(&bundle.key)),
        ])),
        ..Secret::default()
    }
}

/// The certificate the TLS server presents; swapped in place on rotation, so open connections and
/// the listener stay as they are.
#[derive(Debug, Default)]
pub struct ServedCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServedCert {
    pub fn set(&self, bundle: &Bundle) -> Result<(), CertError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle.cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|error| CertError::Tls(error.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(bundle.key.as_bytes())
            .map_err(|error| CertError::Tls(error.to_string()))?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|error| CertError::Tls(error.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(certs, signing_key));
        if let Ok(mut current) = self.current.write() {
            *current = Some(certified);
        }
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|current| current.clone())
    }
}

/// Settings of certificate management.
#[derive(Debug, Clone)]
pub struct CertConfig {
    pub namespace: String,
    pub secret_name: String,
    pub webhook_config_name: String,
    pub endpoint: WebhookEndpoint,
    pub failure_policy: FailurePolicy,
    /// Extra namespace labels both webhooks require (to scope injection to some namespaces).
    pub namespace_labels: BTreeMap<String, String>,
    /// Names the serving certificate is valid for.
    pub names: Vec<String>,
    pub validity: Duration,
    pub renew_before: Duration,
    pub check_interval: Duration,
}

/// One pass: load (or create, or rotate) the bundle in the Secret, serve it, and make the webhook
/// configuration trust its CA. Returns the bundle now served.
pub async fn reconcile(
    client: &Client,
    config: &CertConfig,
    served: &ServedCert,
    served_bundle: &mut Option<Bundle>,
) -> Result<(), CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let now = Timestamp::now();
    let existing = secrets.get_opt(&config.secret_name).await?;
    let stored = existing.as_ref().and_then(|s| from_secret(s).ok());
    let bundle = match &stored {
        Some(bundle) if !needs_renewal(bundle, config.renew_before, now) => bundle.clone(),
        _ => {
            let fresh = issue(&config.names, config.validity, stored.as_ref(), now)?;
            let secret = to_secret(
                &config.secret_name,
                &config.namespace,
                &fresh,
                existing
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.clone()),
            );
            // Carries the resourceVersion read: when another replica rotated first, this is a 409
            // and the next pass serves theirs.
            let written = match &existing {
                None => secrets.create(&PostParams::default(), &secret).await?,
                Some(_) => {
                    secrets
                        .replace(&config.secret_name, &PostParams::default(), &secret)
                        .await?
                }
            };
            tracing::info!(not_after = %fresh.not_after, secret = %config.secret_name, "Issued a new webhook serving certificate.");
            from_secret(&written).unwrap_or(fresh)
        }
    };
    if served_bundle.as_ref() != Some(&bundle) {
        served.set(&bundle)?;
        *served_bundle = Some(bundle.clone());
    }
    ensure_webhook_config(client, config, bundle.ca_cert.as_bytes()).await?;
    Ok(())
}

async fn ensure_webhook_config(
    client: &Client,
    config: &CertConfig,
    ca_bundle: &[u8],
) -> Result<(), CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let desired = webhook_config::build(
        &config.webhook_config_name,
        &config.endpoint,
        ca_bundle,
        config.failure_policy,
        &config.namespace_labels,
    );
    let mut desired_json = serde_json::to_value(&desired).map_err(|e| CertError::Tls(e.to_string()))?;
    desired_json["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    desired_json["kind"] = "MutatingWebhookConfiguration".into();
    if let Some(live) = api.get_opt(&config.webhook_config_name).await? {
        let live_json = serde_json::to_value(&live).map_err(|e| CertError::Tls(e.to_string()))?;
        if is_subset(&desired_json, &live_json) {
            return Ok(());
        }
        desired_json["metadata"]["resourceVersion"] = live.metadata.resource_version.into();
    }
    api.patch(
        &config.webhook_config_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired_json),
    )
    .await?;
    tracing::info!(name = %config.webhook_config_name, "Updated the MutatingWebhookConfiguration.");
    Ok(())
}

/// Keeps certificates fresh until the process stops.
pub async fn maintain(
    client: Client,
    config: CertConfig,
    served: Arc<ServedCert>,
    mut bundle: Option<Bundle>,
) {
    loop {
        tokio::time::sleep(config.check_interval).await;
        if let Err(error) = reconcile(&client, &config, &served, &mut bundle).await {
            tracing::warn!(%error, "Webhook certificate maintenance failed; retrying.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn issued_certificates_load_into_tls_and_reuse_a_long_lived_ca() {
        let names = vec![
            "outrigger-webhook.outrigger-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let now = Timestamp::now();
        let first = issue(&names, Duration::from_secs(3600), None, now).unwrap();
        ServedCert::default().set(&first).unwrap();
        assert_eq!(
            first.not_after,
            now.checked_add(SignedDuration::from_hours(1)).unwrap()
        );
        let second = issue(&names, Duration::from_secs(3600), Some(&first), now).unwrap();
        assert_eq!(
            second.ca_cert, first.ca_cert,
            "the CA outlives the new certificate, so it is kept"
        );
        assert_ne!(second.cert, first.cert);
        let served = ServedCert::default();
        served.set(&second).unwrap();
        assert!(served.is_set());
    }

    #[test]
    fn renewal_starts_renew_before_expiry() {
        let bundle = Bundle {
            ca_cert: String::new(),
            ca_key: String::new(),
            cert: String::new(),
            key: String::new(),
            not_after: at(1000),
            ca_not_after: at(10_000),
        };
        assert!(!needs_renewal(&bundle, Duration::from_secs(100), at(899)));
        assert!(needs_renewal(&bundle, Duration::from_secs(100), at(900)));
        assert!(needs_renewal(&bundle, Duration::from_secs(0), at(1000)));
    }

    #[test]
    fn bundles_survive_the_round_trip_through_a_secret() {
        let bundle = issue(
            &["a.b.svc".to_owned()],
            Duration::from_secs(60),
            None,
            Timestamp::now(),
        )
        .unwrap();
        let back = from_secret(&to_secret("s", "ns", &bundle, None)).unwrap();
        assert_eq!(back.cert, bundle.cert);
        assert_eq!(back.not_after.as_second(), bundle.not_after.as_second());
    }
}
