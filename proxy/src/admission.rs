//! Credit admission, in memory. Balances arrive from the ledger on the
//! balances topic. Per account this instance keeps the last published
//! balance, the maximum cost of its requests in flight (`reserved`) and the
//! actual cost of its finished requests that balance does not include yet
//! (`unconfirmed`). A request is admitted while
//! `balance − reserved − unconfirmed > 0` and reserves its maximum cost;
//! when it ends its reservation becomes its actual cost, which is released
//! once a balance update says the ledger applied its event. See
//! `docs/ledger.md` (Admission) for the bounds this gives.

use parking_lot::Mutex;
use prometheus::Histogram;
use rust_decimal::Decimal;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::billing::BalanceUpdate;
use tollgate_core::{AccountId, Envelope, EventBody, Usd};
use tollgate_eventlog::topics;
use tollgate_eventlog::EventLog;

/// A request that has not ended after this long stops holding credit: an
/// escape hatch should a request's end ever go unrecorded (every admitted
/// request ends through its meter, so this is not expected to fire).
const RESERVATION_TTL: Duration = Duration::from_secs(600);
/// Stale reservations are looked for at most this often per account: the
/// sweep walks every running reservation, too much work for each request.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Finished-but-unconfirmed costs are kept as at most this many sums per
/// account (40 bytes each), so memory stays bounded however long the ledger
/// is away. Below it every event has its own sum and nothing is held once
/// applied: a round trip's worth of one account's events fits at thousands
/// of requests a second.
pub const UNCONFIRMED_BUCKETS: usize = 1024;
/// A reservation holds at most this share of the published balance, so one
/// request whose maximum costs more than the account has cannot hold all of
/// it (and refuse every other request) while it runs.
const RESERVATION_CAP: Decimal = Decimal::from_parts(5, 0, 0, false, 1);

/// The summed actual cost of finished requests with event sequences up to
/// `through` (and above the previous bucket's).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    through: u64,
    cost: Usd,
    /// When the newest of these events was emitted.
    at: Instant,
}

#[derive(Default)]
struct AccountCredit {
    balance: Usd,
    known: bool,
    reserved: Usd,
    /// Requests still running: reservation id → (amount held, when reserved).
    running: HashMap<u64, (Usd, Instant)>,
    /// Actual costs of emitted events not yet covered by a balance update,
    /// in sequence order; `unconfirmed` is their sum.
    buckets: VecDeque<Bucket>,
    unconfirmed: Usd,
    /// The last sequence of the last sum released: every event up to it
    /// is no longer held.
    released: Option<u64>,
    /// When stale reservations were last looked for.
    swept_at: Option<Instant>,
}

impl AccountCredit {
    fn available(&self) -> Usd {
        self.balance - self.reserved - self.unconfirmed
    }

    /// Record a finished request's actual cost under its event sequence
    /// (sequences arrive in increasing order: they are assigned under the
    /// gateway's emit lock, which is held while this runs).
    fn finished(&mut self, seq: u64, cost: Usd, at: Instant) {
        if cost == Usd::ZERO {
            return; // nothing to hold
        }
        self.unconfirmed += cost;
        self.buckets.push_back(Bucket {
            through: seq,
            cost,
            at,
        });
        if self.buckets.len() > UNCONFIRMED_BUCKETS {
            self.coalesce();
        }
    }

    /// Merge neighbouring sums, oldest first, while a merged sum stays at
    /// most 4/`UNCONFIRMED_BUCKETS` of what is pending. Any two neighbours
    /// left exceed that, so at most half the limit (+1) remain: O(1) work
    /// per event amortized. A merged sum is released only when its last
    /// sequence is covered, so merging errs toward holding, by at most one
    /// sum (the one the applied sequence falls in).
    fn coalesce(&mut self) {
        let most = self.unconfirmed * (Decimal::from(4) / Decimal::from(UNCONFIRMED_BUCKETS));
        let mut merged: VecDeque<Bucket> = VecDeque::with_capacity(self.buckets.capacity());
        for bucket in self.buckets.drain(..) {
            match merged.back_mut() {
                Some(last) if last.cost + bucket.cost <= most => {
                    last.cost += bucket.cost;
                    last.through = bucket.through;
                    last.at = bucket.at;
                }
                _ => merged.push_back(bucket),
            }
        }
        self.buckets = merged;
    }

    /// The ledger applied this instance's events up to `seq`; each sum
    /// released times one ledger round trip (from its newest event).
    fn release_through(&mut self, seq: u64, round_trip: Option<&Histogram>) {
        let now = Instant::now();
        while let Some(bucket) = self.buckets.front().copied() {
            if bucket.through > seq {
                break;
            }
            self.unconfirmed -= bucket.cost;
            self.buckets.pop_front();
            self.released = Some(bucket.through);
            if let Some(histogram) = round_trip {
                histogram.observe(now.duration_since(bucket.at).as_secs_f64());
            }
        }
    }

