//! Which backend serves a request: a matching route wins; otherwise a client with a stickiness key
//! goes where weighted rendezvous hashing puts its key; otherwise the weights decide at random.
//! Pure: no I/O, no clocks.
//!
//! Sticky assignment uses weighted rendezvous hashing: each backend with weight `w` scores a key
//! `-ln(u) / w`, `u` being a uniform hash of key and backend name, and the lowest score wins. A backend
//! then wins a share `w / Σw` of keys, and when one backend's weight rises, keys move only *to* it
//! (its scores fall, every other score stays), which is exactly the set of clients that must move.

use std::net::IpAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue};
use outrigger_hashring::fnv1a64;
use regex::Regex;

use crate::{
    config::{compile_whole_match, RouteMatch, SplitterConfig, StickinessSource},
    rng,
};

/// How a request's backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// By the route at this index.
    Route(usize),
    /// By the client's stickiness key.
    Sticky,
    /// At random by weight.
    Weighted,
}

impl Choice {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Route(_) => "route",
            Choice::Sticky => "sticky",
            Choice::Weighted => "weighted",
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub backend: usize,
    pub choice: Choice,
    /// Hash of the stickiness key, which also keeps the client on one endpoint of its backend.
    pub key_hash: Option<u64>,
    /// A `set-cookie` value when the key was chosen for a client that had none.
    pub set_cookie: Option<HeaderValue>,
}

#[derive(Debug)]
enum Matcher {
    Present,
    Exact(String),
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Matcher::Present => true,
            Matcher::Exact(exact) => value == exact.as_bytes(),
            Matcher::Regex(regex) => std::str::from_utf8(value).is_ok_and(|text| regex.is_match(text)),
        }
    }
}

#[derive(Debug)]
enum Source {
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug)]
struct Route {
    source: Source,
    matcher: Matcher,
    backend: usize,
}

#[derive(Debug)]
enum Sticky {
    Header(HeaderName),
    Cookie { name: String, set: bool },
    SourceIp,
}

/// The compiled routing table of one configuration generation.
#[derive(Debug)]
pub struct Router {
    weights: Vec<u32>,
    /// Running sums of `weights` (the last is 100).
    cumulative: Vec<u32>,
    name_hashes: Vec<u64>,
    routes: Vec<Route>,
    sticky: Option<Sticky>,
    /// Mirror backend and its share in basis points (1/10,000).
    mirror: Option<(usize, u32)>,
}

impl Router {
    /// Builds the table from a validated configuration.
    pub fn new(config: &SplitterConfig) -> Router {
        let weights = config.weight_vector();
        let cumulative = weights
            .iter()
            .scan(0, |sum, weight| {
                *sum += weight;
                Some(*sum)
            })
            .collect();
        let name_hashes = config
            .backends
            .iter()
            .map(|backend| mix(fnv1a64(backend.name.as_bytes())))
            .collect();
        let routes = config
            .routes
            .iter()
            .filter_map(|route| {
                let (value, source) = match &route.matcher {
                    RouteMatch::Header(value) => (
                        value,
                        Source::Header(HeaderName::from_bytes(value.name.as_bytes()).ok()?),
                    ),
                    RouteMatch::Cookie(value) => (value, Source::Cookie(value.name.clone())),
                };
                let matcher = match (&value.exact, &value.regex) {
                    (Some(exact), _) => Matcher::Exact(exact.clone()),
                    (None, Some(pattern)) => Matcher::Regex(compile_whole_match(pattern).ok()?),
                    (None, None) => Matcher::Present,
                };
                Some(Route {
                    source,
                    matcher,
                    backend: config.backend_index(&route.backend)?,
                })
            })
            .collect();
        let sticky = config.stickiness.as_ref().and_then(|sticky| {
            Some(match sticky.source {
                StickinessSource::SourceIp => Sticky::SourceIp,
                StickinessSource::Header => {
                    Sticky::Header(HeaderName::from_bytes(sticky.name.as_deref()?.as_bytes()).ok()?)
                }
                StickinessSource::Cookie => Sticky::Cookie {
                    name: sticky.name.clone()?,
                    set: sticky.set_cookie,
                },
            })
        });
        let mirror = config.mirror.as_ref().and_then(|mirror| {
            let basis_points = (mirror.percent * 100.0).round().clamp(0.0, 10_000.0) as u32;
            Some((config.backend_index(&mirror.backend)?, basis_points))
        });
        Router {
            weights,
            cumulative,
            name_hashes,
            routes,
            sticky,
            mirror,
        }
    }

