//! Rate limits: token buckets per client key, tier and path prefix (`rateLimits` in the document).
//!
//! A [`Policy`] is compiled with each configuration generation; the [`Limiter`] and its buckets
//! outlive generations, so a reload that keeps a bucket's limits keeps its state (a bucket whose
//! limits changed keeps its tokens, capped at the new burst). Buckets are identified by a 64-bit
//! hash of (path prefix, tier, client key): a client's key is never stored, so a bucket costs the
//! same whatever the key's length. Memory is bounded by `maxKeys`: buckets live in shards, each
//! capped at its share; a full shard first drops its idle buckets (one left alone long enough to
//! be full again carries no state, since a new one would be full too), then the least recently
//! used of a small sample. Time is passed in, so the arithmetic is tested without a clock.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::{
    config::{RateLimitsConfig, StickinessSource, TokenBucketConfig},
    metrics::{Metrics, RateLimitLabels, ReasonLabels},
    routing::cookie,
};

/// Shards of the bucket table: enough that worker threads rarely wait on each other.
const SHARDS: usize = 16;
/// Buckets looked at to choose one to evict when a shard is full of active ones.
const EVICTION_SAMPLE: usize = 8;
/// Shortest time between two sweeps of a full shard for idle buckets.
const SWEEP_INTERVAL_NANOS: u64 = 1_000_000_000;

/// Nanoseconds on the process's monotonic clock, for [`Limiter::check`].
pub fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// The tier of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Without the identity header.
    Anonymous,
    /// With it.
    Identified,
}

impl Tier {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Anonymous => "anonymous",
            Tier::Identified => "identified",
        }
    }

    fn index(self) -> usize {
        match self {
            Tier::Anonymous => 0,
            Tier::Identified => 1,
        }
    }
}

/// What the limiter says about a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// No limit applies to it.
    Unlimited,
    /// Within its limit.
    Allowed(Tier),
    /// Over its limit: a token is due in `retry_after`.
    Limited { tier: Tier, retry_after: Duration },
}

/// A bucket's limit, in tokens per nanosecond and tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limit {
    per_nano: f64,
    burst: f64,
}

impl Limit {
    fn of(config: &TokenBucketConfig) -> Limit {
        Limit {
            per_nano: config.requests_per_second / 1e9,
            burst: f64::from(config.burst.max(1)),
        }
    }
}

/// Where an anonymous request's key comes from.
#[derive(Debug, Clone)]
enum KeySource {
    SourceIp,
    Header(HeaderName),
    Cookie(String),
}

/// The limits of a path prefix, per tier; `None` falls back to the service's.
#[derive(Debug, Clone)]
struct RoutePolicy {
    prefix: String,
    limits: [Option<Limit>; 2],
}

/// Rate limits compiled for the request path.
#[derive(Debug, Clone)]
pub struct Policy {
    key: KeySource,
    identity: Option<HeaderName>,
    limits: [Option<Limit>; 2],
    /// Longest prefix first.
    routes: Vec<RoutePolicy>,
    max_keys: usize,
}

impl Policy {
    /// Compiles a validated document's limits.
    pub fn new(config: &RateLimitsConfig) -> Policy {
        let header = |name: &str| HeaderName::from_bytes(name.as_bytes()).ok();
        let key = match (config.key.source, config.key.name.as_deref()) {
            (StickinessSource::Header, Some(name)) => {
                header(name).map_or(KeySource::SourceIp, KeySource::Header)
            }
            (StickinessSource::Cookie, Some(name)) => KeySource::Cookie(name.to_owned()),
            _ => KeySource::SourceIp,
        };
        let tiers = |anonymous: Option<&TokenBucketConfig>, identified: Option<&TokenBucketConfig>| {
            [anonymous.map(Limit::of), identified.map(Limit::of)]
        };
        let mut routes: Vec<RoutePolicy> = config
            .routes
            .iter()
            .map(|route| RoutePolicy {
                prefix: route.path_prefix.clone(),
                limits: tiers(route.anonymous.as_ref(), route.identified.as_ref()),
            })
            .collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Policy {
            key,
            identity: config.identity_header.as_deref().and_then(header),
            limits: tiers(config.anonymous.as_ref(), config.identified.as_ref()),
            routes,
            max_keys: usize::try_from(config.max_keys.max(1)).unwrap_or(usize::MAX),
        }
    }

