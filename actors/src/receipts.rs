//! ReceiptPoller: fetches the receipts of Expo tickets.
//!
//! An ok ticket only means Expo accepted the message; whether APNs or FCM took it is in the
//! receipt, available a while later (`providers.expo.receipt_delay_ms`, 15 minutes by default).
//! The outcome writer parks each ticket in its shard's `receipts` sorted set, scored by when the
//! receipt is due — in Redis, so the bookkeeping survives a restart of the relay. The poller takes
//! due tickets (atomically, so several schedulers share the work), asks Expo in calls of at most
//! 1000 ids, and acts on errors: `DeviceNotRegistered` disables the device, any error is kept in
//! the delivery's `last_error`. Receipts Expo does not have yet are asked for again later, until
//! they are 24 hours old (Expo keeps them that long).

use crate::error::Result;
use crate::events;
use crate::job::SendResult;
use crate::messages::PollReceipts;
use crate::providers::expo::{ExpoClient, MAX_RECEIPT_IDS};
use crate::registry::Envelope;
use crate::relay::{PendingReceipt, Relay};
use crate::store::Store;
use crate::supervisor::{tick, Lifecycle, Shutdown, Supervisable};
use actix::prelude::*;
use slog::{info, warn, Logger};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Expo keeps receipts for a day; after that there is nothing left to ask for.
const RECEIPT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long to wait before asking again for receipts Expo did not have yet.
const NOT_READY_RETRY: Duration = Duration::from_secs(60);

pub struct ReceiptPoller {
    life: Lifecycle,
    client: Rc<ExpoClient>,
    relay: Relay,
    store: Store,
    interval: Duration,
    shutdown: Shutdown,
}

impl ReceiptPoller {
    pub fn new(
        life: Lifecycle,
        client: ExpoClient,
        relay: Relay,
        store: Store,
        interval: Duration,
        shutdown: Shutdown,
    ) -> Self {
        ReceiptPoller { life, client: Rc::new(client), relay, store, interval, shutdown }
    }
}

/// One pass over every shard: returns how many receipts were settled.
async fn poll(client: Rc<ExpoClient>, relay: Relay, store: Store, log: Logger) -> Result<usize> {
    let mut settled = 0;
    for shard in relay.keys().shard_ids() {
        loop {
            let due = relay.take_due_receipts(shard, MAX_RECEIPT_IDS).await?;
            if due.is_empty() {
                break;
            }
            let asked = due.len();
            let ids: Vec<&str> = due.iter().map(|r| r.id.as_str()).collect();
            let answers = match client.receipts(&ids).await {
                Ok(answers) => answers,
                Err(error) => {
                    // Expo unreachable: keep the tickets and ask again later.
                    warn!(log, "receipts not fetched; will retry"; "error" => &error, "count" => due.len());
                    relay.defer_receipts(shard, &due, SystemTime::now() + NOT_READY_RETRY).await?;
                    return Ok(settled);
                }
            };
            let mut errors = Vec::new();
            let mut answered = std::collections::HashSet::new();
            for (id, result) in answers {
                answered.insert(id.clone());
                let Some(receipt) = due.iter().find(|r| r.id == id) else { continue };
                match result {
                    SendResult::Delivered { .. } => {}
                    SendResult::InvalidToken { error } => {
                        info!(log, "receipt: device not registered; device disabled"; "event" => events::DEVICE_DISABLED,
                              "notification_id" => %receipt.notification_id, "trace_id" => &receipt.trace_id,
                              "provider" => "expo", "device_id" => %receipt.device_id);
                        errors.push(((receipt.notification_id, receipt.device_id), format!("receipt: {error}"), true));
                    }
                    other => {
                        let error = format!("receipt: {}", other.error().unwrap_or_default());
                        warn!(log, "receipt error"; "event" => events::RECEIPT_ERROR, "notification_id" => %receipt.notification_id,
                              "trace_id" => &receipt.trace_id, "provider" => "expo", "error" => &error);
                        errors.push(((receipt.notification_id, receipt.device_id), error, false));
                    }
                }
            }
            store.record_receipt_errors(&errors).await?;
            settled += answered.len();
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            let not_ready: Vec<PendingReceipt> = due
                .into_iter()
                .filter(|r| !answered.contains(&r.id))
                .filter(|r| now_ms.saturating_sub(r.sent_ms) < RECEIPT_LIFETIME.as_millis() as u64)
                .collect();
            relay.defer_receipts(shard, &not_ready, SystemTime::now() + NOT_READY_RETRY).await?;
            if asked < MAX_RECEIPT_IDS {
                break;
            }
        }
    }
    Ok(settled)
}

impl Actor for ReceiptPoller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        tick(ctx, delay, self.interval, self.life.stats.clone(), self.shutdown.clone(), || PollReceipts);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervisable for ReceiptPoller {
    fn life(&mut self) -> &mut Lifecycle {
        &mut self.life
    }
}

impl Supervised for ReceiptPoller {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
    }
}

impl Handler<Envelope<PollReceipts>> for ReceiptPoller {
    type Result = ();

    fn handle(&mut self, _: Envelope<PollReceipts>, ctx: &mut Context<Self>) {
        let fut = poll(self.client.clone(), self.relay.clone(), self.store.clone(), self.life.log.clone());
        self.run_step(ctx, fut);
    }
}