    /// The event with sequence `seq` (cost `cost`) never reached the log:
    /// the ledger will not apply it, so its cost is no longer held.
    fn lost(&mut self, seq: u64, cost: Usd) {
        if self.released.is_some_and(|through| seq <= through) {
            return; // its sum was released already (a later event covered it)
        }
        // Sums cover consecutive ranges: the first reaching `seq` holds it.
        if let Some(bucket) = self.buckets.iter_mut().find(|b| b.through >= seq) {
            let freed = cost.min(bucket.cost);
            bucket.cost -= freed;
            self.unconfirmed -= freed;
        }
    }

    fn release_stale(&mut self, now: Instant) {
        if self
            .swept_at
            .is_some_and(|at| now.duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        self.swept_at = Some(now);
        let mut freed = Usd::ZERO;
        self.running.retain(|_, (held, at)| {
            let keep = now.duration_since(*at) <= RESERVATION_TTL;
            if !keep {
                freed += *held;
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
    /// Ledger round trips: a usage event's emission to the balance update
    /// covering it being applied here.
    round_trip: Option<Histogram>,
}

/// Refused: the account's available credit is at or below zero. Carries
/// what the refusal message tells the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insufficient {
    /// balance − reserved − unconfirmed.
    pub available: Usd,
    /// The last balance the ledger published (zero before the first).
    pub balance: Usd,
    /// Held by this instance: reservations of requests in flight plus the
    /// actual cost of finished requests the balance does not include yet.
    pub held: Usd,
}

/// One account's credit as this instance sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credit {
    /// The last balance the ledger published.
    pub balance: Usd,
    /// Reservations of this instance's requests in flight.
    pub reserved: Usd,
    /// Actual cost of this instance's finished requests the balance does
    /// not include yet.
    pub unconfirmed: Usd,
}

impl Admission {
    pub fn new(enforce: bool, instance_id: String) -> Admission {
        Admission {
            enforce,
            instance_id,
            accounts: Mutex::new(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
            round_trip: None,
        }
    }

    /// Record each ledger round trip in `histogram`.
    pub fn timing_round_trips(mut self, histogram: Histogram) -> Admission {
        self.round_trip = Some(histogram);
        self
    }

    /// Admit a request whose maximum cost is `max_cost` (`reservation` is
    /// unique per request in this instance) and hold credit for it, or
    /// refuse. The amount held is `max_cost`, capped at half the published
    /// balance: a request dearer than that can overshoot by its excess, and
    /// at most two such requests run at once (`docs/ledger.md`, Admission).
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
        let available = credit.available();
        if available <= Usd::ZERO {
            return Err(Insufficient {
                available,
                balance: credit.balance,
                held: credit.reserved + credit.unconfirmed,
            });
        }
        // available > 0 implies balance > 0, so the cap is positive.
        let held = max_cost.min(credit.balance * RESERVATION_CAP);
        credit.reserved += held;
        credit.running.insert(reservation, (held, now));
        Ok(())
    }

    /// The request ended and its usage event, costing `cost`, was emitted
    /// with sequence `seq`: its reservation becomes that cost, held until a
    /// balance update covers `seq`. (Sequences follow the order events
    /// enter the log, so covering `seq` covers every earlier event.)
    pub fn emitted(&self, account: &AccountId, reservation: u64, seq: u64, cost: Usd) {
        if !self.enforce {
            return;
        }
        let mut accounts = self.accounts.lock();
        let credit = accounts.entry(account.clone()).or_default();
        if let Some((held, _)) = credit.running.remove(&reservation) {
            credit.reserved -= held;
        }
        credit.finished(seq, cost, Instant::now());
    }

    /// The event emitted with `seq` (costing `cost`) was refused by the
    /// event log: the ledger will never apply it, so stop holding its cost.
    pub fn lost(&self, account: &AccountId, seq: u64, cost: Usd) {
        if !self.enforce {
            return;
        }
        if let Some(credit) = self.accounts.lock().get_mut(account) {
            credit.lost(seq, cost);
        }
    }

    /// The account's credit as this instance sees it, once a balance arrived.
    pub fn credit(&self, account: &AccountId) -> Option<Credit> {
        let accounts = self.accounts.lock();
        accounts.get(account).filter(|c| c.known).map(|c| Credit {
            balance: c.balance,
            reserved: c.reserved,
            unconfirmed: c.unconfirmed,
        })
    }

    pub fn apply(&self, update: &BalanceUpdate) {
        let mut accounts = self.accounts.lock();
        let credit = accounts.entry(update.account_id.clone()).or_default();
        credit.balance = update.balance;
        credit.known = true;
        if let Some(seq) = update.applied.get(&self.instance_id) {
            credit.release_through(*seq, self.round_trip.as_ref());
        }
    }

    /// Read balance updates published since the last call.
    pub async fn catch_up(
        &self,
        log: &dyn EventLog,
    ) -> Result<usize, tollgate_eventlog::EventLogError> {
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
            budgets: Vec::new(),
        }
    }

    fn credit(balance: &str, reserved: &str, unconfirmed: &str) -> Option<Credit> {
        Some(Credit {
            balance: usd(balance),
            reserved: usd(reserved),
            unconfirmed: usd(unconfirmed),
        })
    }

    #[test]
    fn reserves_the_maximum_until_the_balance_is_used_up_then_refuses() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        assert!(
            admission.admit(&account, 1, usd("0.01")).is_err(),
            "unknown balance is zero"
        );
        admission.apply(&update("4.00", &[]));
        assert!(admission.admit(&account, 1, usd("1.00")).is_ok());
        assert!(admission.admit(&account, 2, usd("1.00")).is_ok());
        assert!(admission.admit(&account, 3, usd("1.00")).is_ok());
        assert!(
            admission.admit(&account, 4, usd("1.00")).is_ok(),
            "1.00 was still available"
        );
        let refused = admission.admit(&account, 5, usd("1.00")).unwrap_err();
        assert_eq!(
            refused,
            Insufficient {
                available: usd("0"),
                balance: usd("4.00"),
                held: usd("4.00"),
            }
        );
    }

    #[test]
    fn a_finished_request_holds_its_actual_cost_until_the_ledger_applied_it() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        assert!(admission.admit(&account, 1, usd("0.20")).is_ok());
        assert!(admission.admit(&account, 2, usd("0.20")).is_ok());
        // Request 2 ends first (event seq 7, actual cost 0.03); request 1 runs on.
        admission.emitted(&account, 2, 7, usd("0.03"));
        assert_eq!(admission.credit(&account), credit("1.00", "0.20", "0.03"));
        // An update that has not applied seq 7 (another instance's events
        // only) changes the balance and keeps holding the cost.
        admission.apply(&update("0.90", &[("gw_1", 6), ("gw_other", 99)]));
        assert_eq!(admission.credit(&account), credit("0.90", "0.20", "0.03"));
        admission.apply(&update("0.87", &[("gw_1", 7)]));
        assert_eq!(admission.credit(&account), credit("0.87", "0.20", "0"));
        admission.emitted(&account, 1, 8, usd("0.05"));
        assert_eq!(admission.credit(&account), credit("0.87", "0", "0.05"));
        admission.apply(&update("0.82", &[("gw_1", 8)]));
        assert_eq!(admission.credit(&account), credit("0.82", "0", "0"));
    }

