//! Sharded-queue benchmark: how one queue's Redis work spreads over the masters of a Redis
//! Cluster when it is sharded (docs/wire-format.md, "Shards"), and whether throughput holds.
//!
//! For each shard count: on a fresh queue of that many shards, bulk-enqueue the jobs (no-op
//! stage envelopes, one distribution each), then process them all with the real worker pool
//! and a handler that returns at once. Reported per run: enqueue and processing jobs/s, and
//! per master the Redis CPU per processed job (`INFO cpu` `used_cpu_sys + used_cpu_user`
//! deltas over the processing phase) and its share of the cluster's. Then, with the pool idle,
//! the wake-up latency: jobs enqueued one at a time, from the enqueue call to the job's
//! start. Runs of the shard counts alternate, `--repeat` times; the median run by
//! processing jobs/s is reported.
//!
//! ```text
//! cargo run --release -p atr-dist-tests --bin shard-bench -- --shards 1,3,6
//! ```
//!
//! Without `--nodes` it starts a three-master cluster of its own on loopback ports and stops
//! it at the end; with it, the nodes must be on 127.0.0.1 and be every master. Progress goes
//! to stderr; the report to stdout. Every queue's keys are deleted after its run.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use atr_dist::config::Config;
use atr_dist::queue::pool::{
    self, Completion, JobError, JobHandler, PoolConfig, PoolHandle, RunningJob,
};
use atr_dist::queue::{Queue, ShardCount};
use atr_dist_tests::cluster_support::start_cluster;
use atr_dist_tests::redis_support::key_slot;
use atr_dist_tests::{jobs, unique_name};
use clap::Parser;
use tokio::sync::oneshot;

#[derive(Parser, Debug)]
#[command(
    name = "shard-bench",
    about = "Redis CPU per master for a sharded atr-dist queue"
)]
struct Args {
    /// Shard counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,3,6")]
    shards: Vec<u32>,
    /// Jobs per run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs the worker pool runs at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Runs per shard count; the median by processing jobs/s is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Idle-latency samples per run (0 skips them).
    #[arg(long, default_value_t = 20)]
    idle_samples: usize,
    /// Masters of an existing cluster (`redis://127.0.0.1:<port>`); by default the bench
    /// starts its own three.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
}

/// Does nothing, and says when each job started.
struct NoOp(tokio::sync::mpsc::UnboundedSender<Instant>);

impl JobHandler for NoOp {
    async fn handle(&self, _job: RunningJob) -> Result<Completion, JobError> {
        let _ = self.0.send(Instant::now());
        Ok(Completion::Done)
    }
}

#[derive(Debug, Clone)]
struct Run {
    shards: u32,
    enqueue_per_sec: f64,
    process_per_sec: f64,
    /// Redis CPU µs per processed job, per master.
    cpu_us_per_job: Vec<f64>,
    /// Idle pool: from enqueue to start, per sample, sorted.
    idle_latency: Vec<Duration>,
    /// How many of the queue's shards each master serves.
    placement: Vec<usize>,
}

/// The master (index in `nodes`) serving each slot range: `CLUSTER SLOTS` of the first node.
async fn slot_owners(nodes: &[String]) -> Result<Vec<(u16, u16, usize)>> {
    let client = redis::Client::open(nodes[0].as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let ranges: Vec<(u16, u16, (String, u16))> = {
        let raw: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for range in raw {
            let redis::Value::Array(parts) = range else {
                bail!("CLUSTER SLOTS: not an array");
            };
            let start: u16 = redis::from_redis_value_ref(&parts[0])?;
            let end: u16 = redis::from_redis_value_ref(&parts[1])?;
            let redis::Value::Array(master) = &parts[2] else {
                bail!("CLUSTER SLOTS: no master");
            };
            let ip: String = redis::from_redis_value_ref(&master[0])?;
            let port: u16 = redis::from_redis_value_ref(&master[1])?;
            out.push((start, end, (ip, port)));
        }
        out
    };
    ranges
        .into_iter()
        .map(|(start, end, (_, port))| {
            let index = nodes
                .iter()
                .position(|n| n.ends_with(&format!(":{port}")))
                .with_context(|| format!("master on port {port} is not among --nodes"))?;
            Ok((start, end, index))
        })
        .collect()
}

/// `used_cpu_sys + used_cpu_user` of a node, in seconds.
async fn redis_cpu(url: &str) -> Result<f64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    let field = |name: &str| -> Result<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("INFO cpu of {url} has no {name}"))
    };
    Ok(field("used_cpu_sys:")? + field("used_cpu_user:")?)
}

