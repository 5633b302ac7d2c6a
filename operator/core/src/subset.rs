//! Whether an object already holds everything we would apply, so an unchanged child costs no write.

use serde_json::Value;

/// True when every field of `desired` is present in `actual` with an equal value. Objects compare
/// field by field (extra fields in `actual`, such as server defaults, are fine); lists compare
/// element by element and must have the same length.
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
    fn subset_cases() {
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
