//! The write protocol every adapter follows: a write whose outcome is not known is followed
//! by a read of the platform before anything else is done.
//!
//! A publish whose answer is lost (the connection reset after the request went out, a
//! timeout, a 502 from a proxy, a 5xx from the platform) may have taken effect. Repeating it
//! blindly turns a success into a failure (npm answers 409 "version exists", and the job
//! would go dead although the registry holds exactly the voted bytes), and a moved tag
//! would be moved twice. So after an unknown outcome, and after any refusal that is not an
//! authentication failure (a 409 "already exists" is never final on its own), [`confirmed`]
//! reads the platform back:
//!
//! | the platform holds | then |
//! |---|---|
//! | what the write was to put there | the write is done ([`Written::FoundDone`]), and the job's timeline says so |
//! | something else | refused, permanently, naming both |
//! | nothing | after an unknown outcome: the write is sent again, drawing on the attempt's retry budget; after a refusal: the refusal stands |
//!
//! "Nothing" is the adapter's to judge: a write that moves a pointer (an npm dist-tag, an
//! OCI staging tag) reports what the pointer held just before the write as nothing, since
//! a move that did not arrive leaves it there; only a third value is "something else".
//!
//! Read-backs are reads: they retry within the same budget (`platform/http.rs`).

use std::future::Future;

use reqwest::Response;

use super::PlatformError;
use super::http::{HttpNote, PlatformHttp, RetryBudget, Sent};

/// What a read-back found, judged against what the write was to put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Expected,
    /// Something else: a description naming what is there and what was expected.
    Other(String),
    Nothing,
}

/// How a confirmed write ended.
#[derive(Debug)]
pub enum Written {
    /// The platform answered with success; the caller may inspect the answer.
    Answered(Response),
    /// The answer was lost or refused, and the platform was found to hold what was written.
    FoundDone,
}