async fn cpus(nodes: &[String]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        out.push(redis_cpu(node).await?);
    }
    Ok(out)
}

/// Deletes every key of `queue` (all shards) from every node.
async fn delete_queue(nodes: &[String], queue: &str) -> Result<()> {
    for node in nodes {
        let client = redis::Client::open(node.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        // `[}:]`: shard 0's `{queue}` and the others' `{queue:i}`, not another queue's.
        let pattern = format!("atr-dist:{{{queue}[}}:]*");
        let keys = atr_dist_tests::scan_keys(&mut conn, &pattern).await?;
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await?;
        }
    }
    Ok(())
}

async fn one_run(args: &Args, nodes: &[String], shards: u32) -> Result<Run> {
    let name = unique_name("shard-bench");
    let result = measure(args, nodes, shards, &name).await;
    delete_queue(nodes, &name).await?;
    result
}

async fn measure(args: &Args, nodes: &[String], shards: u32, name: &str) -> Result<Run> {
    let queue = Queue::connect(&nodes[0], nodes, name).await?;
    queue
        .resize(ShardCount::new(shards).map_err(anyhow::Error::msg)?)
        .await?;
    let owners = slot_owners(nodes).await?;
    let mut placement = vec![0; nodes.len()];
    for shard in 0..shards {
        let slot = key_slot(&format!("{}queued", queue.shard(shard).prefix()));
        if let Some((_, _, master)) = owners.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)) {
            placement[*master] += 1;
        }
    }
    let envelopes: Vec<_> = (0..args.jobs).map(jobs::stage).collect();
    let started = Instant::now();
    for chunk in envelopes.chunks(1000) {
        queue.enqueue_bulk(chunk, None, 3).await?;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();

    let shipped = Config::default();
    let config = PoolConfig {
        concurrency: args.concurrency,
        ..PoolConfig::from_config(&shipped)
    };
    let handle: Arc<Mutex<Option<PoolHandle>>> = Arc::default();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let before = cpus(nodes).await?;
    let started = Instant::now();
    let pool_queue = queue.clone();
    let keep = Arc::clone(&handle);
    let running = tokio::spawn(async move {
        pool::run(
            pool_queue,
            Arc::new(NoOp(started_tx)),
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |h| {
                if let Ok(mut slot) = keep.lock() {
                    *slot = Some(h);
                }
            },
        )
        .await
    });
    let total = args.jobs as u64;
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done = handle
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(PoolHandle::done))
            .unwrap_or(0);
        if done >= total {
            break;
        }
        if done > last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("no progress for 60 s at {done} of {total} jobs");
        }
    }
    let process_secs = started.elapsed().as_secs_f64();
    let after = cpus(nodes).await?;
    // Idle latency: the pool has found every shard empty and waits for a wake-up.
    let mut idle_latency = Vec::with_capacity(args.idle_samples);
    for k in 0..args.idle_samples {
        tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(0..200))).await;
        while started_rx.try_recv().is_ok() {}
        let sent = Instant::now();
        queue.enqueue(&jobs::stage(args.jobs + k), None, 3).await?;
        let start = tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
            .await
            .context("an idle pool did not start a job within 10 s")?
            .context("pool stopped")?;
        idle_latency.push(start.saturating_duration_since(sent));
    }
    idle_latency.sort();
    let _ = stop_tx.send(());
    running.await??;
    let cpu_us_per_job = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) * 1e6 / total as f64)
        .collect();
    Ok(Run {
        shards,
        enqueue_per_sec: total as f64 / enqueue_secs,
        process_per_sec: total as f64 / process_secs,
        cpu_us_per_job,
        idle_latency,
        placement,
    })
}

