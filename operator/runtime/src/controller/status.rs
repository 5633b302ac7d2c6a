//! Status writes shared by the controllers: only when the status changed, fenced by the
//! resourceVersion the reconcile read, with an Event when readiness flips or an error appears.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    api::{Api, PostParams},
    runtime::events::EventType,
    Resource, ResourceExt,
};
use outrigger_api::common::{condition_type, Condition};
use outrigger_core::conditions::{merge, DesiredCondition};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use super::{Context, Error};

/// The conditions for an object that cannot progress until a person changes something.
pub fn blocked_conditions(error: &Error) -> Vec<DesiredCondition> {
    let message = error.to_string();
    vec![
        DesiredCondition::new(condition_type::READY, false, error.reason(), message.clone()),
        DesiredCondition::new(
            condition_type::PROGRESSING,
            false,
            error.reason(),
            "waiting for the spec to change",
        ),
        DesiredCondition::new(condition_type::DEGRADED, true, error.reason(), message),
    ]
}

/// Merges conditions against the current ones (keeping transition times).
pub fn merged_conditions(
    current: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
) -> Vec<Condition> {
    merge(current, desired, generation, &Time(Timestamp::now()))
}

/// Writes `status` when it differs from the object's current status; publishes an Event when the
/// Ready condition's status or the Degraded reason changes. Returns the object's new
/// resourceVersion when it wrote, so a later write of the same reconcile can fence on it.
pub async fn write<K>(
    ctx: &Context,
    controller: &'static str,
    object: &K,
    current_status: Option<&impl Serialize>,
    new_status: &impl Serialize,
) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let current = serde_json::to_value(current_status)?;
    let new = serde_json::to_value(new_status)?;
    if current == new {
        return Ok(None);
    }
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut body = serde_json::to_value(object)?;
    body["status"] = new.clone();
    ctx.metrics.count_write(controller, "status");
    // `object` carries the resourceVersion we reconciled: a newer object makes this a 409.
    let updated: K = serde_json::from_value(body)?;
    let written = api
        .replace_status(&object.name_any(), &PostParams::default(), &updated)
        .await?
        .resource_version();
    if let Some(replaced) = object.resource_version() {
        ctx.superseded(
            controller,
            &format!("{namespace}/{}", object.name_any()),
            replaced,
        );
    }

    let condition = |status: &Value, type_: &str| -> Option<(String, String, String)> {
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| {
                let field = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
                (field("status"), field("reason"), field("message"))
            })
    };
    let (old_ready, new_ready) = (
        condition(&current, condition_type::READY),
        condition(&new, condition_type::READY),
    );
    let (old_degraded, new_degraded) = (
        condition(&current, condition_type::DEGRADED),
        condition(&new, condition_type::DEGRADED),
    );
    if let Some((status, reason, message)) = &new_degraded {
        if status == "True"
            && old_degraded.as_ref().map(|(s, r, m)| (s, r, m)) != Some((status, reason, message))
        {
            ctx.event(object, EventType::Warning, reason, message.clone())
                .await;
            return Ok(written);
        }
    }
    if let Some((status, reason, message)) = &new_ready {
        if old_ready.as_ref().map(|(s, _, _)| s) != Some(status) {
            let type_ = if status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            ctx.event(object, type_, reason, message.clone()).await;
        }
    }
    Ok(written)
}
