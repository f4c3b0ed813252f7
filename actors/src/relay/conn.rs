//! One Redis, or a Redis Cluster: the connection the relay talks through, and pipelines that
//! stay within one hash slot on a cluster.
//!
//! On a single Redis a batch of commands is one pipeline (one round trip). On a cluster a
//! pipeline may only touch one slot, so [`RelayConn::query_each`] groups the commands by the slot
//! of their key and sends the groups concurrently. The keys of one shard share a hash tag, so a
//! shard's atomic `MULTI` pipelines and Lua scripts are single-slot by construction.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult,
    TlsCertificates, Value,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where Redis is (`redis.url`, or the seed nodes of `redis.cluster_urls`), and the TLS
/// material for `rediss://` beyond the defaults (`redis.ca_file`, `redis.cert_file`,
/// `redis.key_file`).
#[derive(Clone)]
pub struct Endpoint {
    pub nodes: Nodes,
    /// `None`: a `rediss://` server is checked against the public (webpki) roots and no client
    /// certificate is offered.
    pub tls: Option<TlsCertificates>,
}

/// One Redis, or the seed nodes of a cluster.
#[derive(Clone)]
pub enum Nodes {
    Single(String),
    Cluster(Vec<String>),
}

/// The URLs may carry a password: `Debug` says only how many there are (and the certificates,
/// redacted by redis-rs, only whether they are set).
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.nodes {
            Nodes::Single(_) => f.write_str("Endpoint::Single([redacted])")?,
            Nodes::Cluster(seeds) => write!(f, "Endpoint::Cluster([{} redacted seeds])", seeds.len())?,
        }
        match &self.tls {
            Some(tls) => write!(f, " with {tls:?}"),
            None => Ok(()),
        }
    }
}

impl Endpoint {
    /// The cluster when seed nodes are given, else the one URL.
    pub fn new(url: &str, cluster_urls: &[String]) -> Endpoint {
        let nodes = match cluster_urls.is_empty() {
            true => Nodes::Single(url.to_string()),
            false => Nodes::Cluster(cluster_urls.to_vec()),
        };
        Endpoint { nodes, tls: None }
    }

    /// One Redis at `url`, with the default TLS settings.
    pub fn single(url: impl Into<String>) -> Endpoint {
        Endpoint { nodes: Nodes::Single(url.into()), tls: None }
    }

    /// The same nodes, reached with these certificates.
    pub fn with_tls(self, tls: Option<TlsCertificates>) -> Endpoint {
        Endpoint { tls, ..self }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.nodes, Nodes::Cluster(_))
    }

    /// Whether the connections are TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        match &self.nodes {
            Nodes::Single(url) => url.starts_with("rediss://"),
            Nodes::Cluster(urls) => urls.iter().any(|u| u.starts_with("rediss://")),
        }
    }
}

/// How long connecting, and waiting for a reply, may take (`redis.connect_timeout_ms`,
/// `redis.response_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(5), response: Duration::from_secs(5) }
    }
}

/// What opens connections: a client for one Redis, or for a cluster.
#[derive(Clone)]
pub(crate) struct Opener {
    target: Target,
    timeouts: Timeouts,
}

#[derive(Clone)]
enum Target {
    Single(Box<Client>),
    Cluster(Vec<String>, Option<TlsCertificates>),
}

impl Opener {
    pub(crate) fn new(endpoint: &Endpoint, timeouts: Timeouts) -> RedisResult<Opener> {
        let target = match (&endpoint.nodes, &endpoint.tls) {
            (Nodes::Single(url), None) => Target::Single(Box::new(Client::open(url.as_str())?)),
            // redis-rs refuses certificates with a `redis://` URL (the settings say so first,
            // naming the key).
            (Nodes::Single(url), Some(tls)) => {
                Target::Single(Box::new(Client::build_with_tls(url.as_str(), tls.clone())?))
            }
            (Nodes::Cluster(urls), tls) => {
                // Built here so a bad seed or certificate fails at start-up, not on first use.
                cluster_client(urls, tls.as_ref(), timeouts.connect, timeouts.response)?;
                Target::Cluster(urls.clone(), tls.clone())
            }
        };
        Ok(Opener { target, timeouts })
    }

