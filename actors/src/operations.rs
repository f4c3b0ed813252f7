//! Repairs that span Postgres and Redis, shared by the admin API and the admin command line.

use crate::error::Result;
use crate::job::Job;
use crate::relay::admin::DeadLetterEntry;
use crate::relay::Relay;
use crate::store::Store;
use serde::Serialize;
use std::collections::HashSet;

/// What a requeue of dead letters did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequeueReport {
    /// Ids of the dead letters whose jobs are back in the stream.
    pub requeued: Vec<String>,
    /// The rest, with the reason; they stay in the dead-letter stream.
    pub skipped: Vec<Skipped>,
}

/// A dead letter that was not requeued.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

/// Requeues dead letters: their targets are reset in Postgres first (`failed` → `queued`, no
/// attempts), then their jobs written back to the stream and the letters removed. A crash in
/// between leaves `queued` targets without entries, which the sweep re-enqueues. Letters without
/// a parsable job, or whose target is no longer failed (retried or delivered since), are skipped.
pub async fn requeue_dead_letters(
    store: &Store,
    relay: &Relay,
    letters: Vec<DeadLetterEntry>,
) -> Result<RequeueReport> {
    let mut report = RequeueReport::default();
    let mut candidates: Vec<(DeadLetterEntry, Job)> = Vec::new();
    for letter in letters {
        match letter.parsed_job() {
            Some(job) => candidates.push((letter, job)),
            None => {
                report.skipped.push(Skipped { reason: format!("no job to requeue ({})", letter.error), id: letter.id })
            }
        }
    }
    let targets: Vec<_> = candidates.iter().map(|(_, job)| job.target()).collect();
    let reset: HashSet<_> = store.reset_failed_targets(&targets).await?.into_iter().collect();
    let (go, stale): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|(_, job)| reset.contains(&job.target()));
    let no_longer =
        |(l, _): (DeadLetterEntry, Job)| Skipped { id: l.id, reason: "its target is no longer failed".into() };
    report.skipped.extend(stale.into_iter().map(no_longer));
    relay.requeue_dead_letters(&go).await?;
    report.requeued = go.into_iter().map(|(l, _)| l.id).collect();
    Ok(report)
}
