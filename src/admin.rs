//! `notify-relay admin …`: operator tools that talk to Postgres and Redis directly (no running
//! API needed). Each prints what it did; `--json` where a program may read the output.

use crate::configuration::Settings;
use crate::db::pg_pool;
use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use notify_relay_engine::events::{self, Tally};
use notify_relay_engine::relay::admin::DeadLetterEntry;
use notify_relay_engine::relay::Relay;
use notify_relay_engine::requeue_dead_letters;
use notify_relay_engine::store::api::{cancel_refused, Cancellation, FailedFilter};
use notify_relay_engine::store::Store;
use notify_relay_engine::Keys;
use std::io::Write;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// List the newest dead letters of every shard.
    InspectDlq {
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back into the stream as fresh first attempts.
    RequeueDlq {
        /// Dead-letter ids as inspect-dlq shows them (`<shard>:<entry id>`); repeatable.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Every dead letter (up to --limit) instead of --id.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Retry failed notifications in bulk (as POST /notifications/{id}/retry does for one).
    RequeueFailed {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only those that failed since: `2026-11-01`, an RFC 3339 time, or `24h` / `30m` / `7d` ago.
        #[arg(long)]
        since: Option<String>,
        /// Count what would be retried, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Notifications per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
    /// Move entries pending longer than --min-idle-ms (their worker died or hangs) back into
    /// the stream for live workers.
    ClaimStuck {
        /// Default: claim.min_idle_ms.
        #[arg(long)]
        min_idle_ms: Option<u64>,
    },
    /// Cancel a notification before it is fanned out (as POST /notifications/{id}/cancel does):
    /// a scheduled one, or a pending one not claimed yet.
    Cancel {
        /// The notification's id.
        id: Uuid,
    },
    /// The topics with the most subscribers, and how many each has.
    Topics {
        /// How many topics, most subscribers first.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        limit: i64,
    },
    /// Destroy and recreate the consumer group of every shard: all entries still in the streams
    /// are handed out again (delivered targets are not re-sent). Needs --yes.
    ResetGroup {
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    /// What the command was to act on does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The command may not act on it as it is now (e.g. a cancel after the fan-out).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Engine(#[from] notify_relay_engine::EngineError),
    /// A Redis TLS file that cannot be read or parsed (`redis.ca_file`…).
    #[error(transparent)]
    Config(#[from] crate::configuration::ConfigError),
    #[error(transparent)]
    Pool(#[from] crate::db::PoolError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one admin command, writing its report to `out` (progress goes to stderr).
pub async fn run(settings: &Settings, command: AdminCommand, out: &mut dyn Write) -> Result<(), AdminError> {
    if let AdminCommand::ResetGroup { yes: false } = command {
        return Err(AdminError::Usage(
            "reset-group hands every entry of every stream out again; run it with --yes if that is what you want"
                .into(),
        ));
    }
    let keys = Keys::new(settings.redis.key_prefix.clone(), settings.redis.shards);
    let relay =
        Relay::connect_with(&settings.redis_endpoint()?, settings.redis_timeouts(), keys, settings.redis.dlq_max_len)
            .await?;
    let store = Store::new(pg_pool(settings, &slog::Logger::root(slog::Discard, slog::o!()))?);
    match command {
        AdminCommand::InspectDlq { limit, json } => {
            let letters = relay.dead_letters(limit).await?;
            match json {
                true => writeln!(out, "{}", serde_json::json!({ "items": letters }))?,
                false => print_letters(&letters, out)?,
            }
        }
        AdminCommand::RequeueDlq { ids, all, limit } => {
            let (letters, missing) = match (all, ids.is_empty()) {
                (true, _) => (relay.dead_letters(limit).await?, Vec::new()),
                (false, false) => {
                    let parsed = ids
                        .iter()
                        .map(|id| {
                            DeadLetterEntry::parse_id(id)
                                .ok_or_else(|| AdminError::Usage(format!("--id {id}: expected <shard>:<entry id>")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let letters = relay.dead_letters_by_id(&parsed).await?;
                    let missing: Vec<String> = ids
                        .into_iter()
                        .filter(|id| !letters.iter().any(|l| DeadLetterEntry::same_id(&l.id, id)))
                        .collect();
                    (letters, missing)
                }
                (false, true) => return Err(AdminError::Usage("give --id (repeatable) or --all".into())),
            };
            let report = requeue_dead_letters(&store, &relay, letters).await?;
            let skipped = report.skipped.len() + missing.len();
            writeln!(out, "requeued {} dead letter(s), skipped {skipped}", report.requeued.len())?;
            for s in &report.skipped {
                writeln!(out, "  skipped {}: {}", s.id, s.reason)?;
            }
            for id in &missing {
                writeln!(
                    out,
                    "  skipped {id}: no such dead letter (requeued already, or trimmed past redis.dlq_max_len)"
                )?;
            }
        }
        AdminCommand::RequeueFailed { user, since, dry_run, batch } => {
            let since = since.as_deref().map(parse_since).transpose().map_err(AdminError::Usage)?;
            let filter = FailedFilter { user, since };
            requeue_failed(&store, &filter, dry_run, batch.clamp(1, 10_000), out).await?;
        }
        AdminCommand::ClaimStuck { min_idle_ms } => {
            let min_idle = min_idle_ms.map_or(settings.claim.min_idle, Duration::from_millis);
            let moved = relay.release_stuck(min_idle, "admin-claim-stuck").await?;
            writeln!(out, "moved {moved} stuck entr{} back into the stream", if moved == 1 { "y" } else { "ies" })?;
        }
        AdminCommand::Cancel { id } => cancel(&store, &relay, id, out).await?,
        AdminCommand::Topics { limit } => print_topics(&store.topic_counts(limit).await?, out)?,
        AdminCommand::ResetGroup { .. } => {
            let pending = relay.reset_groups().await?;
            writeln!(
                out,
                "consumer group reset on {} shard(s); {pending} entr{} that were pending will be handed out again",
                relay.keys().shards(),
                if pending == 1 { "y" } else { "ies" }
            )?;
        }
    }
    Ok(())
}

async fn requeue_failed(
    store: &Store,
    filter: &FailedFilter,
    dry_run: bool,
    batch: i64,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let total = store.count_failed(filter).await?;
    if dry_run {
        writeln!(out, "would requeue {total} failed notification(s) (dry run: nothing changed)")?;
        return Ok(());
    }
    let mut progress = Progress::new(total);
    let mut done = 0u64;
    loop {
        let ids = store.failed_ids(filter, batch).await?;
        if ids.is_empty() {
            break;
        }
        // Retried rows leave `failed`, so the next batch is the next page.
        done += store.retry_failed(&ids).await?.len() as u64;
        progress.show(done);
        if done >= total {
            break;
        }
    }
    progress.finish();
    writeln!(out, "requeued {done} failed notification(s)")?;
    Ok(())
}

/// The cancel of the API's route, by an operator: the same statement, and counted the same.
async fn cancel(store: &Store, relay: &Relay, id: Uuid, out: &mut dyn Write) -> Result<(), AdminError> {
    match store.cancel(id, "notify-relay admin cancel").await? {
        Cancellation::Cancelled { .. } => {
            let mut tally = Tally::default();
            tally.add(events::CANCELLED, None, 1);
            writeln!(out, "cancelled notification {id}: it will not be sent")?;
            // The cancel is committed: a counter Redis could not take does not undo it.
            if let Err(e) = relay.enqueue(&[], &tally, &events::today()).await {
                eprintln!("notify-relay: the CANCELLED counter could not be written: {}", e.chain());
            }
            Ok(())
        }
        Cancellation::NotFound => Err(AdminError::NotFound(format!("no notification {id}"))),
        Cancellation::TooLate { status, fanning_out } => {
            Err(AdminError::Conflict(cancel_refused(id, &status, fanning_out)))
        }
    }
}

fn print_topics(topics: &[(String, i64)], out: &mut dyn Write) -> std::io::Result<()> {
    if topics.is_empty() {
        return writeln!(out, "no topic has subscribers");
    }
    writeln!(out, "{:<40} {:>11}", "TOPIC", "SUBSCRIBERS")?;
    for (topic, subscribers) in topics {
        writeln!(out, "{topic:<40} {subscribers:>11}")?;
    }
    writeln!(out, "{} topic(s)", topics.len())
}

/// A progress bar on stderr, drawn only when stderr is a terminal and the job is large.
struct Progress {
    total: u64,
    draw: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        use std::io::IsTerminal;
        Progress { total, draw: total >= 1000 && std::io::stderr().is_terminal() }
    }

    fn show(&mut self, done: u64) {
        if self.draw {
            let width = 40;
            let filled = (done.min(self.total) * width / self.total.max(1)) as usize;
            eprint!("\r[{}{}] {done}/{}", "#".repeat(filled), " ".repeat(width as usize - filled), self.total);
        }
    }

    fn finish(&self) {
        if self.draw {
            eprintln!();
        }
    }
}

fn print_letters(letters: &[DeadLetterEntry], out: &mut dyn Write) -> std::io::Result<()> {
    if letters.is_empty() {
        return writeln!(out, "no dead letters");
    }
    writeln!(out, "{:<24} {:<18} {:<8} {:>8}  {:<36}  ERROR", "ID", "REASON", "PROVIDER", "ATTEMPTS", "NOTIFICATION")?;
    for l in letters {
        let notification = l.job.get("notification_id").and_then(|v| v.as_str()).unwrap_or("-");
        let error: String = l.error.chars().take(80).collect();
        writeln!(
            out,
            "{:<24} {:<18} {:<8} {:>8}  {:<36}  {error}",
            l.id, l.reason, l.provider, l.attempts, notification
        )?;
    }
    writeln!(out, "{} dead letter(s)", letters.len())
}

/// `2026-11-01`, an RFC 3339 time, or a span ago: `90s`, `30m`, `24h`, `7d`.
pub fn parse_since(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).ok_or_else(|| format!("--since {raw}: bad date"));
    }
    // The unit is the last character, whatever its width (a byte split could cut one in two).
    let bad = || format!("--since {raw}: expected a date, an RFC 3339 time or e.g. 24h");
    let (at, unit) = raw.char_indices().last().ok_or_else(bad)?;
    let n: i64 = raw[..at].parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(format!("--since {raw}: a span back from now cannot be negative"));
    }
    let span = match unit {
        's' => chrono::Duration::try_seconds(n),
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => return Err(format!("--since {raw}: the unit must be s, m, h or d")),
    };
    span.and_then(|span| Utc::now().checked_sub_signed(span)).ok_or_else(|| format!("--since {raw}: too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_and_spans() {
        assert_eq!(parse_since("2026-11-01").unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(parse_since("2026-11-01T10:00:00Z").unwrap().to_rfc3339(), "2026-11-01T10:00:00+00:00");
        let day_ago = parse_since("24h").unwrap();
        assert!((Utc::now() - day_ago - chrono::Duration::hours(24)).num_seconds().abs() < 5);
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("5w").unwrap_err().contains("unit"));
    }

    #[test]
    fn since_refuses_spans_it_cannot_compute_instead_of_panicking() {
        // A multibyte last character (a byte split would cut it), nothing, a unit alone.
        for raw in ["1é", "24ч", "é", "", "h", "1 d"] {
            assert!(parse_since(raw).is_err(), "{raw}");
        }
        // Spans beyond what chrono (or the calendar) can hold.
        for raw in [&format!("{}d", i64::MAX), &format!("{}s", i64::MAX), "9223372036854775807h", "300000000d"] {
            assert!(parse_since(raw).unwrap_err().contains("too far back"), "{raw}");
        }
        assert!(parse_since("-5d").unwrap_err().contains("negative"));
        assert!(parse_since("99999999999999999999d").is_err(), "over i64");
    }
}
