//! When a request may be sent again: after a failed attempt (to another endpoint, within the retry
//! budget of [`super::health`]) and after a pooled connection turned out to be closed by the
//! backend before it answered.

use http::Method;

/// Methods whose repetition has the same effect as one request (RFC 9110 §9.2.2), so a request
/// that may have reached the backend can be sent again without doing its work twice.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_without_extra_effect_are_idempotent() {
        let cases = [
            (Method::GET, true),
            (Method::HEAD, true),
            (Method::OPTIONS, true),
            (Method::TRACE, true),
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::POST, false),
            (Method::PATCH, false),
            (Method::CONNECT, false),
        ];
        for (method, expected) in cases {
            assert_eq!(is_idempotent(&method), expected, "{method}");
        }
    }
}
