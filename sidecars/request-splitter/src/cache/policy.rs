//! What a shared cache may do with a request and a response (RFC 9111), without I/O: whether a
//! request may be answered from the cache, whether a response may be stored and for how long,
//! which request headers a stored response varies on, and how a `304 Not Modified` refreshes it.
//! Time is passed in, so every rule is tested with a table.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The `Cache-Control` (and `Pragma`) directives of a request that matter to a shared cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache` (or `Pragma: no-cache`): a stored response must be revalidated first.
    pub no_cache: bool,
    /// `no-store`: nothing about this exchange is stored.
    pub no_store: bool,
    /// `max-age=N`: a stored response older than this is not used without revalidation.
    pub max_age: Option<u64>,
    /// The request carries `Authorization`.
    pub authorization: bool,
}

impl RequestDirectives {
    pub fn of(headers: &HeaderMap) -> RequestDirectives {
        let mut directives = RequestDirectives {
            authorization: headers.contains_key(header::AUTHORIZATION),
            ..RequestDirectives::default()
        };
        let mut has_cache_control = false;
        for (name, value) in cache_control(headers) {
            has_cache_control = true;
            match name.as_str() {
                "no-cache" => directives.no_cache = true,
                "no-store" => directives.no_store = true,
                "max-age" => directives.max_age = value.and_then(seconds),
                _ => {}
            }
        }
        // `Pragma: no-cache` counts only without `Cache-Control` (RFC 9111, 5.4).
        if !has_cache_control {
            directives.no_cache |= headers
                .get_all(header::PRAGMA)
                .iter()
                .any(|value| contains_token(value, "no-cache"));
        }
        directives
    }
}

/// The `Cache-Control` directives of a response that matter to a shared cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `no-cache` without field names: stored, but revalidated before every use.
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
}

impl ResponseDirectives {
    pub fn of(headers: &HeaderMap) -> ResponseDirectives {
        let mut directives = ResponseDirectives::default();
        for (name, value) in cache_control(headers) {
            match name.as_str() {
                "max-age" => directives.max_age = value.and_then(seconds).or(Some(0)),
                "s-maxage" => directives.s_maxage = value.and_then(seconds).or(Some(0)),
                "no-store" => directives.no_store = true,
                "no-cache" => directives.no_cache = true,
                // `private="set-cookie"` (with field names) still keeps the whole response out of a
                // shared cache here: the simpler, safer reading.
                "private" => directives.private = true,
                "public" => directives.public = true,
                "must-revalidate" | "proxy-revalidate" => directives.must_revalidate = true,
                _ => {}
            }
        }
        directives
    }
}

/// What the cache does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPolicy {
    /// Not cached: sent on as it came, its response not stored.
    Pass(&'static str),
    /// Looked up; `revalidate` when a stored response must be checked with the backend before use.
    Lookup { revalidate: bool },
}

/// Whether a request is answered from the cache (only GET and HEAD are).
pub fn request_policy(method: &Method, directives: &RequestDirectives) -> RequestPolicy {
    if method != Method::GET && method != Method::HEAD {
        return RequestPolicy::Pass("method");
    }
    if directives.no_store {
        return RequestPolicy::Pass("request-no-store");
    }
    RequestPolicy::Lookup {
        revalidate: directives.no_cache || directives.max_age == Some(0),
    }
}