/// Sends `write`, and after an unknown outcome or a refusal reads the platform back with
/// `read_back` before deciding (see the module documentation). `refusal` turns an
/// unsuccessful answer into the adapter's classed error (with its platform-specific
/// messages).
pub async fn confirmed<W, WF, R, RF, E, EF>(
    http: &PlatformHttp,
    what: &str,
    write: W,
    read_back: R,
    refusal: E,
) -> Result<Written, PlatformError>
where
    W: Fn() -> WF,
    WF: Future<Output = Result<Sent, PlatformError>>,
    R: Fn() -> RF,
    RF: Future<Output = Result<Found, PlatformError>>,
    E: Fn(Response) -> EF,
    EF: Future<Output = PlatformError>,
{
    let mut delays = http.delays();
    loop {
        let (failed, refused) = match write().await? {
            Sent::Answered(resp) if resp.status().is_success() => {
                return Ok(Written::Answered(resp));
            }
            Sent::Answered(resp) => {
                let err = refusal(resp).await;
                match err.class {
                    // The platform did not let us act at all: nothing to read back.
                    atr_dist_shared::ErrorClass::Auth => return Err(err),
                    atr_dist_shared::ErrorClass::Permanent
                    | atr_dist_shared::ErrorClass::Transient
                    | atr_dist_shared::ErrorClass::Malformed => (err, true),
                }
            }
            Sent::Unknown(err) => (err, false),
        };
        let found = read_back().await?;
        let note = |found: &str| {
            RetryBudget::note(HttpNote::ReadBack {
                what: what.to_owned(),
                error: failed.message.clone(),
                found: found.to_owned(),
            })
        };
        match found {
            Found::Expected => {
                tracing::info!(error = %failed, "{what}: the platform holds what was written; done");
                note("the platform holds what was written: done");
                return Ok(Written::FoundDone);
            }
            Found::Other(holds) => {
                note(&holds);
                return Err(PlatformError {
                    class: atr_dist_shared::ErrorClass::Permanent,
                    message: format!("{} (read back: {holds})", failed.message),
                    http_status: failed.http_status,
                    retry_after: None,
                    not_yet: false,
                });
            }
            Found::Nothing if refused => return Err(failed),
            Found::Nothing => {
                note("nothing there: sending it again");
                RetryBudget::retry_write(what, failed, &mut delays).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use atr_dist_shared::ErrorClass;
    use url::Url;

    use super::*;
    use crate::platform::http::{RetryLimits, error_for};

    /// A server on loopback answering every request with `status` and no body.
    async fn answering(status: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        crate::platform::http::test_server::serving(Some(status), "").await
    }

    /// A write the platform answered with a refusal, and whose read-back finds nothing, ends
    /// with that refusal at once, even one classed as a short wait that the attempt's budget
    /// could afford to resend after: it was answered, so it becomes the job's wait in Redis
    /// (GitHub's secondary rate limit on a create), not a resend inside the attempt.
    #[tokio::test]
    async fn an_answered_refusal_with_nothing_there_is_not_sent_again() {
        let (addr, seen) = answering("403 Forbidden").await;
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let http = PlatformHttp::new(&[&base], None).unwrap();
        let limits = RetryLimits {
            retries: 3,
            wait: Duration::from_secs(20),
        };
        let budget = RetryBudget::new(limits, None);
        let read_backs = AtomicUsize::new(0);
        let work = confirmed(
            &http,
            "POST x",
            || http.write("POST x", |c| c.post(format!("http://{addr}/x"))),
            || {
                read_backs.fetch_add(1, Ordering::SeqCst);
                async { Ok(Found::Nothing) }
            },
            |resp| async move {
                let answered = error_for(resp, "POST x").await;
                PlatformError::not_yet(answered.message, Duration::from_secs(1)).with_status(403)
            },
        );
        let err = tokio::time::timeout(Duration::from_secs(20), budget.scope(work))
            .await
            .expect("it ends at once")
            .unwrap_err();
        assert!(err.not_yet, "{err:?}");
        assert_eq!(err.http_status, Some(403));
        assert_eq!(seen.load(Ordering::SeqCst), 1, "sent once");
        assert_eq!(read_backs.load(Ordering::SeqCst), 1);
    }

    /// Runs `confirmed` against a server answering `status` to every write, with a
    /// read-back finding `found`; returns the outcome, the writes the server received, the
    /// read-backs made and the notes for the job's timeline.
    async fn confirm(
        status: &'static str,
        found: Found,
    ) -> (Result<Written, PlatformError>, usize, usize, Vec<HttpNote>) {
        let (addr, seen) = answering(status).await;
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let http = PlatformHttp::new(&[&base], None).unwrap();
        let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
        let limits = RetryLimits {
            retries: 2,
            wait: Duration::from_secs(20),
        };
        let budget = RetryBudget::new(limits, Some(tx));
        let read_backs = AtomicUsize::new(0);
        let work = confirmed(
            &http,
            "PUT x",
            || http.write("PUT x", |c| c.put(format!("http://{addr}/x"))),
            || {
                read_backs.fetch_add(1, Ordering::SeqCst);
                let found = found.clone();
                async move { Ok(found) }
            },
            |resp| async move { error_for(resp, "PUT x").await },
        );
        let outcome = tokio::time::timeout(Duration::from_secs(20), budget.scope(work))
            .await
            .expect("it ends");
        let mut noted = Vec::new();
        while let Ok(note) = notes.try_recv() {
            noted.push(note);
        }
        (
            outcome,
            seen.load(Ordering::SeqCst),
            read_backs.load(Ordering::SeqCst),
            noted,
        )
    }

    /// A write the platform accepts is done: nothing is read back.
    #[tokio::test]
    async fn an_accepted_write_is_done_without_a_read_back() {
        let (outcome, writes, read_backs, notes) = confirm("201 Created", Found::Nothing).await;
        let Ok(Written::Answered(resp)) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(resp.status(), 201);
        assert_eq!((writes, read_backs), (1, 0));
        assert_eq!(notes, []);
    }

    /// A write refused for its credentials ends there: the platform did not let us act, so
    /// there is nothing to read back.
    #[tokio::test]
    async fn a_write_refused_for_its_credentials_is_not_read_back() {
        let (outcome, writes, read_backs, _) = confirm("401 Unauthorized", Found::Expected).await;
        let err = outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Auth, "{err:?}");
        assert_eq!(err.message, "PUT x: 401 Unauthorized");
        assert_eq!((writes, read_backs), (1, 0));
    }

    /// A write whose answer was lost, and whose read-back finds what it was to put there,
    /// is done, once, and the job's timeline says why.
    #[tokio::test]
    async fn a_lost_answer_with_the_write_found_done_is_done() {
        let (outcome, writes, read_backs, notes) =
            confirm("502 Bad Gateway", Found::Expected).await;
        assert!(matches!(outcome, Ok(Written::FoundDone)), "{outcome:?}");
        assert_eq!((writes, read_backs), (1, 1));
        assert_eq!(
            notes,
            [HttpNote::ReadBack {
                what: "PUT x".into(),
                error: "PUT x: 502 Bad Gateway".into(),
                found: "the platform holds what was written: done".into(),
            }]
        );
    }

    /// A write refused as already there (409), whose read-back finds other bytes there, is
    /// refused for good, naming both; it is not sent again.
    #[tokio::test]
    async fn a_refusal_with_other_bytes_there_is_permanent_and_names_them() {
        let holds = Found::Other("sha256:aa is there, sha256:bb was written".into());
        let (outcome, writes, read_backs, notes) = confirm("409 Conflict", holds).await;
        let err = outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");
        assert_eq!(
            err.message,
            "PUT x: 409 Conflict (read back: sha256:aa is there, sha256:bb was written)"
        );
        assert_eq!(err.http_status, Some(409));
        assert_eq!((writes, read_backs), (1, 1));
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    /// A write whose outcome stays unknown and whose read-back keeps finding nothing is
    /// sent again only as often as the attempt's retry budget allows, each time after the
    /// backoff's wait, and then ends the attempt.
    #[tokio::test]
    async fn a_write_never_found_is_resent_within_the_budget_then_given_up() {
        let (ended, writes, read_backs, notes) = confirm("502 Bad Gateway", Found::Nothing).await;
        let err = ended.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(
            err.message.starts_with("PUT x: 502 Bad Gateway")
                && err
                    .message
                    .contains("gave up inside this attempt after 2 retries"),
            "{}",
            err.message
        );
        assert_eq!((writes, read_backs), (3, 3));
        let waits: Vec<Duration> = notes
            .into_iter()
            .filter_map(|note| {
                if let HttpNote::Retry { wait, .. } = note {
                    Some(wait)
                } else {
                    None
                }
            })
            .collect();
        // The backoff's waits (from 200 ms, with jitter), not none and not its 5 s fallback.
        assert_eq!(waits.len(), 2, "{waits:?}");
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_millis(200) && *w < Duration::from_secs(2)),
            "{waits:?}"
        );
    }
}
