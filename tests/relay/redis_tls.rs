//! The relay against Redis over TLS: private `redis-server`s that speak only TLS, with a CA,
//! server and client certificates made up here (rcgen), for one node and for a cluster.

use crate::helpers::{eventually, prepare, redis_url, TempDir};
use notify_relay::configuration::{Secret, Settings};
use notify_relay_engine::relay::conn::Timeouts;
use notify_relay_engine::relay::Relay;
use notify_relay_engine::Keys;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A CA, a server certificate it signed for `localhost` and `127.0.0.1` (not `127.0.0.2`: the
/// hostname-mismatch case), a client certificate it signed, and a second CA that signed
/// nothing; all as PEM files in a directory removed on drop.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("notify-redis-tls");
        let ca = new_ca("notify test CA");
        let other = new_ca("some other CA");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).expect("write a PEM file");
        write("ca.pem", ca.pem());
        write("other-ca.pem", other.pem());
        for (name, sans) in [("server", vec!["localhost".to_string(), "127.0.0.1".into()]), ("client", vec![])] {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(sans).expect("params").signed_by(&key, &ca).expect("sign");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server side of `redis-server`'s TLS options.
    fn server_args(&self, auth_clients: bool) -> Vec<String> {
        let file = |n: &str| self.path(n).display().to_string();
        vec![
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
        ]
    }

    /// Points the settings at `urls` over TLS, trusting `ca` and offering the client
    /// certificate if `client_cert`.
    fn configure(&self, settings: &mut Settings, ca: &str, client_cert: bool) {
        settings.redis.ca_file = Some(self.path(ca));
        settings.redis.cert_file = client_cert.then(|| self.path("client.pem"));
        settings.redis.key_file = client_cert.then(|| self.path("client.key"));
    }

    /// What the tests' own connections use: the right CA and the client certificate.
    fn client(&self, url: &str) -> redis::Client {
        let read = |n: &str| std::fs::read(self.path(n)).expect("read a PEM file");
        let certs = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.pem"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.pem")),
        };
        redis::Client::build_with_tls(url, certs).expect("a TLS client")
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("self-signed CA")
}

/// Redis servers that speak only TLS (`--port 0`); killed on drop, their directory removed.
struct TlsRedis {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

impl TlsRedis {
    /// One node, on 127.0.0.1 and 127.0.0.2 (whose address the certificate does not list).
    async fn single(pki: &Pki, auth_clients: bool) -> TlsRedis {
        let port = crate::helpers::free_port();
        let mut redis = TlsRedis { nodes: Vec::new(), ports: vec![port], dir: TempDir::new("notify-redis-tls-node") };
        redis.spawn(pki, port, auth_clients, &["--bind", "127.0.0.1", "127.0.0.2"]);
        redis.until_ready(pki, &redis::cmd("PING"), |_| true).await;
        redis
    }

    /// Three cluster nodes talking TLS to each other too, joined by `redis-cli --tls`; client
    /// certificates required.
    async fn cluster(pki: &Pki) -> TlsRedis {
        let ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
        let mut redis =
            TlsRedis { nodes: Vec::new(), ports: ports.clone(), dir: TempDir::new("notify-redis-tls-cluster") };
        for port in &ports {
            let config = format!("nodes-{port}.conf");
            // The bus (port + 10000) goes over TLS too, and so would replication.
            let cluster_args = [
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config,
                "--cluster-node-timeout",
                "5000",
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
            ];
            redis.spawn(pki, *port, true, &cluster_args);
        }
        redis.until_ready(pki, &redis::cmd("PING"), |_| true).await;
        let file = |n: &str| pki.path(n).display().to_string();
        let created = Command::new("redis-cli")
            .args(["--tls", "--cacert", &file("ca.pem"), "--cert", &file("client.pem"), "--key", &file("client.key")])
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            created.status.success(),
            "{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        redis.until_ready(pki, &info, |i| i.contains("cluster_state:ok")).await;
        redis
    }

    fn spawn(&mut self, pki: &Pki, port: u16, auth_clients: bool, args: &[&str]) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "0", "--tls-port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(pki.server_args(auth_clients))
            .args(args)
            .arg("--dir")
            .arg(self.dir.path());
        self.nodes.push(command.stdout(Stdio::null()).spawn().expect("redis-server on PATH"));
    }

    /// Waits until every node answers `cmd` over TLS with a reply that passes `ok`.
    async fn until_ready(&self, pki: &Pki, cmd: &redis::Cmd, ok: impl Fn(&str) -> bool) {
        for port in &self.ports {
            let client = pki.client(&format!("rediss://127.0.0.1:{port}"));
            eventually(Duration::from_secs(20), || async {
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                let reply: redis::Value = cmd.query_async(&mut conn).await.ok()?;
                let text = match reply {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    redis::Value::VerbatimString { text, .. } => text,
                    other => format!("{other:?}"),
                };
                ok(&text).then_some(())
            })
            .await;
        }
    }

    fn url(&self, host: &str) -> String {
        format!("rediss://{host}:{}", self.ports[0])
    }

    fn seeds(&self) -> Vec<Secret> {
        self.ports.iter().map(|p| Secret::new(format!("rediss://127.0.0.1:{p}"))).collect()
    }
}