    /// Decides the backend of a request.
    pub fn decide(&self, headers: &HeaderMap, client_ip: IpAddr) -> Decision {
        for (index, route) in self.routes.iter().enumerate() {
            let matched = match &route.source {
                Source::Header(name) => headers
                    .get_all(name)
                    .iter()
                    .any(|value| route.matcher.matches(value.as_bytes())),
                Source::Cookie(name) => {
                    cookie(headers, name).is_some_and(|value| route.matcher.matches(value))
                }
            };
            if matched {
                return Decision {
                    backend: route.backend,
                    choice: Choice::Route(index),
                    key_hash: None,
                    set_cookie: None,
                };
            }
        }
        let (key_hash, set_cookie) = match &self.sticky {
            None => (None, None),
            Some(Sticky::Header(name)) => (headers.get(name).map(|v| fnv1a64(v.as_bytes())), None),
            Some(Sticky::SourceIp) => (
                Some(match client_ip {
                    IpAddr::V4(ip) => fnv1a64(&ip.octets()),
                    IpAddr::V6(ip) => fnv1a64(&ip.octets()),
                }),
                None,
            ),
            Some(Sticky::Cookie { name, set }) => match cookie(headers, name) {
                Some(value) => (Some(fnv1a64(value)), None),
                None if *set => {
                    let mut key = [0u8; 32];
                    rng::hex_into(&mut key);
                    let value = format!(
                        "{name}={}; Path=/; HttpOnly; SameSite=Lax",
                        String::from_utf8_lossy(&key)
                    );
                    (Some(fnv1a64(&key)), HeaderValue::from_str(&value).ok())
                }
                None => (None, None),
            },
        };
        match key_hash.and_then(|hash| self.sticky_backend(hash)) {
            Some(backend) => Decision {
                backend,
                choice: Choice::Sticky,
                key_hash,
                set_cookie,
            },
            None => Decision {
                backend: self.weighted_backend(rng::below(100) as u32),
                choice: Choice::Weighted,
                key_hash: None,
                set_cookie: None,
            },
        }
    }

    /// The backend for a point in `0..100` of the cumulative weights.
    pub fn weighted_backend(&self, point: u32) -> usize {
        self.cumulative.iter().position(|sum| point < *sum).unwrap_or(0)
    }

    /// The backend a stickiness key belongs to (weighted rendezvous), or `None` if all weights are 0.
    pub fn sticky_backend(&self, key_hash: u64) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for (index, (weight, name_hash)) in self.weights.iter().zip(&self.name_hashes).enumerate() {
            if *weight == 0 {
                continue;
            }
            let bits = mix(key_hash ^ name_hash) >> 11;
            let uniform = (bits as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -uniform.ln() / f64::from(*weight);
            if best.is_none_or(|(lowest, _)| score < lowest) {
                best = Some((score, index));
            }
        }
        best.map(|(_, index)| index)
    }

    /// Another backend to fail over to, with weight above 0, not in `exclude`: the heaviest first.
    pub fn failover(&self, exclude: impl Fn(usize) -> bool) -> impl Iterator<Item = usize> + '_ {
        let mut order: Vec<usize> = (0..self.weights.len())
            .filter(|index| self.weights[*index] > 0 && !exclude(*index))
            .collect();
        order.sort_by_key(|index| std::cmp::Reverse(self.weights[*index]));
        order.into_iter()
    }

    /// Whether to copy this request to the shadow backend, and which one.
    pub fn mirror_sample(&self) -> Option<usize> {
        let (backend, basis_points) = self.mirror?;
        (basis_points > 0 && (rng::below(10_000) as u32) < basis_points).then_some(backend)
    }

    /// How many routes the table has.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }
}

/// The value of the first cookie named `name` in the request's `cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|value| {
        value.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let equals = pair.iter().position(|b| *b == b'=')?;
            let (key, value) = (&pair[..equals], &pair[equals + 1..]);
            (key.trim_ascii() == name.as_bytes()).then(|| {
                let value = value.trim_ascii();
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value)
            })
        })
    })
}

