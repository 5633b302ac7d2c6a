#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The ShardedService example runs real Redis: the `outrigger/redis` image (Debian's redis-server on
//! an empty base) starts unprivileged with a read-only root filesystem, and every shard replica
//! answers on its pod IP and keeps what is written to it in its data volume.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::ShardedService;
use outrigger_tests::{admin_client, ensure_crds, eventually, example, OperatorProcess, TestNamespace};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

/// Sends one RESP command and returns the raw reply.
fn redis_command(address: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address.parse()?, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = vec![0; 4096];
    let read = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..read]).into_owned())
}

#[tokio::test]
async fn the_sharded_service_example_runs_real_redis_on_every_shard_replica() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("sharded-redis").unwrap();
    let _operator = OperatorProcess::for_namespace(&namespace.name).unwrap();
    let client = admin_client().await.unwrap();

    // The example as shipped, made smaller so the test stays light: two shards of one replica each.
    let mut cache: Value = example("shardedservice.yaml").unwrap();
    cache["spec"]["shards"] = json!(2);
    cache["spec"]["replicasPerShard"] = json!(1);
    cache["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    let cache: ShardedService = serde_json::from_value(cache).unwrap();
    Api::<ShardedService>::namespaced(client.clone(), &namespace.name)
        .create(&PostParams::default(), &cache)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client, &namespace.name);
    let addresses = eventually("both shard replicas running", WAIT, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await?;
            let addresses: Vec<String> = list
                .items
                .iter()
                .filter(|pod| {
                    pod.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|statuses| statuses.iter().all(|c| c.ready))
                })
                .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
                .map(|ip| format!("{ip}:6379"))
                .collect();
            Ok((addresses.len() == 2).then_some(addresses))
        }
    })
    .await
    .unwrap();

    for address in &addresses {
        let pong = eventually(&format!("PING {address}"), WAIT, || async {
            Ok(redis_command(address, &["PING"])
                .ok()
                .filter(|reply| reply == "+PONG\r\n"))
        })
        .await
        .unwrap();
        assert_eq!(pong, "+PONG\r\n");
        assert_eq!(
            redis_command(address, &["SET", "greeting", address]).unwrap(),
            "+OK\r\n"
        );
        let value = redis_command(address, &["GET", "greeting"]).unwrap();
        assert!(value.ends_with(&format!("{address}\r\n")), "{value}");
        let dir = redis_command(address, &["CONFIG", "GET", "dir"]).unwrap();
        assert!(dir.contains("/data"), "Redis writes to its data volume: {dir}");
        // A snapshot needs the only writable place, the data volume, to be writable by the
        // unprivileged user the image runs as.
        assert_eq!(redis_command(address, &["SAVE"]).unwrap(), "+OK\r\n");
    }
}
