//! Targets as Postgres has them now: what a stream entry is checked against before its send.

use super::{split_targets, Store, Target};
use crate::error::Result;
use std::collections::HashMap;

/// A target as Postgres has it when its entry is about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    /// Delivered, failed or expired already.
    pub finished: bool,
    /// The device row as it is now (None: deleted).
    pub device: Option<DeviceNow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNow {
    pub user_id: String,
    pub token: String,
    pub disabled: bool,
}

impl TargetState {
    /// Why a job for this target must not be sent even though the target is not final: its
    /// device went away, or is no longer the device the job was made for.
    pub fn withdrawn(&self, user_id: &str, token: &str) -> Option<&'static str> {
        match &self.device {
            None => Some("not sent: the device was deleted before the send"),
            Some(d) if d.disabled => Some("not sent: the device was removed or disabled before the send"),
            Some(d) if d.user_id != user_id => Some("not sent: the device was given to another user before the send"),
            Some(d) if d.token != token => Some("not sent: the device's token changed before the send"),
            Some(_) => None,
        }
    }
}

impl Store {
    /// What Postgres says about each of these targets now (one query for the whole batch): an
    /// entry read from a stream is checked against it before anything is sent, whatever Redis
    /// remembers — a Redis restored from an old snapshot hands out again work that Postgres
    /// knows is done. Targets missing from the answer have no `delivery` row any more.
    pub async fn target_states(&self, targets: &[Target]) -> Result<HashMap<Target, TargetState>> {
        if targets.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached(
                // One primary-key probe per target whatever the statistics say (KEYED_PLANS in
                // store/mod.rs tells why): OFFSET 0 keeps each LATERAL a subquery run per row,
                // which the planner may not turn into a hash join over the whole table.
                "SELECT u.n, u.dev_id, d.status IN ('delivered', 'failed', 'expired'),
                        dev.user_id, dev.token, dev.disabled_at IS NOT NULL
                   FROM unnest($1::uuid[], $2::uuid[]) AS u(n, dev_id)
                   CROSS JOIN LATERAL (SELECT status FROM delivery
                                        WHERE notification_id = u.n AND device_id = u.dev_id OFFSET 0) d
                   LEFT JOIN LATERAL (SELECT user_id, token, disabled_at FROM device
                                       WHERE id = u.dev_id OFFSET 0) dev ON true",
            )
            .await?;
        let (n, dev) = split_targets(targets.iter().copied());
        let mut states = HashMap::with_capacity(targets.len());
        for r in client.query(&stmt, &[&n, &dev]).await? {
            let target: Target = (r.try_get(0)?, r.try_get(1)?);
            let state = TargetState {
                finished: r.try_get(2)?,
                device: match r.try_get::<_, Option<String>>(3)? {
                    None => None,
                    Some(user_id) => {
                        Some(DeviceNow { user_id, token: r.try_get(4)?, disabled: r.try_get(5).unwrap_or(false) })
                    }
                },
            };
            states.insert(target, state);
        }
        Ok(states)
    }
}
