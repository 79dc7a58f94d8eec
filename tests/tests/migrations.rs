//! The results schema applies, reverts and applies again on SQLite and PostgreSQL, and the
//! sea-orm entities read and write it.

use atr_dist::db;
use atr_dist::secret::Secret;
use atr_dist_shared::Platform;
use atr_dist_shared::entities::{distribution, job_run, revision_manifest};
use atr_dist_tests::{PgDatabase, SqliteDatabase};
use chrono::Utc;
use sea_orm::{ActiveModelTrait, ConnectionTrait, DatabaseConnection, EntityTrait, Set};

async fn up_down_up(url: &str) {
    let conn = db::connect(&Secret::new(url), 2).await.unwrap();
    let all = db::pending_migrations(&conn).await.unwrap().len();
    assert!(all >= 2, "{all}");
    assert_eq!(db::migrate_up(&conn).await.unwrap(), all);
    assert!(db::pending_migrations(&conn).await.unwrap().is_empty());
    write_and_read(&conn).await;
    db::migrate_down(&conn, all as u32).await.unwrap();
    assert_eq!(db::pending_migrations(&conn).await.unwrap().len(), all);
    // The tables are really gone, not just forgotten by the migration table.
    assert!(distribution::Entity::find().all(&conn).await.is_err());
    assert_eq!(db::migrate_up(&conn).await.unwrap(), all);
    write_and_read(&conn).await;
    // Applying again is a no-op.
    assert_eq!(db::migrate_up(&conn).await.unwrap(), 0);
    conn.close().await.unwrap();
}

async fn write_and_read(conn: &DatabaseConnection) {
    let now = Utc::now();
    let row = distribution::ActiveModel {
        release_key: Set("example-1.0.0".into()),
        platform: Set(Platform::NpmScoped),
        owner_namespace: Set("apache".into()),
        package: Set("example".into()),
        version: Set("1.0.0".into()),
        staging: Set(true),
        pending: Set(false),
        retries: Set(0),
        upload_date: Set(Some(now)),
        api_url: Set(Some("http://127.0.0.1/@apache%2fexample".into())),
        web_url: Set(None),
        created_by: Set(Some("rm".into())),
        promoted: Set(false),
        promoted_at: Set(None),
        staging_revision_key: Set(Some("example-1.0.0 00002".into())),
        staged_manifest_digest: Set(Some(format!("sha3-256:{}", "a".repeat(64)))),
        platform_digest: Set(Some(format!("sha512-{}==", "A".repeat(86)))),
        staging_tag: Set(Some("rc".into())),
        voted_revision_key: Set(None),
        voted_manifest_digest: Set(None),
        staged_platform_digest: Set(None),
        promoted_digest: Set(None),
        staged_artifacts: Set(None),
    };
    row.insert(conn).await.unwrap();
    // The composite primary key is ATR's: a second row for the same key is refused.
    let dup = distribution::ActiveModel {
        release_key: Set("example-1.0.0".into()),
        platform: Set(Platform::NpmScoped),
        owner_namespace: Set("apache".into()),
        package: Set("example".into()),
        version: Set("1.0.0".into()),
        ..Default::default()
    };
    assert!(dup.insert(conn).await.is_err());
    let found = distribution::Entity::find_by_id((
        "example-1.0.0".to_owned(),
        Platform::NpmScoped,
        "apache".to_owned(),
        "example".to_owned(),
        "1.0.0".to_owned(),
    ))
    .one(conn)
    .await
    .unwrap()
    .unwrap();
    assert!(found.staging);
    assert_eq!(found.created_by.as_deref(), Some("rm"));
    // Stored as ATR's member name.
    let backend = conn.get_database_backend();
    let raw = conn
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT platform FROM distribution",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.try_get::<String>("", "platform").unwrap(), "NPM_SCOPED");

    let run = job_run::ActiveModel {
        job_id: Set(uuid::Uuid::now_v7().to_string()),
        kind: Set("stage".into()),
        release_key: Set("example-1.0.0".into()),
        platform: Set(Platform::NpmScoped),
        owner_namespace: Set("apache".into()),
        package: Set("example".into()),
        version: Set("1.0.0".into()),
        attempt: Set(1),
        started_at: Set(now),
        finished_at: Set(Some(now)),
        outcome: Set(Some("completed".into())),
        error_class: Set(None),
        message: Set(None),
        http_status: Set(Some(201)),
        duration_ms: Set(Some(12)),
        ..Default::default()
    };
    let inserted = run.insert(conn).await.unwrap();
    assert!(inserted.id > 0);

    let manifest = revision_manifest::ActiveModel {
        revision_key: Set("example-1.0.0 00002".into()),
        release_key: Set("example-1.0.0".into()),
        digest: Set(format!("sha3-256:{}", "b".repeat(64))),
        manifest: Set(serde_json::json!({"entries": []})),
        file_count: Set(0),
        created_at: Set(now),
    };
    manifest.insert(conn).await.unwrap();
    assert_eq!(
        revision_manifest::Entity::find()
            .all(conn)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn sqlite_up_down_up() {
    let db = SqliteDatabase::create();
    up_down_up(&db.url).await;
}

#[tokio::test]
async fn postgres_up_down_up() {
    let db = PgDatabase::create().await;
    up_down_up(&db.url).await;
}

/// Workers of a rollout start together against a fresh PostgreSQL database: each migrates,
/// one after the other under the advisory lock, and together they apply every migration
/// once. Five at once, on three fresh databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_starting_together_migrate_one_database_once() {
    for _ in 0..3 {
        let pg = PgDatabase::create().await;
        let mut starts = Vec::new();
        for _ in 0..5 {
            let url = pg.url.clone();
            starts.push(tokio::spawn(async move {
                let conn = db::connect(&Secret::new(url), 2).await.unwrap();
                let applied = db::migrate_up(&conn).await;
                conn.close().await.unwrap();
                applied
            }));
        }
        let mut applied = 0;
        for start in starts {
            applied += start
                .await
                .unwrap()
                .expect("every worker's migration succeeds");
        }
        let conn = db::connect(&Secret::new(pg.url.clone()), 1).await.unwrap();
        assert!(db::pending_migrations(&conn).await.unwrap().is_empty());
        let all = atr_dist_migrations_count();
        assert_eq!(applied, all, "each migration ran once");
        conn.close().await.unwrap();
    }
}

fn atr_dist_migrations_count() -> usize {
    use atr_dist_migrations::MigratorTrait;
    atr_dist_migrations::Migrator::migrations().len()
}
