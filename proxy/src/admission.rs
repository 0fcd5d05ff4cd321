//! Credit admission, in memory: balances arrive from the ledger on the
//! balances topic; each request reserves its maximum cost against the last
//! known balance minus this instance's outstanding reservations, and the
//! reservation is released when a balance update says the ledger has
//! applied the request's event. So the overshoot past zero is at most one
//! request's maximum cost per gateway instance.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::billing::BalanceUpdate;
use tollgate_core::eventlog::topics;
use tollgate_core::{AccountId, Envelope, EventBody, EventLog, Usd};

/// A reservation whose event never showed up (lost, or a ledger outage
/// longer than this) stops holding credit after this long.
const RESERVATION_TTL: Duration = Duration::from_secs(600);
/// Stale reservations are looked for at most this often per account: the
/// sweep walks every outstanding reservation, too much work for each request.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct AccountCredit {
    balance: Usd,
    known: bool,
    reserved: Usd,
    /// Requests still running: reservation id → (max cost, when reserved).
    running: HashMap<u64, (Usd, Instant)>,
    /// Requests whose usage event was emitted: event sequence → (max cost,
    /// when reserved). Released once the ledger has applied that sequence.
    emitted: BTreeMap<u64, (Usd, Instant)>,
    /// When stale reservations were last looked for.
    swept_at: Option<Instant>,
}

impl AccountCredit {
    fn release_through(&mut self, seq: u64) {
        let kept = self.emitted.split_off(&(seq + 1));
        for (cost, _) in self.emitted.values() {
            self.reserved -= *cost;
        }
        self.emitted = kept;
    }

    fn release_stale(&mut self, now: Instant) {
        if self
            .swept_at
            .is_some_and(|at| now.duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        self.swept_at = Some(now);
        let stale = |at: &Instant| now.duration_since(*at) > RESERVATION_TTL;
        let mut freed = Usd::ZERO;
        self.running.retain(|_, (cost, at)| {
            let keep = !stale(at);
            if !keep {
                freed += *cost;
            }
            keep
        });
        self.emitted.retain(|_, (cost, at)| {
            let keep = !stale(at);
            if !keep {
                freed += *cost;
            }
            keep
        });
        self.reserved -= freed;
    }
}

pub struct Admission {
    /// When false every request is admitted (balances are still tracked).
    pub enforce: bool,
    instance_id: String,
    accounts: Mutex<HashMap<AccountId, AccountCredit>>,
    /// Next offset to read per balances-topic partition.
    positions: Mutex<HashMap<u32, u64>>,
}

/// Refused: the account's available credit is at or below zero. Carries
/// what the refusal message tells the client: available = balance − reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insufficient {
    pub available: Usd,
    /// The last balance the ledger published (zero before the first).
    pub balance: Usd,
    /// This instance's reservations for requests not yet covered by it.
    pub reserved: Usd,
}

