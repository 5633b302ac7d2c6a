//! AUTH to real `redis-server` shards that require a password: connections authenticate when they
//! open, and a new password is followed without dropping a client.

// Helpers of the tests below: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{process::Command, time::Duration};

use outrigger_sharding_ambassador::{
    auth::Password, client::ClientSettings, resp::Frame, shard::ShardSettings,
};
use support::*;
use tokio::sync::watch;

/// A `redis-server` that requires `password`.
async fn guarded_redis(name: &str, password: &str) -> (Redis, Process) {
    let port = free_port();
    let process = spawn(Command::new("redis-server").args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        password,
    ]));
    let redis = Redis::standing_in(name, port);
    let mut client = connect_when_listening(redis.addr()).await;
    for _ in 0..100 {
        if client.call(&["AUTH", password]).await == Frame::ok() {
            return (redis, process);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never accepted its password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_authenticate_with_the_password_and_follow_a_new_one() {
    let (first, _first) = guarded_redis("cache-shard-0", "old-secret").await;
    let (second, _second) = guarded_redis("cache-shard-1", "old-secret").await;
    let shards = [first, second];
    let (password, passwords) = watch::channel(Some(Password::new(b"old-secret")));
    let ambassador = Ambassador::start_with(
        &shards,
        "fnv1a64",
        None,
        ShardSettings {
            password: passwords,
            ..ShardSettings::default()
        },
        ClientSettings::default(),
    )
    .await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("user:{i}")).collect();
    let sets: Vec<_> = keys.iter().map(|key| args(&["SET", key, key])).collect();
    assert!(
        client
            .pipeline(&sets)
            .await
            .iter()
            .all(|reply| *reply == Frame::ok()),
        "every shard accepted the ambassador's password"
    );

    // The password changes on the shards and in the Secret; then every connection the shards
    // had is cut, so only connections opened with the new password can serve.
    let mut directs = Vec::new();
    for shard in &shards {
        let mut direct = Client::connect(shard.addr()).await.unwrap();
        assert_eq!(direct.call(&["AUTH", "old-secret"]).await, Frame::ok());
        assert_eq!(
            direct.call(&["CONFIG", "SET", "requirepass", "new-secret"]).await,
            Frame::ok()
        );
        directs.push(direct);
    }
    password.send_replace(Some(Password::new(b"new-secret")));
    for direct in &mut directs {
        let killed = direct
            .call(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .await;
        assert!(matches!(killed, Frame::Integer(n) if n >= 1), "{killed:?}");
    }
    let gets: Vec<_> = keys.iter().map(|key| args(&["GET", key])).collect();
    let mut served = false;
    for _ in 0..50 {
        let replies = client.pipeline(&gets).await;
        if replies.iter().zip(&keys).all(|(reply, key)| *reply == bulk(key)) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the same client is served with the new password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_has_not_taken_up_a_new_password_yet_is_opened_with_the_previous_one() {
    let (shard, _process) = guarded_redis("cache-shard-0", "old-secret").await;
    let (password, passwords) = watch::channel(Some(Password::new(b"old-secret")));
    let ambassador = Ambassador::start_with(
        &[Redis::standing_in("cache-shard-0", shard.port)],
        "fnv1a64",
        None,
        ShardSettings {
            password: passwords,
            ..ShardSettings::default()
        },
        ClientSettings::default(),
    )
    .await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    assert_eq!(client.call(&["SET", "k", "v"]).await, Frame::ok());
    password.send_replace(Some(Password::new(b"new-secret")));
    assert_eq!(
        client.call(&["GET", "k"]).await,
        bulk("v"),
        "the shard still requires the old password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_password_is_not_set_yet_is_served() {
    let shards = start_shards(1).await;
    let (_password, passwords) = watch::channel(Some(Password::new(b"s3cret")));
    let ambassador = Ambassador::start_with(
        &shards,
        "fnv1a64",
        None,
        ShardSettings {
            password: passwords,
            ..ShardSettings::default()
        },
        ClientSettings::default(),
    )
    .await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    assert_eq!(client.call(&["SET", "k", "v"]).await, Frame::ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_shards_commands_with_the_shards_own_words() {
    let (shard, _process) = guarded_redis("cache-shard-0", "right").await;
    let (_password, passwords) = watch::channel(Some(Password::new(b"wrong")));
    let ambassador = Ambassador::start_with(
        &[shard],
        "fnv1a64",
        None,
        ShardSettings {
            password: passwords,
            ..ShardSettings::default()
        },
        ClientSettings::default(),
    )
    .await;
    let mut client = Client::connect(ambassador.addr).await.unwrap();
    let reply = error_text(&client.call(&["GET", "k"]).await);
    assert!(
        reply.contains("authentication refused") && reply.contains("WRONGPASS"),
        "{reply}"
    );
}
