//! `/healthz` (the process answers) and `/readyz` (it can do its work: Redis answers, the
//! results database answers, and its schema is current). Both are open, as probes are.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::types::{CheckBody, HealthBody, ReadyBody};
use super::{AppState, Backend, bounded};
use crate::db;

pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".to_owned(),
    })
}

fn check(name: &str, result: Result<String, String>) -> CheckBody {
    let ok = result.is_ok();
    CheckBody {
        name: name.to_owned(),
        ok,
        detail: result.unwrap_or_else(|e| e),
    }
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<ReadyBody>) {
    let mut conn = state.queue().connection();
    let ping = async move {
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(crate::queue::QueueError::from)
    };
    let redis = bounded(Backend::Redis, ping)
        .await
        .map(|pong| format!("PING answered {pong}"))
        .map_err(|e| e.message);
    let database = bounded(Backend::Database, state.db().ping())
        .await
        .map(|()| "answers".to_owned())
        .map_err(|e| e.message);
    // Only meaningful once the database answers; otherwise say so rather than repeat its error.
    let migrations = match &database {
        Ok(_) => {
            match tokio::time::timeout(super::BACKEND_TIMEOUT, db::pending_migrations(state.db()))
                .await
            {
                Ok(Ok(pending)) if pending.is_empty() => Ok("schema is current".to_owned()),
                Ok(Ok(pending)) => Err(format!(
                    "{} migration(s) pending: {}; run `atr-dist migrate`",
                    pending.len(),
                    pending.join(", ")
                )),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the migration check did not answer in time".to_owned()),
            }
        }
        Err(_) => Err("not checked: the database does not answer".to_owned()),
    };
    let checks = vec![
        check("redis", redis),
        check("database", database),
        check("migrations", migrations),
    ];
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyBody { ready, checks }))
}