impl Admission {
    pub fn new(enforce: bool, instance_id: String) -> Admission {
        Admission {
            enforce,
            instance_id,
            accounts: Mutex::new(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
        }
    }

    /// Admit and reserve `max_cost` for a request (`reservation` is unique
    /// per request in this instance), or refuse.
    pub fn admit(
        &self,
        account: &AccountId,
        reservation: u64,
        max_cost: Usd,
    ) -> Result<(), Insufficient> {
        if !self.enforce {
            return Ok(());
        }
        let mut accounts = self.accounts.lock();
        let credit = accounts.entry(account.clone()).or_default();
        let now = Instant::now();
        credit.release_stale(now);
        let available = credit.balance - credit.reserved;
        if available <= Usd::ZERO {
            return Err(Insufficient {
                available,
                balance: credit.balance,
                reserved: credit.reserved,
            });
        }
        credit.reserved += max_cost;
        credit.running.insert(reservation, (max_cost, now));
        Ok(())
    }

    /// The request's usage event was emitted with sequence `seq`: from now on
    /// a balance update covering `seq` releases its reservation. (Sequences
    /// are assigned in the order events enter the log, so a later request
    /// finishing first cannot release an earlier one still running.)
    pub fn emitted(&self, account: &AccountId, reservation: u64, seq: u64) {
        if !self.enforce {
            return;
        }
        let mut accounts = self.accounts.lock();
        if let Some(credit) = accounts.get_mut(account) {
            if let Some(held) = credit.running.remove(&reservation) {
                credit.emitted.insert(seq, held);
            }
        }
    }

    /// Last known balance and this instance's outstanding reservations.
    pub fn credit(&self, account: &AccountId) -> Option<(Usd, Usd)> {
        let accounts = self.accounts.lock();
        accounts
            .get(account)
            .filter(|c| c.known)
            .map(|c| (c.balance, c.reserved))
    }

    pub fn apply(&self, update: &BalanceUpdate) {
        let mut accounts = self.accounts.lock();
        let credit = accounts.entry(update.account_id.clone()).or_default();
        credit.balance = update.balance;
        credit.known = true;
        if let Some(seq) = update.applied.get(&self.instance_id) {
            credit.release_through(*seq);
        }
    }

    /// Read balance updates published since the last call.
    pub async fn catch_up(
        &self,
        log: &dyn EventLog,
    ) -> Result<usize, tollgate_core::EventLogError> {
        let topic = topics::BALANCES;
        let mut applied = 0;
        for partition in 0..log.partitions(topic).await? {
            loop {
                let from = self.positions.lock().get(&partition).copied().unwrap_or(0);
                let records = log.read(topic, partition, from, 5_000).await?;
                let Some(last) = records.last() else { break };
                let next = last.offset + 1;
                for record in &records {
                    if let Ok(Envelope {
                        body: EventBody::Balance(update),
                        ..
                    }) = serde_json::from_slice::<Envelope>(&record.payload)
                    {
                        self.apply(&update);
                        applied += 1;
                    }
                }
                self.positions.lock().insert(partition, next);
                if records.len() < 5_000 {
                    break;
                }
            }
        }
        Ok(applied)
    }

    /// Keep balances current (they reach this instance within `every`).
    pub fn spawn_tail(
        self: &Arc<Self>,
        log: Arc<dyn EventLog>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let admission = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(admission) = admission.upgrade() else {
                    break;
                };
                if let Err(err) = admission.catch_up(log.as_ref()).await {
                    tracing::warn!(error = %err, "balance updates could not be read; retrying");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn usd(s: &str) -> Usd {
        Usd::from_str(s).unwrap()
    }

    fn update(balance: &str, applied: &[(&str, u64)]) -> BalanceUpdate {
        BalanceUpdate {
            account_id: AccountId::from("acct"),
            balance: usd(balance),
            as_of: chrono::Utc::now(),
            applied: applied.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn reserves_until_the_balance_is_used_up_then_refuses() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        assert!(
            admission.admit(&account, 1, usd("0.01")).is_err(),
            "unknown balance is zero"
        );
        admission.apply(&update("1.00", &[]));
        assert!(admission.admit(&account, 1, usd("0.60")).is_ok());
        assert!(
            admission.admit(&account, 2, usd("0.60")).is_ok(),
            "0.40 was still available"
        );
        let refused = admission.admit(&account, 3, usd("0.60")).unwrap_err();
        assert_eq!(refused.available, usd("-0.20"));
        assert_eq!(refused.balance, usd("1.00"));
        assert_eq!(refused.reserved, usd("1.20"));
        // Request 2 ends first (event seq 1); request 1 is still running.
        admission.emitted(&account, 2, 1);
        admission.apply(&update("0.90", &[("gw_1", 1), ("gw_other", 99)]));
        assert_eq!(
            admission.credit(&account),
            Some((usd("0.90"), usd("0.60"))),
            "the running request keeps its reservation"
        );
        assert!(admission.admit(&account, 4, usd("0.60")).is_ok());
        assert!(admission.admit(&account, 5, usd("0.60")).is_err());
        // Request 1 ends (seq 2) and the ledger applies it.
        admission.emitted(&account, 1, 2);
        admission.apply(&update("0.80", &[("gw_1", 2)]));
        assert_eq!(admission.credit(&account), Some((usd("0.80"), usd("0.60"))));
    }

    #[test]
    fn enforcement_can_be_switched_off() {
        let admission = Admission::new(false, "gw_1".into());
        assert!(admission
            .admit(&AccountId::from("acct"), 1, usd("100"))
            .is_ok());
    }
}
