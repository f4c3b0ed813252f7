//! Schema migrations (refinery, SQL files in `migrations/`, compiled into the binary).

use notify_relay_engine::tls::PgTarget;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// An advisory lock key, so that replicas starting together migrate one at a time.
const LOCK_KEY: i64 = 0x6e6f_7469_6679; // "notify"

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// `message` is the driver's error with its sources and, for a TLS failure, its cause and
    /// the setting that fixes it (see `PgTarget::explain`).
    #[error("could not connect to Postgres: {message}")]
    Connect {
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The version of the newest migration compiled into this binary.
pub fn latest_version() -> i32 {
    embedded::migrations::runner().get_migrations().iter().map(|m| m.version() as i32).max().unwrap_or(0)
}

/// Indexes on `notification` built outside refinery's transactions, with `CREATE INDEX
/// CONCURRENTLY`: on a table of millions of rows a plain `CREATE INDEX` holds off every insert
/// for the length of a table scan, and `CONCURRENTLY` cannot run in a transaction. Each is
/// built once its migration (the version given) has run; an index left invalid by an
/// interrupted build is dropped and built again. `/readyz` waits for all of them.
pub const ONLINE_INDEXES: &[OnlineIndex] = &[
    // Idempotency keys: one notification per (user, key), and per (topic, key).
    OnlineIndex {
        after: 5,
        name: "notification_user_idempotency_idx",
        unique: true,
        on: "notification (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL",
    },
    OnlineIndex {
        after: 5,
        name: "notification_topic_idempotency_idx",
        unique: true,
        on: "notification (topic, idempotency_key) WHERE topic IS NOT NULL AND idempotency_key IS NOT NULL",
    },
    // The scheduler's probe: due scheduled rows, soonest first. Future rows sit here, never in
    // the pending index the listener claims from.
    OnlineIndex {
        after: 5,
        name: "notification_scheduled_idx",
        unique: false,
        on: "notification (send_at) WHERE status = 'scheduled'",
    },
    // A topic notification's subscriber rows (its status counts them), one per subscriber.
    OnlineIndex {
        after: 5,
        name: "notification_parent_idx",
        unique: true,
        on: "notification (parent_id, user_id) WHERE parent_id IS NOT NULL",
    },
    // Topic notifications whose fan-out has begun and not finished.
    OnlineIndex {
        after: 5,
        name: "notification_topic_fanout_idx",
        unique: false,
        on: "notification (created_at) WHERE topic IS NOT NULL AND status = 'queued'",
    },
    // Retention's candidates, oldest first: final rows by creation time. The BRIN index on
    // created_at (V2) is lossy once retention has emptied pages that new rows then fill (their
    // ranges hold both ages, and a BRIN summary never shrinks): at 10M rows a batch of 1,000
    // read 17,723 heap pages (bench/README, "ten million on a server configured as
    // docs/sizing.md says"). One entry per notification, written by its final update (which is
    // never HOT: the status indexes change).
    OnlineIndex {
        after: 8,
        name: "notification_final_created_idx",
        unique: false,
        on: "notification (created_at) WHERE status IN ('delivered', 'failed', 'expired', 'cancelled')",
    },
];

/// An index built with `CREATE INDEX CONCURRENTLY` (see [`ONLINE_INDEXES`]).
pub struct OnlineIndex {
    /// The migration that adds the columns it covers.
    pub after: i32,
    pub name: &'static str,
    pub unique: bool,
    /// The table, columns and predicate: what follows `ON`.
    pub on: &'static str,
}

impl OnlineIndex {
    fn create(&self) -> String {
        let unique = if self.unique { "UNIQUE " } else { "" };
        format!("CREATE {unique}INDEX CONCURRENTLY {} ON {}", self.name, self.on)
    }
}

/// Whether the database has every migration of this binary and every online index, valid (for
/// `/readyz`).
pub async fn is_current(client: &tokio_postgres::Client) -> bool {
    let applied = client
        .query_one("SELECT coalesce(max(version), 0) FROM refinery_schema_history", &[])
        .await
        .map(|row| row.get::<_, i32>(0));
    if !matches!(applied, Ok(v) if v >= latest_version()) {
        return false;
    }
    let names: Vec<&str> = ONLINE_INDEXES.iter().map(|i| i.name).collect();
    let valid = client
        .query_one(
            "SELECT count(*) FROM unnest($1::text[]) AS u(name) JOIN pg_index i ON i.indexrelid = to_regclass(u.name)
              WHERE i.indisvalid",
            &[&names],
        )
        .await
        .map(|row| row.get::<_, i64>(0));
    matches!(valid, Ok(n) if n == names.len() as i64)
}

/// Builds the online indexes whose migration has run and that are missing or invalid.
async fn build_online_indexes(client: &tokio_postgres::Client) -> Result<Vec<String>, MigrateError> {
    let applied: i32 =
        client.query_one("SELECT coalesce(max(version), 0) FROM refinery_schema_history", &[]).await?.get(0);
    let mut built = Vec::new();
    for index in ONLINE_INDEXES.iter().filter(|i| i.after <= applied) {
        let valid: Option<bool> = client
            .query_opt("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", &[&index.name])
            .await?
            .map(|row| row.get(0));
        match valid {
            Some(true) => continue,
            // Left by a build that was interrupted (a crash, a duplicate key): it slows writes
            // and serves no query.
            Some(false) => client.batch_execute(&format!("DROP INDEX CONCURRENTLY {}", index.name)).await?,
            None => {}
        }
        client.batch_execute(&index.create()).await?;
        built.push(format!("index {}", index.name));
    }
    Ok(built)
}

/// Applies pending migrations; returns the names of those applied now.
pub async fn run(target: &PgTarget) -> Result<Vec<String>, MigrateError> {
    let (mut client, connection) =
        target.connect().await.map_err(|source| MigrateError::Connect { message: target.explain(&source), source })?;
    let driver = actix_rt::spawn(connection);
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    let indexes = match &report {
        Ok(_) => build_online_indexes(&client).await,
        Err(_) => Ok(Vec::new()),
    };
    client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await?;
    drop(client);
    let _ = driver.await;
    let mut applied: Vec<String> = report?.applied_migrations().iter().map(|m| m.to_string()).collect();
    applied.extend(indexes?);
    Ok(applied)
}
