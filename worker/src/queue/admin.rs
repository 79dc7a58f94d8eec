//! The operator's view and levers: stats, listing and showing jobs, retry, cancel, purge,
//! pause and resume. The CLI, the HTTP API and the dashboard all call these.

use std::collections::BTreeMap;
use std::time::Duration;

use atr_dist_shared::JobState;
use chrono::{DateTime, TimeZone, Utc};
use redis::AsyncCommands;
use serde::Serialize;

use super::scripts::SCRIPTS;
use super::{JobRecord, Queue, QueueError};

/// The per-queue hashes a job summary reads, in the order `summary_from` takes them: the
/// job record first. The envelope follows them in a summary's row, read from the batch its
/// record names; kind, release, platform and idempotency key come from it (see `Indexed`).
const SUMMARY_HASHES: [&str; 4] = ["jobs", "error_class", "last_error", "cancel_requested"];

/// Where the envelope is in a summary's row: after the `SUMMARY_HASHES`.
const ENVELOPE: usize = SUMMARY_HASHES.len();

/// The sets whose score is a summary's `run_at` or `finished_at`, in `summary_from`'s order.
/// (A done job's finishing time is in its record.)
const SCORED_SETS: [&str; 4] = ["scheduled", "retrying", "dead", "cancelled"];

/// An age in ms that no job reaches (2^53: exact in Lua's numbers, about 285,000 years).
const NO_AGE_LIMIT_MS: u64 = 1 << 53;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobSummary {
    pub id: String,
    pub state: JobState,
    pub kind: String,
    pub release: String,
    pub platform: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub run_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    /// The class and message of the failure the job is in: its last failure, or for a
    /// cancelled job the cancel. None for a done job, whose earlier failures are history.
    pub error_class: Option<String>,
    pub last_error: Option<String>,
    pub cancel_requested: bool,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobEvent {
    pub at: Option<DateTime<Utc>>,
    pub event: String,
    pub attempt: Option<u32>,
    pub error_class: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub summary: JobSummary,
    /// The envelope as stored (JSON text; may be malformed, which is why it is dead).
    pub envelope: String,
    /// Lease expiry while running.
    pub lease_until: Option<DateTime<Utc>>,
    pub events: Vec<JobEvent>,
}

/// What an operator's retry or cancel did to one job: done now, nothing to do, or not
/// allowed in the state the job is in (docs/wire-format.md, "Admin replies").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminReply {
    /// Done now; the job is in this state. A cancel of a running job leaves it `Running`
    /// with its cancel requested: its worker stops it at its next heartbeat.
    Changed(JobState),
    /// Nothing to do, and nothing was written: the job is already where the action would take
    /// it (a retry of a job that has yet to run or runs; a cancel of a cancelled job, or of a
    /// running one whose cancel was requested already).
    Unchanged(JobState),
    /// Not allowed in this state: a retry of a done job, a cancel of a done or dead one.
    Refused(JobState),
    /// The queue holds no job of that id.
    NotFound,
}

impl AdminReply {
    /// A reply as `retry.lua` and `cancel.lua` write it: `changed <state>`,
    /// `unchanged <state>`, `refused <state>` or `not_found`.
    fn parse(text: &str) -> Option<AdminReply> {
        if text == "not_found" {
            return Some(AdminReply::NotFound);
        }
        let (what, state) = text.split_once(' ')?;
        let state: JobState = state.parse().ok()?;
        match what {
            "changed" => Some(AdminReply::Changed(state)),
            "unchanged" => Some(AdminReply::Unchanged(state)),
            "refused" => Some(AdminReply::Refused(state)),
            _ => None,
        }
    }

    pub fn changed(self) -> bool {
        matches!(self, AdminReply::Changed(_))
    }

    /// What the reply means, in words, for the CLI's lines and the API's `message`.
    pub fn describe(self, action: AdminAction) -> String {
        match (action, self) {
            (_, AdminReply::NotFound) => "not found in this queue".to_owned(),
            (AdminAction::Retry, AdminReply::Changed(_)) => "queued again".to_owned(),
            (AdminAction::Retry, AdminReply::Unchanged(state)) => {
                format!("nothing to do: it is {state} already, and will run")
            }
            (AdminAction::Retry, AdminReply::Refused(state)) => format!(
                "not allowed: it is {state}; only dead or cancelled jobs can be retried (enqueue it again to repeat a finished job)"
            ),
            (AdminAction::Cancel, AdminReply::Changed(JobState::Running)) => {
                "cancel requested: its worker stops it at its next heartbeat".to_owned()
            }
            (AdminAction::Cancel, AdminReply::Changed(_)) => "cancelled".to_owned(),
            (AdminAction::Cancel, AdminReply::Unchanged(JobState::Running)) => {
                "nothing to do: its cancel was requested already".to_owned()
            }
            (AdminAction::Cancel, AdminReply::Unchanged(state)) => {
                format!("nothing to do: it is {state} already")
            }
            (AdminAction::Cancel, AdminReply::Refused(state)) => format!(
                "not allowed: it is {state}, finished; only scheduled, queued, retrying or running jobs can be cancelled"
            ),
        }
    }
}

/// The reply as the scripts write it, which `parse` reads.
impl std::fmt::Display for AdminReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminReply::Changed(state) => write!(f, "changed {state}"),
            AdminReply::Unchanged(state) => write!(f, "unchanged {state}"),
            AdminReply::Refused(state) => write!(f, "refused {state}"),
            AdminReply::NotFound => f.write_str("not_found"),
        }
    }
}

/// The operator's actions on one job, for the words of their replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    Retry,
    Cancel,
}

/// Jobs per page of `Queue::list`: from 1 to `PageLimit::MAX`. The CLI's `--limit` and the
/// API's `limit` are both read by `PageLimit::parse`, so both take and refuse the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(usize);

impl PageLimit {
    pub const MAX: usize = 1000;
    /// When no limit is given.
    pub const DEFAULT: PageLimit = PageLimit(50);