fn report(runs: &[Run], nodes: &[String], args: &Args) {
    println!(
        "Sharded queue on a {}-master Redis Cluster: {} no-op jobs per run, concurrency {}, median of {} by processing jobs/s\n",
        nodes.len(),
        args.jobs,
        args.concurrency,
        args.repeat
    );
    let masters: Vec<String> = (1..=nodes.len()).map(|i| format!("master {i}")).collect();
    println!(
        "| shards | shards per master | enqueue jobs/s | processing jobs/s | Redis CPU µs/job: {} | total | busiest master's share | idle wake-up, median / max |",
        masters.join(" | ")
    );
    println!(
        "|---|---|---|---|{}---|---|---|",
        "---|".repeat(nodes.len())
    );
    for &n in &args.shards {
        let mut of_n: Vec<&Run> = runs.iter().filter(|r| r.shards == n).collect();
        if of_n.is_empty() {
            continue;
        }
        of_n.sort_by(|a, b| a.process_per_sec.total_cmp(&b.process_per_sec));
        let run = of_n[of_n.len() / 2];
        let total: f64 = run.cpu_us_per_job.iter().sum();
        let busiest = run.cpu_us_per_job.iter().copied().fold(0.0, f64::max);
        let per_master: Vec<String> = run
            .cpu_us_per_job
            .iter()
            .map(|c| format!("{c:.1}"))
            .collect();
        let others: Vec<String> = of_n
            .iter()
            .map(|r| format!("{:.0}", r.process_per_sec))
            .collect();
        let idle = match (
            run.idle_latency.get(run.idle_latency.len() / 2),
            run.idle_latency.last(),
        ) {
            (Some(median), Some(max)) => format!(
                "{:.1} / {:.1} ms",
                median.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            ),
            _ => "-".to_owned(),
        };
        let placement: Vec<String> = run.placement.iter().map(usize::to_string).collect();
        println!(
            "| {n} | {} | {:.0} | {:.0} (runs: {}) | {} | {total:.1} | {:.0} % | {idle} |",
            placement.join("/"),
            run.enqueue_per_sec,
            run.process_per_sec,
            others.join(", "),
            per_master.join(" | "),
            100.0 * busiest / total.max(f64::EPSILON)
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args) -> Result<()> {
    for n in &args.shards {
        ShardCount::new(*n).map_err(anyhow::Error::msg)?;
    }
    let own = if args.nodes.is_empty() {
        eprintln!("starting a three-master Redis Cluster on loopback ports");
        Some(start_cluster())
    } else {
        None
    };
    let nodes = match &own {
        Some(cluster) => cluster.urls(),
        None => args.nodes.clone(),
    };
    for node in &nodes {
        let url = url::Url::parse(node).with_context(|| format!("{node} is not a URL"))?;
        if url.host_str() != Some("127.0.0.1") {
            bail!("{node}: only a Redis on 127.0.0.1 is used");
        }
    }
    // An untimed warm-up: loads the scripts on every master, warms the connections.
    one_run(
        &Args {
            jobs: 2000,
            idle_samples: 0,
            ..clone_args(&args)
        },
        &nodes,
        *args.shards.iter().max().unwrap_or(&1),
    )
    .await?;
    let mut runs = Vec::new();
    for round in 0..args.repeat {
        for &n in &args.shards {
            eprintln!("round {} of {}: {n} shard(s)", round + 1, args.repeat);
            let run = one_run(&args, &nodes, n).await?;
            eprintln!(
                "  {:.0} jobs/s, Redis CPU µs/job per master {:?}, shards per master {:?}",
                run.process_per_sec, run.cpu_us_per_job, run.placement
            );
            runs.push(run);
        }
    }
    report(&runs, &nodes, &args);
    drop(own);
    Ok(())
}

fn clone_args(args: &Args) -> Args {
    Args {
        shards: args.shards.clone(),
        jobs: args.jobs,
        concurrency: args.concurrency,
        repeat: args.repeat,
        idle_samples: args.idle_samples,
        nodes: args.nodes.clone(),
    }
}
