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
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where Redis is: `redis.url`, or the seed nodes of `redis.cluster_urls`.
#[derive(Clone)]
pub enum Endpoint {
    Single(String),
    Cluster(Vec<String>),
}

/// The URLs may carry a password: `Debug` says only how many there are.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Single(_) => f.write_str("Endpoint::Single([redacted])"),
            Endpoint::Cluster(seeds) => write!(f, "Endpoint::Cluster([{} redacted seeds])", seeds.len()),
        }
    }
}

impl Endpoint {
    /// The cluster when seed nodes are given, else the one URL.
    pub fn new(url: &str, cluster_urls: &[String]) -> Endpoint {
        match cluster_urls.is_empty() {
            true => Endpoint::Single(url.to_string()),
            false => Endpoint::Cluster(cluster_urls.to_vec()),
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
    Cluster(Vec<String>),
}

impl Opener {
    pub(crate) fn new(endpoint: &Endpoint, timeouts: Timeouts) -> RedisResult<Opener> {
        let target = match endpoint {
            Endpoint::Single(url) => Target::Single(Box::new(Client::open(url.as_str())?)),
            Endpoint::Cluster(urls) => {
                // Checked here so a bad seed fails at start-up, not on first use.
                ClusterClient::new(urls.iter().map(String::as_str).collect::<Vec<_>>())?;
                Target::Cluster(urls.clone())
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
            Target::Cluster(urls) => self.cluster(urls, self.timeouts.response).await,
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
            Target::Cluster(urls) => self.cluster(urls, timeout).await,
        }
    }

    async fn cluster(&self, urls: &[String], response_timeout: Duration) -> RedisResult<RelayConn> {
        let client = ClusterClient::builder(urls.iter().map(String::as_str).collect::<Vec<_>>())
            .connection_timeout(self.timeouts.connect)
            .response_timeout(response_timeout)
            .retries(3)
            .build()?;
        Ok(RelayConn::Cluster(client.get_async_connection().await?))
    }
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
