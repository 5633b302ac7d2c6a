#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The shared cache over real sockets: what is served from it, what is not, revalidation,
//! request coalescing, the memory bound and the purge.

mod support;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use support::{backend, client, get, metric, send, splitter, Backend, Behaviour, Splitter};

fn config(stable: &Backend, cache: Value) -> Value {
    json!({
        "backends": [{"name": "stable", "endpoints": [stable.endpoint()]}],
        "cache": cache,
    })
}

async fn cached(max_bytes: u64) -> (Backend, Splitter) {
    let stable = backend("stable", Behaviour::Cacheable).await;
    let splitter = splitter(config(&stable, json!({"maxBytes": max_bytes}))).await;
    (stable, splitter)
}

fn hits(backend: &Backend) -> usize {
    backend.hits.load(Ordering::SeqCst)
}

fn served(reply: &support::Reply) -> &str {
    reply
        .headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_and_head_gets_it_too() {
    let (stable, splitter) = cached(8 << 20).await;
    let client = client();
    let url = splitter.url("/page?cc=max-age=60");
    let first = get(&client, &url, &[]).await;
    let second = get(&client, &url, &[]).await;
    assert_eq!((first.status.as_u16(), first.body.as_str()), (200, "stable"));
    assert_eq!((served(&first), served(&second)), ("MISS", "HIT"));
    assert_eq!(second.body, "stable");
    assert!(second.headers.contains_key("age"));
    assert!(second.headers.contains_key("x-request-id"));
    let head = send(
        &client,
        Request::builder()
            .method(Method::HEAD)
            .uri(&url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (head.status.as_u16(), served(&head), head.body.as_str()),
        (200, "HIT", "")
    );
    assert_eq!(hits(&stable), 1, "one backend request for three client requests");
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_cache_requests_total{result=\"hit\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_cache_requests_total{result=\"miss\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn no_store_private_cookies_authorization_and_posts_are_not_shared() {
    let (stable, splitter) = cached(8 << 20).await;
    let client = client();
    for (path, headers) in [
        ("/a?cc=no-store", &[][..]),
        ("/b?cc=private,max-age=60", &[]),
        ("/c?cc=max-age=60&cookie=1", &[]),
        ("/d?cc=max-age=60", &[("authorization", "Bearer token")]),
        ("/e", &[]),
    ] {
        let before = hits(&stable);
        get(&client, &splitter.url(path), headers).await;
        let again = get(&client, &splitter.url(path), headers).await;
        assert_eq!(hits(&stable), before + 2, "{path}: both went to the backend");
        assert_ne!(served(&again), "HIT", "{path}");
    }
    // With `public`, a response that sets a cookie is shared; `s-maxage` shares an answer to a
    // request with `Authorization`.
    for (path, headers) in [
        ("/f?cc=public,max-age=60&cookie=1", &[][..]),
        ("/g?cc=s-maxage=60", &[("authorization", "Bearer token")]),
    ] {
        let before = hits(&stable);
        get(&client, &splitter.url(path), headers).await;
        let again = get(&client, &splitter.url(path), headers).await;
        assert_eq!((hits(&stable), served(&again)), (before + 1, "HIT"), "{path}");
    }
    let before = hits(&stable);
    for _ in 0..2 {
        let post = Request::post(splitter.url("/h?cc=max-age=60"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&client, post).await;
    }
    assert_eq!(hits(&stable), before + 2, "POST is never cached");
    // A client's `no-cache` goes to the backend even when a fresh response is stored.
    let url = splitter.url("/i?cc=max-age=60");
    get(&client, &url, &[]).await;
    let before = hits(&stable);
    get(&client, &url, &[("cache-control", "no-cache")]).await;
    assert_eq!(hits(&stable), before + 1);
}

#[tokio::test]
async fn each_value_of_a_varied_header_gets_its_own_response() {
    let (stable, splitter) = cached(8 << 20).await;
    let client = client();
    let url = splitter.url("/lang?cc=max-age=60&vary=accept-language");
    let english = get(&client, &url, &[("accept-language", "en")]).await;
    let french = get(&client, &url, &[("accept-language", "fr")]).await;
    let english_again = get(&client, &url, &[("accept-language", "en")]).await;
    let french_again = get(&client, &url, &[("accept-language", "fr")]).await;
    assert_eq!(english.body, "stable:en");
    assert_eq!(french.body, "stable:fr");
    assert_eq!(
        (english_again.body.as_str(), served(&english_again)),
        ("stable:en", "HIT")
    );
    assert_eq!(
        (french_again.body.as_str(), served(&french_again)),
        ("stable:fr", "HIT")
    );
    assert_eq!(hits(&stable), 2);
}

#[tokio::test]
async fn a_stale_response_is_revalidated_and_a_304_refreshes_it() {
    let (stable, splitter) = cached(8 << 20).await;
    let client = client();
    // Fresh for no time, with an ETag: stored, and checked with the backend on every use.
    let url = splitter.url("/doc?cc=no-cache&etag=v1");
    let first = get(&client, &url, &[]).await;
    let second = get(&client, &url, &[]).await;
    assert_eq!(served(&first), "MISS");
    assert_eq!(
        (second.status.as_u16(), second.body.as_str(), served(&second)),
        (200, "stable", "REVALIDATED")
    );
    let seen = stable.seen();
    assert_eq!(seen.len(), 2);
    assert!(!seen[0].headers.contains_key("if-none-match"));
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");
    // A client's own condition is answered by the cache.
    let conditional = get(&client, &url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status.as_u16(), 304);
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_cache_requests_total{result=\"revalidated\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn concurrent_misses_for_one_url_make_one_backend_request() {
    let (stable, splitter) = cached(8 << 20).await;
    let client = client();
    let url = splitter.url("/cold?cc=max-age=60&delay=300");
    let requests = (0..100).map(|_| get(&client, &url, &[]));
    let replies = futures::future::join_all(requests).await;
    assert!(replies
        .iter()
        .all(|reply| reply.status == 200 && reply.body == "stable"));
    assert_eq!(hits(&stable), 1);
    let metrics = splitter.metrics().await;
    let coalesced = metric(
        &metrics,
        "outrigger_splitter_cache_requests_total{result=\"coalesced\"}",
    );
    let hit = metric(
        &metrics,
        "outrigger_splitter_cache_requests_total{result=\"hit\"}",
    );
    assert_eq!(coalesced + hit, 99.0, "{metrics}");
}

#[tokio::test]
async fn a_flood_of_distinct_urls_stays_within_the_memory_bound() {
    let max_bytes = 1 << 20;
    let (stable, splitter) = cached(max_bytes).await;
    let client = client();
    for index in 0..1_000 {
        let reply = get(
            &client,
            &splitter.url(&format!("/flood/{index}?cc=max-age=600&size=4096")),
            &[],
        )
        .await;
        assert_eq!(reply.body.len(), 4096);
    }
    assert_eq!(hits(&stable), 1_000);
    let metrics = splitter.metrics().await;
    let bytes = metric(&metrics, "outrigger_splitter_cache_size_bytes");
    assert!(bytes > 0.0 && bytes <= max_bytes as f64, "{bytes}");
    assert!(
        metric(&metrics, "outrigger_splitter_cache_evictions_total") > 700.0,
        "{metrics}"
    );
    // The most recent URL is still there, the first long gone.
    let recent = get(&client, &splitter.url("/flood/999?cc=max-age=600&size=4096"), &[]).await;
    assert_eq!(served(&recent), "HIT");
    let first = get(&client, &splitter.url("/flood/0?cc=max-age=600&size=4096"), &[]).await;
    assert_eq!(served(&first), "MISS");
}

#[tokio::test]
async fn a_purge_on_the_admin_server_empties_the_cache_by_path_prefix() {
    let (stable, splitter) = cached(8 << 20).await;
    let client = client();
    for path in [
        "/news/1?cc=max-age=60",
        "/news/2?cc=max-age=60",
        "/shop/1?cc=max-age=60",
    ] {
        get(&client, &splitter.url(path), &[]).await;
    }
    let purge = |path: &str| {
        let client = support::client();
        let uri = format!("http://{}{path}", splitter.admin);
        async move {
            let response = client
                .request(Request::post(uri).body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(
        purge("/cache/purge/news").await,
        (200, "{\"purged\":2}\n".to_owned())
    );
    let before = hits(&stable);
    assert_eq!(
        served(&get(&client, &splitter.url("/shop/1?cc=max-age=60"), &[]).await),
        "HIT"
    );
    assert_eq!(
        served(&get(&client, &splitter.url("/news/1?cc=max-age=60"), &[]).await),
        "MISS"
    );
    assert_eq!(hits(&stable), before + 1);
    assert_eq!(purge("/cache/purge").await.0, 200);
    assert_eq!(
        served(&get(&client, &splitter.url("/shop/1?cc=max-age=60"), &[]).await),
        "MISS"
    );
    assert_eq!(purge("/cache/nothing").await.0, 405);
}

#[tokio::test]
async fn an_invalid_cache_size_is_rejected_and_the_last_good_configuration_stays() {
    let (stable, splitter) = cached(8 << 20).await;
    let rejected = splitter
        .reconfigure(config(&stable, json!({"maxBytes": 10})))
        .await;
    let error = rejected.unwrap_err();
    assert!(error.contains("cache.maxBytes"), "{error}");
    let url = splitter.url("/still?cc=max-age=60");
    get(&client(), &url, &[]).await;
    assert_eq!(served(&get(&client(), &url, &[]).await), "HIT");
}
