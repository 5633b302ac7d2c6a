//! What the operator keeps of a child in its caches: the fields its field manager owns (read from
//! the object's `managedFields`), the identity and fencing metadata, the status, and the few fields
//! the API server fills that a reconcile reads (a Service's `clusterIP`). Everything else (server
//! defaults, other managers' fields, the managed fields themselves) is most of an object's size and
//! is never read.
//!
//! The apply comparison (`is_subset(desired, live)`) stays exact on the slim object: server-side
//! apply gives the manager every field of its applied configuration, so an unchanged child still
//! holds all of `desired`. A field someone else changed or removed is no longer the manager's (an
//! update takes ownership of what it changes), so it is missing from the slim object and the child
//! is applied again. A list element someone else added (a container, an env var) is theirs and is
//! left out: applying would not remove it, so it must not make the comparison fail.

use serde_json::{Map, Value};

/// Fields every slim child keeps, whoever owns them: what identifies it, fences writes on it
/// (`resourceVersion`, `uid`), tells whose it is (`ownerReferences`, `labels`), whether it is going
/// away, and its status (read by the observers).
pub const ALWAYS_KEPT: &[&str] = &[
    "/apiVersion",
    "/kind",
    "/metadata/name",
    "/metadata/namespace",
    "/metadata/uid",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/deletionTimestamp",
    "/metadata/ownerReferences",
    "/metadata/labels",
    "/status",
];

/// `object` reduced to the fields `manager` owns, the [`ALWAYS_KEPT`] ones and `also` (JSON
/// pointers to fields the API server fills that a reconcile reads). Entries of `manager` for a
/// subresource (its status writes) are not its applied configuration and are ignored.
pub fn slim(object: &Value, manager: &str, also: &[&str]) -> Value {
    let owned = owned_set(object, manager);
    let mut slim = match (object, &owned) {
        (Value::Object(fields), Value::Object(set)) => Value::Object(prune_object(fields, set)),
        _ => Value::Object(Map::new()),
    };
    for pointer in ALWAYS_KEPT.iter().chain(also) {
        copy(object, &mut slim, pointer);
    }
    slim
}

/// `desired` as it compares with a slim child: without its empty maps (`resources: {}`), which
/// server-side apply does not record as owned, so the slim child never holds them. An empty map
/// asks for nothing, so leaving it out changes nothing of what the comparison decides.
pub fn comparable(desired: &Value) -> Value {
    match desired {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), comparable(value)))
                .filter(|(_, value)| value.as_object().is_none_or(|fields| !fields.is_empty()))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        scalar => scalar.clone(),
    }
}

/// The union of `manager`'s `fieldsV1` sets, subresources left out.
fn owned_set(object: &Value, manager: &str) -> Value {
    let mut set = Value::Object(Map::new());
    let entries = object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for entry in entries {
        let subresource = entry["subresource"].as_str().unwrap_or_default();
        if entry["manager"] == manager && subresource.is_empty() {
            union(&mut set, &entry["fieldsV1"]);
        }
    }
    set
}

fn union(into: &mut Value, set: &Value) {
    let (Value::Object(into), Value::Object(set)) = (into, set) else {
        return;
    };
    for (key, child) in set {
        union(
            into.entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            child,
        );
    }
}

/// The fields of an object named by `set` (`f:<name>` keys).
fn prune_object(fields: &Map<String, Value>, set: &Map<String, Value>) -> Map<String, Value> {
    set.iter()
        .filter_map(|(key, child_set)| {
            let name = key.strip_prefix("f:")?;
            let value = fields.get(name)?;
            Some((name.to_owned(), prune(value, child_set)))
        })
        .collect()
}

/// What of `value` the set below its field owns. A leaf (an empty set, or only `.`: the field
/// itself) owns the whole value: a scalar, an atomic list or map.
fn prune(value: &Value, set: &Value) -> Value {
    let Value::Object(set) = set else {
        return value.clone();
    };
    if set.keys().all(|key| key == ".") {
        return value.clone();
    }
    match value {
        Value::Object(fields) => Value::Object(prune_object(fields, set)),
        Value::Array(items) => {
            let members: Vec<(Member, &Value)> = set
                .iter()
                .filter_map(|(key, child)| Some((Member::parse(key)?, child)))
                .collect();
            let kept = items.iter().enumerate().filter_map(|(index, item)| {
                let (member, child) = members.iter().find(|(member, _)| member.is(index, item))?;
                let mut kept = prune(item, child);
                // The key of an associative list's element identifies it, owned or not.
                if let (Member::Key(key), Value::Object(kept)) = (member, &mut kept) {
                    for (field, value) in key {
                        kept.insert(field.clone(), value.clone());
                    }
                }
                Some(kept)
            });
            Value::Array(kept.collect())
        }
        scalar => scalar.clone(),
    }
}

