//! Hostile or broken peers on loopback: an endpoint that hangs, one that answers 50 MB, malformed
//! JSON, StatsD garbage and a flood of unique names. The adapter stays up, keeps its memory within
//! bounds, and counts what it dropped.

// Test helpers: a failed setup step should stop the test right there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    net::UdpSocket,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use support::{adapter, get, sample, server, Behaviour};

fn json_target(port: u16) -> String {
    json!([{"name": "app", "url": format!("http://127.0.0.1:{port}/stats"), "metrics": [{"name": "app_value", "path": "value"}]}])
        .to_string()
}

/// Peak RSS allowed to the adapter in these tests: well under what the bad inputs would need.
const MEMORY_BOUND: u64 = 48 << 20;

#[test]
fn a_hanging_endpoint_costs_one_budget_and_its_last_values_are_served_stale() {
    let good = server(Behaviour::Body("application/json", r#"{"value": 7}"#.to_owned()));
    let hang = server(Behaviour::Hang);
    let (mut adapter, port) = adapter(&json!({
        "json": json!([
            {"name": "good", "url": format!("http://127.0.0.1:{}/", good.port), "metrics": [{"name": "good_value", "path": "value"}]},
            {"name": "hang", "url": format!("http://127.0.0.1:{}/", hang.port), "metrics": [{"name": "hang_value", "path": "value"}]},
        ]).to_string(),
        "scrapeBudgetMs": "300",
        "collectTimeoutMs": "1000",
    }));
    for _ in 0..3 {
        let started = Instant::now();
        let body = get(port, "/metrics", None).body;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a scrape waited {:?}",
            started.elapsed()
        );
        assert_eq!(sample(&body, "good_value"), Some(7.0));
        assert_eq!(
            sample(&body, "metrics_adapter_collector_stale{collector=\"json/good\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&body, "metrics_adapter_collector_stale{collector=\"json/hang\"}"),
            Some(1.0)
        );
    }
    thread::sleep(Duration::from_millis(1200));
    let body = get(port, "/metrics", None).body;
    let timeouts = sample(
        &body,
        "metrics_adapter_collect_errors_total{collector=\"json/hang\",category=\"timeout\"}",
    );
    // Three scrapes within one collection timeout started one collection, not three.
    assert!(matches!(timeouts, Some(n) if (1.0..=2.0).contains(&n)), "{body}");
    assert!(adapter.alive());
}

#[test]
fn a_50_mb_answer_is_cut_off_at_the_body_limit_with_or_without_a_length() {
    for declare_length in [true, false] {
        let huge = server(Behaviour::Huge {
            bytes: 50 << 20,
            declare_length,
        });
        let (mut adapter, port) =
            adapter(&json!({"json": json_target(huge.port), "maxBodyBytes": "1048576"}));
        let body = get(port, "/metrics", None).body;
        assert_eq!(
            sample(
                &body,
                "metrics_adapter_collect_errors_total{collector=\"json/app\",category=\"too_large\"}"
            ),
            Some(1.0),
            "{body}"
        );
        thread::sleep(Duration::from_millis(100));
        assert!(
            huge.sent.load(Ordering::Relaxed) < 40 << 20,
            "the adapter read on past its limit"
        );
        assert!(adapter.alive());
        assert!(
            adapter.peak_rss_bytes() < MEMORY_BOUND,
            "peak RSS {}",
            adapter.peak_rss_bytes()
        );
    }
}

#[test]
fn malformed_json_is_counted_and_the_adapter_answers_on() {
    let broken = server(Behaviour::Body(
        "application/json",
        r#"{"value": [1, 2"#.to_owned(),
    ));
    let (mut adapter, port) = adapter(&json!({"json": json_target(broken.port)}));
    let body = get(port, "/metrics", None).body;
    assert_eq!(
        sample(
            &body,
            "metrics_adapter_collect_errors_total{collector=\"json/app\",category=\"malformed\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "metrics_adapter_collector_up{collector=\"json/app\"}"),
        Some(0.0)
    );
    assert_eq!(get(port, "/healthz", None).status, 200);
    assert!(adapter.alive());
}

#[test]
fn statsd_garbage_and_a_flood_of_unique_names_are_dropped_and_counted() {
    let statsd_port = support::free_port();
    let (mut adapter, port) = adapter(&json!({
        "statsd": format!("127.0.0.1:{statsd_port}"),
        "statsdMaxSeries": "1000",
    }));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut garbage = 0u32;
    for i in 0..2000u32 {
        // Bytes that are not StatsD: binary noise, broken fields, absurd names.
        let noise: Vec<u8> = (0..200)
            .map(|j| (i.wrapping_mul(31).wrapping_add(j * 7) % 251) as u8)
            .collect();
        socket.send_to(&noise, ("127.0.0.1", statsd_port)).unwrap();
        socket
            .send_to(b"name:1|zz\n:::|||\nx:abc|c", ("127.0.0.1", statsd_port))
            .unwrap();
        garbage += 1;
    }
    let mut batch = String::new();
    for i in 0..50_000u32 {
        batch.push_str(&format!("flood.{i}.{}:1|c\n", "x".repeat(100)));
        if batch.len() > 8000 {
            socket
                .send_to(batch.as_bytes(), ("127.0.0.1", statsd_port))
                .unwrap();
            batch.clear();
            // UDP drops what a full socket buffer cannot hold; pace the sender a little.
            thread::sleep(Duration::from_micros(200));
        }
    }
    socket
        .send_to(batch.as_bytes(), ("127.0.0.1", statsd_port))
        .unwrap();
    thread::sleep(Duration::from_millis(300));

    let body = get(port, "/metrics", None).body;
    assert_eq!(
        sample(&body, "metrics_adapter_statsd_series"),
        Some(1000.0),
        "{body:.2000}"
    );
    let over_budget = sample(
        &body,
        "metrics_adapter_statsd_dropped_lines_total{reason=\"over_budget\"}",
    )
    .unwrap();
    assert!(over_budget > 10_000.0, "over budget: {over_budget}");
    let invalid = sample(
        &body,
        "metrics_adapter_statsd_dropped_lines_total{reason=\"invalid\"}",
    )
    .unwrap();
    assert!(invalid >= f64::from(garbage), "invalid: {invalid}");
    assert!(adapter.alive());
    assert!(
        adapter.peak_rss_bytes() < MEMORY_BOUND,
        "peak RSS {}",
        adapter.peak_rss_bytes()
    );
}

#[test]
fn a_target_with_more_series_than_the_budget_is_cut_and_the_rest_counted() {
    let mut text = String::from("# HELP app_items Items.\n# TYPE app_items gauge\n");
    for i in 0..500 {
        text.push_str(&format!("app_items{{item=\"{i}\"}} {i}\n"));
    }
    let app = server(Behaviour::Body("text/plain; version=0.0.4", text));
    let (mut adapter, port) = adapter(&json!({
        "prometheus": json!([{"name": "app", "url": format!("http://127.0.0.1:{}/metrics", app.port)}]).to_string(),
        "maxSeries": "100",
    }));
    for scrape in 1..=2 {
        let body = get(port, "/metrics", None).body;
        assert_eq!(body.lines().filter(|l| l.starts_with("app_items{")).count(), 100);
        assert_eq!(
            sample(
                &body,
                "metrics_adapter_dropped_series_total{collector=\"prometheus/app\"}"
            ),
            Some(400.0 * f64::from(scrape)),
            "summed over scrapes"
        );
    }
    assert!(adapter.alive());
}