    /// The tier of a request, the bucket it is counted in and that bucket's limit; `None` when no
    /// limit applies.
    fn classify(&self, path: &str, headers: &HeaderMap, client_ip: IpAddr) -> Option<(Tier, u64, Limit)> {
        let identity = self
            .identity
            .as_ref()
            .and_then(|name| headers.get(name))
            .map(http::HeaderValue::as_bytes)
            .filter(|value| !value.is_empty());
        let tier = if identity.is_some() {
            Tier::Identified
        } else {
            Tier::Anonymous
        };
        let route = self
            .routes
            .iter()
            .find(|route| path.starts_with(&route.prefix))
            .filter(|route| route.limits[tier.index()].is_some());
        let (prefix, limit) = match route {
            Some(route) => (route.prefix.as_bytes(), route.limits[tier.index()]?),
            None => (&b""[..], self.limits[tier.index()]?),
        };
        let mut hash = Fnv::new();
        hash.write(prefix);
        hash.write(&[0xff, tier.index() as u8]);
        match identity {
            Some(value) => hash.write(value),
            None => {
                let named = match &self.key {
                    KeySource::SourceIp => None,
                    KeySource::Header(name) => headers.get(name).map(http::HeaderValue::as_bytes),
                    KeySource::Cookie(name) => cookie(headers, name),
                };
                match named.filter(|value| !value.is_empty()) {
                    Some(value) => {
                        hash.write(b"k");
                        hash.write(value);
                    }
                    None => {
                        hash.write(b"i");
                        match client_ip {
                            IpAddr::V4(ip) => hash.write(&ip.octets()),
                            IpAddr::V6(ip) => hash.write(&ip.octets()),
                        }
                    }
                }
            }
        }
        Some((tier, hash.finish(), limit))
    }
}

/// 64-bit FNV-1a that takes its input in pieces.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        crate::routing::mix(self.0)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: u64,
    limit: Limit,
}

impl Bucket {
    /// Tokens at `now`.
    fn level(&self, now: u64) -> f64 {
        let elapsed = now.saturating_sub(self.at) as f64;
        (self.tokens + elapsed * self.limit.per_nano).min(self.limit.burst)
    }
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<u64, Bucket>,
    last_sweep: u64,
}

/// Counters of the limiter.
#[derive(Clone)]
struct LimiterMetrics {
    allowed: [Counter; 2],
    limited: [Counter; 2],
    buckets: Gauge,
    evicted_idle: Counter,
    evicted_full: Counter,
}

