//! ReceiptPoller: fetches the receipts of Expo tickets.
//!
//! An ok ticket only means Expo accepted the message; whether APNs or FCM took it is in the
//! receipt, available a while later (`providers.expo.receipt_delay_ms`, 15 minutes by default).
//! The outcome writer stores each ticket with the time its receipt is due
//! (`delivery.receipt_due_at`, in the transaction that marks the target delivered), so the
//! bookkeeping lives in Postgres with everything else: a restart of the relay, a crash of the
//! poller or a Redis flush loses no receipt. The poller leases due receipts (see
//! [`crate::store::receipts`]; several schedulers share the work), asks Expo in calls of at most
//! 1000 ids, and acts on errors: `DeviceNotRegistered` disables the device, any error is kept in
//! the delivery's `last_error`. Only then is a receipt no longer due. Receipts Expo does not have
//! yet are asked for again later, until they are 24 hours old (Expo keeps them that long). When
//! Expo or Postgres fails, the leased receipts stay due and are asked for once the lease ran out.

use crate::error::Result;
use crate::events;
use crate::job::SendResult;
use crate::periodic::PeriodicJob;
use crate::providers::expo::ExpoSettings;
use crate::providers::expo::{ExpoClient, MAX_RECEIPT_IDS};
use crate::store::receipts::{DueReceipt, ReceiptVerdict};
use crate::store::Store;
use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// Expo keeps receipts for a day; after that there is nothing left to ask for.
const RECEIPT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long to wait before asking again for receipts Expo did not have yet.
const NOT_READY_RETRY: Duration = Duration::from_secs(60);
/// The shortest lease, whatever the Expo timeout.
const MIN_LEASE: Duration = Duration::from_secs(1);

/// The receipt poller's job: fetch the receipts that are due, and act on them.
pub struct PollReceipts {
    client: Rc<ExpoClient>,
    store: Store,
    interval: Duration,
    lease: Duration,
}

impl PollReceipts {
    pub fn new(expo: &ExpoSettings, store: Store) -> Self {
        PollReceipts {
            client: Rc::new(ExpoClient::new(expo)),
            store,
            interval: expo.receipt_poll,
            lease: lease_for(expo.timeout),
        }
    }
}

impl PeriodicJob for PollReceipts {
    const NAME: &'static str = "receipts-expo";
    const KIND: &'static str = "receipt_poller";

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn step(&self, log: &Logger) -> impl Future<Output = Result<usize>> + use<> {
        poll(self.client.clone(), self.store.clone(), self.lease, log.clone())
    }
}

/// How long leased receipts are kept from other pollers: one getReceipts call (bounded by the
/// Expo timeout) and the write after it, with room to spare. It is also how long a receipt waits
/// after a failed call or write. A lease that runs out early costs a second question to Expo,
/// whose answer is applied again to the same effect; nothing is lost or doubled.
pub fn lease_for(expo_timeout: Duration) -> Duration {
    expo_timeout.saturating_mul(2).max(MIN_LEASE)
}

/// One pass: leases due receipts, 1000 at a time, until none is due. Returns how many were
/// answered.
async fn poll(client: Rc<ExpoClient>, store: Store, lease: Duration, log: Logger) -> Result<usize> {
    let mut answered = 0;
    loop {
        let due = store.lease_receipts(MAX_RECEIPT_IDS, lease).await?;
        if due.is_empty() {
            break;
        }
        let ids: Vec<&str> = due.iter().filter_map(|r| r.ticket.as_deref()).collect();
        let answers: HashMap<String, SendResult> = if ids.is_empty() {
            HashMap::new()
        } else {
            match client.receipts(&ids).await {
                Ok(answers) => answers.into_iter().collect(),
                Err(error) => {
                    // Expo unreachable: the receipts stay leased and are asked for again once
                    // the lease ran out.
                    warn!(log, "receipts not fetched; will retry"; "error" => %error, "count" => due.len(), "retry_in_ms" => lease.as_millis() as u64);
                    return Ok(answered);
                }
            }
        };
        let now = SystemTime::now();
        let verdicts: Vec<(&DueReceipt, ReceiptVerdict)> =
            due.iter().map(|r| (r, verdict(r, r.ticket.as_ref().and_then(|t| answers.get(t)), now))).collect();
        store.settle_receipts(&verdicts).await?;
        log_verdicts(&log, &verdicts);
        answered += verdicts.iter().filter(|(_, v)| matches!(v, ReceiptVerdict::Answered { .. })).count();
        if due.len() < MAX_RECEIPT_IDS {
            break;
        }
    }
    Ok(answered)
}

