//! Postgres over TLS, against a private PostgreSQL with `ssl = on` and a CA generated here
//! (server certificate for `localhost` and `127.0.0.1`): every `sslmode`, the CA from
//! `sslrootcert=`, `database.ca_file` and `PGSSLROOTCERT`, the refusals and what they say, and a
//! relay delivering end to end with its pool and LISTEN connection over TLS.

use crate::helpers::*;
use notify_relay::configuration::{Secret, Settings};
use notify_relay_engine::tls::PgTarget;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian's PostgreSQL 15 keeps `initdb` and `postgres`; `PG_BINDIR` overrides it.
fn bindir() -> PathBuf {
    std::env::var_os("PG_BINDIR").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from)
}

/// A certificate and its key, PEM.
struct Issued {
    cert: String,
    key: String,
}

/// A CA of the test's own, and server certificates signed by it.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for `localhost` and `127.0.0.1`, valid `from`..`until` (years).
    fn server(&self, from: i32, until: i32) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("server certificate");
        Issued { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// The `postgres` OS user's uid and gid when the tests run as root: `initdb` and `postgres`
/// refuse to run as root, so they are started as that user. `None` otherwise.
fn server_owner() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    Some((id(&["-u", "postgres"]).expect("a postgres OS user"), id(&["-g", "postgres"]).expect("its group")))
}

/// A private PostgreSQL on a free port, with TLS on, its data and certificates in a directory
/// of its own; stopped (and the directory removed) when dropped.
struct PrivatePostgres {
    port: u16,
    ca: TestCa,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    /// Last: removed once the server is gone.
    dir: TempDir,
}

impl PrivatePostgres {
    async fn start() -> PrivatePostgres {
        let dir = TempDir::new("notify-relay-pgtls");
        let owner = server_owner();
        let server =
            PrivatePostgres { port: free_port(), ca: TestCa::new("notify-relay test CA"), owner, child: None, dir };
        server.own(server.dir.path());
        server.write(&server.ca_file(), &server.ca.pem);
        server.install(&server.ca.server(2020, 2100));
        server.write(&server.dir.path().join("wrong-ca.pem"), &TestCa::new("another CA").pem);
        let data = server.data();
        let status = server
            .as_owner(Command::new(bindir().join("initdb")))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "--no-instructions"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        // TLS and plain connections both allowed: each test looks at which one it got.
        server.write(
            &data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
        );
        let dir = server.dir.path().display().to_string();
        // In postgresql.conf rather than on the command line, so that `ALTER SYSTEM` and a
        // reload can change them (`ssl` and the certificate files are reloadable).
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\nssl = on\n\
             ssl_cert_file = '{dir}/server.crt'\nssl_key_file = '{dir}/server.key'\nfsync = off\n\
             shared_buffers = 16MB\nmax_connections = 40\n",
            server.port
        );
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
        existing.push_str(&conf);
        server.write(&data.join("postgresql.conf"), &existing);
        let mut server = server;
        let log = if std::env::var("TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() };
        let child = server
            .as_owner(Command::new(bindir().join("postgres")))
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        server.child = Some(child);
        let url = server.url("postgres", "sslmode=disable");
        eventually(Duration::from_secs(30), || {
            let url = url.clone();
            async move { tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok().map(drop) }
        })
        .await;
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn wrong_ca_file(&self) -> PathBuf {
        self.dir.path().join("wrong-ca.pem")
    }

    /// `postgres://postgres@<host>:<port>/postgres?<query>`.
    fn url(&self, host: &str, query: &str) -> String {
        let host = if host == "postgres" { "127.0.0.1" } else { host };
        format!("postgres://postgres@{host}:{}/postgres?connect_timeout=5&{query}", self.port)
    }

    /// A certificate and key for the server to present (from its next reload on).
    fn install(&self, issued: &Issued) {
        let key = self.dir.path().join("server.key");
        self.write(&key, &issued.key);
        // Postgres refuses a key others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
        self.write(&self.dir.path().join("server.crt"), &issued.cert);
    }

    fn write(&self, path: &Path, text: &str) {
        std::fs::write(path, text).expect("write a server file");
        self.own(path);
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }

    fn as_owner(&self, mut command: Command) -> Command {
        if let Some((uid, gid)) = self.owner {
            command.gid(gid).uid(uid);
        }
        command
    }

    /// Runs `sql` over a plain connection (as the superuser), then reloads the configuration
    /// and waits until a new connection sees `ready` hold.
    async fn reconfigure<F, Fut>(&self, sql: &str, ready: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres", "sslmode=disable"), tokio_postgres::NoTls)
                .await
                .expect("plain connection");
        actix_rt::spawn(connection);
        client.batch_execute(sql).await.expect("reconfigure");
        client.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
        // The postmaster reloads on its own time: new connections show when it has.
        eventually(Duration::from_secs(20), || async { ready().await.then_some(()) }).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown, which still removes the shared memory and the
            // socket; SIGKILL only if it does not go within the deadline.
            let pid = child.id().to_string();
            let _ = Command::new("kill").arg("-QUIT").arg(&pid).status();
            // Waited for on a thread of its own, so that the wait has a deadline.
            let (exited, gone) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = child.wait();
                let _ = exited.send(());
            });
            if gone.recv_timeout(Duration::from_secs(10)).is_err() {
                let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
                let _ = gone.recv_timeout(Duration::from_secs(10));
            }
        }
    }
}

