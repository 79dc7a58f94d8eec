//! One logical queue sharded over several hash tags, so that it can use several Redis
//! Cluster masters (docs/wire-format.md, "Shards").
//!
//! Shard 0 of queue `q` is `atr-dist:{q}:`, the keys of an unsharded queue; shard `i ≥ 1` is
//! `atr-dist:{q:i}:` (queue names hold no `:`, so no queue's keys are another's shard). The
//! shard count lives in shard 0, `atr-dist:{q}:shards` (absent = 1). A producer puts each
//! job on the shard of its distribution, so one distribution stays on one shard; workers
//! fetch from every shard, and the operator's views add the shards up.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{FORMAT, FORMAT_SHARDED, Queue, QueueError, key_prefix, protocol};

/// The most shards a queue may have: each worker keeps one blocking connection per shard
/// for its wake-ups, and a Redis Cluster has seldom more masters than this.
pub const MAX_SHARDS: u32 = 64;

/// How long a producer trusts the shard count it read. A lowered count is applied only
/// after twice this (see [`Queue::resize`]), so no producer still uses the old one.
pub const SHARD_COUNT_CACHE: Duration = Duration::from_secs(1);

/// A queue's number of shards, from 1 to [`MAX_SHARDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ShardCount(u32);

impl ShardCount {
    pub const ONE: ShardCount = ShardCount(1);

    pub fn new(n: u32) -> Result<ShardCount, String> {
        if !(1..=MAX_SHARDS).contains(&n) {
            return Err(format!(
                "{n} is not a shard count from 1 to {MAX_SHARDS} (docs/wire-format.md, \"Shards\")"
            ));
        }
        Ok(ShardCount(n))
    }

    /// A count as the CLI and the API are given it, or as stored in `shards`.
    pub fn parse(text: &str) -> Result<ShardCount, String> {
        match text.trim().parse::<u32>() {
            Ok(n) => ShardCount::new(n),
            Err(_) => Err(format!(
                "{text:?} is not a shard count from 1 to {MAX_SHARDS} (docs/wire-format.md, \"Shards\")"
            )),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// The shard count a handle read last, and when.
#[derive(Debug, Default)]
pub struct ShardCache(Mutex<Option<(ShardCount, Instant)>>);

/// What [`Queue::resize`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardResize {
    pub from: ShardCount,
    pub to: ShardCount,
}

/// The key prefix of shard `shard` of `queue`: `atr-dist:{<queue>}:` for shard 0 (the keys
/// of an unsharded queue), `atr-dist:{<queue>:<shard>}:` for the others.
pub fn shard_prefix(queue: &str, shard: u32) -> String {
    match shard {
        0 => key_prefix(queue),
        i => format!("atr-dist:{{{queue}:{i}}}:"),
    }
}

/// The shard, of `count`, that the distribution `key` ([`shard_key`]) belongs to: the first
/// 8 bytes of the SHA-256 of the key's UTF-8 bytes, read as a big-endian unsigned 64-bit
/// number, modulo `count`. `clients/python` computes the same (`queues.shard_of`).
pub fn shard_of(key: &str, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(count)) as u32
}

/// The distribution key of an envelope (JSON, as stored), which chooses its shard:
/// `<project_key>-<version_key>|<platform>|<owner_namespace>|<package>|<version>`, the
/// fields as the envelope spells them (`owner_namespace` absent = empty). `None` when the
/// envelope does not hold them as strings (it is dead-lettered when leased, and goes to
/// shard 0).
pub fn shard_key(envelope: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        payload: Payload,
    }
    #[derive(serde::Deserialize)]
    struct Payload {
        release: Release,
        distribution: Distribution,
    }
    #[derive(serde::Deserialize)]
    struct Release {
        project_key: String,
        version_key: String,
    }
    #[derive(serde::Deserialize)]
    struct Distribution {
        platform: String,
        #[serde(default)]
        owner_namespace: Option<String>,
        package: String,
        version: String,
    }
    let doc: Doc = serde_json::from_str(envelope).ok()?;
    let (r, d) = (doc.payload.release, doc.payload.distribution);
    Some(format!(
        "{}-{}|{}|{}|{}|{}",
        r.project_key,
        r.version_key,
        d.platform,
        d.owner_namespace.unwrap_or_default(),
        d.package,
        d.version
    ))
}

