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
