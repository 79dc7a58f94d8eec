//! One Redis connection type for a single server or a Redis Cluster.
//!
//! Both are multiplexed and reconnect by themselves, so one clone per task is cheap. Every
//! script call names `<prefix>queued` as its key, so a cluster connection routes it to the
//! queue's slot.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager, redis::Client),
    /// The client is kept to open dedicated connections; boxed, as it is large.
    Cluster(ClusterConnection, Box<ClusterClient>),
}

/// Longest a blocking command may wait on a connection of `RedisConn`: below the response
/// timeout, which would otherwise end the wait as an error.
pub const LONGEST_BLOCK: Duration = Duration::from_secs(20);

impl RedisConn {
    /// Connects to `url`, or to the cluster that `cluster_nodes` belong to when any are given.
    pub async fn connect(url: &str, cluster_nodes: &[String]) -> RedisResult<RedisConn> {
        if !cluster_nodes.is_empty() {
            let client = ClusterClient::builder(cluster_nodes.to_vec())
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(Duration::from_secs(30))
                .build()?;
            return Ok(RedisConn::Cluster(
                client.get_async_connection().await?,
                Box::new(client),
            ));
        }
        let client = redis::Client::open(url)?;
        RedisConn::single(client).await
    }

    async fn single(client: redis::Client) -> RedisResult<RedisConn> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2);
        Ok(RedisConn::Single(
            ConnectionManager::new_with_config(client.clone(), config).await?,
            client,
        ))
    }

    /// A new connection to the same server or cluster, for a blocking command (`BLPOP`):
    /// on the shared, multiplexed one it would hold up every other command behind it.
    pub async fn dedicated(&self) -> RedisResult<RedisConn> {
        match self {
            RedisConn::Single(_, client) => RedisConn::single(client.clone()).await,
            RedisConn::Cluster(_, client) => Ok(RedisConn::Cluster(
                client.get_async_connection().await?,
                client.clone(),
            )),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c, _) => c.req_packed_command(cmd),
            RedisConn::Cluster(c, _) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c, _) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c, _) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c, _) => c.get_db(),
            RedisConn::Cluster(c, _) => c.get_db(),
        }
    }
}
