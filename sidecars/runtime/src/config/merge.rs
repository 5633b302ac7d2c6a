//! JSON merge patch (RFC 7386), the way a ConfigMap layer is merged over the file layer.

use serde_json::Value;

/// Applies `patch` to `target`: objects merge key by key, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_overrides_deletes_and_keeps() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        merge_patch(&mut target, &json!({"a": 5, "b": {"c": null, "x": 9}, "e": [3]}));
        assert_eq!(target, json!({"a": 5, "b": {"d": 3, "x": 9}, "e": [3]}));
        merge_patch(&mut target, &json!("whole"));
        assert_eq!(target, json!("whole"));
    }
}