    #[test]
    fn credit_spent_but_not_yet_applied_is_refused_and_released_by_the_update() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("0.10", &[]));
        for request in 0..4 {
            assert!(admission.admit(&account, request, usd("0.02")).is_ok());
            admission.emitted(&account, request, request, usd("0.025"));
        }
        let refused = admission.admit(&account, 9, usd("0.02")).unwrap_err();
        assert_eq!(refused.available, usd("0"));
        assert_eq!(refused.held, usd("0.10"));
        // The ledger applied the first two: the balance drops by exactly
        // what is released, so nothing more is available yet...
        admission.apply(&update("0.05", &[("gw_1", 1)]));
        assert!(admission.admit(&account, 9, usd("0.02")).is_err());
        // ...and a credit makes room at once.
        admission.apply(&update("0.06", &[("gw_1", 1)]));
        assert!(admission.admit(&account, 9, usd("0.02")).is_ok());
    }

    #[test]
    fn below_the_limit_exactly_the_unapplied_costs_stay_held() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1000", &[]));
        let cost = |seq: u64| Usd::new(Decimal::new(seq as i64 % 13 + 1, 5));
        let events = UNCONFIRMED_BUCKETS as u64;
        for seq in 0..events {
            assert!(admission.admit(&account, seq, usd("0.01")).is_ok());
            admission.emitted(&account, seq, seq, cost(seq));
        }
        for through in [0, 1, events / 3, events - 2] {
            admission.apply(&update("999", &[("gw_1", through)]));
            let pending: Usd = (through + 1..events).map(cost).sum();
            assert_eq!(admission.credit(&account).unwrap().unconfirmed, pending);
        }
    }

    #[test]
    fn memory_stays_bounded_while_the_ledger_is_away_and_the_sum_stays_exact() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1000000", &[]));
        let mut total = Usd::ZERO;
        let events = 20 * UNCONFIRMED_BUCKETS as u64;
        for seq in 0..events {
            let cost = Usd::new(Decimal::new(seq as i64 % 97 + 1, 6));
            total += cost;
            assert!(admission.admit(&account, seq, usd("0.01")).is_ok());
            admission.emitted(&account, seq, seq, cost);
            let buckets = admission.accounts.lock()[&account].buckets.len();
            assert!(buckets <= UNCONFIRMED_BUCKETS, "{buckets} buckets");
        }
        assert_eq!(
            admission.credit(&account),
            Some(Credit {
                balance: usd("1000000"),
                reserved: Usd::ZERO,
                unconfirmed: total,
            })
        );
        // Releasing part way: what stays held covers at least every event
        // not applied, and little more (the one merged sum straddling the
        // applied sequence).
        let through = events * 7 / 10 + 3;
        let pending: Usd = (through + 1..events)
            .map(|seq| Usd::new(Decimal::new(seq as i64 % 97 + 1, 6)))
            .sum();
        admission.apply(&update("1000000", &[("gw_1", through)]));
        let held = admission.credit(&account).unwrap().unconfirmed;
        assert!(held >= pending, "{held} < {pending}");
        assert!(
            (held - pending) * Decimal::from(UNCONFIRMED_BUCKETS) <= total * Decimal::from(4),
            "{held} held for {pending} pending out of {total}"
        );
        admission.apply(&update("1000000", &[("gw_1", events - 1)]));
        assert_eq!(admission.credit(&account).unwrap().unconfirmed, Usd::ZERO);
        assert!(admission.accounts.lock()[&account].buckets.is_empty());
    }

    #[test]
    fn a_reservation_is_capped_at_half_the_balance() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        // One request's maximum (5.00) is more than the whole balance: it
        // holds half, so a cheap request and a second dear one still fit.
        assert!(admission.admit(&account, 0, usd("5.00")).is_ok());
        assert_eq!(admission.credit(&account), credit("1.00", "0.50", "0"));
        assert!(admission.admit(&account, 1, usd("0.10")).is_ok());
        assert!(admission.admit(&account, 2, usd("5.00")).is_ok());
        assert_eq!(admission.credit(&account), credit("1.00", "1.10", "0"));
        assert!(admission.admit(&account, 3, usd("0.01")).is_err());
        // The cheap request ends costing 0.02, the ledger applies it, and a
        // dear one ends early costing 0.01: then there is room again.
        admission.emitted(&account, 1, 0, usd("0.02"));
        assert_eq!(admission.credit(&account), credit("1.00", "1.00", "0.02"));
        admission.apply(&update("0.98", &[("gw_1", 0)]));
        assert!(admission.admit(&account, 3, usd("0.01")).is_err());
        admission.emitted(&account, 0, 1, usd("0.01"));
        assert_eq!(admission.credit(&account), credit("0.98", "0.50", "0.01"));
        assert!(admission.admit(&account, 3, usd("0.01")).is_ok());
    }

    #[test]
    fn a_lost_event_stops_holding_its_cost() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        for seq in 0..3 {
            assert!(admission.admit(&account, seq, usd("0.10")).is_ok());
            admission.emitted(&account, seq, seq, usd("0.04"));
        }
        admission.lost(&account, 1, usd("0.04"));
        assert_eq!(admission.credit(&account), credit("1.00", "0", "0.08"));
        admission.apply(&update("0.92", &[("gw_1", 2)]));
        assert_eq!(admission.credit(&account), credit("0.92", "0", "0"));
        // Reported lost after a later event's update released it: the
        // cost of the events still pending stays held.
        for seq in 3..5 {
            assert!(admission.admit(&account, seq, usd("0.10")).is_ok());
            admission.emitted(&account, seq, seq, usd("0.04"));
        }
        admission.apply(&update("0.88", &[("gw_1", 3)]));
        admission.lost(&account, 3, usd("0.04"));
        assert_eq!(admission.credit(&account), credit("0.88", "0", "0.04"));
    }

    #[test]
    fn each_release_times_a_ledger_round_trip() {
        let histogram = Histogram::with_opts(prometheus::HistogramOpts::new("rt", "rt")).unwrap();
        let admission = Admission::new(true, "gw_1".into()).timing_round_trips(histogram.clone());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        for seq in 0..3 {
            assert!(admission.admit(&account, seq, usd("0.10")).is_ok());
            admission.emitted(&account, seq, seq, usd("0.01"));
        }
        admission.apply(&update("0.98", &[("gw_1", 1)]));
        assert_eq!(histogram.get_sample_count(), 2);
        admission.apply(&update("0.97", &[("gw_1", 2)]));
        assert_eq!(histogram.get_sample_count(), 3);
    }

    #[test]
    fn enforcement_can_be_switched_off() {
        let admission = Admission::new(false, "gw_1".into());
        assert!(admission
            .admit(&AccountId::from("acct"), 1, usd("100"))
            .is_ok());
    }
}