/// How a `fieldsV1` set names an element of a list.
enum Member {
    /// `k:{"name":"app"}`: the element of an associative list with these key fields.
    Key(Map<String, Value>),
    /// `v:"x"`: the element of a set list with this value.
    Value(Value),
    /// `i:3`: the element at this index.
    Index(usize),
}

impl Member {
    fn parse(key: &str) -> Option<Member> {
        if let Some(json) = key.strip_prefix("k:") {
            return serde_json::from_str(json).ok().map(Member::Key);
        }
        if let Some(json) = key.strip_prefix("v:") {
            return serde_json::from_str(json).ok().map(Member::Value);
        }
        key.strip_prefix("i:")?.parse().ok().map(Member::Index)
    }

    fn is(&self, index: usize, item: &Value) -> bool {
        match self {
            Member::Key(key) => key
                .iter()
                .all(|(field, value)| item.get(field).is_some_and(|item| same(item, value))),
            Member::Value(value) => same(item, value),
            Member::Index(at) => *at == index,
        }
    }
}

/// Equal values, numbers by value (`80` and `80.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// Copies the field at `pointer` of `from`, when it has one, into `to`.
fn copy(from: &Value, to: &mut Value, pointer: &str) {
    let Some(value) = from.pointer(pointer) else {
        return;
    };
    let mut target = to;
    let mut names = pointer.split('/').skip(1).peekable();
    while let Some(name) = names.next() {
        let Value::Object(fields) = target else {
            return;
        };
        if names.peek().is_none() {
            fields.insert(name.to_owned(), value.clone());
            return;
        }
        target = fields
            .entry(name.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::subset::is_subset;

    const MANAGER: &str = "outrigger-operator";

    /// A Deployment as the API server returns it after the operator applied `applied`: defaults
    /// filled in, a status, and the managed fields of the operator and of the Deployment
    /// controller.
    fn live_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": "u-1",
                "resourceVersion": "42",
                "generation": 3,
                "labels": {"app": "web", "app.kubernetes.io/managed-by": "outrigger"},
                "annotations": {"deployment.kubernetes.io/revision": "1", "outrigger.dev/x": "y"},
                "ownerReferences": [{"apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService",
                    "name": "web", "uid": "owner", "controller": true}],
                "managedFields": [
                    {"manager": MANAGER, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {
                        "f:metadata": {
                            "f:labels": {"f:app": {}, "f:app.kubernetes.io/managed-by": {}},
                            "f:annotations": {"f:outrigger.dev/x": {}},
                            "f:ownerReferences": {"k:{\"uid\":\"owner\"}": {}}
                        },
                        "f:spec": {
                            "f:replicas": {},
                            "f:selector": {},
                            "f:template": {
                                "f:metadata": {"f:labels": {"f:app": {}}},
                                "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                                    ".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                                    "f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {
                                        ".": {}, "f:containerPort": {}, "f:name": {}}}
                                }}}
                            }
                        }
                     }},
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                     "subresource": "status", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:status": {"f:replicas": {}}}},
                    {"manager": MANAGER, "operation": "Update", "apiVersion": "apps/v1",
                     "subresource": "status", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:status": {"f:observedGeneration": {}}}}
                ]
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "app",
                            "image": "shop/web:1",
                            "args": ["--port", "8080"],
                            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                            "imagePullPolicy": "IfNotPresent",
                            "terminationMessagePath": "/dev/termination-log"
                        }],
                        "dnsPolicy": "ClusterFirst",
                        "restartPolicy": "Always"
                    }
                }
            },
            "status": {"replicas": 2, "readyReplicas": 2, "observedGeneration": 3}
        })
    }

    fn applied() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "labels": {"app": "web", "app.kubernetes.io/managed-by": "outrigger"},
                "annotations": {"outrigger.dev/x": "y"},
                "ownerReferences": [{"apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService",
                    "name": "web", "uid": "owner", "controller": true}]
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "app",
                        "image": "shop/web:1",
                        "args": ["--port", "8080"],
                        "ports": [{"containerPort": 8080, "name": "http"}]
                    }]}
                }
            }
        })
    }

    #[test]
    fn a_slim_child_keeps_what_the_operator_applied_and_drops_defaults_and_managed_fields() {
        let slim = slim(&live_deployment(), MANAGER, &[]);
        assert!(is_subset(&applied(), &slim), "unchanged: no write");
        assert_eq!(slim["metadata"].get("managedFields"), None);
        assert_eq!(slim["spec"].get("revisionHistoryLimit"), None, "a default");
        assert_eq!(slim["spec"].get("strategy"), None);
        assert_eq!(
            slim["spec"]["template"]["spec"]["containers"][0].get("imagePullPolicy"),
            None
        );
        assert_eq!(
            slim["metadata"]["annotations"],
            json!({"outrigger.dev/x": "y"}),
            "another writer's annotation is not read"
        );
    }

    #[test]
    fn a_slim_child_keeps_identity_fencing_ownership_and_status() {
        let slim = slim(&live_deployment(), MANAGER, &[]);
        for pointer in [
            "/metadata/uid",
            "/metadata/resourceVersion",
            "/metadata/generation",
            "/metadata/ownerReferences/0/controller",
            "/status/readyReplicas",
            "/status/observedGeneration",
        ] {
            assert!(slim.pointer(pointer).is_some(), "{pointer}");
        }
    }

    #[test]
    fn fields_the_api_server_fills_are_kept_when_asked_for() {
        let service = json!({
            "metadata": {"name": "web", "managedFields": [{"manager": MANAGER, "operation": "Apply",
                "fieldsV1": {"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {
                    ".": {}, "f:port": {}, "f:targetPort": {}}}}}}]},
            "spec": {
                "clusterIP": "10.0.0.9",
                "sessionAffinity": "None",
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]
            }
        });
        let slim = slim(&service, MANAGER, &["/spec/clusterIP"]);
        assert_eq!(
            slim["spec"],
            json!({"clusterIP": "10.0.0.9", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}),
            "the key fields of an owned element stay, owned or not"
        );
    }

    #[test]
    fn a_field_someone_else_changed_is_no_longer_owned_so_the_child_is_applied_again() {
        // `kubectl edit` of the image: the update takes the field's ownership.
        let mut live = live_deployment();
        live["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop/web:hacked");
        let containers = "/metadata/managedFields/0/fieldsV1/f:spec/f:template/f:spec/f:containers";
        let app = live
            .pointer_mut(&format!("{containers}/k:{{\"name\":\"app\"}}"))
            .and_then(Value::as_object_mut)
            .unwrap();
        app.remove("f:image");
        assert!(!is_subset(&applied(), &slim(&live, MANAGER, &[])));
    }

    #[test]
    fn a_list_element_someone_else_added_is_theirs_and_does_not_make_the_child_differ() {
        // Applying would not remove another manager's container, so it must not cost a write on
        // every reconcile.
        let mut live = live_deployment();
        live["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "debugger", "image": "busybox"}));
        let slim = slim(&live, MANAGER, &[]);
        assert_eq!(
            slim["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert!(is_subset(&applied(), &slim));
    }

    #[test]
    fn a_child_the_operator_never_applied_keeps_nothing_of_its_spec() {
        // Created by an older operator with a plain update, or by someone else: applied again once.
        let mut live = live_deployment();
        live["metadata"]["managedFields"] = json!([]);
        let slim = slim(&live, MANAGER, &[]);
        assert_eq!(slim.get("spec"), None);
        assert!(!is_subset(&applied(), &slim));
        assert_eq!(slim["metadata"]["name"], "web");
    }

    #[test]
    fn an_empty_map_the_operator_applied_is_not_owned_and_does_not_make_the_child_differ() {
        // As the API server records `resources: {}`: not at all.
        let mut applied = applied();
        applied["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        applied["spec"]["template"]["metadata"]["annotations"] = json!({});
        let mut live = live_deployment();
        live["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        let slim = slim(&live, MANAGER, &[]);
        assert!(!is_subset(&applied, &slim));
        assert!(is_subset(&comparable(&applied), &slim));
        assert_eq!(
            comparable(&json!({"a": {"b": {}, "c": [{"d": {}}]}})),
            json!({"a": {"c": [{}]}}),
            "maps emptied by it go too; list elements stay"
        );
    }

    #[test]
    fn set_and_index_members_name_their_elements() {
        let object = json!({
            "metadata": {"managedFields": [{"manager": MANAGER, "fieldsV1": {
                "f:metadata": {"f:finalizers": {"v:\"a\"": {}}},
                "f:spec": {"f:list": {"i:1": {}}}
            }}], "finalizers": ["a", "b"]},
            "spec": {"list": [1, 2, 3]}
        });
        let slim = slim(&object, MANAGER, &[]);
        assert_eq!(slim["metadata"]["finalizers"], json!(["a"]));
        assert_eq!(slim["spec"]["list"], json!([2]));
    }
}