/// Connects as the relay would (`PgTarget::from_url`); whether the session uses TLS, or the
/// relay's message for the failure.
async fn session_ssl(url: &str, ca_file: Option<&Path>) -> Result<bool, String> {
    let target = PgTarget::from_url(url, ca_file).map_err(|e| e.to_string())?;
    ssl_of(&target).await
}

async fn ssl_of(target: &PgTarget) -> Result<bool, String> {
    let (client, connection) = target.connect().await.map_err(|e| target.explain(&e))?;
    actix_rt::spawn(connection);
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[actix_rt::test]
async fn every_sslmode_against_a_tls_server_with_its_own_ca() {
    let pg = PrivatePostgres::start().await;
    let (ca, wrong) = (pg.ca_file(), pg.wrong_ca_file());
    let root = |path: &Path| format!("sslrootcert={}", path.display());

    // No verification in prefer and require without a CA (libpq's meaning): encrypted anyway.
    assert_eq!(session_ssl(&pg.url("postgres", "sslmode=disable"), None).await, Ok(false));
    assert_eq!(session_ssl(&pg.url("postgres", "sslmode=prefer"), None).await, Ok(true));
    assert_eq!(session_ssl(&pg.url("postgres", ""), None).await, Ok(true), "the default is prefer");
    assert_eq!(session_ssl(&pg.url("postgres", "sslmode=require"), None).await, Ok(true));

    // verify-ca and verify-full without a CA: the Mozilla roots, which did not sign this one.
    for mode in ["verify-ca", "verify-full"] {
        let err = session_ssl(&pg.url("localhost", &format!("sslmode={mode}")), None).await.unwrap_err();
        assert!(
            err.contains("unknown issuer") && err.contains("set database.ca_file or sslrootcert="),
            "{mode}: {err}"
        );
    }
    // A wrong CA is refused in every verifying mode (require with a CA verifies as verify-ca).
    for mode in ["require", "verify-ca", "verify-full"] {
        let err =
            session_ssl(&pg.url("localhost", &format!("sslmode={mode}&{}", root(&wrong))), None).await.unwrap_err();
        assert!(
            err.contains("error performing TLS handshake")
                && err.contains("not signed by the configured CA (unknown issuer)")
                && err.contains("set database.ca_file or sslrootcert="),
            "{mode}: {err}"
        );
    }
    // The right CA, through sslrootcert=, in every verifying mode, by name and by address.
    for (host, mode) in [
        ("localhost", "require"),
        ("localhost", "verify-ca"),
        ("localhost", "verify-full"),
        ("127.0.0.1", "verify-full"),
    ] {
        let url = pg.url(host, &format!("sslmode={mode}&{}", root(&ca)));
        assert_eq!(session_ssl(&url, None).await, Ok(true), "{host} {mode}");
    }
    // A name the certificate does not have (TCP to 127.0.0.1, TLS for db.example.com):
    // verify-full refuses it, verify-ca does not look at names.
    let elsewhere = |mode: &str| pg.url("db.example.com", &format!("hostaddr=127.0.0.1&sslmode={mode}&{}", root(&ca)));
    let err = session_ssl(&elsewhere("verify-full"), None).await.unwrap_err();
    assert!(
        err.contains("hostname mismatch") && err.contains("use sslmode=verify-ca or connect by the certificate's name"),
        "{err}"
    );
    assert_eq!(session_ssl(&elsewhere("verify-ca"), None).await, Ok(true));

    // database.ca_file, as the relay's settings give it to every connection; the URL's
    // sslrootcert wins over it.
    let settings = |url: String, ca_file: &Path| {
        let env = HashMap::from([
            ("DATABASE_URL".to_string(), url),
            ("NOTIFY__DATABASE__CA_FILE".to_string(), ca_file.display().to_string()),
        ]);
        Settings::load(None, &env).expect("settings load")
    };
    let by_key = settings(pg.url("localhost", "sslmode=verify-full"), &ca);
    assert_eq!(ssl_of(&by_key.pg_config().unwrap()).await, Ok(true));
    assert_eq!(ssl_of(&by_key.migrations_pg_config().unwrap()).await, Ok(true));
    let wrong_key = settings(pg.url("localhost", "sslmode=verify-full"), &wrong);
    let err = ssl_of(&wrong_key.pg_config().unwrap()).await.unwrap_err();
    assert!(err.contains("not signed by the configured CA"), "{err}");
    let url_wins = settings(pg.url("localhost", &format!("sslmode=verify-full&{}", root(&ca))), &wrong);
    assert_eq!(ssl_of(&url_wins.pg_config().unwrap()).await, Ok(true), "sslrootcert= wins over database.ca_file");

    // PGSSLROOTCERT, set on a child process (the binary's `migrate`): the right CA migrates,
    // the wrong one stops it with the message.
    let migrate = |ca_file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_notify-relay"))
            .arg("migrate")
            .env_remove("NOTIFY_CONFIG")
            .env_remove("NOTIFY__DATABASE__CA_FILE")
            .env("DATABASE_URL", pg.url("localhost", "sslmode=verify-full"))
            .env("PGSSLROOTCERT", ca_file)
            .output()
            .expect("run the binary")
    };
    let refused = migrate(&wrong);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not connect to Postgres") && stderr.contains("not signed by the configured CA"),
        "{stderr}"
    );
    let migrated = migrate(&ca);
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));

    // An expired certificate (from the right CA) is refused as expired.
    pg.install(&pg.ca.server(2020, 2021));
    let full = pg.url("localhost", &format!("sslmode=verify-full&{}", root(&ca)));
    pg.reconfigure("SELECT 1", || async { session_ssl(&full, None).await.is_err() }).await;
    let err = session_ssl(&full, None).await.unwrap_err();
    assert!(err.contains("has expired"), "{err}");

    // The server with TLS off: prefer falls back to plain, verify-full says why it cannot.
    pg.reconfigure("ALTER SYSTEM SET ssl = off", || async {
        session_ssl(&pg.url("postgres", "sslmode=prefer"), None).await == Ok(false)
    })
    .await;
    let err = session_ssl(&full, None).await.unwrap_err();
    assert!(err.contains("server does not support TLS") && err.contains("turn ssl on in the server"), "{err}");
    let err = session_ssl(&pg.url("postgres", "sslmode=require"), None).await.unwrap_err();
    assert!(err.contains("sslmode=require requires it"), "{err}");
}