/// Statuses a cache may store without explicit permission beyond freshness (RFC 9110, 15.1).
const STORABLE_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Whether a response may be stored, and how long it stays fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storability {
    /// Store it, fresh for `lifetime` from when it was generated; `age` is how old it already was
    /// when it arrived (its `Age` header).
    Store { lifetime: Duration, age: Duration },
    /// Do not store it; the reason is a fixed string for metrics and logs.
    Pass(&'static str),
}

/// Decides whether the response to a GET may go into a shared cache.
pub fn storability(
    request: &RequestDirectives,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Storability {
    if !STORABLE_STATUSES.contains(&status.as_u16()) {
        return Storability::Pass("status");
    }
    if request.no_store {
        return Storability::Pass("request-no-store");
    }
    let directives = ResponseDirectives::of(headers);
    if directives.no_store {
        return Storability::Pass("no-store");
    }
    if directives.private {
        return Storability::Pass("private");
    }
    if matches!(vary(headers), Vary::Any) {
        return Storability::Pass("vary-any");
    }
    let shared_explicitly = directives.public || directives.s_maxage.is_some();
    if headers.contains_key(header::SET_COOKIE) && !shared_explicitly {
        return Storability::Pass("set-cookie");
    }
    if request.authorization && !(shared_explicitly || directives.must_revalidate) {
        return Storability::Pass("authorization");
    }
    let lifetime = if directives.no_cache {
        Duration::ZERO
    } else {
        freshness_lifetime(&directives, headers)
    };
    if lifetime.is_zero() && !has_validator(headers) {
        return Storability::Pass("not-fresh");
    }
    Storability::Store {
        lifetime,
        age: header_seconds(headers, &header::AGE).map_or(Duration::ZERO, Duration::from_secs),
    }
    .adjusted(headers, now)
}

impl Storability {
    /// Adds to the age the time the response spent since its `Date`, when that says it is older
    /// than its `Age` header does (the apparent age of RFC 9111, 4.2.3).
    fn adjusted(self, headers: &HeaderMap, now: SystemTime) -> Storability {
        match self {
            Storability::Store { lifetime, age } => {
                let apparent = http_date(headers, &header::DATE)
                    .and_then(|date| now.duration_since(date).ok())
                    .unwrap_or(Duration::ZERO);
                Storability::Store {
                    lifetime,
                    age: age.max(apparent),
                }
            }
            pass => pass,
        }
    }
}

/// How long a response stays fresh: `s-maxage`, else `max-age`, else `Expires` less `Date`. No
/// heuristic freshness: a response without any of them is fresh for no time.
pub fn freshness_lifetime(directives: &ResponseDirectives, headers: &HeaderMap) -> Duration {
    if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
        return Duration::from_secs(seconds);
    }
    let Some(expires) = headers.get(header::EXPIRES) else {
        return Duration::ZERO;
    };
    // An invalid `Expires` (often `0`) means already expired.
    let Some(expires) = expires
        .to_str()
        .ok()
        .and_then(|text| httpdate::parse_http_date(text).ok())
    else {
        return Duration::ZERO;
    };
    let date = http_date(headers, &header::DATE);
    match date {
        Some(date) => expires.duration_since(date).unwrap_or(Duration::ZERO),
        // Without a `Date`, `Expires` counts from now: the caller's age adjustment starts at 0.
        None => expires
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    }
}

/// Whether the response can be revalidated: it has an `ETag` or a `Last-Modified`.
pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// When a stored response stops being fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// When it was stored (or last revalidated).
    pub stored_at: SystemTime,
    /// How old it was then.
    pub age_at_store: Duration,
    /// Zero for a response stored only to be revalidated (`no-cache`, or validators alone).
    pub lifetime: Duration,
}

impl Freshness {
    /// Its age now (RFC 9111, 4.2.3, with the response delay taken as nothing).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.age_at_store + now.duration_since(self.stored_at).unwrap_or(Duration::ZERO)
    }

    /// Fresh now, for a request with these directives.
    pub fn is_fresh(&self, now: SystemTime, request: &RequestDirectives) -> bool {
        let age = self.age(now);
        let limit = match request.max_age {
            Some(max_age) => self.lifetime.min(Duration::from_secs(max_age)),
            None => self.lifetime,
        };
        age < limit
    }
}

/// What a response's `Vary` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// `Vary: *`: never served from a cache.
    Any,
    /// The request headers (lower case, sorted, without repeats) the response varies on.
    Names(Vec<HeaderName>),
}