/// What to do with a leased receipt, given Expo's answer for its ticket (None: Expo has none).
fn verdict(receipt: &DueReceipt, answer: Option<&SendResult>, now: SystemTime) -> ReceiptVerdict {
    match answer {
        Some(SendResult::Delivered { .. }) => ReceiptVerdict::Answered { error: None, disable: false },
        Some(SendResult::InvalidToken { error }) => {
            ReceiptVerdict::Answered { error: Some(format!("receipt: {error}")), disable: true }
        }
        Some(other) => ReceiptVerdict::Answered {
            error: Some(format!("receipt: {}", other.error().unwrap_or_default())),
            disable: false,
        },
        None if receipt.ticket.is_none() => ReceiptVerdict::GiveUp,
        None => {
            // No delivery time (which a delivered row always has) counts as too old to ask.
            let kept_until = receipt.delivered_at.and_then(|at| at.checked_add(RECEIPT_LIFETIME));
            if kept_until.is_some_and(|until| now < until) {
                ReceiptVerdict::AskAgain(NOT_READY_RETRY)
            } else {
                ReceiptVerdict::GiveUp
            }
        }
    }
}

fn log_verdicts(log: &Logger, verdicts: &[(&DueReceipt, ReceiptVerdict)]) {
    for (r, v) in verdicts {
        let (notification_id, device_id) = r.target;
        match v {
            ReceiptVerdict::Answered { error: Some(error), disable: true } => {
                info!(log, "receipt: device not registered; device disabled"; "event" => events::DEVICE_DISABLED,
                      "notification_id" => %notification_id, "trace_id" => &r.trace_id, "provider" => "expo",
                      "device_id" => %device_id, "error" => error);
            }
            ReceiptVerdict::Answered { error: Some(error), .. } => {
                warn!(log, "receipt error"; "event" => events::RECEIPT_ERROR, "notification_id" => %notification_id,
                      "trace_id" => &r.trace_id, "provider" => "expo", "error" => error);
            }
            ReceiptVerdict::GiveUp => {
                warn!(log, "receipt given up: Expo no longer keeps it"; "event" => events::RECEIPT_ERROR,
                      "notification_id" => %notification_id, "trace_id" => &r.trace_id, "provider" => "expo",
                      "ticket" => r.ticket.as_deref().unwrap_or_default());
            }
            ReceiptVerdict::Answered { error: None, .. } | ReceiptVerdict::AskAgain(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn leased(ticket: Option<&str>, delivered_ago: Duration, now: SystemTime) -> DueReceipt {
        DueReceipt {
            target: (Uuid::new_v4(), Uuid::new_v4()),
            ticket: ticket.map(str::to_string),
            trace_id: "t".into(),
            delivered_at: Some(now - delivered_ago),
        }
    }

    #[test]
    fn an_answer_settles_the_receipt_and_a_dead_token_disables_the_device() {
        let now = SystemTime::now();
        let r = leased(Some("tk"), Duration::from_secs(900), now);
        let ok = SendResult::Delivered { provider_message_id: None };
        assert_eq!(verdict(&r, Some(&ok), now), ReceiptVerdict::Answered { error: None, disable: false });
        let gone = SendResult::InvalidToken { error: "expo: DeviceNotRegistered".into() };
        assert_eq!(
            verdict(&r, Some(&gone), now),
            ReceiptVerdict::Answered { error: Some("receipt: expo: DeviceNotRegistered".into()), disable: true }
        );
        let big = SendResult::Permanent { error: "expo: MessageTooBig".into() };
        assert_eq!(
            verdict(&r, Some(&big), now),
            ReceiptVerdict::Answered { error: Some("receipt: expo: MessageTooBig".into()), disable: false }
        );
    }

    #[test]
    fn a_receipt_expo_does_not_have_is_asked_again_while_expo_may_still_have_it() {
        let now = SystemTime::now();
        let young = leased(Some("tk"), Duration::from_secs(23 * 3600), now);
        assert_eq!(verdict(&young, None, now), ReceiptVerdict::AskAgain(NOT_READY_RETRY));
        let old = leased(Some("tk"), RECEIPT_LIFETIME, now);
        assert_eq!(verdict(&old, None, now), ReceiptVerdict::GiveUp);
        let no_ticket = leased(None, Duration::ZERO, now);
        assert_eq!(verdict(&no_ticket, None, now), ReceiptVerdict::GiveUp);
        let undated = DueReceipt { delivered_at: None, ..young };
        assert_eq!(verdict(&undated, None, now), ReceiptVerdict::GiveUp);
    }

    #[test]
    fn the_lease_outlasts_two_expo_timeouts() {
        assert_eq!(lease_for(Duration::from_secs(10)), Duration::from_secs(20));
        assert_eq!(lease_for(Duration::from_millis(100)), MIN_LEASE);
        assert_eq!(lease_for(Duration::MAX), Duration::MAX);
    }
}
