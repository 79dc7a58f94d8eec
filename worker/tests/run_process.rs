//! `atr-dist run` processes as a deployment runs them: several on one Redis and PostgreSQL,
//! stopped with SIGTERM (systemd, Kubernetes, `docker compose stop`) or killed, and a second
//! one refused on one SQLite file.

mod support;

use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use rustix::process::{Pid, Signal, kill_process};
use support::{PgDatabase, atr_dist, redis_url, unique};

/// One `atr-dist run` on a queue of its own, no HTTP surface (ports stay free for parallel
/// tests), killed if the test ends early.
struct Worker {
    child: Option<Child>,
}

impl Worker {
    fn start(dir: &std::path::Path, database_url: &str, queue: &str) -> Worker {
        let child = atr_dist()
            .arg("run")
            .current_dir(dir)
            .env("ATR_DIST_DATABASE__URL", database_url)
            .env("ATR_DIST_REDIS__URL", redis_url())
            .env("ATR_DIST_REDIS__QUEUE", queue)
            .env("ATR_DIST_HTTP__ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Worker { child: Some(child) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_child(self.child.as_ref().unwrap());
        kill_process(pid, signal).unwrap();
    }

    /// Waits for the process to exit; its status and stderr.
    fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                use std::io::Read;
                let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
                return (status, stderr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("atr-dist run did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Members of the queue's `workers` key (docs/wire-format.md) whose heartbeat has not run out.
fn live_workers(redis: &mut redis::Connection, queue: &str) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    redis
        .zrangebyscore(format!("atr-dist:{{{queue}}}:workers"), now, "+inf")
        .unwrap()
}

fn wait_for_workers(redis: &mut redis::Connection, queue: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live = live_workers(redis, queue);
        if live.len() == n {
            return live;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} live workers on {queue}, have {live:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn forget_queue(redis: &mut redis::Connection, queue: &str) {
    let keys: Vec<String> = redis.keys(format!("atr-dist:{{{queue}}}:*")).unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).unwrap();
    }
}

/// Two workers on one Redis queue and one PostgreSQL database, as `docker compose up --scale
/// worker=2` runs them. A worker stopped with SIGTERM exits 0 and leaves the live workers at
/// once, not a lease (`lease_secs`, 60 s) later: `queue stats` and `atr_dist_workers` count
/// only the one still running, and `queue migrate` does not wait for a worker that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_takes_a_worker_out_of_the_live_workers_at_once() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("runproc");
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();

    // One at a time: both would run the migrations at once on an empty database.
    let first = Worker::start(dir.path(), &db.url, &queue);
    wait_for_workers(&mut redis, &queue, 1);
    let second = Worker::start(dir.path(), &db.url, &queue);
    let both = wait_for_workers(&mut redis, &queue, 2);

    first.signal(Signal::TERM);
    let (status, stderr) = first.wait(Duration::from_secs(60));
    assert!(status.success(), "a clean stop exits 0: {status}\n{stderr}");
    let left = live_workers(&mut redis, &queue);
    assert_eq!(
        left.len(),
        1,
        "the stopped worker left at once, the other stays: {left:?} of {both:?}"
    );

    second.signal(Signal::TERM);
    let (status, stderr) = second.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{stderr}");
    assert_eq!(live_workers(&mut redis, &queue), Vec::<String>::new());

    forget_queue(&mut redis, &queue);
    db.drop_now().await;
}

/// SQLite is for one worker process: a second `atr-dist run` on the same file is refused at
/// start with a message naming the first one's pid and what to do, and takes no job. The lock
/// goes with the process, however it ends: after a SIGKILL a new worker starts at once.
#[test]
fn a_second_worker_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/results.db", dir.path().display());
    let queue = unique("runproc");
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();

    let first = Worker::start(dir.path(), &url, &queue);
    wait_for_workers(&mut redis, &queue, 1);

    let second = Worker::start(dir.path(), &url, &queue);
    let (status, stderr) = second.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another `atr-dist run` (pid {}) already works on the SQLite database",
            first.pid()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("PostgreSQL"), "says what to do: {stderr}");
    assert_eq!(live_workers(&mut redis, &queue).len(), 1, "it never joined");

    // Killed, not stopped: no code of its own runs, the kernel drops the lock.
    first.signal(Signal::KILL);
    let (status, _) = first.wait(Duration::from_secs(30));
    assert!(!status.success());
    let third = Worker::start(dir.path(), &url, &queue);
    // The killed worker's entry stays until its heartbeat runs out: two live entries.
    wait_for_workers(&mut redis, &queue, 2);
    third.signal(Signal::TERM);
    let (status, stderr) = third.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{stderr}");

    forget_queue(&mut redis, &queue);
}