/// Reads `Vary`.
pub fn vary(headers: &HeaderMap) -> Vary {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else {
            return Vary::Any;
        };
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if part == "*" {
                return Vary::Any;
            }
            match HeaderName::from_bytes(part.as_bytes()) {
                Ok(name) => names.push(name),
                // A name that is not a header name cannot be matched: treat as `*`.
                Err(_) => return Vary::Any,
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Vary::Names(names)
}

/// The values of the varied-on headers in a request, normalised: every field line of a name
/// joined with `,`, whitespace around the items removed; `None` for an absent header. Two requests
/// select the same stored response when their keys are equal.
pub fn vary_key(names: &[HeaderName], request: &HeaderMap) -> Vec<Option<Vec<u8>>> {
    names
        .iter()
        .map(|name| {
            let mut values = request.get_all(name).iter().peekable();
            values.peek()?;
            let mut joined = Vec::new();
            for value in values {
                for item in value.as_bytes().split(|byte| *byte == b',') {
                    let item = item.trim_ascii();
                    if item.is_empty() {
                        continue;
                    }
                    if !joined.is_empty() {
                        joined.push(b',');
                    }
                    joined.extend_from_slice(item);
                }
            }
            Some(joined)
        })
        .collect()
}

/// The cache key of a request without its varied-on headers: host and path with query.
pub fn primary_key(host: Option<&[u8]>, path_and_query: &str) -> String {
    let host = host.map(String::from_utf8_lossy).unwrap_or_default();
    let mut key = String::with_capacity(host.len() + path_and_query.len() + 1);
    for character in host.chars() {
        key.push(character.to_ascii_lowercase());
    }
    key.push(' ');
    key.push_str(path_and_query);
    key
}

/// The path part of a primary key (what a purge by prefix matches).
pub fn key_path(key: &str) -> &str {
    key.split_once(' ').map_or(key, |(_, path)| path)
}

/// The conditional headers that revalidate a stored response: `If-None-Match` from its `ETag`,
/// `If-Modified-Since` from its `Last-Modified`.
pub fn conditional_headers(stored: &HeaderMap) -> HeaderMap {
    let mut conditional = HeaderMap::new();
    if let Some(etag) = stored.get(header::ETAG) {
        conditional.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        conditional.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
    conditional
}

/// The client's own conditional headers, which the cache takes off a request it means to store the
/// answer of (a 304 would leave it nothing to store).
pub const CLIENT_CONDITIONALS: [HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Headers a `304` does not update in the stored response (RFC 9111, 3.2: the framing ones).
const NOT_UPDATED: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONTENT_ENCODING,
];

/// The stored response's headers refreshed by a `304`: each header the 304 carries replaces the
/// stored one of that name, except those that frame the body.
pub fn refreshed(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    for name in not_modified.keys() {
        if NOT_UPDATED.contains(name) {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Whether the client's conditional request is satisfied by the stored response's validators, so
/// that it is answered `304` (RFC 9110, 13.2.2: `If-None-Match` first, weak comparison).
pub fn client_not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(condition) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG) else {
            return false;
        };
        let etag = weak_tag(etag.as_bytes());
        return condition.as_bytes().split(|byte| *byte == b',').any(|candidate| {
            let candidate = candidate.trim_ascii();
            candidate == b"*" || weak_tag(candidate) == etag
        });
    }
    match (
        http_date(request, &header::IF_MODIFIED_SINCE),
        http_date(stored, &header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

fn weak_tag(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// Headers of a stored response sent with a `304` answer to a client (RFC 9110, 15.4.5).
pub const NOT_MODIFIED_HEADERS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// The `Cache-Control` directives of a message: lower-case names, values without quotes.
fn cache_control(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_directives)
}

fn split_directives(text: &str) -> Vec<(String, Option<String>)> {
    let mut directives = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        // A quoted value may hold commas: find the directive's end outside quotes.
        let mut quoted = false;
        let mut end = rest.len();
        for (index, character) in rest.char_indices() {
            match character {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = index;
                    break;
                }
                _ => {}
            }
        }
        let part = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("");
        if part.is_empty() {
            continue;
        }
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"').to_owned())),
            None => (part, None),
        };
        directives.push((name.to_ascii_lowercase(), value));
    }
    directives
}

fn seconds(value: String) -> Option<u64> {
    // Larger than any sensible lifetime (about 68 years) is capped, as RFC 9111 asks for overflow.
    value
        .parse::<u64>()
        .ok()
        .map(|seconds| seconds.min(u64::from(u32::MAX >> 1)))
}

fn contains_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|text| {
        text.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

fn header_seconds(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok()
}

fn http_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn date(seconds: u64) -> String {
        httpdate::fmt_http_date(at(seconds))
    }

    #[test]
    fn request_directives_decide_lookup_revalidation_or_pass() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], RequestPolicy);
        let cases: &[Case<'_>] = &[
            ("GET", &[], RequestPolicy::Lookup { revalidate: false }),
            ("HEAD", &[], RequestPolicy::Lookup { revalidate: false }),
            ("POST", &[], RequestPolicy::Pass("method")),
            ("PUT", &[], RequestPolicy::Pass("method")),
            (
                "GET",
                &[("cache-control", "no-cache")],
                RequestPolicy::Lookup { revalidate: true },
            ),
            (
                "GET",
                &[("Cache-Control", "max-age=0")],
                RequestPolicy::Lookup { revalidate: true },
            ),
            (
                "GET",
                &[("pragma", "no-cache")],
                RequestPolicy::Lookup { revalidate: true },
            ),
            // Pragma counts only without Cache-Control.
            (
                "GET",
                &[("pragma", "no-cache"), ("cache-control", "max-age=60")],
                RequestPolicy::Lookup { revalidate: false },
            ),
            (
                "GET",
                &[("cache-control", "no-store")],
                RequestPolicy::Pass("request-no-store"),
            ),
        ];
        for (method, request, expected) in cases {
            let directives = RequestDirectives::of(&headers(request));
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(
                request_policy(&method, &directives),
                *expected,
                "{method} {request:?}"
            );
        }
    }

    #[test]
    fn storability_follows_cache_control_expires_cookies_and_authorization() {
        let now = at(0);
        let today = date(0);
        let store = |lifetime: u64| Storability::Store {
            lifetime: Duration::from_secs(lifetime),
            age: Duration::ZERO,
        };
        type Case<'a> = (
            u16,
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            Storability,
        );
        let cases: &[Case<'_>] = &[
            (200, &[], &[("cache-control", "max-age=60")], store(60)),
            (
                200,
                &[],
                &[("cache-control", "public, max-age=60, s-maxage=300")],
                store(300),
            ),
            (
                200,
                &[],
                &[("cache-control", "s-maxage=0, max-age=60"), ("etag", "\"a\"")],
                store(0),
            ),
            (
                200,
                &[],
                &[("cache-control", "no-store, max-age=60")],
                Storability::Pass("no-store"),
            ),
            (
                200,
                &[],
                &[("cache-control", "private, max-age=60")],
                Storability::Pass("private"),
            ),
            (
                200,
                &[],
                &[("cache-control", "max-age=60"), ("vary", "*")],
                Storability::Pass("vary-any"),
            ),
            (200, &[], &[], Storability::Pass("not-fresh")),
            // No freshness, but a validator: stored and revalidated on every use.
            (200, &[], &[("etag", "\"v1\"")], store(0)),
            (
                200,
                &[],
                &[("cache-control", "no-cache, max-age=60"), ("etag", "\"v1\"")],
                store(0),
            ),
            (
                200,
                &[],
                &[("cache-control", "no-cache, max-age=60")],
                Storability::Pass("not-fresh"),
            ),
            (
                200,
                &[],
                &[("cache-control", "max-age=60"), ("set-cookie", "session=1")],
                Storability::Pass("set-cookie"),
            ),
            (
                200,
                &[],
                &[("cache-control", "public, max-age=60"), ("set-cookie", "a=1")],
                store(60),
            ),
            (
                200,
                &[("authorization", "Bearer x")],
                &[("cache-control", "max-age=60")],
                Storability::Pass("authorization"),
            ),
            (
                200,
                &[("authorization", "Bearer x")],
                &[("cache-control", "s-maxage=60")],
                store(60),
            ),
            (
                200,
                &[("cache-control", "no-store")],
                &[("cache-control", "max-age=60")],
                Storability::Pass("request-no-store"),
            ),
            (
                500,
                &[],
                &[("cache-control", "max-age=60")],
                Storability::Pass("status"),
            ),
            (
                206,
                &[],
                &[("cache-control", "max-age=60")],
                Storability::Pass("status"),
            ),
            (404, &[], &[("cache-control", "max-age=5")], store(5)),
            (200, &[], &[("date", &today), ("expires", &date(120))], store(120)),
            (
                200,
                &[],
                &[("date", &today), ("expires", "0")],
                Storability::Pass("not-fresh"),
            ),
            // max-age wins over Expires.
            (
                200,
                &[],
                &[
                    ("date", &today),
                    ("expires", &date(120)),
                    ("cache-control", "max-age=10"),
                ],
                store(10),
            ),
        ];
        for (status, request, response, expected) in cases {
            let request = RequestDirectives::of(&headers(request));
            let status = StatusCode::from_u16(*status).unwrap();
            assert_eq!(
                storability(&request, status, &headers(response), now),
                *expected,
                "{status} {response:?}"
            );
        }
    }

    #[test]
    fn a_response_that_was_already_old_counts_its_age() {
        let request = RequestDirectives::default();
        let response = headers(&[("cache-control", "max-age=60"), ("age", "10")]);
        assert_eq!(
            storability(&request, StatusCode::OK, &response, at(0)),
            Storability::Store {
                lifetime: Duration::from_secs(60),
                age: Duration::from_secs(10)
            }
        );
        let response = headers(&[("cache-control", "max-age=60"), ("date", &date(0))]);
        assert_eq!(
            storability(&request, StatusCode::OK, &response, at(25)),
            Storability::Store {
                lifetime: Duration::from_secs(60),
                age: Duration::from_secs(25)
            }
        );
    }

    #[test]
    fn freshness_ends_at_the_lifetime_or_the_requests_max_age() {
        let freshness = Freshness {
            stored_at: at(0),
            age_at_store: Duration::from_secs(5),
            lifetime: Duration::from_secs(60),
        };
        let any = RequestDirectives::default();
        let cases = [(0, true), (54, true), (55, false), (100, false)];
        for (elapsed, fresh) in cases {
            assert_eq!(freshness.is_fresh(at(elapsed), &any), fresh, "{elapsed}");
        }
        assert_eq!(freshness.age(at(10)), Duration::from_secs(15));
        let picky = RequestDirectives {
            max_age: Some(10),
            ..RequestDirectives::default()
        };
        assert!(freshness.is_fresh(at(4), &picky));
        assert!(!freshness.is_fresh(at(5), &picky));
    }

    #[test]
    fn vary_names_are_normalised_and_star_or_garbage_is_any() {
        let cases: &[(&[(&str, &str)], Vary)] = &[
            (&[], Vary::Names(vec![])),
            (
                &[
                    ("vary", "Accept-Encoding, accept-language"),
                    ("vary", "accept-encoding"),
                ],
                Vary::Names(vec![header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE]),
            ),
            (&[("vary", "accept, *")], Vary::Any),
            (&[("vary", "bad header")], Vary::Any),
        ];
        for (response, expected) in cases {
            assert_eq!(vary(&headers(response)), *expected, "{response:?}");
        }
    }

    #[test]
    fn vary_keys_match_requests_that_differ_only_in_spacing_and_line_splits() {
        let names = [header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];
        let a = vary_key(&names, &headers(&[("accept-encoding", "gzip, br")]));
        let b = vary_key(
            &names,
            &headers(&[("accept-encoding", "gzip"), ("accept-encoding", " br ")]),
        );
        let c = vary_key(&names, &headers(&[("accept-encoding", "br, gzip")]));
        let d = vary_key(
            &names,
            &headers(&[("accept-encoding", "gzip,br"), ("accept-language", "fr")]),
        );
        assert_eq!(a, b);
        assert_eq!(a, vec![Some(b"gzip,br".to_vec()), None]);
        assert_ne!(a, c, "order matters");
        assert_ne!(a, d, "a header present is not one absent");
        assert!(vary_key(&[], &headers(&[("accept", "x")])).is_empty());
    }

    #[test]
    fn keys_lower_case_the_host_and_keep_the_query() {
        assert_eq!(
            primary_key(Some(b"Shop.Example:8080"), "/a?b=1"),
            "shop.example:8080 /a?b=1"
        );
        assert_eq!(primary_key(None, "/"), " /");
        assert_eq!(key_path("shop /a?b=1"), "/a?b=1");
    }

    #[test]
    fn revalidation_sends_the_validators_and_a_304_refreshes_all_but_framing() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", &date(0)),
            ("cache-control", "max-age=10"),
            ("content-length", "5"),
            ("x-kept", "yes"),
        ]);
        let conditional = conditional_headers(&stored);
        assert_eq!(conditional[header::IF_NONE_MATCH], "\"v1\"");
        assert_eq!(conditional[header::IF_MODIFIED_SINCE], date(0).as_str());
        let not_modified = headers(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("date", &date(30)),
        ]);
        let refreshed = refreshed(&stored, &not_modified);
        assert_eq!(refreshed[header::CACHE_CONTROL], "max-age=60");
        assert_eq!(refreshed[header::CONTENT_LENGTH], "5");
        assert_eq!(refreshed["x-kept"], "yes");
        assert_eq!(refreshed[header::DATE], date(30).as_str());
        assert!(conditional_headers(&headers(&[])).is_empty());
    }

    #[test]
    fn a_client_condition_is_met_by_a_matching_tag_or_an_older_modification() {
        let stored = headers(&[("etag", "W/\"v1\""), ("last-modified", &date(0))]);
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("if-none-match", "\"v1\"")], true),
            (&[("if-none-match", "\"v0\", W/\"v1\"")], true),
            (&[("if-none-match", "*")], true),
            (&[("if-none-match", "\"v2\"")], false),
            // If-None-Match decides alone when present.
            (
                &[("if-none-match", "\"v2\""), ("if-modified-since", &date(10))],
                false,
            ),
            (&[("if-modified-since", &date(10))], true),
            (&[("if-modified-since", &date(0))], true),
            (&[("if-modified-since", "yesterday")], false),
            (&[], false),
        ];
        for (request, expected) in cases {
            assert_eq!(
                client_not_modified(&headers(request), &stored),
                *expected,
                "{request:?}"
            );
        }
    }

    #[test]
    fn directives_with_quoted_values_and_odd_spacing_parse() {
        let parsed = ResponseDirectives::of(&headers(&[(
            "cache-control",
            "private=\"set-cookie, x-a\" ,  MAX-AGE=30,must-revalidate",
        )]));
        assert!(parsed.private && parsed.must_revalidate);
        assert_eq!(parsed.max_age, Some(30));
        let parsed = ResponseDirectives::of(&headers(&[("cache-control", "max-age=abc, s-maxage")]));
        assert_eq!((parsed.max_age, parsed.s_maxage), (Some(0), Some(0)));
    }
}