impl Queue {
    /// The `shards` key, in shard 0.
    fn shards_key(&self) -> String {
        format!("{}shards", key_prefix(&self.name))
    }

    /// The queue's shard count, read from Redis at most once per [`SHARD_COUNT_CACHE`] by
    /// this handle and its clones.
    pub async fn shard_count(&self) -> Result<ShardCount, QueueError> {
        if let Ok(cache) = self.shards.0.lock()
            && let Some((count, at)) = *cache
            && at.elapsed() < SHARD_COUNT_CACHE
        {
            return Ok(count);
        }
        self.read_shard_count().await
    }

    /// The queue's shard count as Redis has it now (and kept for [`Queue::shard_count`]).
    pub async fn read_shard_count(&self) -> Result<ShardCount, QueueError> {
        let stored: Option<String> = self.conn.clone().get(self.shards_key()).await?;
        let count = match stored {
            None => ShardCount::ONE,
            Some(text) => ShardCount::parse(&text).map_err(|e| {
                protocol(
                    "GET shards",
                    format!("{} holds {text:?}: {e}", self.shards_key()),
                )
            })?,
        };
        if let Ok(mut cache) = self.shards.0.lock() {
            *cache = Some((count, Instant::now()));
        }
        Ok(count)
    }

    /// Handles on every shard of the queue, shard 0 first.
    pub async fn shards(&self) -> Result<Vec<Queue>, QueueError> {
        let count = self.shard_count().await?.get();
        Ok((0..count).map(|i| self.shard(i)).collect())
    }

    /// Jobs a shard holds, in any state.
    async fn jobs_in_shard(&self, shard: u32) -> Result<u64, QueueError> {
        let jobs: u64 = self
            .conn
            .clone()
            .hlen(format!("{}jobs", shard_prefix(&self.name, shard)))
            .await?;
        Ok(jobs)
    }

    /// The shards in `range` that hold jobs, with how many.
    async fn occupied(&self, range: std::ops::Range<u32>) -> Result<Vec<(u32, u64)>, QueueError> {
        let mut out = Vec::new();
        for shard in range {
            let jobs = self.jobs_in_shard(shard).await?;
            if jobs > 0 {
                out.push((shard, jobs));
            }
        }
        Ok(out)
    }