/// A 64-bit finaliser (splitmix64) so that similar inputs give unrelated outputs.
pub fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;
    use crate::config::SplitterConfigExt;

    fn router(extra: serde_json::Value) -> Router {
        let mut value = json!({
            "backends": [
                {"name": "stable", "endpoints": ["127.0.0.1:1"]},
                {"name": "canary", "endpoints": ["127.0.0.1:2"]},
                {"name": "shadow", "endpoints": ["127.0.0.1:3"]}
            ],
            "weights": {"stable": 90, "canary": 10}
        });
        crate::config::merge_patch(&mut value, &extra);
        Router::new(&SplitterConfig::from_value(value).unwrap())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), HeaderValue::from_static(value)))
            .collect()
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn weighted_points_map_onto_cumulative_ranges() {
        let router = router(json!({}));
        assert_eq!(router.weighted_backend(0), 0);
        assert_eq!(router.weighted_backend(89), 0);
        assert_eq!(router.weighted_backend(90), 1);
        assert_eq!(router.weighted_backend(99), 1);
    }

    #[test]
    fn sticky_keys_spread_by_weight_and_raising_the_canary_moves_keys_only_to_it() {
        let before = router(json!({}));
        let after = router(json!({"weights": {"stable": 80, "canary": 20}}));
        let (mut canary_before, mut moved) = (0, 0);
        for key in 0..20_000u32 {
            let hash = fnv1a64(format!("client-{key}").as_bytes());
            let (old, new) = (
                before.sticky_backend(hash).unwrap(),
                after.sticky_backend(hash).unwrap(),
            );
            assert_ne!(old, 2, "a backend with weight 0 gets no keys");
            if old == 1 {
                canary_before += 1;
                assert_eq!(new, 1, "a canary client must stay on the canary");
            } else if new != old {
                moved += 1;
            }
        }
        // Binomial with n = 20,000: one standard deviation is about 0.2 and 0.3 points.
        let canary_share = f64::from(canary_before) / 20_000.0;
        assert!((0.09..0.11).contains(&canary_share), "{canary_share}");
        let moved_share = f64::from(moved) / 20_000.0;
        assert!((0.09..0.11).contains(&moved_share), "{moved_share}");
    }

    #[test]
    fn header_and_cookie_routes_override_the_split_in_order() {
        let router = router(json!({
            "weights": {"stable": 100, "canary": 0},
            "routes": [
                {"name": "testers", "match": {"header": {"name": "x-canary", "exact": "always"}}, "backend": "canary"},
                {"name": "beta", "match": {"cookie": {"name": "beta", "regex": "yes|true"}}, "backend": "shadow"},
                {"name": "debug", "match": {"header": {"name": "x-debug"}}, "backend": "shadow"}
            ]
        }));
        let decide = |pairs| router.decide(&headers(pairs), IP);
        assert_eq!(decide(&[("x-canary", "always")]).choice, Choice::Route(0));
        assert_eq!(decide(&[("x-canary", "always")]).backend, 1);
        assert_eq!(decide(&[("x-canary", "sometimes")]).choice, Choice::Weighted);
        assert_eq!(decide(&[("cookie", "a=1; beta=true")]).backend, 2);
        assert_eq!(decide(&[("cookie", "beta=truex")]).choice, Choice::Weighted);
        assert_eq!(decide(&[("x-debug", "")]).choice, Choice::Route(2));
        assert_eq!(
            decide(&[("x-canary", "always"), ("x-debug", "1")]).choice,
            Choice::Route(0)
        );
    }

    #[test]
    fn a_cookie_client_without_a_cookie_gets_one_and_keeps_its_backend_with_it() {
        let router = router(json!({"stickiness": {"source": "cookie", "name": "sid"}}));
        let first = router.decide(&HeaderMap::new(), IP);
        assert_eq!(first.choice, Choice::Sticky);
        let set_cookie = first.set_cookie.unwrap();
        let set_cookie = set_cookie.to_str().unwrap();
        assert!(
            set_cookie.starts_with("sid=") && set_cookie.contains("HttpOnly"),
            "{set_cookie}"
        );
        let pair = set_cookie.split(';').next().unwrap().to_owned();
        let mut next = HeaderMap::new();
        next.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        for _ in 0..20 {
            let again = router.decide(&next, IP);
            assert_eq!(
                (again.backend, again.key_hash, again.set_cookie),
                (first.backend, first.key_hash, None)
            );
        }
    }

    #[test]
    fn without_a_header_key_the_split_is_random_and_with_one_it_is_stable() {
        let router = router(json!({"stickiness": {"source": "header", "name": "x-user"}}));
        assert_eq!(router.decide(&HeaderMap::new(), IP).choice, Choice::Weighted);
        let keyed = headers(&[("x-user", "alice")]);
        let first = router.decide(&keyed, IP);
        assert_eq!(first.choice, Choice::Sticky);
        assert!((0..50).all(|_| router.decide(&keyed, IP) == first));
    }

    #[test]
    fn mirror_sampling_follows_the_percentage() {
        let router = router(json!({"mirror": {"backend": "shadow", "percent": 25}}));
        let sampled = (0..10_000).filter(|_| router.mirror_sample() == Some(2)).count();
        // One standard deviation is about 43 requests; allow about 5.
        assert!((2_280..2_720).contains(&sampled), "{sampled}");
        let none = router_without_mirror();
        assert!((0..100).all(|_| none.mirror_sample().is_none()));
    }

    fn router_without_mirror() -> Router {
        router(json!({}))
    }

    #[test]
    fn failover_prefers_the_heaviest_other_backend() {
        let router = router(json!({"weights": {"stable": 60, "canary": 30, "shadow": 10}}));
        assert_eq!(
            router.failover(|index| index == 0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            router.failover(|index| index == 1).collect::<Vec<_>>(),
            vec![0, 2]
        );
    }

    #[test]
    fn cookies_are_found_among_several_headers_and_unquoted() {
        let map = headers(&[("cookie", "a=1; b = \"two\""), ("cookie", "c=3")]);
        assert_eq!(cookie(&map, "b"), Some(&b"two"[..]));
        assert_eq!(cookie(&map, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&map, "d"), None);
    }
}

pub mod health;
pub mod hold;
pub mod rate_limit;
pub mod retry;
