//! Notes from a running attempt in its job's timeline (`lua/note.lua`): what an operator
//! needs to see while it happens, such as a platform that keeps answering 503, or a write
//! whose answer was lost and was settled by reading the platform back.

use std::time::Duration;

use super::scripts::SCRIPTS;
use super::{Queue, QueueError};

/// The events a running attempt may add (`docs/wire-format.md`, "Events").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// A platform request is being sent again.
    HttpRetry,
    /// A write's outcome was unknown or refused, and reading the platform back decided it.
    WriteReadBack,
}

impl NoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::HttpRetry => "http_retry",
            NoteKind::WriteReadBack => "write_read_back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    pub message: String,
    pub http_status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub wait: Option<Duration>,
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| d.as_millis().to_string()).unwrap_or_default()
}

impl Queue {
    /// Adds `note` to the job's events if the job is still running `attempt`; returns
    /// whether it was written.
    pub async fn note(&self, id: &str, attempt: u32, note: &Note) -> Result<bool, QueueError> {
        let written: i64 = SCRIPTS
            .note
            .key(format!("{}queued", self.prefix))
            .arg(&self.prefix)
            .arg(id)
            .arg(attempt)
            .arg(note.kind.as_str())
            .arg(&note.message)
            .arg(note.http_status.map(|s| s.to_string()).unwrap_or_default())
            .arg(ms(note.retry_after))
            .arg(ms(note.wait))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(written == 1)
    }
}