/// The buckets, shared by every worker and every generation.
pub struct Limiter {
    shards: Box<[Mutex<Shard>]>,
    metrics: LimiterMetrics,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

impl Limiter {
    /// An empty limiter counting into `metrics`.
    pub fn new(metrics: &Metrics) -> Limiter {
        let decisions = |tier: Tier, result: &'static str| {
            metrics
                .rate_limit_decisions
                .get_or_create_owned(&RateLimitLabels {
                    tier: tier.as_str(),
                    result,
                })
        };
        let evicted = |reason: &'static str| {
            metrics
                .rate_limit_evictions
                .get_or_create_owned(&ReasonLabels { reason })
        };
        Limiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            metrics: LimiterMetrics {
                allowed: [
                    decisions(Tier::Anonymous, "allowed"),
                    decisions(Tier::Identified, "allowed"),
                ],
                limited: [
                    decisions(Tier::Anonymous, "limited"),
                    decisions(Tier::Identified, "limited"),
                ],
                buckets: metrics.rate_limit_buckets.clone(),
                evicted_idle: evicted("idle"),
                evicted_full: evicted("full"),
            },
        }
    }

    /// Takes a token for a request at `now` (nanoseconds on any monotonic clock).
    pub fn check(
        &self,
        policy: &Policy,
        path: &str,
        headers: &HeaderMap,
        client_ip: IpAddr,
        now: u64,
    ) -> Verdict {
        let Some((tier, key, limit)) = policy.classify(path, headers, client_ip) else {
            return Verdict::Unlimited;
        };
        let index = usize::try_from(key % SHARDS as u64).unwrap_or(0);
        let cap = policy.max_keys.div_ceil(SHARDS).max(1);
        let mut guard = self.shards[index].lock().unwrap_or_else(PoisonError::into_inner);
        let shard = &mut *guard;
        if shard.buckets.len() >= cap && !shard.buckets.contains_key(&key) {
            self.make_room(shard, cap, now);
        }
        let mut added = false;
        let bucket = shard.buckets.entry(key).or_insert_with(|| {
            added = true;
            Bucket {
                tokens: limit.burst,
                at: now,
                limit,
            }
        });
        let mut tokens = bucket.level(now);
        if bucket.limit != limit {
            // New limits: the tokens stay, within the new burst.
            tokens = tokens.min(limit.burst);
            bucket.limit = limit;
        }
        bucket.at = now;
        let granted = tokens >= 1.0;
        if granted {
            tokens -= 1.0;
        }
        bucket.tokens = tokens;
        drop(guard);
        if added {
            self.metrics.buckets.inc();
        }
        if granted {
            self.metrics.allowed[tier.index()].inc();
            Verdict::Allowed(tier)
        } else {
            self.metrics.limited[tier.index()].inc();
            let nanos = if limit.per_nano > 0.0 {
                ((1.0 - tokens) / limit.per_nano).ceil().min(86_400e9)
            } else {
                86_400e9
            };
            Verdict::Limited {
                tier,
                retry_after: Duration::from_nanos(nanos as u64),
            }
        }
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).buckets.len())
            .sum()
    }

    /// No bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees a place in a full shard: idle buckets first (at most once a second), else the least
    /// recently used of a sample.
    fn make_room(&self, shard: &mut Shard, cap: usize, now: u64) {
        if now.saturating_sub(shard.last_sweep) >= SWEEP_INTERVAL_NANOS {
            shard.last_sweep = now;
            let before = shard.buckets.len();
            shard
                .buckets
                .retain(|_, bucket| bucket.level(now) < bucket.limit.burst);
            let dropped = before - shard.buckets.len();
            self.metrics.evicted_idle.inc_by(dropped as u64);
            self.metrics
                .buckets
                .dec_by(i64::try_from(dropped).unwrap_or(i64::MAX));
        }
        while shard.buckets.len() >= cap {
            let oldest = shard
                .buckets
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, bucket)| bucket.at)
                .map(|(key, _)| *key);
            let Some(oldest) = oldest else { break };
            shard.buckets.remove(&oldest);
            self.metrics.evicted_full.inc();
            self.metrics.buckets.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use prometheus_client::{encoding::text::encode, registry::Registry};
    use serde_json::json;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn policy(value: serde_json::Value) -> Policy {
        Policy::new(&serde_json::from_value(value).unwrap())
    }

    fn limiter() -> (Limiter, Registry) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        (Limiter::new(&metrics), registry)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn allowed(verdicts: impl Iterator<Item = Verdict>) -> usize {
        verdicts.filter(|v| matches!(v, Verdict::Allowed(_))).count()
    }

    #[test]
    fn a_client_gets_its_burst_then_the_rate_and_a_retry_after_until_the_next_token() {
        let (limiter, _) = limiter();
        let policy = policy(json!({"anonymous": {"requestsPerSecond": 2.0, "burst": 3}}));
        let none = HeaderMap::new();
        assert_eq!(
            allowed((0..5).map(|_| limiter.check(&policy, "/", &none, ip(1), 0))),
            3
        );
        match limiter.check(&policy, "/", &none, ip(1), 0) {
            Verdict::Limited { tier, retry_after } => {
                assert_eq!(tier, Tier::Anonymous);
                assert_eq!(retry_after, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
        // Another client has its own bucket.
        assert_eq!(
            limiter.check(&policy, "/", &none, ip(2), 0),
            Verdict::Allowed(Tier::Anonymous)
        );
        // Half a second later, one token.
        assert_eq!(
            allowed((0..3).map(|_| limiter.check(&policy, "/", &none, ip(1), SECOND / 2))),
            1
        );
    }

    #[test]
    fn identified_clients_have_their_own_higher_tier_counted_by_their_identity() {
        let (limiter, registry) = limiter();
        let policy = policy(json!({
            "identityHeader": "x-api-key",
            "anonymous": {"requestsPerSecond": 1.0, "burst": 1},
            "identified": {"requestsPerSecond": 10.0, "burst": 10},
        }));
        let anonymous = HeaderMap::new();
        assert_eq!(
            allowed((0..5).map(|_| limiter.check(&policy, "/", &anonymous, ip(1), 0))),
            1
        );
        // The same address with a key goes on, up to its own burst.
        let alice = headers(&[("x-api-key", "alice")]);
        assert_eq!(
            allowed((0..15).map(|_| limiter.check(&policy, "/", &alice, ip(1), 0))),
            10
        );
        let bob = headers(&[("x-api-key", "bob")]);
        assert_eq!(
            limiter.check(&policy, "/", &bob, ip(1), 0),
            Verdict::Allowed(Tier::Identified)
        );
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "outrigger_splitter_rate_limit_decisions_total{tier=\"anonymous\",result=\"allowed\"} 1",
            "outrigger_splitter_rate_limit_decisions_total{tier=\"anonymous\",result=\"limited\"} 4",
            "outrigger_splitter_rate_limit_decisions_total{tier=\"identified\",result=\"allowed\"} 11",
            "outrigger_splitter_rate_limit_decisions_total{tier=\"identified\",result=\"limited\"} 5",
            "outrigger_splitter_rate_limit_buckets 3",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn the_longest_matching_prefix_limits_and_other_paths_share_the_service_bucket() {
        let (limiter, _) = limiter();
        let policy = policy(json!({
            "anonymous": {"requestsPerSecond": 1.0, "burst": 5},
            "routes": [
                {"pathPrefix": "/api", "anonymous": {"requestsPerSecond": 1.0, "burst": 2}},
                {"pathPrefix": "/api/search", "anonymous": {"requestsPerSecond": 1.0, "burst": 1}},
                {"pathPrefix": "/static", "identified": {"requestsPerSecond": 1.0, "burst": 1}},
            ],
        }));
        let none = HeaderMap::new();
        let count = |path: &str| allowed((0..10).map(|_| limiter.check(&policy, path, &none, ip(1), 0)));
        assert_eq!(count("/api/search?q=1"), 1);
        assert_eq!(count("/api/items"), 2);
        // `/static` limits only identified clients: anonymous ones count in the service's bucket,
        // with `/` and everything else.
        assert_eq!(count("/static/a.css") + count("/"), 5);
    }

    #[test]
    fn a_request_without_the_key_header_is_counted_by_its_address_and_without_limits_nothing_is_counted() {
        let (limiter, _) = limiter();
        let policy_by_header = policy(json!({
            "key": {"source": "header", "name": "x-client"},
            "anonymous": {"requestsPerSecond": 1.0, "burst": 1},
        }));
        let a = headers(&[("x-client", "a")]);
        let b = headers(&[("x-client", "b")]);
        let none = HeaderMap::new();
        assert_eq!(
            limiter.check(&policy_by_header, "/", &a, ip(1), 0),
            Verdict::Allowed(Tier::Anonymous)
        );
        assert_eq!(
            limiter.check(&policy_by_header, "/", &b, ip(1), 0),
            Verdict::Allowed(Tier::Anonymous)
        );
        assert_eq!(
            limiter.check(&policy_by_header, "/", &none, ip(1), 0),
            Verdict::Allowed(Tier::Anonymous)
        );
        assert!(matches!(
            limiter.check(&policy_by_header, "/", &none, ip(1), 0),
            Verdict::Limited { .. }
        ));
        let identified_only = policy(
            json!({"identityHeader": "x-api-key", "identified": {"requestsPerSecond": 1.0, "burst": 1}}),
        );
        assert_eq!(
            limiter.check(&identified_only, "/", &none, ip(9), 0),
            Verdict::Unlimited
        );
    }

    #[test]
    fn a_reload_with_the_same_limits_keeps_the_buckets_and_new_limits_keep_the_tokens_within_the_new_burst() {
        let (limiter, _) = limiter();
        let document = json!({"anonymous": {"requestsPerSecond": 1.0, "burst": 3}});
        let none = HeaderMap::new();
        let first = policy(document.clone());
        assert_eq!(
            allowed((0..3).map(|_| limiter.check(&first, "/", &none, ip(1), 0))),
            3
        );
        // The same limits compiled again (a reload): the empty bucket stays empty.
        let reloaded = policy(document);
        assert!(matches!(
            limiter.check(&reloaded, "/", &none, ip(1), 0),
            Verdict::Limited { .. }
        ));
        // A higher burst does not hand out new tokens either; the rate refills to it.
        let raised = policy(json!({"anonymous": {"requestsPerSecond": 1.0, "burst": 10}}));
        assert!(matches!(
            limiter.check(&raised, "/", &none, ip(1), 0),
            Verdict::Limited { .. }
        ));
        assert_eq!(
            allowed((0..10).map(|_| limiter.check(&raised, "/", &none, ip(1), 5 * SECOND))),
            5
        );
    }

    #[test]
    fn buckets_are_capped_idle_ones_go_first_then_the_least_recently_used() {
        let (limiter, registry) = limiter();
        let policy = policy(json!({"anonymous": {"requestsPerSecond": 1.0, "burst": 2}, "maxKeys": 160}));
        let none = HeaderMap::new();
        let client = |n: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        for n in 0..1_000 {
            limiter.check(&policy, "/", &none, client(n), 0);
        }
        assert!(limiter.len() <= 160, "{}", limiter.len());
        // Long after, every bucket is full again: the next newcomers sweep them away.
        for n in 1_000..1_100 {
            limiter.check(&policy, "/", &none, client(n), 60 * SECOND);
        }
        assert!(limiter.len() <= 160, "{}", limiter.len());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("rate_limit_evictions_total{reason=\"idle\"}"),
            "{text}"
        );
        assert!(
            text.contains("rate_limit_evictions_total{reason=\"full\"}"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "outrigger_splitter_rate_limit_buckets {}",
                limiter.len()
            )),
            "{text}"
        );
    }
}
