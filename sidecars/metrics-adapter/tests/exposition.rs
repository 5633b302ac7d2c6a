//! Every collector at once, on loopback, checked by Debian's `promtool check metrics`, and served
//! as OpenMetrics to a scraper that asks for it.

// Test helpers: a failed setup step should stop the test right there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    io::Write,
    net::UdpSocket,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::json;
use support::{adapter, get, redis, redis_cli, require, sample, server, Behaviour};

const APP_METRICS: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
    http_requests_total{code=\"200\"} 10\nhttp_requests_total{code=\"500\"} 1\n\
    # HELP latency_seconds Latency.\n# TYPE latency_seconds histogram\nlatency_seconds_bucket{le=\"0.1\"} 2\n\
    latency_seconds_bucket{le=\"+Inf\"} 3\nlatency_seconds_sum 0.5\nlatency_seconds_count 3\n\
    # HELP go_goroutines Goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 12\n";

fn settings(redis_port: u16, json_port: u16, prom_port: u16, statsd_port: u16) -> serde_json::Value {
    json!({
        "redis": format!("127.0.0.1:{redis_port}"),
        "json": json!([{"name": "app", "url": format!("http://127.0.0.1:{json_port}/stats"), "metrics": [
            {"name": "app_queue_depth", "help": "Jobs waiting", "path": "queues.*.depth", "labels": {"queue": "$1"}},
        ]}]).to_string(),
        "prometheus": json!([{"name": "app", "url": format!("http://127.0.0.1:{prom_port}/metrics"), "relabel": [
            {"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"},
            {"sourceLabels": ["__name__"], "regex": "(.*)", "targetLabel": "__name__", "replacement": "app_$1"},
        ]}]).to_string(),
        "statsd": format!("127.0.0.1:{statsd_port}"),
        "statsdMappings": json!([{"match": "api.*.latency", "name": "api_latency_seconds", "labels": {"endpoint": "$1"}}]).to_string(),
    })
}

fn send_statsd(port: u16, lines: &[&str]) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for line in lines {
        socket.send_to(line.as_bytes(), ("127.0.0.1", port)).unwrap();
    }
}

#[test]
fn every_collector_together_passes_promtool_and_openmetrics_is_negotiated() {
    require("promtool");
    let (_redis, redis_port) = redis();
    redis_cli(redis_port, &["set", "a", "1"]);
    let json_app = server(Behaviour::Body(
        "application/json",
        json!({"queues": {"mail": {"depth": 3}, "sms": {"depth": 4}}}).to_string(),
    ));
    let prom_app = server(Behaviour::Body(
        "text/plain; version=0.0.4",
        APP_METRICS.to_owned(),
    ));
    let statsd_port = support::free_port();
    let (_adapter, port) = adapter(&settings(redis_port, json_app.port, prom_app.port, statsd_port));
    send_statsd(
        statsd_port,
        &[
            "hits:1|c",
            "hits:2|c",
            "api.users.latency:120|ms",
            "temperature:21.5|g|#room:kitchen",
        ],
    );
    thread::sleep(Duration::from_millis(200));

    let text = get(port, "/metrics", None);
    assert_eq!(text.content_type, "text/plain; version=0.0.4; charset=utf-8");
    let body = text.body;
    for series in [
        "redis_up",
        "app_queue_depth{queue=\"mail\"}",
        "app_http_requests_total{code=\"500\"}",
        "app_latency_seconds_count",
        "hits_total",
        "api_latency_seconds_count{endpoint=\"users\"}",
        "temperature{room=\"kitchen\"}",
        "metrics_adapter_collector_stale{collector=\"json/app\"}",
    ] {
        assert!(sample(&body, series).is_some(), "{series} missing:\n{body}");
    }
    assert_eq!(sample(&body, "hits_total"), Some(3.0));
    assert!(!body.contains("go_goroutines"), "dropped by relabelling");
    assert_eq!(
        sample(&body, "metrics_adapter_collector_stale{collector=\"redis\"}"),
        Some(0.0)
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let open = get(
        port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(
        open.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.body.ends_with("# EOF\n"));
    assert!(open
        .body
        .contains("# TYPE redis_commands_processed counter\nredis_commands_processed_total "));
    assert!(
        open.body.contains("# TYPE hits counter\nhits_total 3\n"),
        "{}",
        open.body
    );
}
