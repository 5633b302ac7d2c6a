//! Percent-encoding for the parts of a URL built from names and values (object names, label
//! selectors, PromQL queries).

/// Percent-encodes every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`), so the
/// result is safe in a path segment and in a query value alike.
pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_pass_and_everything_else_is_escaped() {
        assert_eq!(percent_encode("checkout-v1.2_x~"), "checkout-v1.2_x~");
        assert_eq!(percent_encode("a b/c&d"), "a%20b%2Fc%26d");
        assert_eq!(
            percent_encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
