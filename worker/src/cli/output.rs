//! Output for people (aligned tables) and for scripts (`--json`).

use std::io::Write;

use serde::Serialize;

/// Writes command output to stdout. When the reader has gone (a closed pipe), the command
/// has nothing left to do: exit 0 at once, as `head` and `grep -q` expect of a producer.
pub fn write_out(args: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout.write_fmt(args).and_then(|()| stdout.flush());
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("atr-dist: writing output failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// "3m ago", "in 20s": short relative times for tables.
pub fn ago(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(t) = t else { return "-".to_owned() };
    let secs = (chrono::Utc::now() - t).num_seconds();
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let text = match n {
        0..60 => format!("{n}s"),
        60..3600 => format!("{}m", n / 60),
        3600..86400 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// "attempt 2", or "run 2, attempt 1" for a job that has run more than once (an operator
/// retried it): the attempt numbers start from 1 again with each run.
pub fn attempt_label(runs: u32, run: u32, attempt: u32) -> String {
    if runs > 1 {
        format!("run {run}, attempt {attempt}")
    } else {
        format!("attempt {attempt}")
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["id", "state"],
            &[
                vec!["a".into(), "queued".into()],
                vec!["bbb".into(), "dead".into()],
            ],
        );
        assert_eq!(t, "id   state\na    queued\nbbb  dead\n");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