    /// Sets the queue's shard count (docs/wire-format.md, "Shards"). Raising it marks every
    /// shard as wire format 8 first, so that clients that do not know shards refuse the
    /// queue rather than miss the jobs of the new shards. Lowering it is refused while a
    /// shard to be dropped holds jobs (in any state: purge finished ones first); the new
    /// count is checked again after producers' caches ran out, and put back if a job
    /// reached a dropped shard meanwhile.
    pub async fn resize(&self, to: ShardCount) -> Result<ShardResize, QueueError> {
        let from = self.read_shard_count().await?;
        let resize = ShardResize { from, to };
        if to == from {
            return Ok(resize);
        }
        if to > from {
            // Shard 0 must speak this format: an older queue is migrated first.
            self.shard(0).check_format().await?;
            let mut conn = self.conn.clone();
            for shard in 0..to.get() {
                let _: () = conn
                    .set(
                        format!("{}format", shard_prefix(&self.name, shard)),
                        FORMAT_SHARDED,
                    )
                    .await?;
            }
            let _: () = conn.set(self.shards_key(), to.get()).await?;
            self.read_shard_count().await?;
            return Ok(resize);
        }
        let refuse = |occupied: &[(u32, u64)], when: &str| {
            let list: Vec<String> = occupied
                .iter()
                .map(|(shard, jobs)| format!("shard {shard}: {jobs} job(s)"))
                .collect();
            QueueError::NotNow(format!(
                "cannot lower queue {} from {} to {} shard(s){when}: the shards to be dropped \
                 hold jobs ({}); let them finish and purge them (`atr-dist jobs purge`), \
                 then try again",
                self.name,
                from.get(),
                to.get(),
                list.join(", ")
            ))
        };
        let dropped = to.get()..from.get();
        let occupied = self.occupied(dropped.clone()).await?;
        if !occupied.is_empty() {
            return Err(refuse(&occupied, ""));
        }
        let mut conn = self.conn.clone();
        let stored = |n: ShardCount| {
            if n == ShardCount::ONE {
                None
            } else {
                Some(n.get())
            }
        };
        match stored(to) {
            Some(n) => {
                let _: () = conn.set(self.shards_key(), n).await?;
            }
            None => {
                let _: () = conn.del(self.shards_key()).await?;
            }
        }
        // A producer that read the old count just before may still enqueue onto a dropped
        // shard until its cache runs out: look again after that, and undo if one did.
        tokio::time::sleep(2 * SHARD_COUNT_CACHE).await;
        let occupied = self.occupied(dropped).await?;
        if !occupied.is_empty() {
            let _: () = conn.set(self.shards_key(), from.get()).await?;
            self.read_shard_count().await?;
            return Err(refuse(
                &occupied,
                " (jobs arrived on them while lowering; the count is back where it was)",
            ));
        }
        self.read_shard_count().await?;
        Ok(resize)
    }
}

/// The format a queue's shard must be in for this code: 7 (never sharded) or 8.
pub(super) fn speaks(format: &str) -> bool {
    format == FORMAT || format == FORMAT_SHARDED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_prefixes_keep_shard_0_as_the_unsharded_queue() {
        assert_eq!(shard_prefix("default", 0), "atr-dist:{default}:");
        assert_eq!(shard_prefix("default", 1), "atr-dist:{default:1}:");
        assert_eq!(shard_prefix("a.b", 12), "atr-dist:{a.b:12}:");
    }

    #[test]
    fn shard_choice_is_the_digest_modulo_the_count() {
        // sha256("") starts e3b0c44298fc1c14.
        assert_eq!(shard_of("", 1), 0);
        assert_eq!(shard_of("", 7), (0xe3b0_c442_98fc_1c14u64 % 7) as u32);
        assert_eq!(shard_of("anything", 0), 0);
        for n in 1..=MAX_SHARDS {
            assert!(shard_of("example-1.0.0|NPM||example-lib|1.0.0", n) < n);
        }
    }

    #[test]
    fn shard_keys_are_the_distribution_as_spelled() {
        let envelope = r#"{"payload":{"release":{"project_key":"p","version_key":"1"},
            "distribution":{"platform":"NPM","package":"x","version":"1.0"}}}"#;
        assert_eq!(shard_key(envelope).as_deref(), Some("p-1|NPM||x|1.0"));
        let scoped = r#"{"payload":{"release":{"project_key":"p","version_key":"1"},
            "distribution":{"platform":"NPM_SCOPED","owner_namespace":"s","package":"x","version":"1.0"}}}"#;
        assert_eq!(shard_key(scoped).as_deref(), Some("p-1|NPM_SCOPED|s|x|1.0"));
        assert_eq!(shard_key("not json"), None);
        assert_eq!(shard_key(r#"{"payload":{}}"#), None);
    }

    #[test]
    fn shard_counts_are_from_1_to_the_maximum() {
        assert_eq!(ShardCount::parse("1").map(ShardCount::get), Ok(1));
        assert_eq!(ShardCount::parse(" 64 ").map(ShardCount::get), Ok(64));
        for bad in ["0", "65", "-1", "three", ""] {
            assert!(ShardCount::parse(bad).is_err(), "{bad:?}");
        }
    }
}