    /// The shared connection for short commands (reconnecting by itself).
    pub(crate) async fn shared(&self) -> RedisResult<RelayConn> {
        match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeouts.connect))
                    .set_response_timeout(Some(self.timeouts.response))
                    .set_number_of_retries(3);
                Ok(RelayConn::Single(SharedConn::connect(client, config).await?))
            }
            Target::Cluster(..) => self.cluster(self.timeouts.response).await,
        }
    }

    /// A connection of its own for blocking reads, whose response timeout outlasts `block`
    /// (redis-rs would otherwise give up while the server still blocks).
    pub(crate) async fn blocking(&self, block: Duration, name: &str) -> RedisResult<RelayConn> {
        let timeout = block + self.timeouts.response;
        match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeouts.connect))
                    .set_response_timeout(Some(timeout));
                let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
                // Named, so that operators can find the readers in `CLIENT LIST`.
                redis::cmd("CLIENT").arg("SETNAME").arg(name).query_async::<()>(&mut conn).await?;
                Ok(RelayConn::Reader(conn))
            }
            Target::Cluster(..) => self.cluster(timeout).await,
        }
    }

    async fn cluster(&self, response_timeout: Duration) -> RedisResult<RelayConn> {
        let Target::Cluster(urls, tls) = &self.target else {
            return Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, "not a cluster")));
        };
        let client = cluster_client(urls, tls.as_ref(), self.timeouts.connect, response_timeout)?;
        Ok(RelayConn::Cluster(client.get_async_connection().await?))
    }
}

fn cluster_client(
    urls: &[String],
    tls: Option<&TlsCertificates>,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> RedisResult<ClusterClient> {
    let mut builder = ClusterClient::builder(urls.iter().map(String::as_str).collect::<Vec<_>>())
        .connection_timeout(connect_timeout)
        .response_timeout(response_timeout)
        .retries(3);
    // The nodes the cluster names in its slot map are reached with the same certificates.
    if let Some(tls) = tls {
        builder = builder.certs(tls.clone());
    }
    builder.build()
}

/// What a failed TLS connection to Redis means (or a plain one to a TLS-only port), and the
/// setting that fixes it; `None` for other errors. redis-rs hands rustls's error on as text (inside an I/O error), so the cause is read
/// from the message: rustls's names for certificate errors and alerts are stable.
pub fn tls_failure(error: &RedisError, endpoint: &Endpoint) -> Option<String> {
    let text = format!("{error} {error:?}").to_ascii_lowercase();
    let url_key = match endpoint.is_cluster() {
        true => "redis.cluster_urls",
        false => "redis.url",
    };
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if !endpoint.is_tls() {
        // A TLS-only port drops a connection whose first bytes are no handshake.
        return has(&["connection reset"]).then(|| {
            format!(
                "the server closed the connection at once; if it speaks only TLS on this port, use rediss:// in {url_key}"
            )
        });
    }
    let hint = if has(&["unknownissuer", "unknown issuer"]) {
        "TLS: the server's certificate is signed by a CA the relay does not trust (unknown issuer); \
         set redis.ca_file to the PEM file of the CA that signed it"
            .to_string()
    } else if has(&["notvalidforname", "not valid for name"]) {
        format!(
            "TLS: the server's certificate is not valid for the host in {url_key} (hostname mismatch); \
             connect by a name or address the certificate lists"
        )
    } else if has(&["expired", "notvalidyet"]) {
        "TLS: the server's certificate has expired or is not valid yet; renew it on the server \
         (or check this machine's clock)"
            .to_string()
    } else if has(&["certificaterequired", "handshakefailure"])
        && endpoint.tls.as_ref().is_none_or(|t| t.client_tls.is_none())
    {
        "TLS: the server requires a client certificate (tls-auth-clients); set redis.cert_file and redis.key_file"
            .to_string()
    } else if has(&["unknownca", "badcertificate", "certificateunknown", "decrypterror", "handshakefailure"]) {
        "TLS: the server refused the client certificate (not signed by a CA in its tls-ca-cert-file); \
         check redis.cert_file and redis.key_file"
            .to_string()
    } else if has(&["corrupt message", "invalidcontenttype", "invalidmessage"]) {
        format!("TLS: the server does not speak TLS on this port; use redis:// in {url_key}, or the server's tls-port")
    } else if error.is_timeout() {
        // A plain Redis reads the TLS ClientHello as the start of an inline command and waits for
        // its end: the handshake gets no answer at all, rather than a wrong one.
        format!(
            "no answer to the TLS handshake within redis.connect_timeout_ms; if the server does not speak TLS \
             on this port, use redis:// in {url_key}, or the server's tls-port"
        )
    } else {
        return None;
    };
    Some(hint)
}

/// The shared connection to one Redis. redis-rs's `ConnectionManager` reconnects when its
/// connection breaks, but not when a reply times out, and a blackholed connection (a failover
/// behind a proxy, a peer the kernel has not given up on yet) never breaks: every command would
/// time out for ever. So a timed-out reply replaces the manager, for every clone, with one that
/// connects afresh on its next command; commands still running on the old one end on their own.
#[derive(Clone)]
pub struct SharedConn(Arc<Shared>);

struct Shared {
    client: Client,
    config: ConnectionManagerConfig,
    /// (generation, manager): a generation is replaced once, however many of its commands time out.
    current: Mutex<(u64, ConnectionManager)>,
}

impl SharedConn {
    async fn connect(client: &Client, config: ConnectionManagerConfig) -> RedisResult<SharedConn> {
        let manager = client.get_connection_manager_with_config(config.clone()).await?;
        Ok(SharedConn(Arc::new(Shared { client: client.clone(), config, current: Mutex::new((0, manager)) })))
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let current = self.0.current.lock().unwrap_or_else(PoisonError::into_inner);
        (current.0, current.1.clone())
    }

    /// After a reply of the manager of `generation`: a timeout retires that manager.
    fn settle<T>(&self, generation: u64, reply: &RedisResult<T>) {
        let Err(e) = reply else { return };
        if !e.is_timeout() {
            return;
        }
        let mut current = self.0.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            return; // already replaced after a sibling's timeout
        }
        if let Ok(fresh) = ConnectionManager::new_lazy_with_config(self.0.client.clone(), self.0.config.clone()) {
            *current = (generation + 1, fresh);
        }
    }
}

