//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs the controllers.
//!
//! Every write to the Lease carries the resourceVersion it read, so two candidates can never both
//! believe they won. A leader that cannot renew before its lease runs out stops at once; and since
//! the controllers' writes also carry the resourceVersions they read, a write a deposed leader had
//! already started is rejected by the API server instead of overwriting newer state.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{Api, PostParams},
    Client,
};

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's identity (pod name, or host name and pid).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// How often a follower retries.
    pub retry_interval: Duration,
}

/// Why leader election failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("reading or writing the lease: {0}")]
    Api(#[from] kube::Error),
    #[error("lost the lease to {holder:?}")]
    Lost { holder: Option<String> },
    #[error("could not renew the lease within its duration")]
    RenewDeadline,
}

/// The state of a lease as far as a candidate cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Held by us.
    Ours,
    /// Held by someone else and still valid.
    HeldBy(String),
    /// Free or expired: may be taken.
    Free,
}

/// Pure: what `lease` means for `identity` at `now`.
pub fn lease_state(lease: &Lease, identity: &str, now: Timestamp) -> LeaseState {
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        None | Some("") => LeaseState::Free,
        Some(holder) if holder == identity => LeaseState::Ours,
        Some(holder) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let expired = spec.renew_time.as_ref().is_none_or(|MicroTime(renewed)| {
                now.as_second() >= renewed.as_second().saturating_add(duration)
            });
            if expired {
                LeaseState::Free
            } else {
                LeaseState::HeldBy(holder.to_owned())
            }
        }
    }
}

fn claimed(config: &ElectionConfig, previous: Option<&Lease>, now: Timestamp) -> Lease {
    let previous_spec = previous.and_then(|lease| lease.spec.clone()).unwrap_or_default();
    let changing_hands = previous_spec.holder_identity.as_deref() != Some(config.identity.as_str());
    let duration_seconds = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    Lease {
        metadata: ObjectMeta {
            name: Some(config.lease_name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: previous.and_then(|lease| lease.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: if changing_hands {
                Some(MicroTime(now))
            } else {
                previous_spec.acquire_time
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous_spec.lease_transitions.unwrap_or(0)
                    + i32::from(changing_hands && previous.is_some()),
            ),
            ..LeaseSpec::default()
        }),
    }
}

/// Tries once to take or renew the lease. Returns the stored lease when we hold it.
async fn try_claim(api: &Api<Lease>, config: &ElectionConfig) -> Result<Option<Lease>, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&config.lease_name).await?;
    let result = match &current {
        None => {
            api.create(&PostParams::default(), &claimed(config, None, now))
                .await
        }
        Some(lease) => match lease_state(lease, &config.identity, now) {
            LeaseState::HeldBy(_) => return Ok(None),
            LeaseState::Ours | LeaseState::Free => {
                // Carries the read resourceVersion: a concurrent claim makes this fail with 409.
                api.replace(
                    &config.lease_name,
                    &PostParams::default(),
                    &claimed(config, Some(lease), now),
                )
                .await
            }
        },
    };
    match result {
        Ok(lease) => Ok(Some(lease)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(error) => Err(error),
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: Client, config: &ElectionConfig) -> Result<(), LeaderError> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut logged_holder = None;
    loop {
        match try_claim(&api, config).await {
            Ok(Some(_)) => {
                tracing::info!(identity = %config.identity, lease = %config.lease_name, "Acquired the leader lease.");
                return Ok(());
            }
            Ok(None) => {
                let holder = api
                    .get_opt(&config.lease_name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity);
                if holder != logged_holder {
                    tracing::info!(holder = ?holder, "Waiting for the leader lease.");
                    logged_holder = holder;
                }
            }
            Err(error) => tracing::warn!(%error, "Claiming the leader lease failed; retrying."),
        }
        tokio::time::sleep(config.retry_interval).await;
    }
}

/// Renews the lease until renewal fails for longer than the lease duration or someone else holds
/// it; returns why leadership ended.
pub async fn hold(client: Client, config: &ElectionConfig) -> LeaderError {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(config.renew_interval).await;
        match try_claim(&api, config).await {
            Ok(Some(_)) => last_renewed = tokio::time::Instant::now(),
            Ok(None) => {
                let holder = api
                    .get_opt(&config.lease_name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity);
                if holder.as_deref() != Some(config.identity.as_str()) {
                    return LeaderError::Lost { holder };
                }
            }
            Err(error) => tracing::warn!(%error, "Renewing the leader lease failed."),
        }
        // Stop before the lease can have expired in the eyes of the others.
        if last_renewed.elapsed() + config.renew_interval >= config.lease_duration {
            return LeaderError::RenewDeadline;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_at: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed_at).unwrap())),
                lease_duration_seconds: Some(duration),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn lease_state_cases() {
        let cases = [
            ("ours", lease(Some("a"), 100, 15), "a", 200, LeaseState::Ours),
            (
                "held",
                lease(Some("b"), 100, 15),
                "a",
                110,
                LeaseState::HeldBy("b".into()),
            ),
            ("expired", lease(Some("b"), 100, 15), "a", 115, LeaseState::Free),
            ("released", lease(None, 100, 15), "a", 101, LeaseState::Free),
            (
                "empty holder",
                lease(Some(""), 100, 15),
                "a",
                101,
                LeaseState::Free,
            ),
        ];
        for (name, lease, identity, now, expected) in cases {
            assert_eq!(lease_state(&lease, identity, at(now)), expected, "{name}");
        }
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let config = ElectionConfig {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
        };
        let taken = claimed(&config, Some(&lease(Some("b"), 100, 15)), at(200));
        assert_eq!(taken.spec.as_ref().unwrap().lease_transitions, Some(1));
        assert_eq!(
            taken.spec.as_ref().unwrap().acquire_time,
            Some(MicroTime(at(200)))
        );
        let renewed = claimed(&config, Some(&taken), at(205));
        assert_eq!(renewed.spec.as_ref().unwrap().lease_transitions, Some(1));
        assert_eq!(
            renewed.spec.as_ref().unwrap().acquire_time,
            Some(MicroTime(at(200)))
        );
        assert_eq!(
            renewed.spec.as_ref().unwrap().renew_time,
            Some(MicroTime(at(205)))
        );
    }
}
