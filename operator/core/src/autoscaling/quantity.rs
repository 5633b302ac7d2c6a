//! Kubernetes quantities (`250m`, `10Mi`, `1.5`) as plain numbers, and numbers back as short text.

/// The value of a quantity string, or `None` when it is not one.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number * factor).filter(|v| v.is_finite())
}

/// A number as a short quantity: whole numbers as such, fractions in milli-units (`250m`), as
/// HPA shows metric values.
pub fn format(value: f64) -> String {
    if !value.is_finite() {
        return String::new();
    }
    let milli = (value * 1000.0).round();
    if milli % 1000.0 == 0.0 {
        format!("{}", milli / 1000.0)
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_decimal_and_binary_suffixes() {
        let cases = [
            ("100", Some(100.0)),
            ("250m", Some(0.25)),
            ("1.5", Some(1.5)),
            ("2k", Some(2000.0)),
            ("10Mi", Some(10.0 * 1024.0 * 1024.0)),
            ("1Gi", Some(1024.0 * 1024.0 * 1024.0)),
            ("x", None),
            ("1Q", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), expected, "{text}");
        }
    }

    #[test]
    fn numbers_format_as_whole_units_or_milli_units() {
        assert_eq!(format(200.0), "200");
        assert_eq!(format(0.2), "200m");
        assert_eq!(format(1.2345), "1235m");
        assert_eq!(format(f64::NAN), "");
    }
}
