//! A subset of JSON Schema, enough for configuration files: `type`, `required`, `properties`,
//! `additionalProperties: false`, `items`, `enum`, `const`, `minimum`/`maximum` (and the exclusive
//! forms), `minLength`/`maxLength`, `pattern`. Keywords outside the subset are ignored, so a schema
//! written for a full validator still checks what it can here.

use serde_json::Value;

/// Where the document does not fit, as a JSON pointer (`/server/port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

/// Checks `document` against `schema`.
pub fn check(schema: &Value, document: &Value) -> Result<(), SchemaError> {
    check_at(schema, document, "")
}

fn check_at(schema: &Value, value: &Value, path: &str) -> Result<(), SchemaError> {
    let fail = |message: String| SchemaError {
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
        message,
    };
    let Some(schema) = schema.as_object() else {
        // `true` accepts anything, `false` nothing.
        return match schema {
            Value::Bool(false) => Err(fail("no value is allowed here".to_owned())),
            _ => Ok(()),
        };
    };
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|kind| is_type(value, kind)) {
            return Err(fail(format!(
                "{} is not of type {}",
                describe(value),
                allowed.join(" or ")
            )));
        }
    }
    if let Some(Value::Array(choices)) = schema.get("enum") {
        if !choices.contains(value) {
            let choices: Vec<String> = choices.iter().map(Value::to_string).collect();
            return Err(fail(format!("{value} is not one of {}", choices.join(", "))));
        }
    }
    if let Some(constant) = schema.get("const") {
        if constant != value {
            return Err(fail(format!("{value} is not {constant}")));
        }
    }
    if let Some(number) = value.as_f64() {
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        if let Some(minimum) = bound("minimum").filter(|minimum| number < *minimum) {
            return Err(fail(format!(
                "{value} is less than the minimum {}",
                show(minimum)
            )));
        }
        if let Some(maximum) = bound("maximum").filter(|maximum| number > *maximum) {
            return Err(fail(format!(
                "{value} is more than the maximum {}",
                show(maximum)
            )));
        }
        if let Some(minimum) = bound("exclusiveMinimum").filter(|minimum| number <= *minimum) {
            return Err(fail(format!("{value} is not more than {}", show(minimum))));
        }
        if let Some(maximum) = bound("exclusiveMaximum").filter(|maximum| number >= *maximum) {
            return Err(fail(format!("{value} is not less than {}", show(maximum))));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if let Some(minimum) = schema
            .get("minLength")
            .and_then(Value::as_u64)
            .filter(|minimum| length < *minimum)
        {
            return Err(fail(format!("{value} is shorter than {minimum} characters")));
        }
        if let Some(maximum) = schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .filter(|maximum| length > *maximum)
        {
            return Err(fail(format!("{value} is longer than {maximum} characters")));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let regex = regex::Regex::new(pattern)
                .map_err(|error| fail(format!("the schema's pattern {pattern:?} is invalid: {error}")))?;
            if !regex.is_match(text) {
                return Err(fail(format!("{value} does not match {pattern:?}")));
            }
        }
    }
    if let Some(object) = value.as_object() {
        if let Some(Value::Array(required)) = schema.get("required") {
            if let Some(missing) = required
                .iter()
                .filter_map(Value::as_str)
                .find(|key| !object.contains_key(*key))
            {
                return Err(fail(format!("the required property {missing:?} is missing")));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, item) in object {
            let child = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
            match properties.and_then(|properties| properties.get(key)) {
                Some(property) => check_at(property, item, &child)?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(fail(format!("the property {key:?} is not allowed")));
                    }
                    Some(additional @ Value::Object(_)) => check_at(additional, item, &child)?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            check_at(items, item, &format!("{path}/{index}"))?;
        }
    }
    Ok(())
}

fn is_type(value: &Value, kind: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|number| number.fract() == 0.0)
        }
        _ => true,
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        other => other.to_string(),
    }
}

fn show(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        number.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(schema: Value, document: Value) -> String {
        let error = check(&schema, &document).unwrap_err();
        format!("{}: {}", error.path, error.message)
    }

    #[test]
    fn each_keyword_of_the_subset_names_the_offending_field() {
        let schema = json!({
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                "mode": {"enum": ["fast", "safe"]},
                "ratio": {"type": "number", "exclusiveMaximum": 1},
                "hosts": {"type": "array", "items": {"type": "string"}},
            },
        });
        assert!(check(
            &schema,
            &json!({"name": "web", "mode": "safe", "ratio": 0.5, "hosts": ["a"]})
        )
        .is_ok());
        assert_eq!(
            error(schema.clone(), json!({})),
            "/: the required property \"name\" is missing"
        );
        assert_eq!(
            error(schema.clone(), json!({"name": "Web"})),
            "/name: \"Web\" does not match \"^[a-z]+$\""
        );
        assert_eq!(
            error(schema.clone(), json!({"name": "a", "mode": "slow"})),
            "/mode: \"slow\" is not one of \"fast\", \"safe\""
        );
        assert_eq!(
            error(schema.clone(), json!({"name": "a", "ratio": 1})),
            "/ratio: 1 is not less than 1"
        );
        assert_eq!(
            error(schema.clone(), json!({"name": "a", "hosts": ["a", 2]})),
            "/hosts/1: 2 is not of type string"
        );
        assert_eq!(
            error(schema.clone(), json!({"name": "a", "extra": 1})),
            "/: the property \"extra\" is not allowed"
        );
        assert_eq!(error(schema, json!([1])), "/: an array is not of type object");
    }

    #[test]
    fn integers_and_unknown_keywords() {
        let schema = json!({"type": "integer", "maximum": 10, "format": "whatever"});
        assert!(check(&schema, &json!(3)).is_ok());
        assert_eq!(error(schema.clone(), json!(2.5)), "/: 2.5 is not of type integer");
        assert_eq!(error(schema, json!(11)), "/: 11 is more than the maximum 10");
    }
}