/// A port whose cluster bus (port + 10000) is free as well.
fn cluster_port() -> u16 {
    loop {
        let port = crate::helpers::free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Connects as the relay does at start-up, with these settings: the error's text, or `None`.
async fn connect_error(settings: &Settings) -> Option<String> {
    let endpoint = match settings.redis_endpoint() {
        Ok(endpoint) => endpoint,
        Err(e) => return Some(e.to_string()),
    };
    // Short: a plain Redis never answers a TLS handshake, so that case ends by timing out.
    let timeouts = Timeouts { connect: Duration::from_secs(1), response: Duration::from_secs(1) };
    let keys = Keys::new(settings.redis.key_prefix.clone(), 1);
    Relay::connect_with(&endpoint, timeouts, keys, 1000).await.err().map(|e| e.to_string())
}

/// Fresh settings (no database or relay behind them) pointed at `url` with TLS.
fn tls_settings(pki: &Pki, url: &str, ca: &str, client_cert: bool) -> Settings {
    let mut settings = Settings::load(None, &Default::default()).expect("the shipped defaults load");
    settings.redis.url = Secret::new(url);
    settings.redis.key_prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    pki.configure(&mut settings, ca, client_cert);
    settings
}

#[actix_web::test]
async fn a_notification_is_delivered_through_a_redis_that_speaks_only_tls() {
    let pki = Pki::new();
    let redis = TlsRedis::single(&pki, false).await;
    let mut app = prepare().await;
    app.settings.redis.url = Secret::new(redis.url("127.0.0.1"));
    pki.configure(&mut app.settings, "ca.pem", false);
    app.start().await;

    app.delivered_first("alice", json!({"title": "over TLS"})).await;
    assert_eq!(app.expo.sent_count(), 1);
    // The relay's streams live on the TLS server.
    let mut conn = pki.client(&redis.url("127.0.0.1")).get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", app.prefix)).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty(), "no relay keys on the TLS server");
}

#[actix_web::test]
async fn a_tls_failure_names_its_cause_and_the_key_that_fixes_it() {
    let pki = Pki::new();
    let redis = TlsRedis::single(&pki, false).await;

    // The right CA: connects.
    let good = tls_settings(&pki, &redis.url("127.0.0.1"), "ca.pem", false);
    assert_eq!(connect_error(&good).await, None);

    // A CA that did not sign the server's certificate.
    let wrong_ca = tls_settings(&pki, &redis.url("127.0.0.1"), "other-ca.pem", false);
    let err = connect_error(&wrong_ca).await.expect("a wrong CA is refused");
    assert!(err.contains("unknown issuer") && err.contains("redis.ca_file"), "{err}");

    // An address the certificate does not list.
    let other_host = tls_settings(&pki, &redis.url("127.0.0.2"), "ca.pem", false);
    let err = connect_error(&other_host).await.expect("a hostname mismatch is refused");
    assert!(err.contains("hostname mismatch") && err.contains("redis.url"), "{err}");

    // rediss:// to a server that speaks plain Redis: it waits for the end of a "command" that
    // never ends, so the handshake times out.
    let plain = redis_url().replacen("redis://", "rediss://", 1);
    let err = connect_error(&tls_settings(&pki, &plain, "ca.pem", false)).await.expect("plain Redis is refused");
    assert!(err.contains("does not speak TLS") && err.contains("redis.url"), "{err}");

    // redis:// to a server that speaks only TLS: it closes the connection on the bytes that are
    // no handshake.
    let mut plain_client = Settings::load(None, &Default::default()).expect("the shipped defaults load");
    plain_client.redis.url = Secret::new(redis.url("127.0.0.1").replacen("rediss://", "redis://", 1));
    let err = connect_error(&plain_client).await.expect("a plain client is refused");
    assert!(err.contains("use rediss://") && err.contains("redis.url"), "{err}");

    // The files are checked before any connection, naming their key.
    let mut no_key = good.clone();
    no_key.redis.key_file = None;
    no_key.redis.cert_file = Some(pki.path("client.pem"));
    let err = no_key.validate().expect_err("a cert without a key").to_string();
    assert!(err.contains("`redis.key_file` must be set with redis.cert_file"), "{err}");
    let mut not_a_ca = good.clone();
    not_a_ca.redis.ca_file = Some(pki.path("client.key"));
    let err = not_a_ca.validate().expect_err("a key given as the CA").to_string();
    assert!(err.contains("`redis.ca_file` holds no PEM certificate"), "{err}");
    let mut plain_url = good.clone();
    plain_url.redis.url = Secret::new(redis_url());
    let err = plain_url.validate().expect_err("a CA with redis://").to_string();
    assert!(err.contains("`redis.ca_file` is set but redis.url is not rediss://"), "{err}");
}

#[actix_web::test]
async fn a_redis_that_asks_for_client_certificates_refuses_a_client_without_one_and_accepts_one_with_it() {
    let pki = Pki::new();
    let redis = TlsRedis::single(&pki, true).await;

    let without = tls_settings(&pki, &redis.url("127.0.0.1"), "ca.pem", false);
    let err = connect_error(&without).await.expect("no client certificate is refused");
    assert!(
        err.contains("requires a client certificate")
            && err.contains("redis.cert_file")
            && err.contains("redis.key_file"),
        "{err}"
    );

    let with = tls_settings(&pki, &redis.url("127.0.0.1"), "ca.pem", true);
    assert_eq!(connect_error(&with).await, None);
}

#[actix_web::test]
async fn a_notification_is_delivered_through_a_redis_cluster_over_tls() {
    let pki = Pki::new();
    let cluster = TlsRedis::cluster(&pki).await;
    let mut app = prepare().await;
    app.settings.redis.cluster_urls = cluster.seeds();
    app.settings.redis.shards = 4;
    pki.configure(&mut app.settings, "ca.pem", true);
    app.start().await;

    app.delivered_first("alice", json!({"title": "over a TLS cluster"})).await;
    assert_eq!(app.expo.sent_count(), 1);

    // Without the client certificate the cluster refuses, and says why.
    let mut without = app.settings.clone();
    pki.configure(&mut without, "ca.pem", false);
    let err = connect_error(&without).await.expect("no client certificate is refused");
    assert!(err.contains("requires a client certificate"), "{err}");
}
