#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Configuration reloads over real sockets: under load nothing is lost, a bad file is rejected while
//! the previous configuration keeps serving, and the poller notices a swapped file by itself.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use support::{backend, client, get, metric, splitter, Backend, Behaviour, STEP};

fn config(stable: &Backend, canary: &Backend, canary_weight: u32) -> Value {
    json!({
        "backends": [
            {"name": "stable", "endpoints": [stable.endpoint()]},
            {"name": "canary", "endpoints": [canary.endpoint()]}
        ],
        "weights": {"stable": 100 - canary_weight, "canary": canary_weight}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_under_load_loses_zero_requests() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let splitter = splitter(config(&stable, &canary, 0)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (client, stop) = (client(), stop.clone());
        // Two of the workers send slow requests, so that reloads happen while requests are in flight.
        let url = if worker < 2 {
            splitter.url("/slow?delay=30")
        } else {
            splitter.url("/")
        };
        load.push(tokio::spawn(async move {
            let (mut served, mut failed) = (0u32, Vec::new());
            // Bounded in count as well as by the stop flag.
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let reply = get(&client, &url, &[]).await;
                if reply.status == 200 {
                    served += 1;
                } else {
                    failed.push((reply.status, reply.body));
                }
            }
            (served, failed)
        }));
    }
    let before = splitter.running.store().current().unwrap().generation;
    for round in 0..20u32 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let mut next = config(&stable, &canary, (round * 37) % 101);
        if round % 3 == 0 {
            next["routes"] =
                json!([{"name": "pin", "match": {"header": {"name": "x-pin"}}, "backend": "canary"}]);
        }
        splitter.reconfigure(next).await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (mut served, mut failed) = (0, Vec::new());
    for task in load {
        let (ok, bad) = tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        served += ok;
        failed.extend(bad);
    }
    assert!(failed.is_empty(), "{} requests failed: {failed:?}", failed.len());
    assert!(served > 100, "the load loop barely ran: {served}");
    let after = splitter.running.store().current().unwrap().generation;
    assert_eq!(after, before + 20, "every reload made a new generation");
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(&metrics, "outrigger_splitter_config_generation"),
        after as f64
    );
}

#[tokio::test]
async fn an_invalid_config_file_is_rejected_and_the_previous_one_keeps_serving() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let splitter = support::splitter_without_poller(config(&stable, &canary, 0)).await;
    let client = client();
    let url = splitter.url("/");
    let (_, good) = splitter.admin_get("/config").await;

    splitter.write_raw(b"{ \"backends\": [ ");
    let garbled = splitter.running.reload_file().await.unwrap().unwrap_err();
    assert!(
        garbled.to_string().contains("parsing the configuration"),
        "{garbled}"
    );

    let mut wrong = config(&stable, &canary, 0);
    wrong["weights"] = json!({"stable": 90, "canary": 60});
    wrong["backends"][1]["endpoints"] = json!(["no-port"]);
    let error = splitter.reconfigure(wrong).await.unwrap_err();
    assert!(error.contains("weights: the weights add up to 150"), "{error}");
    assert!(
        error.contains("backends[1].endpoints[0]: \"no-port\" is not host:port"),
        "{error}"
    );

    for _ in 0..10 {
        let reply = get(&client, &url, &[]).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "stable"));
    }
    let (_, still) = splitter.admin_get("/config").await;
    let (good, still): (Value, Value) = (
        serde_json::from_str(&good).unwrap(),
        serde_json::from_str(&still).unwrap(),
    );
    assert_eq!(
        still["config"], good["config"],
        "/config still shows the previous configuration"
    );
    assert_eq!(still["lastReloadSuccessful"], json!(false));
    assert!(
        still["lastRejection"]["error"]
            .as_str()
            .is_some_and(|error| error.contains("weights: the weights add up to 150")),
        "/config shows why the last document was rejected: {still}"
    );
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_config_reloads_total{source=\"file\",result=\"rejected\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "outrigger_splitter_config_last_reload_successful"),
        0.0
    );
    assert_eq!(metric(&metrics, "outrigger_splitter_config_generation"), 1.0);
}

#[tokio::test]
async fn a_swapped_file_is_picked_up_by_the_poller_without_a_signal() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let splitter = splitter(config(&stable, &canary, 0)).await;
    let mut next = config(&stable, &canary, 100);
    next["listen"] = Value::from(splitter.addr.to_string());
    next["accessLog"] = Value::from(false);
    splitter.write_raw(&serde_json::to_vec(&next).unwrap());
    let client = client();
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if get(&client, &splitter.url("/"), &[]).await.body == "canary" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new file was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, shown) = splitter.admin_get("/config").await;
    assert_eq!(status, 200);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["config"]["weights"], json!({"stable": 0, "canary": 100}));
}
