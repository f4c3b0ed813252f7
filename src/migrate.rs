//! Schema migrations (refinery, SQL files in `migrations/`, compiled into the binary).

use tokio_postgres::Config;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// An advisory lock key, so that replicas starting together migrate one at a time.
const LOCK_KEY: i64 = 0x6e6f_7469_6679; // "notify"

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("could not connect to Postgres: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The version of the newest migration compiled into this binary.
pub fn latest_version() -> i32 {
    embedded::migrations::runner().get_migrations().iter().map(|m| m.version() as i32).max().unwrap_or(0)
}

/// Whether the database has every migration of this binary (for `/readyz`).
pub async fn is_current(client: &tokio_postgres::Client) -> bool {
    let applied = client
        .query_one("SELECT coalesce(max(version), 0) FROM refinery_schema_history", &[])
        .await
        .map(|row| row.get::<_, i32>(0));
    matches!(applied, Ok(v) if v >= latest_version())
}

/// Applies pending migrations; returns the names of those applied now.
pub async fn run(config: &Config) -> Result<Vec<String>, MigrateError> {
    let mut config = config.clone();
    notify_relay_engine::tls::only_when_required(&mut config);
    let (mut client, connection) =
        config.connect(notify_relay_engine::tls::postgres()).await.map_err(MigrateError::Connect)?;
    let driver = actix_rt::spawn(connection);
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await?;
    drop(client);
    let _ = driver.await;
    Ok(report?.applied_migrations().iter().map(|m| m.to_string()).collect())
}
