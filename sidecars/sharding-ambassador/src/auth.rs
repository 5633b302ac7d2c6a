//! The shards' password: the shard map names a Secret key, the ambassador watches that Secret
//! through the runtime's API-server client and hands the password to every shard connection
//! through a `watch`, so a changed password is followed without a restart. A Secret that is
//! missing or has no usable value is logged and counted, and the last good password stays in force.

use std::{fmt, sync::Arc};

use outrigger_sidecar_runtime::apiserver::{watcher::Event, Api, ApiClient, Secret, Selector, Watcher};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{metrics::Metrics, shardmap::ShardAuth};

/// A password for `AUTH`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Arc<[u8]>);

impl Password {
    pub fn new(secret: &[u8]) -> Password {
        Password(Arc::from(secret))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// The password shard connections authenticate with, `None` when the shards require none.
pub type PasswordWatch = watch::Receiver<Option<Password>>;

/// Why the Secret named by the shard map gives no password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Secret {secret:?} does not exist (or may not be read)")]
    SecretMissing { secret: String },
    #[error("Secret {secret:?} has no key {key:?}")]
    KeyMissing { secret: String, key: String },
    #[error("Secret {secret:?} holds an empty password at key {key:?}")]
    Empty { secret: String, key: String },
    #[error("the shard map names Secret {secret:?}, but the ambassador has no API server to read it from (it reads no ConfigMap)")]
    NoApiServer { secret: String },
}

impl AuthError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            AuthError::SecretMissing { .. } => "secret_missing",
            AuthError::KeyMissing { .. } | AuthError::Empty { .. } => "key_missing",
            AuthError::NoApiServer { .. } => "no_api_server",
        }
    }
}

/// The password `auth` names in `secret` (the Secret as read, `None` when it does not exist).
pub fn password_of(secret: Option<&Secret>, auth: &ShardAuth) -> Result<Password, AuthError> {
    let secret_name = || auth.secret_name.clone();
    let secret = secret.ok_or_else(|| AuthError::SecretMissing {
        secret: secret_name(),
    })?;
    let value = secret.decoded(&auth.key).ok_or_else(|| AuthError::KeyMissing {
        secret: secret_name(),
        key: auth.key.clone(),
    })?;
    // A trailing newline is what `kubectl create secret --from-file` of an edited file leaves.
    let value = value.strip_suffix(b"\n").unwrap_or(&value);
    if value.is_empty() {
        return Err(AuthError::Empty {
            secret: secret_name(),
            key: auth.key.clone(),
        });
    }
    Ok(Password::new(value))
}

/// Follows the Secret the shard map names, restarting the watch when the map names another one.
pub struct SecretFollower {
    api: Option<(ApiClient, String)>,
    password: watch::Sender<Option<Password>>,
    metrics: Arc<Metrics>,
    following: Option<(ShardAuth, JoinHandle<()>)>,
}

impl SecretFollower {
    /// `api` is the client and namespace the shard map's ConfigMap is read with, when it is.
    pub fn new(
        api: Option<(ApiClient, String)>,
        password: watch::Sender<Option<Password>>,
        metrics: Arc<Metrics>,
    ) -> SecretFollower {
        SecretFollower {
            api,
            password,
            metrics,
            following: None,
        }
    }

    /// Follows what the map in force names: nothing (the password is dropped), or a Secret key.
    pub fn follow(&mut self, auth: Option<&ShardAuth>) {
        if self.following.as_ref().map(|(current, _)| current) == auth {
            return;
        }
        if let Some((_, task)) = self.following.take() {
            task.abort();
        }
        let Some(auth) = auth.cloned() else {
            self.password.send_replace(None);
            self.metrics.password_loaded.set(0);
            return;
        };
        let Some((client, namespace)) = self.api.clone() else {
            let error = AuthError::NoApiServer {
                secret: auth.secret_name.clone(),
            };
            self.metrics.auth_error(error.category());
            warn!(%error, category = error.category(), "Shard password unavailable.");
            return;
        };
        let (password, metrics) = (self.password.clone(), self.metrics.clone());
        let watcher = Watcher::new(
            Api::secrets(client, &namespace),
            Selector::Named(auth.secret_name.clone()),
        );
        info!(secret = %auth.secret_name, key = %auth.key, "Following the shards' password.");
        let following = auth.clone();
        let task = tokio::spawn(async move {
            // Never stopped from here: the task is aborted when the map stops naming the Secret.
            let (_stop, stopped) = watch::channel(false);
            let sink = move |event: Event<Secret>| {
                let secret = match event {
                    Event::Restarted(secrets) => secrets.into_iter().next(),
                    Event::Applied(secret) => Some(secret),
                    Event::Deleted(_) => None,
                };
                match password_of(secret.as_ref(), &following) {
                    Ok(new) => {
                        let changed = password.send_if_modified(|current| {
                            let changed = current.as_ref() != Some(&new);
                            *current = Some(new);
                            changed
                        });
                        metrics.password_loaded.set(1);
                        if changed {
                            info!(secret = %following.secret_name, "Shard password in force; connections authenticate with it from now on.");
                        }
                    }
                    Err(error) => {
                        metrics.auth_error(error.category());
                        warn!(%error, category = error.category(), "Shard password unreadable; keeping the last one.");
                    }
                }
            };
            watcher.run(sink, stopped).await;
        });
        self.following = Some((auth, task));
    }
}

impl Drop for SecretFollower {
    fn drop(&mut self) {
        if let Some((_, task)) = self.following.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn auth(key: &str) -> ShardAuth {
        ShardAuth {
            secret_name: "cache-auth".into(),
            key: key.into(),
        }
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn the_password_is_the_decoded_value_of_the_named_key() {
        // "s3cret\n" and "s3cret" both give the password without the newline.
        let cases = [("czNjcmV0Cg==", "s3cret"), ("czNjcmV0", "s3cret")];
        for (encoded, expected) in cases {
            let password = password_of(Some(&secret(&[("password", encoded)])), &auth("password")).unwrap();
            assert_eq!(password.as_bytes(), expected.as_bytes());
        }
        assert_eq!(format!("{:?}", Password::new(b"s3cret")), "Password(..)");
    }

    #[test]
    fn a_missing_secret_key_or_value_is_a_clear_error() {
        let cases = [
            (None, "password", "secret_missing"),
            (Some(secret(&[("other", "eA==")])), "password", "key_missing"),
            (
                Some(secret(&[("password", "not base64!")])),
                "password",
                "key_missing",
            ),
            (Some(secret(&[("password", "Cg==")])), "password", "key_missing"),
        ];
        for (secret, key, category) in cases {
            let error = password_of(secret.as_ref(), &auth(key)).unwrap_err();
            assert_eq!(error.category(), category, "{error}");
            assert!(error.to_string().contains("cache-auth"), "{error}");
        }
    }
}