impl ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let (generation, mut manager) = self.current();
        Box::pin(async move {
            let reply = manager.req_packed_command(cmd).await;
            self.settle(generation, &reply);
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let (generation, mut manager) = self.current();
        Box::pin(async move {
            let reply = manager.req_packed_commands(pipeline, offset, count).await;
            self.settle(generation, &reply);
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

/// A connection to one Redis (shared or a reader's own) or to a cluster.
#[derive(Clone)]
pub enum RelayConn {
    Single(SharedConn),
    Reader(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RelayConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RelayConn::Cluster(_))
    }

    /// Runs `(key, command)` pairs and returns their replies in order: one pipeline on a single
    /// Redis, one pipeline per hash slot (concurrently) on a cluster.
    pub async fn query_each<T: FromRedisValue>(&mut self, cmds: Vec<(String, Cmd)>) -> RedisResult<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for (_, cmd) in cmds {
                pipe.add_command(cmd);
            }
            return pipe.query_async(self).await;
        }
        let n = cmds.len();
        let mut groups: HashMap<Slot, (Pipeline, Vec<usize>)> = HashMap::new();
        for (i, (key, cmd)) in cmds.into_iter().enumerate() {
            let (pipe, at) = groups.entry(Slot::for_key(key.as_bytes())).or_insert_with(|| (redis::pipe(), Vec::new()));
            pipe.add_command(cmd);
            at.push(i);
        }
        let replies = futures_util::future::try_join_all(groups.into_values().map(|(pipe, at)| {
            let mut conn = self.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut conn).await.map(|values| (at, values)) }
        }))
        .await?;
        let mut out: Vec<Option<Value>> = vec![None; n];
        for (at, values) in replies {
            for (i, v) in at.into_iter().zip(values) {
                out[i] = Some(v);
            }
        }
        out.into_iter().map(|v| Ok(T::from_redis_value(v.unwrap_or(Value::Nil))?)).collect()
    }
}

impl ConnectionLike for RelayConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RelayConn::Single(c) => c.req_packed_command(cmd),
            RelayConn::Reader(c) => c.req_packed_command(cmd),
            RelayConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RelayConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RelayConn::Reader(c) => c.req_packed_commands(pipeline, offset, count),
            RelayConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RelayConn::Single(c) => c.get_db(),
            RelayConn::Reader(c) => c.get_db(),
            RelayConn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_never_prints_its_urls() {
        let single = Endpoint::new("redis://:hunter2@cache:6379", &[]);
        let cluster = Endpoint::new("", &["rediss://u:hunter2@a:6379".into(), "rediss://u:hunter2@b:6379".into()]);
        for e in [single, cluster] {
            let shown = format!("{e:?}");
            assert!(!shown.contains("hunter2") && !shown.contains("cache"), "{shown}");
        }
    }
}
