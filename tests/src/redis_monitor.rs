//! The commands Redis runs on one test queue's keys, as `MONITOR` prints them and in the
//! order Redis runs them: for tests whose claim is about which commands a client sends
//! (which shard a fetch goes to first, which leases a heartbeat renews), where the queue's
//! state alone cannot tell.
//!
//! `MONITOR` sees every client of the server; lines are kept only when they name the test
//! queue (each test's queue name is unique), so tests running beside it do not show.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use crate::cases::eventually;
use crate::redis_support::TestQueue;

pub struct Commands(Arc<Mutex<Vec<String>>>);

impl Commands {
    /// Starts watching `t`'s queue, and loads `scripts` first: a script not yet loaded runs
    /// once as `EVAL` with its body rather than `EVALSHA` with its hash, which
    /// [`runs`] looks for.
    pub async fn monitor(t: &TestQueue, scripts: &[&redis::Script]) -> Commands {
        let mut conn = t.queue.connection();
        for script in scripts {
            script.load_async(&mut conn).await.unwrap();
        }
        let client = redis::Client::open(t.url.as_str()).unwrap();
        let monitor = client.get_async_monitor().await.unwrap();
        let seen = Commands(Arc::default());
        let (lines, name) = (Arc::clone(&seen.0), t.name.clone());
        // Ends with the test's runtime, which drops the connection.
        tokio::spawn(async move {
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = stream.next().await {
                if line.contains(&name) {
                    lines.lock().unwrap().push(line);
                }
            }
        });
        seen
    }

    /// How many lines so far: a mark for [`Commands::since`].
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lines after mark `mark`.
    pub fn since(&self, mark: usize) -> Vec<String> {
        self.0.lock().unwrap()[mark..].to_vec()
    }

    /// Waits until a line after `mark` passes `check`, and returns its index.
    pub async fn wait_for(&self, what: &str, mark: usize, check: impl Fn(&str) -> bool) -> usize {
        let mut found = None;
        eventually(what, Duration::from_secs(10), || {
            found = self.since(mark).iter().position(|l| check(l));
            std::future::ready(found.is_some())
        })
        .await;
        mark + found.unwrap()
    }
}

/// Whether `line` runs `script` (by its hash).
pub fn runs(line: &str, script: &redis::Script) -> bool {
    line.contains(&format!("\"{}\"", script.get_hash()))
}

/// Whether `line` is the command `name` (in any case: `MONITOR` prints it as the client sent
/// it).
pub fn is_command(line: &str, name: &str) -> bool {
    // `<time> [<db> <client>] "<COMMAND>" "<arg>" ...`
    line.split_once("] \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .is_some_and(|(command, _)| command.eq_ignore_ascii_case(name))
}

/// Whether `line` has `word` as one of its quoted arguments.
pub fn has_arg(line: &str, word: &str) -> bool {
    line.contains(&format!("\"{word}\""))
}
