//! JSON helpers both sides of the contract use: layering documents with a merge patch, and
//! comparing what was written with what is there.

use serde_json::{Map, Value};

/// Applies a JSON merge patch (RFC 7386): objects merge key by key, `null` deletes, anything else
/// replaces. The splitter merges its ConfigMap layer over its file layer this way.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// True when every field of `desired` is present in `actual` with an equal value. Objects compare
/// field by field (extra fields in `actual`, such as server defaults, are fine); lists compare
/// element by element and must have the same length; numbers compare by value (`3` equals `3.0`).
/// The operator skips a write when the live object already holds everything it would apply.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(desired), Value::Object(actual)) => desired
            .iter()
            .all(|(key, value)| actual.get(key).is_some_and(|actual| is_subset(value, actual))),
        (Value::Array(desired), Value::Array(actual)) => {
            desired.len() == actual.len() && desired.iter().zip(actual).all(|(d, a)| is_subset(d, a))
        }
        (Value::Number(desired), Value::Number(actual)) => desired.as_f64() == actual.as_f64(),
        (desired, actual) => desired == actual,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_overrides_deletes_and_keeps() {
        let mut base =
            json!({"weights": {"stable": 100}, "mirror": {"backend": "c", "percent": 5}, "accessLog": true});
        merge_patch(
            &mut base,
            &json!({"weights": {"stable": 80, "canary": 20}, "mirror": null}),
        );
        assert_eq!(
            base,
            json!({"weights": {"stable": 80, "canary": 20}, "accessLog": true})
        );
    }

    #[test]
    fn merge_patch_replaces_arrays_and_scalars_and_drops_nulls_into_a_new_object() {
        let cases = [
            (json!({"a": [1, 2]}), json!({"a": [3]}), json!({"a": [3]})),
            (
                json!({"a": 1}),
                json!({"a": {"b": 1, "c": null}}),
                json!({"a": {"b": 1}}),
            ),
            (json!([1]), json!({"a": null, "b": 2}), json!({"b": 2})),
            (json!({"a": 1}), json!("text"), json!("text")),
            (json!({"a": 1}), json!({}), json!({"a": 1})),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn a_subset_holds_every_desired_field_with_an_equal_value() {
        let actual =
            json!({"spec": {"replicas": 3, "template": {"a": [1, {"x": 1, "y": 2}]}, "defaulted": true}});
        let cases = [
            (json!({}), true),
            (json!({"spec": {"replicas": 3}}), true),
            (json!({"spec": {"replicas": 4}}), false),
            (json!({"spec": {"template": {"a": [1, {"x": 1}]}}}), true),
            (json!({"spec": {"template": {"a": [1]}}}), false),
            (json!({"spec": {"missing": 1}}), false),
            (json!({"spec": {"replicas": 3.0}}), true),
            (json!({"spec": {"replicas": "3"}}), false),
        ];
        for (desired, expected) in cases {
            assert_eq!(is_subset(&desired, &actual), expected, "{desired}");
        }
    }
}
