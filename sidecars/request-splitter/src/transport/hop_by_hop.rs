//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy removes them
//! before it passes a message on.

use http::{header, HeaderMap, HeaderName, HeaderValue};

pub const CONNECTION_BIT: u8 = 1;
pub const TE_BIT: u8 = 1 << 1;
pub const UPGRADE_BIT: u8 = 1 << 2;
pub const TRANSFER_ENCODING_BIT: u8 = 1 << 4;

/// The headers that belong to one connection (RFC 9110 §7.6.1), each with a bit of its own so
/// that one pass over a message's names tells which of them it carries.
const HOP_BY_HOP: [(&str, u8); 7] = [
    ("connection", CONNECTION_BIT),
    ("te", TE_BIT),
    ("upgrade", UPGRADE_BIT),
    ("trailer", 1 << 3),
    ("transfer-encoding", TRANSFER_ENCODING_BIT),
    ("keep-alive", 1 << 5),
    ("proxy-connection", 1 << 6),
];

/// The bit of a hop-by-hop header name, compared without regard to case; 0 for any other name.
/// Every name of a message goes through here, so the length and first letter pick the one
/// candidate to compare.
pub fn bit(name: &[u8]) -> u8 {
    let index = match (name.len(), name.first().map(u8::to_ascii_lowercase)) {
        (10, Some(b'c')) => 0,
        (2, _) => 1,
        (7, Some(b'u')) => 2,
        (7, Some(b't')) => 3,
        (17, _) => 4,
        (10, Some(b'k')) => 5,
        (16, _) => 6,
        _ => return 0,
    };
    let (candidate, bit) = HOP_BY_HOP[index];
    if is(name, candidate.as_bytes()) {
        bit
    } else {
        0
    }
}

/// Whether `token` (a header name, or a token of a header value) is `lowercase` without regard to
/// case, where `lowercase` is made of lowercase letters and `-` only. Cheaper than
/// `eq_ignore_ascii_case` on the hot path: setting bit 5 lowercases a letter, and no other byte a
/// name or value may hold becomes a letter or `-` by it.
pub fn is(token: &[u8], lowercase: &[u8]) -> bool {
    token.len() == lowercase.len()
        && token
            .iter()
            .zip(lowercase)
            .all(|(byte, expected)| byte | 0x20 == *expected)
}

/// The items of a comma-separated header value (`connection`, `te`, `transfer-encoding`), trimmed;
/// empty items are left for the caller to skip.
pub fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|byte| *byte == b',').map(<[u8]>::trim_ascii)
}

/// Removes the headers that belong to one connection (RFC 9110 §7.6.1), keeping `connection` and
/// `upgrade` for an upgrade, and `te: trailers` (which gRPC needs end to end). Messages without
/// them (most HTTP/2) cost one pass over the names; a `connection: keep-alive` costs no allocation.
pub fn strip(headers: &mut HeaderMap, keep_upgrade: bool) {
    let present = headers
        .keys()
        .fold(0, |bits, name| bits | bit(name.as_str().as_bytes()));
    strip_present(headers, present, keep_upgrade);
}

/// [`strip`], for a caller that has already found which hop-by-hop headers are `present` (their
/// bits) in a pass over the names of its own.
pub fn strip_present(headers: &mut HeaderMap, present: u8, keep_upgrade: bool) {
    if present == 0 {
        return;
    }
    // An upgrade keeps its `upgrade`, and `connection` is set anew below.
    let mut remove = if keep_upgrade {
        present & !(CONNECTION_BIT | UPGRADE_BIT)
    } else {
        present
    };
    // Other headers `connection` names go too. Options such as `close` rarely name a header that
    // is there, so a name is only made (an allocation) for one that is.
    let mut listed: Vec<HeaderName> = Vec::new();
    let mut te_listed = false;
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| tokens(value.as_bytes()));
    for token in tokens {
        match bit(token) {
            0 => {
                let present = std::str::from_utf8(token).is_ok_and(|name| headers.contains_key(name));
                if present {
                    listed.extend(HeaderName::from_bytes(token).ok());
                }
            }
            TE_BIT => te_listed = true,
            _ => {}
        }
    }
    for name in listed {
        headers.remove(name);
    }
    let te_trailers = !te_listed
        && headers
            .get(header::TE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if te_trailers {
        remove &= !TE_BIT;
    }
    for (name, bit) in HOP_BY_HOP {
        if remove & bit != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn each_hop_by_hop_name_has_its_bit_in_any_case_and_others_have_none() {
        for (name, expected) in HOP_BY_HOP {
            assert_eq!(bit(name.as_bytes()), expected, "{name}");
            assert_eq!(bit(name.to_ascii_uppercase().as_bytes()), expected, "{name}");
        }
        for other in [
            "",
            "t",
            "tx",
            "content-type",
            "x-upgrade",
            "trailers",
            "keep-alivex",
            "connectio",
        ] {
            assert_eq!(bit(other.as_bytes()), 0, "{other}");
        }
    }

    #[test]
    fn is_agrees_with_eq_ignore_ascii_case_for_every_name_and_value_byte() {
        let literals = ["content-length", "date", "keep-alive", "te", "chunked", "x-a"];
        // Every byte a name or a value may hold: tab, and visible ASCII, space and obs-text.
        let bytes = std::iter::once(b'\t').chain(0x20..=0x7e).chain(0x80..=0xff);
        for literal in literals {
            let literal = literal.as_bytes();
            assert!(is(literal, literal));
            assert!(is(literal.to_ascii_uppercase().as_slice(), literal));
            assert!(!is(&literal[1..], literal));
            for position in 0..literal.len() {
                for byte in bytes.clone() {
                    let mut candidate = literal.to_vec();
                    candidate[position] = byte;
                    assert_eq!(
                        is(&candidate, literal),
                        candidate.eq_ignore_ascii_case(literal),
                        "{candidate:?}"
                    );
                }
            }
        }
    }

    /// A header map of static names and values, for tests here and in the proxy.
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        strip(&mut map, false);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["x-keep"], "yes");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers_and_grpc_keeps_te_trailers() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip(&mut map, true);
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
        let mut map = headers(&[("te", "trailers")]);
        strip(&mut map, false);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn te_goes_when_connection_names_it_and_any_named_header_goes() {
        let cases: [&[(&'static str, &'static str)]; 3] = [
            &[("connection", "TE, close"), ("te", "trailers"), ("x-keep", "yes")],
            &[
                ("connection", "close"),
                ("close", "named, so it goes"),
                ("x-keep", "yes"),
            ],
            &[
                ("proxy-connection", "keep-alive"),
                ("trailer", "x-sum"),
                ("x-keep", "yes"),
            ],
        ];
        for pairs in cases {
            let mut map = headers(pairs);
            strip(&mut map, false);
            assert_eq!(map.len(), 1, "{pairs:?} left {map:?}");
        }
    }
}
