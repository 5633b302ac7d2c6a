//! The MutatingWebhookConfiguration the operator keeps in place for sidecar injection. Pure.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
    ByteString,
};

use crate::labels;

/// Namespace label: `enabled` opts a namespace in to annotation-driven injection; `disabled` keeps
/// even Outrigger-managed pods in it from being intercepted.
pub const NAMESPACE_INJECTION_LABEL: &str = "outrigger.dev/injection";
/// Path the webhook serves mutation on.
pub const MUTATE_PATH: &str = "/mutate";

/// How the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEndpoint {
    /// Through a Service (in-cluster installs).
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// A fixed URL (an operator running outside the cluster, as in local development).
    Url(String),
}

/// What happens to pod creation when the webhook cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Pods are created without sidecars: the operator being down never blocks the cluster.
    Ignore,
    /// Pod creation fails until the webhook answers.
    Fail,
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "Ignore" => Ok(FailurePolicy::Ignore),
            "Fail" => Ok(FailurePolicy::Fail),
            other => Err(format!(
                "unknown failure policy {other:?}: expected Ignore or Fail"
            )),
        }
    }
}

/// Builds the configuration: one webhook for pods of Outrigger services (anywhere but namespaces
/// labelled `outrigger.dev/injection=disabled`), one for annotated pods in opted-in namespaces.
pub fn build(
    name: &str,
    endpoint: &WebhookEndpoint,
    ca_bundle_pem: &[u8],
    failure_policy: FailurePolicy,
    extra_namespace_labels: &BTreeMap<String, String>,
) -> MutatingWebhookConfiguration {
    let client_config = match endpoint {
        WebhookEndpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(MUTATE_PATH.to_owned()),
                port: Some(*port),
            }),
            ca_bundle: Some(ByteString(ca_bundle_pem.to_vec())),
            url: None,
        },
        WebhookEndpoint::Url(url) => WebhookClientConfig {
            url: Some(format!("{}{MUTATE_PATH}", url.trim_end_matches('/'))),
            ca_bundle: Some(ByteString(ca_bundle_pem.to_vec())),
            service: None,
        },
    };
    let rules = vec![RuleWithOperations {
        api_groups: Some(vec![String::new()]),
        api_versions: Some(vec!["v1".to_owned()]),
        operations: Some(vec!["CREATE".to_owned()]),
        resources: Some(vec!["pods".to_owned()]),
        scope: Some("Namespaced".to_owned()),
    }];
    let requirement = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
    };
    let webhook =
        |name: &str, namespace_selector: LabelSelector, object_selector: LabelSelector| MutatingWebhook {
            name: name.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config.clone(),
            failure_policy: Some(
                match failure_policy {
                    FailurePolicy::Ignore => "Ignore",
                    FailurePolicy::Fail => "Fail",
                }
                .to_owned(),
            ),
            match_policy: Some("Equivalent".to_owned()),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    namespace_selector
                        .match_labels
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .chain(extra_namespace_labels.clone())
                        .collect(),
                )
                .filter(|labels: &BTreeMap<String, String>| !labels.is_empty()),
                ..namespace_selector
            }),
            object_selector: Some(object_selector),
            reinvocation_policy: Some("IfNeeded".to_owned()),
            rules: Some(rules.clone()),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(5),
            ..MutatingWebhook::default()
        };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![
            webhook(
                "services.inject.outrigger.dev",
                LabelSelector {
                    match_expressions: Some(vec![requirement(
                        NAMESPACE_INJECTION_LABEL,
                        "NotIn",
                        &["disabled"],
                    )]),
                    ..LabelSelector::default()
                },
                LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        labels::MANAGED_BY.to_owned(),
                        labels::MANAGED_BY_VALUE.to_owned(),
                    )])),
                    ..LabelSelector::default()
                },
            ),
            webhook(
                "annotated.inject.outrigger.dev",
                LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        NAMESPACE_INJECTION_LABEL.to_owned(),
                        "enabled".to_owned(),
                    )])),
                    ..LabelSelector::default()
                },
                LabelSelector {
                    match_expressions: Some(vec![requirement(
                        labels::MANAGED_BY,
                        "NotIn",
                        &[labels::MANAGED_BY_VALUE],
                    )]),
                    ..LabelSelector::default()
                },
            ),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_webhooks_carry_the_ca_policy_and_selectors() {
        let config = build(
            "outrigger-injector",
            &WebhookEndpoint::Url("https://127.0.0.1:9443/".into()),
            b"PEM",
            FailurePolicy::Ignore,
            &BTreeMap::new(),
        );
        let webhooks = config.webhooks.unwrap();
        assert_eq!(webhooks.len(), 2);
        for webhook in &webhooks {
            assert_eq!(
                webhook.client_config.url.as_deref(),
                Some("https://127.0.0.1:9443/mutate")
            );
            assert_eq!(webhook.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
            assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
            assert_eq!(webhook.side_effects, "None");
        }
        let owned = webhooks[0]
            .object_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(owned[labels::MANAGED_BY], "outrigger");
        let opted_in = webhooks[1]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(opted_in[NAMESPACE_INJECTION_LABEL], "enabled");
    }

    #[test]
    fn service_endpoints_and_the_fail_policy() {
        let endpoint = WebhookEndpoint::Service {
            namespace: "outrigger-system".into(),
            name: "outrigger-webhook".into(),
            port: 443,
        };
        let scope = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        let config = build("x", &endpoint, b"PEM", FailurePolicy::Fail, &scope);
        let webhook = &config.webhooks.unwrap()[0];
        let service = webhook.client_config.service.as_ref().unwrap();
        assert_eq!(
            (service.name.as_str(), service.path.as_deref()),
            ("outrigger-webhook", Some(MUTATE_PATH))
        );
        assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(
            webhook
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["team"],
            "a"
        );
        assert_eq!("Fail".parse::<FailurePolicy>(), Ok(FailurePolicy::Fail));
        assert!("Sometimes".parse::<FailurePolicy>().is_err());
    }
}