#[actix_rt::test]
async fn a_relay_delivers_over_tls_with_its_listen_connection_too() {
    let pg = PrivatePostgres::start().await;
    // verify-full with the CA from database.ca_file: the pool, the LISTEN connection and the
    // migrations all check the chain and the name.
    let url = pg.url("localhost", "sslmode=verify-full");
    let target = PgTarget::from_url(&url, Some(&pg.ca_file())).expect("target");
    notify_relay::migrate::run(&target).await.expect("migrations over TLS");
    let mut app = prepare_with(|s| {
        s.database.url = Secret::new(url.clone());
        s.database.ca_file = Some(pg.ca_file());
        // Only a NOTIFY on the LISTEN connection can start this delivery within the test.
        s.listener.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    app.start().await;
    let (db, connection) = target.connect().await.expect("test client over TLS");
    actix_rt::spawn(connection);
    // The LISTEN connection is up (its last statement is the LISTEN) before the insert.
    eventually(Duration::from_secs(20), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.query LIKE 'LISTEN %' AND s.ssl",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    db.execute("INSERT INTO device (user_id, provider, token) VALUES ('tls', 'expo', 'ExponentPushToken[tls]')", &[])
        .await
        .expect("device");
    let id: uuid::Uuid = db
        .query_one(
            "INSERT INTO notification (user_id, type, payload) VALUES ('tls', 'test', '{\"title\": \"t\"}') RETURNING id",
            &[],
        )
        .await
        .expect("notification")
        .get(0);
    eventually(Duration::from_secs(30), || async {
        let status: String =
            db.query_one("SELECT status FROM notification WHERE id = $1", &[&id]).await.expect("status").get(0);
        (status == "delivered").then_some(())
    })
    .await;
    // Every session of the relay is encrypted.
    let (plain, relay): (i64, i64) = {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.application_name = 'notify-relay'",
                &[],
            )
            .await
            .expect("sessions");
        (row.get(0), row.get(1))
    };
    assert_eq!(plain, 0, "no plain session");
    assert!(relay >= 2, "the pool and the LISTEN connection: {relay}");
    app.cleanup().await;
}