    pub fn new(n: usize) -> Result<PageLimit, String> {
        if !(1..=PageLimit::MAX).contains(&n) {
            return Err(format!(
                "{n} is not a number from 1 to {} (jobs per page)",
                PageLimit::MAX
            ));
        }
        Ok(PageLimit(n))
    }

    /// A limit as the CLI and the API are given it.
    pub fn parse(text: &str) -> Result<PageLimit, String> {
        match text.trim().parse::<usize>() {
            Ok(n) => PageLimit::new(n),
            Err(_) => Err(format!(
                "{text:?} is not a number from 1 to {} (jobs per page)",
                PageLimit::MAX
            )),
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

/// Characters of a job id that `short_id` shows.
pub const SHORT_ID_LEN: usize = 8;
/// The fewest characters of a job id that `Queue::resolve_id` looks a job up by.
pub const MIN_ID_PART: usize = 4;
/// The most candidates an ambiguous id part lists.
const MAX_CANDIDATES: usize = 5;

/// The short form of a job id that people read and type: its last `SHORT_ID_LEN` characters.
/// A UUIDv7 starts with its creation time, so jobs enqueued together share their first
/// digits; its tail is random, and tells them apart (two jobs among 50 share one with odds of
/// about one in 3.5 million). `Queue::resolve_id` takes it back.
pub fn short_id(id: &str) -> &str {
    let start = id
        .char_indices()
        .rev()
        .nth(SHORT_ID_LEN - 1)
        .map_or(0, |(i, _)| i);
    &id[start..]
}

/// What a job id an operator gave names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdLookup {
    /// One job: its full id.
    Found(String),
    /// No job's id is, starts or ends with it.
    NotFound,
    /// More than one job's id starts or ends with it: the first `MAX_CANDIDATES` (5) found,
    /// and whether there are more.
    Ambiguous { ids: Vec<String>, more: bool },
}

/// Why `given` names no one job: the ids it could be (`IdLookup::Ambiguous`), with "…" when
/// more than these match.
pub fn ambiguous_id(given: &str, ids: &[String], more: bool) -> String {
    format!(
        "job id {given:?} is the start or end of more than one job's id ({}{}); give more of it",
        ids.join(", "),
        if more { ", …" } else { "" }
    )
}

/// Which jobs to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub platform: Option<String>,
    pub release: Option<String>,
    pub kind: Option<String>,
    /// Enqueued at least this long ago.
    pub older_than: Option<Duration>,
    /// Enqueued at most this long ago.
    pub newer_than: Option<Duration>,
}

impl JobFilter {
    fn matches(&self, job: &JobSummary, now: DateTime<Utc>) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if !eq(&self.platform, &job.platform)
            || !eq(&self.release, &job.release)
            || !eq(&self.kind, &job.kind)
        {
            return false;
        }
        let age = job
            .enqueued_at
            .map(|t| (now - t).to_std().unwrap_or_default());
        if let Some(min) = self.older_than
            && age.is_none_or(|a| a < min)
        {
            return false;
        }
        if let Some(max) = self.newer_than
            && age.is_none_or(|a| a > max)
        {
            return false;
        }
        true
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    /// Pass back to continue; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MinuteStats {
    pub minute: DateTime<Utc>,
    pub enqueued: u64,
    pub done: u64,
    pub failed: u64,
    pub dead: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// The shards the queue is spread over (docs/wire-format.md, "Shards"); the other
    /// figures add them up.
    pub shards: u32,
    /// True when any shard is paused (`queue pause` pauses them all).
    pub paused: bool,
    pub counts: BTreeMap<JobState, u64>,
    /// Age of the job at the head of `queued` (time since it became ready).
    pub oldest_queued_age_secs: Option<f64>,
    /// Counters since the queue was created.
    pub totals: BTreeMap<String, u64>,
    /// The last 60 minutes, oldest first.
    pub last_hour: Vec<MinuteStats>,
    /// Workers with a live heartbeat.
    pub workers: u64,
    /// The retention the workers apply to each finished state, as the last worker to start
    /// announced it (docs/wire-format.md, "Retention"); empty before any did. How many jobs
    /// it deleted is the `purged` total.
    pub retention: BTreeMap<JobState, Retention>,
}

/// How long the jobs of one finished state are kept: those older than `max_age_secs` or
/// beyond the newest `max_jobs` go, whichever comes first. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Retention {
    pub max_age_secs: Option<u64>,
    pub max_jobs: Option<u64>,
}

impl Retention {
    /// As kept in the `retention` hash: `<max_age_ms> <max_jobs>`, 0 for no limit.
    fn to_field(self) -> String {
        format!(
            "{} {}",
            self.max_age_secs.map_or(0, |s| s.saturating_mul(1000)),
            self.max_jobs.unwrap_or(0)
        )
    }

    fn from_field(text: &str) -> Option<Retention> {
        let (age, jobs) = text.split_once(' ')?;
        let age: u64 = age.parse().ok()?;
        let jobs: u64 = jobs.parse().ok()?;
        Some(Retention {
            max_age_secs: (age > 0).then_some(age / 1000),
            max_jobs: (jobs > 0).then_some(jobs),
        })
    }

    /// The rule each of `shards` shards applies: the same age, and an even share of the
    /// newest jobs kept (rounded up), so that the queue keeps about `max_jobs` in all.
    pub fn per_shard(self, shards: u32) -> Retention {
        Retention {
            max_age_secs: self.max_age_secs,
            max_jobs: self.max_jobs.map(|n| n.div_ceil(u64::from(shards.max(1)))),
        }
    }

    /// In words, for `queue stats`.
    pub fn describe(&self) -> String {
        let age = self.max_age_secs.map(|s| {
            let days = s / 86_400;
            if days > 0 && s % 86_400 == 0 {
                format!("{days} day(s)")
            } else {
                format!("{s} s")
            }
        });
        match (age, self.max_jobs) {
            (Some(age), Some(n)) => format!("{age} or the newest {n}, whichever is fewer"),
            (Some(age), None) => age,
            (None, Some(n)) => format!("the newest {n}"),
            (None, None) => "kept until purged".to_owned(),
        }
    }
}

