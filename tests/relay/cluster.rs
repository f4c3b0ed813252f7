//! The relay against a real Redis Cluster: three private `redis-server` nodes in cluster mode,
//! four stream shards spread over them.

use crate::helpers::{add_users, eventually, insert_bulk, prepare, redis_connection, until_redis_answers, ADMIN_TOKEN};
use notify_relay::configuration::Secret;
use serde_json::{json, Value};
use std::time::Duration;

/// Three cluster-mode `redis-server`s on free ports, joined into one cluster; killed on drop.
struct PrivateCluster {
    nodes: Vec<std::process::Child>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    // Cluster nodes also listen on port + 10000 (the bus): keep both below 65536.
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl PrivateCluster {
    async fn start() -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!("notify-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                std::process::Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("redis-server on PATH")
            })
            .collect();
        let cluster = PrivateCluster { nodes, ports, dir };
        for port in &cluster.ports {
            let url = format!("redis://127.0.0.1:{port}");
            until_redis_answers(&url, Duration::from_secs(10), &redis::cmd("PING"), |_| true).await;
        }
        let created = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        for port in &cluster.ports {
            let url = format!("redis://127.0.0.1:{port}");
            until_redis_answers(&url, Duration::from_secs(20), &info, |i| i.contains("cluster_state:ok")).await;
        }
        cluster
    }

    fn seeds(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// How many keys of `prefix` each node holds.
    async fn keys_per_node(&self, prefix: &str) -> Vec<usize> {
        let mut counts = Vec::new();
        for port in &self.ports {
            let mut conn = redis_connection(&format!("redis://127.0.0.1:{port}")).await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
            counts.push(keys.len());
        }
        counts
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[actix_web::test]
async fn the_relay_runs_on_a_redis_cluster_with_shards_spread_over_its_nodes() {
    let cluster = PrivateCluster::start().await;
    let mut app = prepare().await;
    app.settings.redis.cluster_urls = cluster.seeds().split(',').map(Secret::new).collect();
    app.settings.redis.shards = 4;
    app.settings.retry.max_attempts = 2;
    // Exercise the rate limiter's scripts on the cluster (limits far above the load).
    app.settings.providers.expo.rate_per_sec = 100_000;
    app.settings.providers.expo.device_rate_per_sec = 1000;
    // The alert check reads every shard's backlog across the nodes; any dead letter is over.
    app.settings.alerts.interval = Duration::from_millis(100);
    app.settings.alerts.dlq_length_max = 0;
    let log = app.start_logged(notify_relay::startup::ProcessRoles::ALL).await;
    add_users(&app, 40).await;
    // Retried twice (the delayed set and its Lua move), then dead-lettered.
    app.add_device("slow", "expo", "ExponentPushToken[slow-ratelimited]").await;
    insert_bulk(&app, 400, 40).await;
    let slow = app.notify("slow", json!({"title": "never"})).await;
    // Alone it takes ~10 s; a machine loaded by other work (CI here shares 2 cores) has taken
    // longer than 30 s. A deadline, not a speed check.
    app.all_final(Duration::from_secs(90)).await;

    assert_eq!(app.delivered().await, 400);
    assert_eq!(app.status(slow).await.0, "failed");
    assert_eq!(app.expo.sent_count(), 400);
    assert_eq!(app.duplicate_sends(), 0);
    // The shards' keys (streams, groups, delayed sets, DLQ) live on several nodes.
    let per_node = cluster.keys_per_node(&app.prefix).await;
    assert!(per_node.iter().filter(|&&n| n > 0).count() >= 2, "{per_node:?}");

    // The admin views read across the nodes (the dead letter lands just after the row is final).
    let queues = eventually(Duration::from_secs(10), || async {
        let (status, queues) = app.get("/admin/queues", Some(ADMIN_TOKEN)).await;
        (status == 200 && queues["totals"]["dlq_length"] == 1).then_some(queues)
    })
    .await;
    assert_eq!(queues["shards"].as_array().unwrap().len(), 4);
    assert_eq!(queues["totals"]["dlq_length"], 1, "{queues}");
    assert_eq!(queues["totals"]["stream_length"], 0, "{queues}");
    // The alert check read it too, from the shard's node (a DLQ that holds letters is also asked
    // XINFO STREAM there: a failed read would log no line at all).
    eventually(Duration::from_secs(10), || async {
        log.lines().into_iter().find(|l| l["event"] == "DLQ_GROWING" && l["dlq_length"] == 1)
    })
    .await;
    let (_, metrics) = app.get("/admin/metrics?days=1", Some(ADMIN_TOKEN)).await;
    assert_eq!(metrics["days"][0]["events"]["SEND_SUCCESS"], 400, "{metrics}");
    assert_eq!(metrics["days"][0]["events"]["DLQ_PUSHED:expo"], 1, "{metrics}");

    // And a dead letter goes back through the cluster.
    app.expo.forgive("ratelimited");
    let (_, dlq) = app.get("/admin/dlq", Some(ADMIN_TOKEN)).await;
    let id = dlq["items"][0]["id"].as_str().unwrap().to_string();
    let client = awc::Client::default();
    let mut resp = client
        .post(format!("{}/admin/dlq/requeue", app.api()))
        .bearer_auth(ADMIN_TOKEN)
        .send_json(&json!({"ids": [id]}))
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["requeued"].as_array().unwrap().len(), 1, "{report}");
    eventually(Duration::from_secs(20), || async { (app.status(slow).await.0 == "delivered").then_some(()) }).await;
}