fn ms_to_time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// The Redis structure a state lives in, and the order it lists in. `queued` and `done` are
/// lists, in the order jobs entered them; the others are sorted sets.
pub(super) fn state_order(state: JobState) -> (&'static str, bool) {
    match state {
        JobState::Queued => ("queued", false),
        JobState::Scheduled => ("scheduled", false),
        JobState::Retrying => ("retrying", false),
        JobState::Running => ("running", false),
        // Terminal states: newest first, which is what an operator looks for.
        JobState::Done => ("done", true),
        JobState::Dead => ("dead", true),
        JobState::Cancelled => ("cancelled", true),
    }
}

impl Queue {
    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    async fn summaries(&self, ids: &[String]) -> Result<Vec<JobSummary>, QueueError> {
        Ok(self
            .summaries_and_envelopes(ids)
            .await?
            .into_iter()
            .map(|(summary, _)| summary)
            .collect())
    }

    /// The summaries of the jobs of `ids` that exist, each with its envelope as stored.
    async fn summaries_and_envelopes(
        &self,
        ids: &[String],
    ) -> Result<Vec<(JobSummary, Option<String>)>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for hash in SUMMARY_HASHES {
            pipe.cmd("HMGET").arg(self.key(hash)).arg(ids);
        }
        for set in SCORED_SETS {
            pipe.cmd("ZMSCORE").arg(self.key(set)).arg(ids);
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.conn.clone()).await?;
        if replies.len() != SUMMARY_HASHES.len() + SCORED_SETS.len() {
            return Err(super::protocol("summary", "short pipeline reply"));
        }
        let mut replies = replies.into_iter();
        // Read as bytes: a hand-written envelope that is not UTF-8 is dead-lettered, and must
        // still show (its bytes replaced where they are not text) rather than fail the listing.
        let fields: Vec<Vec<Option<String>>> = replies
            .by_ref()
            .take(SUMMARY_HASHES.len())
            .map(|column| {
                redis::from_redis_value::<Vec<Option<Vec<u8>>>>(column).map(|values| {
                    values
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect()
                })
            })
            .collect::<Result<_, _>>()?;
        let scores: Vec<Vec<Option<f64>>> = replies
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()?;
        let envelopes = self.envelopes_of(ids, &fields[0]).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (k, id) in ids.iter().enumerate() {
            let row: Vec<Option<String>> = fields
                .iter()
                .map(|column| column.get(k).cloned().flatten())
                .chain([envelopes.get(k).cloned().flatten()])
                .collect();
            let scored: Vec<Option<i64>> = scores
                .iter()
                .map(|column| column.get(k).copied().flatten().map(|s| s as i64))
                .collect();
            if let Some(summary) = summary_from(id, &row, &scored) {
                out.push((summary, row.get(ENVELOPE).cloned().flatten()));
            }
        }
        Ok(out)
    }

    /// The envelopes of `ids`, whose records are `records`, each from the batch its record
    /// names. Read as bytes, for the reason above.
    async fn envelopes_of(
        &self,
        ids: &[String],
        records: &[Option<String>],
    ) -> Result<Vec<Option<String>>, QueueError> {
        let found: Vec<(usize, u64)> = records
            .iter()
            .enumerate()
            .filter_map(|(k, record)| Some((k, JobRecord::parse(record.as_deref()?).batch?)))
            .collect();
        let wanted: Vec<(u64, &str)> = found
            .iter()
            .map(|&(k, batch)| (batch, ids[k].as_str()))
            .collect();
        let mut out = vec![None; ids.len()];
        for (&(k, _), envelope) in found.iter().zip(self.read_envelopes(&wanted).await?) {
            out[k] = envelope.map(|b| String::from_utf8_lossy(&b).into_owned());
        }
        Ok(out)
    }

    /// One page of jobs matching `filter`, in each state's natural order;
    /// without a state, states in lifecycle order (queued, scheduled, retrying, running, done,
    /// dead, cancelled). On a sharded queue each state is listed shard by shard, so its order
    /// holds within a shard. There is no index by platform, release or kind: a filter on them
    /// reads the envelope of every job scanned (500 per round trip) until the page is full, so
    /// on a large backlog narrow it by state as well.
    pub async fn list(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: PageLimit,
    ) -> Result<JobPage, QueueError> {
        const STATES: [JobState; 7] = [
            JobState::Queued,
            JobState::Scheduled,
            JobState::Retrying,
            JobState::Running,
            JobState::Done,
            JobState::Dead,
            JobState::Cancelled,
        ];
        let limit = limit.get();
        let states: Vec<JobState> = match filter.state {
            Some(s) => vec![s],
            None => STATES.to_vec(),
        };
        let shards = self.shard_count().await?.get();
        // Cursor: "<state>:<offset>" (shard 0) or "<state>:<offset>:<shard>", where to resume.
        let (mut state_idx, mut shard, mut offset) = parse_cursor(cursor, &states);
        if shard >= shards {
            // A cursor from before the queue lost shards: the next state.
            (state_idx, shard, offset) = (state_idx + 1, 0, 0);
        }
        let now = Utc::now();
        let mut jobs = Vec::new();
        const SCAN: isize = 500;
        while state_idx < states.len() {
            let (name, newest_first) = state_order(states[state_idx]);
            let q = self.shard(shard);
            let key = q.key(name);
            let start = offset as isize;
            let stop = start + SCAN - 1;
            let mut conn = self.conn.clone();
            let ids: Vec<String> = match (states[state_idx], newest_first) {
                (JobState::Queued, _) => conn.lrange(&key, start, stop).await?,
                // Newest first: from the tail of the list.
                (JobState::Done, _) => {
                    let mut ids: Vec<String> = conn.lrange(&key, -stop - 1, -start - 1).await?;
                    ids.reverse();
                    ids
                }
                (_, true) => conn.zrevrange(&key, start, stop).await?,
                (_, false) => conn.zrange(&key, start, stop).await?,
            };
            let scanned = ids.len();
            for (i, job) in q.summaries(&ids).await?.into_iter().enumerate() {
                if job.state != states[state_idx] || !filter.matches(&job, now) {
                    continue;
                }
                jobs.push(job);
                if jobs.len() == limit {
                    // Resume after the position of this job in the scan.
                    let pos = offset + position_of(&ids, &jobs[jobs.len() - 1].id).unwrap_or(i) + 1;
                    return Ok(JobPage {
                        jobs,
                        next_cursor: Some(cursor_text(states[state_idx], pos, shard)),
                    });
                }
            }
            if scanned < SCAN as usize {
                offset = 0;
                shard += 1;
                if shard >= shards {
                    shard = 0;
                    state_idx += 1;
                }
            } else {
                offset += scanned;
            }
        }
        Ok(JobPage {
            jobs,
            next_cursor: None,
        })
    }

    /// The shard that holds each job of `ids` (`None`: no shard does).
    async fn locate(&self, ids: &[String]) -> Result<Vec<Option<u32>>, QueueError> {
        Ok(self
            .records(ids)
            .await?
            .into_iter()
            .map(|found| found.map(|(shard, _)| shard))
            .collect())
    }

    /// Each job of `ids` with its record, from the first shard that holds it (`None`: no
    /// shard does), read with one HMGET of `jobs` per shard until every job is found.
    async fn records(&self, ids: &[String]) -> Result<Vec<Option<(u32, String)>>, QueueError> {
        let mut out = vec![None; ids.len()];
        if ids.is_empty() {
            return Ok(out);
        }
        for q in self.shards().await? {
            if out.iter().all(Option::is_some) {
                break;
            }
            let records: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(q.key("jobs"))
                .arg(ids)
                .query_async(&mut self.conn.clone())
                .await?;
            for (slot, record) in out.iter_mut().zip(records) {
                if slot.is_none()
                    && let Some(record) = record
                {
                    *slot = Some((q.shard, record));
                }
            }
        }
        Ok(out)
    }

    /// The job `given` names: its id in full, or a part of it, at least `MIN_ID_PART`
    /// characters of `0-9`, `a-f` and `-`, that its id starts or ends with (a `short_id`, or
    /// a prefix as git takes one). A part is looked for in every job id of the queue (`HSCAN`
    /// of `jobs`, so it takes as long as the queue holds jobs: about 0.1 s per 100,000).
    pub async fn resolve_id(&self, given: &str) -> Result<IdLookup, QueueError> {
        let mut conn = self.conn.clone();
        let shards = self.shards().await?;
        for q in &shards {
            if conn.hexists(q.key("jobs"), given).await? {
                return Ok(IdLookup::Found(given.to_owned()));
            }
        }
        let part = given.to_ascii_lowercase();
        let searchable =
            part.len() >= MIN_ID_PART && part.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !searchable {
            return Ok(IdLookup::NotFound);
        }
        let mut found: Vec<String> = Vec::new();
        // A match past the first `MAX_CANDIDATES`: the search stops there, and "…" says so.
        let mut more = false;
        for q in &shards {
            if q.find_id_part(&part, &mut found).await? {
                more = true;
                break;
            }
        }
        Ok(match found.len() {
            0 => IdLookup::NotFound,
            1 => IdLookup::Found(found.remove(0)),
            _ => IdLookup::Ambiguous { ids: found, more },
        })
    }

    /// Adds to `found` the ids of this shard's jobs that start or end with `part`, up to
    /// `MAX_CANDIDATES` in all; true when a match beyond those was found (the scan stops
    /// there).
    async fn find_id_part(&self, part: &str, found: &mut Vec<String>) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        // Only hex digits and hyphens: nothing in the pattern is a glob character.
        let pattern = format!("*{part}*");
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(self.key("jobs"))
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            // Field, value pairs (NOVALUES needs Redis 7.4): the fields are the ids.
            // (An id HSCAN returns twice, as it may while the hash is resized, counts once.)
            for id in page.into_iter().step_by(2) {
                let lower = id.to_ascii_lowercase();
                if !(lower.starts_with(part) || lower.ends_with(part)) || found.contains(&id) {
                    continue;
                }
                if found.len() == MAX_CANDIDATES {
                    return Ok(true);
                }
                found.push(id);
            }
            if next == 0 {
                return Ok(false);
            }
            cursor = next;
        }
    }

    /// The job `id` in full, from whichever shard holds it.
    pub async fn show(&self, id: &str) -> Result<Option<JobDetail>, QueueError> {
        if self.shard_count().await?.get() == 1 {
            return self.shard(0).show_here(id).await;
        }
        let ids = [id.to_owned()];
        match self.locate(&ids).await?.first().copied().flatten() {
            Some(shard) => self.shard(shard).show_here(id).await,
            None => Ok(None),
        }
    }

    async fn show_here(&self, id: &str) -> Result<Option<JobDetail>, QueueError> {
        let ids = [id.to_owned()];
        let mut pipe = redis::pipe();
        pipe.cmd("LRANGE")
            .arg(self.key(&format!("events:{id}")))
            .arg(0)
            .arg(-1);
        pipe.cmd("ZSCORE").arg(self.key("running")).arg(id);
        let (events, lease): (Vec<String>, Option<f64>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        let Some((summary, envelope)) = self.summaries_and_envelopes(&ids).await?.pop() else {
            return Ok(None);
        };
        let lease = lease.filter(|_| summary.state == JobState::Running);
        let events = events
            .iter()
            .map(|text| {
                let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                JobEvent {
                    at: ms_to_time(v["at"].as_i64()),
                    event: v["event"].as_str().unwrap_or("unknown").to_owned(),
                    attempt: v["attempt"].as_u64().map(|a| a as u32),
                    error_class: v["error_class"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                    message: v["message"].as_str().map(str::to_owned),
                }
            })
            .collect();
        Ok(Some(JobDetail {
            summary,
            envelope: envelope.unwrap_or_default(),
            lease_until: ms_to_time(lease.map(|l| l as i64)),
            events,
        }))
    }

    /// Where each job of `ids` stands: its state and its attempt number (the attempt running,
    /// or the last one started); `None` for a job this queue does not hold.
    pub async fn positions(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<(JobState, u32)>>, QueueError> {
        Ok(self
            .records(ids)
            .await?
            .into_iter()
            .map(|found| {
                let (_, record) = found?;
                let record = JobRecord::parse(&record);
                record.state.map(|state| (state, record.attempt))
            })
            .collect())
    }

    /// Queues dead or cancelled jobs again. Returns, per id, what it did.
    pub async fn retry(
        &self,
        ids: &[String],
        message: &str,
    ) -> Result<Vec<AdminReply>, QueueError> {
        self.per_id_script(&SCRIPTS.retry, ids, message).await
    }

    /// Retries every dead job matching `filter` (its state is forced to dead).
    pub async fn retry_matching(
        &self,
        filter: &JobFilter,
        message: &str,
    ) -> Result<usize, QueueError> {
        let mut filter = filter.clone();
        filter.state = Some(JobState::Dead);
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list(&filter, cursor.as_deref(), PageLimit(PageLimit::MAX))
                .await?;
            ids.extend(page.jobs.into_iter().map(|j| j.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut retried = 0;
        for chunk in ids.chunks(500) {
            retried += self
                .retry(chunk, message)
                .await?
                .iter()
                .filter(|r| r.changed())
                .count();
        }
        Ok(retried)
    }

    /// Cancels jobs: at once when waiting, by request when running. Returns, per id, what
    /// it did.
    pub async fn cancel(
        &self,
        ids: &[String],
        message: &str,
    ) -> Result<Vec<AdminReply>, QueueError> {
        self.per_id_script(&SCRIPTS.cancel, ids, message).await
    }

    /// Runs `retry.lua` or `cancel.lua` for `ids`, each on the shard that holds it; an id
    /// no shard holds is `NotFound`.
    async fn per_id_script(
        &self,
        script: &redis::Script,
        ids: &[String],
        message: &str,
    ) -> Result<Vec<AdminReply>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if self.shard_count().await?.get() == 1 {
            return self.shard(0).per_id_script_here(script, ids, message).await;
        }
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, shard) in self.locate(ids).await?.into_iter().enumerate() {
            if let Some(shard) = shard {
                by_shard.entry(shard).or_default().push(i);
            }
        }
        let mut out = vec![AdminReply::NotFound; ids.len()];
        for (shard, positions) in by_shard {
            let some: Vec<String> = positions.iter().map(|&i| ids[i].clone()).collect();
            let replies = self
                .shard(shard)
                .per_id_script_here(script, &some, message)
                .await?;
            for (i, reply) in positions.into_iter().zip(replies) {
                out[i] = reply;
            }
        }
        Ok(out)
    }

    async fn per_id_script_here(
        &self,
        script: &redis::Script,
        ids: &[String],
        message: &str,
    ) -> Result<Vec<AdminReply>, QueueError> {
        let mut inv = script.key(self.key("queued"));
        inv.arg(&self.prefix).arg(message);
        for id in ids {
            inv.arg(id);
        }
        let replies: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await?;
        if replies.len() != ids.len() {
            return Err(super::protocol(
                "admin script",
                format!("{} replies for {} ids", replies.len(), ids.len()),
            ));
        }
        replies
            .iter()
            .map(|text| {
                AdminReply::parse(text)
                    .ok_or_else(|| super::protocol("admin script", format!("reply {text:?}")))
            })
            .collect()
    }

    /// Deletes jobs that have been in a terminal `state` for longer than `older_than`.
    pub async fn purge(&self, state: JobState, older_than: Duration) -> Result<u64, QueueError> {
        if !state.is_terminal() {
            return Err(QueueError::NotNow(format!(
                "only done, dead or cancelled jobs can be purged, not {state}"
            )));
        }
        const LIMIT: u64 = 1000;
        let mut total = 0;
        for q in self.shards().await? {
            loop {
                let n: u64 = SCRIPTS
                    .purge
                    .key(q.key("queued"))
                    .arg(&q.prefix)
                    .arg(state.as_str())
                    .arg(older_than.as_millis() as u64)
                    .arg(LIMIT)
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                total += n;
                if n < LIMIT {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Stops `fetch` from handing out jobs; running jobs finish.
    /// Every shard.
    pub async fn pause(&self) -> Result<(), QueueError> {
        let now = Utc::now().timestamp_millis();
        for q in self.shards().await? {
            let _: () = self.conn.clone().set(q.key("paused"), now).await?;
        }
        Ok(())
    }

    pub async fn resume(&self) -> Result<(), QueueError> {
        for q in self.shards().await? {
            let _: () = self.conn.clone().del(q.key("paused")).await?;
            // Workers that found the queue paused wait for a wake-up: no script that makes
            // work ready runs while nothing is queued, so resuming wakes them itself.
            let _: u64 = SCRIPTS
                .wake
                .key(q.key("queued"))
                .arg(&q.prefix)
                .invoke_async(&mut self.conn.clone())
                .await?;
        }
        Ok(())
    }

    /// The queue's figures, every shard's added up.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let shards = self.shards().await?;
        let mut total = shards[0].shard_stats().await?;
        for q in &shards[1..] {
            let more = q.shard_stats().await?;
            total.paused |= more.paused;
            for (state, n) in more.counts {
                *total.counts.entry(state).or_default() += n;
            }
            total.oldest_queued_age_secs =
                match (total.oldest_queued_age_secs, more.oldest_queued_age_secs) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            for (name, n) in more.totals {
                *total.totals.entry(name).or_default() += n;
            }
            for (minute, add) in total.last_hour.iter_mut().zip(more.last_hour) {
                minute.enqueued += add.enqueued;
                minute.done += add.done;
                minute.failed += add.failed;
                minute.dead += add.dead;
            }
        }
        total.shards = shards.len() as u32;
        Ok(total)
    }

    /// This shard's figures; workers and retention are shard 0's, where every worker
    /// registers and announces.
    async fn shard_stats(&self) -> Result<QueueStats, QueueError> {
        let now = Utc::now();
        let this_minute = now.timestamp_millis() / 60_000;
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(self.key("paused"));
        pipe.cmd("LLEN").arg(self.key("queued"));
        for set in ["scheduled", "retrying"] {
            pipe.cmd("ZCARD").arg(self.key(set));
        }
        // Below +inf: not the keeper of `running` (docs/wire-format.md, "Keys").
        pipe.cmd("ZCOUNT")
            .arg(self.key("running"))
            .arg("-inf")
            .arg("(inf");
        pipe.cmd("LLEN").arg(self.key("done"));
        for set in ["dead", "cancelled"] {
            pipe.cmd("ZCARD").arg(self.key(set));
        }
        pipe.cmd("LINDEX").arg(self.key("queued")).arg(0);
        pipe.cmd("HGETALL").arg(self.key("stats"));
        for m in (this_minute - 59)..=this_minute {
            pipe.cmd("HGETALL").arg(self.key(&format!("tp:{m}")));
        }
        let mut values: Vec<redis::Value> = pipe.query_async(&mut self.conn.clone()).await?;
        let mut take = || {
            if values.is_empty() {
                redis::Value::Nil
            } else {
                values.remove(0)
            }
        };
        let paused: bool = redis::from_redis_value(take())?;
        let mut counts = BTreeMap::new();
        counts.insert(JobState::Queued, redis::from_redis_value(take())?);
        for state in [
            JobState::Scheduled,
            JobState::Retrying,
            JobState::Running,
            JobState::Done,
            JobState::Dead,
            JobState::Cancelled,
        ] {
            counts.insert(state, redis::from_redis_value(take())?);
        }
        let head: Option<String> = redis::from_redis_value(take())?;
        let totals: BTreeMap<String, u64> = redis::from_redis_value(take())?;
        let mut last_hour = Vec::with_capacity(60);
        for m in (this_minute - 59)..=this_minute {
            let fields: BTreeMap<String, u64> = redis::from_redis_value(take())?;
            last_hour.push(MinuteStats {
                minute: ms_to_time(Some(m * 60_000)).unwrap_or(now),
                enqueued: fields.get("enqueued").copied().unwrap_or(0),
                done: fields.get("done").copied().unwrap_or(0),
                failed: fields.get("failed").copied().unwrap_or(0),
                dead: fields.get("dead").copied().unwrap_or(0),
            });
        }
        let oldest_queued_age_secs = match head {
            Some(id) => {
                // `queued_at` is absent while it equals the enqueue time, in the job record.
                let (queued_at, record): (Option<i64>, Option<String>) = redis::pipe()
                    .hget(self.key("queued_at"), &id)
                    .hget(self.key("jobs"), &id)
                    .query_async(&mut self.conn.clone())
                    .await?;
                let since =
                    queued_at.or_else(|| record.and_then(|r| JobRecord::parse(&r).enqueued_at));
                ms_to_time(since).map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            }
            None => None,
        };
        let (workers, announced): (u64, BTreeMap<String, String>) = match self.shard {
            0 => (
                self.live_workers().await?,
                self.conn.clone().hgetall(self.key("retention")).await?,
            ),
            _ => (0, BTreeMap::new()),
        };
        let retention = announced
            .iter()
            .filter_map(|(state, rule)| Some((state.parse().ok()?, Retention::from_field(rule)?)))
            .collect();
        Ok(QueueStats {
            queue: self.name.clone(),
            shards: 1,
            paused,
            counts,
            oldest_queued_age_secs,
            totals,
            last_hour,
            workers,
            retention,
        })
    }

    /// Records the retention this worker applies, for `queue stats`.
    pub async fn announce_retention(
        &self,
        rules: &[(JobState, Retention)],
    ) -> Result<(), QueueError> {
        if rules.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        // In shard 0, where `queue stats` reads it.
        cmd.arg(format!("{}retention", super::key_prefix(&self.name)));
        for (state, rule) in rules {
            cmd.arg(state.as_str()).arg(rule.to_field());
        }
        let _: () = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// One bounded step of retention: deletes at most `limit` (1 to 1000) jobs of the
    /// terminal `state` that are older than the rule's age or beyond its newest jobs, oldest
    /// first. Returns how many it deleted; fewer than `limit` means none is left to delete.
    pub async fn retention_step(
        &self,
        state: JobState,
        rule: Retention,
        limit: u64,
    ) -> Result<u64, QueueError> {
        if !state.is_terminal() {
            return Err(QueueError::NotNow(format!(
                "only done, dead or cancelled jobs are kept for a time, not {state}"
            )));
        }
        // No age limit: an age no job reaches.
        let older_than_ms = rule.max_age_secs.map_or(NO_AGE_LIMIT_MS, |s| {
            s.saturating_mul(1000).min(NO_AGE_LIMIT_MS)
        });
        let keep = rule.max_jobs.map(|n| n.to_string()).unwrap_or_default();
        Ok(SCRIPTS
            .purge
            .key(self.key("queued"))
            .arg(&self.prefix)
            .arg(state.as_str())
            .arg(older_than_ms)
            .arg(limit.clamp(1, 1000))
            .arg(keep)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Workers whose heartbeat has not run out: those of shard 0, where every worker of the
    /// queue heartbeats.
    pub async fn live_workers(&self) -> Result<u64, QueueError> {
        let now = Utc::now().timestamp_millis();
        Ok(self
            .conn
            .clone()
            .zcount(
                format!("{}workers", super::key_prefix(&self.name)),
                now,
                "+inf",
            )
            .await?)
    }
}

fn position_of(ids: &[String], id: &str) -> Option<usize> {
    ids.iter().position(|x| x == id)
}

/// Where a listing resumes: `(state index, shard, offset)`, from a cursor
/// `<state>:<offset>` (shard 0) or `<state>:<offset>:<shard>`.
fn parse_cursor(cursor: Option<&str>, states: &[JobState]) -> (usize, u32, usize) {
    let Some((state, rest)) = cursor.and_then(|c| c.split_once(':')) else {
        return (0, 0, 0);
    };
    let (offset, shard) = rest.split_once(':').unwrap_or((rest, "0"));
    let idx = states.iter().position(|s| s.as_str() == state).unwrap_or(0);
    (idx, shard.parse().unwrap_or(0), offset.parse().unwrap_or(0))
}

/// The cursor `parse_cursor` reads; shard 0's is as an unsharded queue's always was.
fn cursor_text(state: JobState, offset: usize, shard: u32) -> String {
    match shard {
        0 => format!("{state}:{offset}"),
        shard => format!("{state}:{offset}:{shard}"),
    }
}

/// What a summary shows of the envelope. Read leniently: a malformed envelope (often the
/// reason its job is dead) still shows these fields when they are there and have the right
/// types; one that is not JSON shows none. The release key is shown only when valid.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Indexed {
    idempotency_key: Option<String>,
    kind: Option<String>,
    payload: IndexedPayload,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct IndexedPayload {
    release: Option<serde_json::Value>,
    distribution: Option<IndexedDistribution>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct IndexedDistribution {
    platform: Option<String>,
}

impl Indexed {
    fn read(envelope: Option<&str>) -> Indexed {
        envelope
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }

    fn release_key(&self) -> Option<String> {
        let release = self.payload.release.clone()?;
        let release: atr_dist_shared::job::ReleaseRef = serde_json::from_value(release).ok()?;
        Some(release.key().to_string())
    }
}

/// A summary from one job's `SUMMARY_HASHES` entries and `SCORED_SETS` scores; `None` when
/// the job has no record (it does not exist).
fn summary_from(id: &str, row: &[Option<String>], scores: &[Option<i64>]) -> Option<JobSummary> {
    let get = |i: usize| row.get(i).cloned().flatten();
    let score = |i: usize| scores.get(i).copied().flatten();
    let record = JobRecord::parse(&get(0)?);
    let state = record.state?;
    let (run_at, finished_at) = match state {
        JobState::Scheduled => (score(0), None),
        JobState::Retrying => (score(1), None),
        JobState::Done => (None, record.finished_at),
        JobState::Dead => (None, score(2)),
        JobState::Cancelled => (None, score(3)),
        JobState::Queued | JobState::Running => (None, None),
    };
    let indexed = Indexed::read(get(ENVELOPE).as_deref());
    // The error hashes keep a job's last failure after it succeeds; for a done job that is
    // history (its attempts and events have it), not its error.
    let (error_class, last_error) = match state {
        JobState::Done => (None, None),
        JobState::Scheduled
        | JobState::Queued
        | JobState::Running
        | JobState::Retrying
        | JobState::Dead
        | JobState::Cancelled => (get(1).filter(|s| !s.is_empty()), get(2)),
    };
    Some(JobSummary {
        id: id.to_owned(),
        state,
        release: indexed.release_key().unwrap_or_default(),
        kind: indexed.kind.unwrap_or_default(),
        platform: indexed
            .payload
            .distribution
            .and_then(|d| d.platform)
            .unwrap_or_default(),
        idempotency_key: indexed.idempotency_key.unwrap_or_default(),
        attempt: record.attempt,
        max_attempts: record.max_attempts.unwrap_or(0),
        enqueued_at: ms_to_time(record.enqueued_at),
        run_at: ms_to_time(run_at),
        started_at: ms_to_time(record.started_at),
        finished_at: ms_to_time(finished_at),
        worker: record.worker,
        error_class,
        last_error,
        cancel_requested: get(3).as_deref() == Some("1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_id_is_the_random_tail_of_the_id() {
        assert_eq!(short_id("0190f5d2-1c3a-7abc-8def-0123456789ab"), "456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("ééééééééé"), "éééééééé");
    }

    #[test]
    fn admin_replies_are_read_as_the_scripts_write_them() {
        assert_eq!(
            AdminReply::parse("changed queued"),
            Some(AdminReply::Changed(JobState::Queued))
        );
        assert_eq!(
            AdminReply::parse("unchanged running"),
            Some(AdminReply::Unchanged(JobState::Running))
        );
        assert_eq!(
            AdminReply::parse("refused done"),
            Some(AdminReply::Refused(JobState::Done))
        );
        assert_eq!(AdminReply::parse("not_found"), Some(AdminReply::NotFound));
        for reply in [
            AdminReply::Changed(JobState::Cancelled),
            AdminReply::Unchanged(JobState::Scheduled),
            AdminReply::Refused(JobState::Dead),
            AdminReply::NotFound,
        ] {
            assert_eq!(AdminReply::parse(&reply.to_string()), Some(reply));
        }
        for bad in ["queued", "changed", "changed lost", "moved queued", ""] {
            assert_eq!(AdminReply::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_admin_reply_reads_in_words() {
        use AdminAction::{Cancel, Retry};
        use AdminReply::{Changed, NotFound, Refused, Unchanged};
        use JobState::{Cancelled, Dead, Done, Queued, Running, Scheduled};
        let cases = [
            (Retry, NotFound, "not found in this queue"),
            (Cancel, NotFound, "not found in this queue"),
            (Retry, Changed(Queued), "queued again"),
            (
                Retry,
                Unchanged(Scheduled),
                "nothing to do: it is scheduled already, and will run",
            ),
            (
                Retry,
                Refused(Done),
                "not allowed: it is done; only dead or cancelled jobs can be retried (enqueue it again to repeat a finished job)",
            ),
            (
                Cancel,
                Changed(Running),
                "cancel requested: its worker stops it at its next heartbeat",
            ),
            (Cancel, Changed(Cancelled), "cancelled"),
            (
                Cancel,
                Unchanged(Running),
                "nothing to do: its cancel was requested already",
            ),
            (
                Cancel,
                Unchanged(Cancelled),
                "nothing to do: it is cancelled already",
            ),
            (
                Cancel,
                Refused(Dead),
                "not allowed: it is dead, finished; only scheduled, queued, retrying or running jobs can be cancelled",
            ),
        ];
        for (action, reply, words) in cases {
            assert_eq!(reply.describe(action), words, "{action:?} {reply:?}");
        }
    }

    #[test]
    fn cursors_name_the_shard_beyond_shard_0() {
        let states = [JobState::Queued, JobState::Done];
        assert_eq!(parse_cursor(None, &states), (0, 0, 0));
        assert_eq!(cursor_text(JobState::Done, 500, 0), "done:500");
        assert_eq!(parse_cursor(Some("done:500"), &states), (1, 0, 500));
        assert_eq!(cursor_text(JobState::Done, 7, 3), "done:7:3");
        assert_eq!(parse_cursor(Some("done:7:3"), &states), (1, 3, 7));
    }

    #[test]
    fn a_retention_is_kept_and_read_back_as_the_workers_announce_it() {
        let both = Retention {
            max_age_secs: Some(7 * 86_400),
            max_jobs: Some(1000),
        };
        assert_eq!(both.to_field(), "604800000 1000");
        assert_eq!(Retention::from_field(&both.to_field()), Some(both));
        // 0 is "no limit" on the wire; an age is kept in milliseconds and read as seconds.
        let none = Retention::default();
        assert_eq!(none.to_field(), "0 0");
        assert_eq!(Retention::from_field("0 0"), Some(none));
        assert_eq!(
            Retention::from_field("90500 0"),
            Some(Retention {
                max_age_secs: Some(90),
                max_jobs: None,
            })
        );
        // A rule too long for milliseconds saturates rather than wrapping to a short one.
        let forever = Retention {
            max_age_secs: Some(u64::MAX),
            max_jobs: None,
        };
        assert_eq!(forever.to_field(), format!("{} 0", u64::MAX));
        for bad in ["", "5", "5 x", "x 5", "-1 5", "5 -1"] {
            assert_eq!(Retention::from_field(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_shard_keeps_an_even_share_of_the_newest_jobs() {
        let rule = Retention {
            max_age_secs: Some(60),
            max_jobs: Some(10),
        };
        let share = |shards| rule.per_shard(shards).max_jobs;
        assert_eq!(share(1), Some(10));
        assert_eq!(share(3), Some(4), "rounded up");
        assert_eq!(share(5), Some(2));
        assert_eq!(share(0), Some(10), "no shards is read as one");
        assert_eq!(rule.per_shard(4).max_age_secs, Some(60));
        assert_eq!(Retention::default().per_shard(4), Retention::default());
    }

    #[test]
    fn a_retention_reads_in_words() {
        let rule = |age, jobs| Retention {
            max_age_secs: age,
            max_jobs: jobs,
        };
        assert_eq!(
            rule(Some(2 * 86_400), Some(5)).describe(),
            "2 day(s) or the newest 5, whichever is fewer"
        );
        assert_eq!(rule(Some(86_400 + 1), None).describe(), "86401 s");
        assert_eq!(rule(Some(3600), None).describe(), "3600 s");
        assert_eq!(
            rule(Some(0), None).describe(),
            "0 s",
            "no time at all, not 0 days"
        );
        assert_eq!(rule(None, Some(7)).describe(), "the newest 7");
        assert_eq!(rule(None, None).describe(), "kept until purged");
    }

    #[test]
    fn an_age_filter_holds_its_bound() {
        // "Enqueued at least / at most this long ago": a job exactly as old as the bound
        // passes both, one millisecond either side passes one, and a job with no enqueue
        // time passes neither.
        let now = Utc
            .timestamp_millis_opt(1_800_000_000_000)
            .single()
            .unwrap();
        let minute = Duration::from_secs(60);
        let job = |age_ms: Option<i64>| JobSummary {
            id: "0190f5d2-1c3a-7abc-8def-0123456789ab".to_owned(),
            state: JobState::Queued,
            kind: "stage".to_owned(),
            release: String::new(),
            platform: "npm".to_owned(),
            attempt: 0,
            max_attempts: 3,
            enqueued_at: age_ms.map(|ms| now - chrono::Duration::milliseconds(ms)),
            run_at: None,
            started_at: None,
            finished_at: None,
            worker: None,
            error_class: None,
            last_error: None,
            cancel_requested: false,
            idempotency_key: "k".to_owned(),
        };
        let older = JobFilter {
            older_than: Some(minute),
            ..Default::default()
        };
        let newer = JobFilter {
            newer_than: Some(minute),
            ..Default::default()
        };
        let passes = |f: &JobFilter, age_ms| f.matches(&job(age_ms), now);
        assert!(passes(&older, Some(60_000)) && passes(&newer, Some(60_000)));
        assert!(passes(&older, Some(60_001)) && !passes(&newer, Some(60_001)));
        assert!(!passes(&older, Some(59_999)) && passes(&newer, Some(59_999)));
        assert!(!passes(&older, None) && !passes(&newer, None));
        assert!(passes(&JobFilter::default(), None));
    }

    #[test]
    fn page_limits_are_the_apis_range() {
        assert_eq!(PageLimit::parse("1").map(PageLimit::get), Ok(1));
        assert_eq!(PageLimit::parse("1000").map(PageLimit::get), Ok(1000));
        for bad in ["0", "1001", "5000", "-1", "ten", ""] {
            assert!(PageLimit::parse(bad).is_err(), "{bad:?}");
        }
    }
}
