//! Credit admission, in memory. Balances arrive from the ledger on the
//! balances topic. Per account this instance keeps the last published
//! balance, the maximum cost of its requests in flight (`reserved`) and the
//! actual cost of its finished requests that balance does not include yet
//! (`unconfirmed`). A request is admitted while
//! `balance − reserved − unconfirmed > 0` and reserves its maximum cost;
//! when it ends its reservation becomes its actual cost, which is released
//! once a balance update says the ledger applied its event. See
//! `docs/ledger.md` (Admission) for the bounds this gives.
//!
//! Refusing budgets are admitted against the same way, per scope (the
//! account, or one key): amount − published spend in the current period −
//! the scope's own reserved and unconfirmed costs must stay above zero
//! (`docs/ledger.md`, Budgets: enforcement).

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use prometheus::Histogram;
use rust_decimal::Decimal;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::billing::BalanceUpdate;
use tollgate_core::budget::{Budget, BudgetId, BudgetPeriod, BudgetSpend, SpendScope};
use tollgate_core::{AccessKeyId, AccountId, Envelope, EventBody, Usd};
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

/// What this instance holds against one scope — an account's balance, or
/// the budgets on an account or on one of its keys: the maximum cost of its
/// requests in flight (`reserved`) and the actual cost of its finished
/// requests the ledger has not published yet (`unconfirmed`).
#[derive(Default)]
struct Holds {
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
    /// The first sequence recorded here: a budget's holds start with the
    /// budget, so an earlier event reported lost was never held by them.
    first: Option<u64>,
    /// When stale reservations were last looked for.
    swept_at: Option<Instant>,
}

impl Holds {
    fn held(&self) -> Usd {
        self.reserved + self.unconfirmed
    }

    /// Nothing held (sums a lost event emptied may remain, holding zero).
    fn idle(&self) -> bool {
        self.running.is_empty() && self.unconfirmed == Usd::ZERO
    }

    fn reserve(&mut self, reservation: u64, amount: Usd, at: Instant) {
        self.reserved += amount;
        self.running.insert(reservation, (amount, at));
    }

    /// The request ended: its reservation (if it made one here) is freed
    /// and its actual cost, emitted as event `seq`, is held instead.
    fn ended(&mut self, reservation: u64, seq: u64, cost: Usd, at: Instant) {
        if let Some((held, _)) = self.running.remove(&reservation) {
            self.reserved -= held;
        }
        self.finished(seq, cost, at);
    }

    /// Record a finished request's actual cost under its event sequence
    /// (sequences arrive in increasing order: they are assigned under the
    /// gateway's emit lock, which is held while this runs).
    fn finished(&mut self, seq: u64, cost: Usd, at: Instant) {
        if cost == Usd::ZERO {
            return; // nothing to hold
        }
        self.first.get_or_insert(seq);
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
        if self.released.is_some_and(|through| seq <= through)
            || self.first.is_none_or(|first| seq < first)
        {
            return; // released already (a later event covered it), or never held here
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

/// One account as this instance sees it: its balance and budget spend as
/// the ledger last published them, and what this instance holds against
/// each. Budgets hold separately from the balance because a reservation is
/// capped by what each has left (half the balance; half a budget's rest).
#[derive(Default)]
struct AccountCredit {
    balance: Usd,
    known: bool,
    holds: Holds,
    /// Each budget's period and spend from the last balance update.
    spends: Vec<BudgetSpend>,
    /// Against the account's own refusing budgets, once it has some.
    account_budgets: Option<Holds>,
    /// Against each key's refusing budgets, for keys that have some.
    key_budgets: HashMap<AccessKeyId, Holds>,
}

impl AccountCredit {
    fn available(&self) -> Usd {
        self.balance - self.holds.held()
    }

    fn budget_holds(&mut self, scope: Option<&AccessKeyId>) -> Option<&mut Holds> {
        match scope {
            None => self.account_budgets.as_mut(),
            Some(key) => self.key_budgets.get_mut(key),
        }
    }

    /// What the ledger published as spent in `budget`'s period at `now`:
    /// zero once the clock passed the published period's end, when the
    /// published period is not the budget's window now (a budget edited to
    /// another period, an update from before the boundary), or before any.
    fn published_spend(
        &self,
        budget: &Budget,
        window_start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Usd {
        self.spends
            .iter()
            .find(|spend| spend.budget_id == budget.id)
            .filter(|spend| {
                spend.period_start == window_start && spend.resets_at.is_none_or(|end| now < end)
            })
            .map_or(Usd::ZERO, |spend| spend.spent)
    }

    /// Check every refusing budget on the account or on `key`; when all
    /// have room, the least any of each scope's budgets has left (a
    /// reservation holds at most half of it).
    fn check_budgets(
        &mut self,
        key: &AccessKeyId,
        budgets: &[Budget],
        now: DateTime<Utc>,
        instant: Instant,
    ) -> Result<LeastLeft, Box<BudgetExceeded>> {
        let mut least = LeastLeft::default();
        let mut windows = Windows::at(now);
        // What this instance holds per scope, summed once, not per budget.
        let mut held_in = |scope| {
            self.budget_holds(scope).map_or(Usd::ZERO, |holds| {
                holds.release_stale(instant);
                holds.held()
            })
        };
        let held_by = [held_in(None), held_in(Some(key))];
        for budget in budgets {
            let scope = budget.access_key_id.as_ref();
            if !budget.refuse || scope.is_some_and(|k| k != key) {
                continue;
            }
            let (window_start, resets_at) = windows.of(budget);
            let left = budget.amount - self.published_spend(budget, window_start, now);
            let held = held_by[usize::from(scope.is_some())];
            if left <= held {
                return Err(Box::new(BudgetExceeded {
                    budget_id: budget.id.clone(),
                    name: budget.name.clone(),
                    scope: budget.scope(),
                    amount: budget.amount,
                    period: budget.period,
                    spent: budget.amount - left + held,
                    resets_at,
                }));
            }
            // left > held ≥ 0: every cap is positive.
            let least = if scope.is_some() {
                &mut least.key
            } else {
                &mut least.account
            };
            *least = Some(least.map_or(left, |l| l.min(left)));
        }
        Ok(least)
    }

    fn reserve_budgets(
        &mut self,
        key: &AccessKeyId,
        least: LeastLeft,
        reservation: u64,
        max_cost: Usd,
        at: Instant,
    ) {
        if let Some(left) = least.account {
            let holds = self.account_budgets.get_or_insert_with(Holds::default);
            holds.reserve(reservation, max_cost.min(left * RESERVATION_CAP), at);
        }
        if let Some(left) = least.key {
            if !self.key_budgets.contains_key(key) {
                self.key_budgets.insert(key.clone(), Holds::default());
            }
            if let Some(holds) = self.key_budgets.get_mut(key) {
                holds.reserve(reservation, max_cost.min(left * RESERVATION_CAP), at);
            }
        }
    }

    /// Forget budget holds with nothing in them (their budget may be gone).
    fn drop_idle_budget_holds(&mut self) {
        if self.account_budgets.as_ref().is_some_and(Holds::idle) {
            self.account_budgets = None;
        }
        self.key_budgets.retain(|_, holds| !holds.idle());
    }
}

/// Per scope, the least any of its refusing budgets has left (amount −
/// published spend); None: the scope has no refusing budget.
#[derive(Clone, Copy, Default)]
struct LeastLeft {
    account: Option<Usd>,
    key: Option<Usd>,
}

/// A period window: its start, and its end (None: lifetime).
type Window = (DateTime<Utc>, Option<DateTime<Utc>>);

/// The day, week and month windows at one instant, each computed once
/// however many budgets share it.
struct Windows {
    now: DateTime<Utc>,
    computed: [Option<Window>; 3],
}

impl Windows {
    fn at(now: DateTime<Utc>) -> Windows {
        Windows {
            now,
            computed: [None; 3],
        }
    }

    fn of(&mut self, budget: &Budget) -> Window {
        let slot = match budget.period {
            BudgetPeriod::Day => 0,
            BudgetPeriod::Week => 1,
            BudgetPeriod::Month => 2,
            BudgetPeriod::Lifetime => return budget.window(self.now),
        };
        *self.computed[slot].get_or_insert_with(|| budget.window(self.now))
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

/// Refused: a refusing budget has nothing left in its period. Carries what
/// the refusal tells the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub budget_id: BudgetId,
    pub name: String,
    pub scope: SpendScope,
    pub amount: Usd,
    pub period: BudgetPeriod,
    /// Spent in the period: as published by the ledger, plus what this
    /// instance holds for the scope (in flight, and finished but not
    /// published yet).
    pub spent: Usd,
    /// When the period ends; None: a lifetime budget.
    pub resets_at: Option<DateTime<Utc>>,
}

impl std::fmt::Display for BudgetExceeded {
    /// Names the budget, what it allows, what was spent and when it resets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = match &self.scope {
            SpendScope::AccessKey(key) => format!("access key {key}"),
            SpendScope::Account(account) => format!("account {account}"),
        };
        let per = match self.period {
            BudgetPeriod::Lifetime => "in total".to_owned(),
            period => format!("per {}", period.as_str()),
        };
        let resets = match self.resets_at {
            Some(at) => at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            None => "never (lifetime budget)".to_owned(),
        };
        write!(
            f,
            "budget exceeded: budget `{}` ({}) on {scope} allows ${} {per}; ${} is spent in this period \
             (as the ledger recorded it, plus this gateway's requests in flight or not yet recorded); \
             resets: {resets}",
            self.name, self.budget_id, self.amount, self.spent
        )
    }
}

/// Why a request was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    Credit(Insufficient),
    Budget(Box<BudgetExceeded>),
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

/// What this instance holds against one scope's budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub reserved: Usd,
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

    /// Admit a request of `key` whose maximum cost is `max_cost`
    /// (`reservation` is unique per request in this instance) and hold
    /// credit for it, or refuse. The amount held is `max_cost`, capped at
    /// half the published balance: a request dearer than that can
    /// overshoot by its excess, and at most two such requests run at once
    /// (`docs/ledger.md`, Admission). `budgets` are the account's and its
    /// keys' (those of other keys are skipped); each refusing one that
    /// applies is checked and held against the same way, its period taken
    /// at `now` (`docs/ledger.md`, Budgets: enforcement).
    pub fn admit(
        &self,
        account: &AccountId,
        key: &AccessKeyId,
        budgets: &[Budget],
        reservation: u64,
        max_cost: Usd,
        now: DateTime<Utc>,
    ) -> Result<(), Refused> {
        if !self.enforce {
            return Ok(());
        }
        let mut accounts = self.accounts.lock();
        let credit = accounts.entry(account.clone()).or_default();
        let instant = Instant::now();
        credit.holds.release_stale(instant);
        let available = credit.available();
        if available <= Usd::ZERO {
            return Err(Refused::Credit(Insufficient {
                available,
                balance: credit.balance,
                held: credit.holds.held(),
            }));
        }
        let least = if budgets.is_empty() {
            LeastLeft::default()
        } else {
            credit
                .check_budgets(key, budgets, now, instant)
                .map_err(Refused::Budget)?
        };
        // available > 0 implies balance > 0, so the cap is positive.
        let held = max_cost.min(credit.balance * RESERVATION_CAP);
        credit.holds.reserve(reservation, held, instant);
        credit.reserve_budgets(key, least, reservation, max_cost, instant);
        Ok(())
    }

    /// The request of `key` ended and its usage event, costing `cost`, was
    /// emitted with sequence `seq`: its reservations become that cost, held
    /// until a balance update covers `seq`. (Sequences follow the order
    /// events enter the log, so covering `seq` covers every earlier event.)
    /// True when the key's budgets hold it: `lost` must then name the key.
    pub fn emitted(
        &self,
        account: &AccountId,
        key: &AccessKeyId,
        reservation: u64,
        seq: u64,
        cost: Usd,
    ) -> bool {
        if !self.enforce {
            return false;
        }
        let mut accounts = self.accounts.lock();
        let credit = accounts.entry(account.clone()).or_default();
        let now = Instant::now();
        credit.holds.ended(reservation, seq, cost, now);
        if let Some(holds) = credit.account_budgets.as_mut() {
            holds.ended(reservation, seq, cost, now);
        }
        match credit.key_budgets.get_mut(key) {
            Some(holds) => {
                holds.ended(reservation, seq, cost, now);
                true
            }
            None => false,
        }
    }

    /// The event emitted with `seq` (costing `cost`) was refused by the
    /// event log: the ledger will never apply it, so stop holding its cost.
    /// `key`: the request's key, when `emitted` said its budgets hold it.
    pub fn lost(&self, account: &AccountId, key: Option<&AccessKeyId>, seq: u64, cost: Usd) {
        if !self.enforce {
            return;
        }
        if let Some(credit) = self.accounts.lock().get_mut(account) {
            credit.holds.lost(seq, cost);
            if let Some(holds) = credit.account_budgets.as_mut() {
                holds.lost(seq, cost);
            }
            if let Some(holds) = key.and_then(|key| credit.key_budgets.get_mut(key)) {
                holds.lost(seq, cost);
            }
        }
    }

    /// What this instance holds against the budgets of the account (`key`
    /// None) or of one key, while it holds anything.
    pub fn budget_held(&self, account: &AccountId, key: Option<&AccessKeyId>) -> Option<Held> {
        let mut accounts = self.accounts.lock();
        let holds = accounts.get_mut(account)?.budget_holds(key)?;
        Some(Held {
            reserved: holds.reserved,
            unconfirmed: holds.unconfirmed,
        })
    }

    /// The account's credit as this instance sees it, once a balance arrived.
    pub fn credit(&self, account: &AccountId) -> Option<Credit> {
        let accounts = self.accounts.lock();
        accounts.get(account).filter(|c| c.known).map(|c| Credit {
            balance: c.balance,
            reserved: c.holds.reserved,
            unconfirmed: c.holds.unconfirmed,
        })
    }

    pub fn apply(&self, update: &BalanceUpdate) {
        let mut accounts = self.accounts.lock();
        let credit = accounts.entry(update.account_id.clone()).or_default();
        credit.balance = update.balance;
        credit.known = true;
        credit.spends.clone_from(&update.budgets);
        if let Some(seq) = update.applied.get(&self.instance_id) {
            credit.holds.release_through(*seq, self.round_trip.as_ref());
            // Budget holds release the same events; the round trip is timed once.
            if let Some(holds) = credit.account_budgets.as_mut() {
                holds.release_through(*seq, None);
            }
            for holds in credit.key_budgets.values_mut() {
                holds.release_through(*seq, None);
            }
        }
        credit.drop_idle_budget_holds();
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
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::str::FromStr;

    fn key() -> AccessKeyId {
        AccessKeyId::from("key")
    }

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
            admission
                .admit(&account, &key(), &[], 1, usd("0.01"), Utc::now())
                .is_err(),
            "unknown balance is zero"
        );
        admission.apply(&update("4.00", &[]));
        assert!(admission
            .admit(&account, &key(), &[], 1, usd("1.00"), Utc::now())
            .is_ok());
        assert!(admission
            .admit(&account, &key(), &[], 2, usd("1.00"), Utc::now())
            .is_ok());
        assert!(admission
            .admit(&account, &key(), &[], 3, usd("1.00"), Utc::now())
            .is_ok());
        assert!(
            admission
                .admit(&account, &key(), &[], 4, usd("1.00"), Utc::now())
                .is_ok(),
            "1.00 was still available"
        );
        let refused = admission
            .admit(&account, &key(), &[], 5, usd("1.00"), Utc::now())
            .unwrap_err();
        assert_eq!(
            refused,
            Refused::Credit(Insufficient {
                available: usd("0"),
                balance: usd("4.00"),
                held: usd("4.00"),
            })
        );
    }

    #[test]
    fn a_finished_request_holds_its_actual_cost_until_the_ledger_applied_it() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        assert!(admission
            .admit(&account, &key(), &[], 1, usd("0.20"), Utc::now())
            .is_ok());
        assert!(admission
            .admit(&account, &key(), &[], 2, usd("0.20"), Utc::now())
            .is_ok());
        // Request 2 ends first (event seq 7, actual cost 0.03); request 1 runs on.
        admission.emitted(&account, &key(), 2, 7, usd("0.03"));
        assert_eq!(admission.credit(&account), credit("1.00", "0.20", "0.03"));
        // An update that has not applied seq 7 (another instance's events
        // only) changes the balance and keeps holding the cost.
        admission.apply(&update("0.90", &[("gw_1", 6), ("gw_other", 99)]));
        assert_eq!(admission.credit(&account), credit("0.90", "0.20", "0.03"));
        admission.apply(&update("0.87", &[("gw_1", 7)]));
        assert_eq!(admission.credit(&account), credit("0.87", "0.20", "0"));
        admission.emitted(&account, &key(), 1, 8, usd("0.05"));
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
            assert!(admission
                .admit(&account, &key(), &[], request, usd("0.02"), Utc::now())
                .is_ok());
            admission.emitted(&account, &key(), request, request, usd("0.025"));
        }
        let refused = admission
            .admit(&account, &key(), &[], 9, usd("0.02"), Utc::now())
            .unwrap_err();
        let Refused::Credit(refused) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(refused.available, usd("0"));
        assert_eq!(refused.held, usd("0.10"));
        // The ledger applied the first two: the balance drops by exactly
        // what is released, so nothing more is available yet...
        admission.apply(&update("0.05", &[("gw_1", 1)]));
        assert!(admission
            .admit(&account, &key(), &[], 9, usd("0.02"), Utc::now())
            .is_err());
        // ...and a credit makes room at once.
        admission.apply(&update("0.06", &[("gw_1", 1)]));
        assert!(admission
            .admit(&account, &key(), &[], 9, usd("0.02"), Utc::now())
            .is_ok());
    }

    #[test]
    fn below_the_limit_exactly_the_unapplied_costs_stay_held() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1000", &[]));
        let cost = |seq: u64| Usd::new(Decimal::new(seq as i64 % 13 + 1, 5));
        let events = UNCONFIRMED_BUCKETS as u64;
        for seq in 0..events {
            assert!(admission
                .admit(&account, &key(), &[], seq, usd("0.01"), Utc::now())
                .is_ok());
            admission.emitted(&account, &key(), seq, seq, cost(seq));
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
            assert!(admission
                .admit(&account, &key(), &[], seq, usd("0.01"), Utc::now())
                .is_ok());
            admission.emitted(&account, &key(), seq, seq, cost);
            let buckets = admission.accounts.lock()[&account].holds.buckets.len();
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
        assert!(admission.accounts.lock()[&account].holds.buckets.is_empty());
    }

    #[test]
    fn a_reservation_is_capped_at_half_the_balance() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        // One request's maximum (5.00) is more than the whole balance: it
        // holds half, so a cheap request and a second dear one still fit.
        assert!(admission
            .admit(&account, &key(), &[], 0, usd("5.00"), Utc::now())
            .is_ok());
        assert_eq!(admission.credit(&account), credit("1.00", "0.50", "0"));
        assert!(admission
            .admit(&account, &key(), &[], 1, usd("0.10"), Utc::now())
            .is_ok());
        assert!(admission
            .admit(&account, &key(), &[], 2, usd("5.00"), Utc::now())
            .is_ok());
        assert_eq!(admission.credit(&account), credit("1.00", "1.10", "0"));
        assert!(admission
            .admit(&account, &key(), &[], 3, usd("0.01"), Utc::now())
            .is_err());
        // The cheap request ends costing 0.02, the ledger applies it, and a
        // dear one ends early costing 0.01: then there is room again.
        admission.emitted(&account, &key(), 1, 0, usd("0.02"));
        assert_eq!(admission.credit(&account), credit("1.00", "1.00", "0.02"));
        admission.apply(&update("0.98", &[("gw_1", 0)]));
        assert!(admission
            .admit(&account, &key(), &[], 3, usd("0.01"), Utc::now())
            .is_err());
        admission.emitted(&account, &key(), 0, 1, usd("0.01"));
        assert_eq!(admission.credit(&account), credit("0.98", "0.50", "0.01"));
        assert!(admission
            .admit(&account, &key(), &[], 3, usd("0.01"), Utc::now())
            .is_ok());
    }

    #[test]
    fn a_lost_event_stops_holding_its_cost() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        for seq in 0..3 {
            assert!(admission
                .admit(&account, &key(), &[], seq, usd("0.10"), Utc::now())
                .is_ok());
            admission.emitted(&account, &key(), seq, seq, usd("0.04"));
        }
        admission.lost(&account, None, 1, usd("0.04"));
        assert_eq!(admission.credit(&account), credit("1.00", "0", "0.08"));
        admission.apply(&update("0.92", &[("gw_1", 2)]));
        assert_eq!(admission.credit(&account), credit("0.92", "0", "0"));
        // Reported lost after a later event's update released it: the
        // cost of the events still pending stays held.
        for seq in 3..5 {
            assert!(admission
                .admit(&account, &key(), &[], seq, usd("0.10"), Utc::now())
                .is_ok());
            admission.emitted(&account, &key(), seq, seq, usd("0.04"));
        }
        admission.apply(&update("0.88", &[("gw_1", 3)]));
        admission.lost(&account, None, 3, usd("0.04"));
        assert_eq!(admission.credit(&account), credit("0.88", "0", "0.04"));
    }

    #[test]
    fn each_release_times_a_ledger_round_trip() {
        let histogram = Histogram::with_opts(prometheus::HistogramOpts::new("rt", "rt")).unwrap();
        let admission = Admission::new(true, "gw_1".into()).timing_round_trips(histogram.clone());
        let account = AccountId::from("acct");
        admission.apply(&update("1.00", &[]));
        for seq in 0..3 {
            assert!(admission
                .admit(&account, &key(), &[], seq, usd("0.10"), Utc::now())
                .is_ok());
            admission.emitted(&account, &key(), seq, seq, usd("0.01"));
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
            .admit(
                &AccountId::from("acct"),
                &key(),
                &[],
                1,
                usd("100"),
                Utc::now()
            )
            .is_ok());
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn budget(id: &str, key: Option<&str>, amount: &str, period: BudgetPeriod) -> Budget {
        Budget {
            id: BudgetId(id.into()),
            account_id: AccountId::from("acct"),
            access_key_id: key.map(AccessKeyId::from),
            name: id.into(),
            amount: usd(amount),
            period,
            soft_threshold_percent: 80,
            refuse: true,
            created_at: at("2026-01-01T00:00:00Z"),
            updated_at: at("2026-01-01T00:00:00Z"),
        }
    }

    fn spending(id: &str, start: &str, resets: Option<&str>, spent: &str) -> BudgetSpend {
        BudgetSpend {
            budget_id: BudgetId(id.into()),
            period_start: at(start),
            resets_at: resets.map(at),
            spent: usd(spent),
        }
    }

    fn update_with(spends: Vec<BudgetSpend>, applied: &[(&str, u64)]) -> BalanceUpdate {
        BalanceUpdate {
            budgets: spends,
            ..update("1000", applied)
        }
    }

    fn refused_by(result: Result<(), Refused>) -> Option<BudgetExceeded> {
        match result {
            Err(Refused::Budget(refusal)) => Some(*refusal),
            _ => None,
        }
    }

    const NOON: &str = "2026-12-07T12:00:00Z";

    #[test]
    fn a_day_budget_refuses_once_spent_and_admits_again_after_its_reset() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        let budgets = [budget("bud_day", Some("key"), "1.00", BudgetPeriod::Day)];
        let today = ("2026-12-07T00:00:00Z", Some("2026-12-08T00:00:00Z"));
        admission.apply(&update_with(
            vec![spending("bud_day", today.0, today.1, "1.00")],
            &[],
        ));
        let refusal =
            refused_by(admission.admit(&account, &key(), &budgets, 1, usd("0.01"), at(NOON)));
        assert_eq!(
            refusal,
            Some(BudgetExceeded {
                budget_id: BudgetId("bud_day".into()),
                name: "bud_day".into(),
                scope: SpendScope::AccessKey(key()),
                amount: usd("1.00"),
                period: BudgetPeriod::Day,
                spent: usd("1.00"),
                resets_at: Some(at("2026-12-08T00:00:00Z")),
            })
        );
        // The last instant of the period still counts the spend…
        let last = at("2026-12-07T23:59:59.999Z");
        assert!(admission
            .admit(&account, &key(), &budgets, 1, usd("0.01"), last)
            .is_err());
        // …and once the clock passes the reset, that spend counts as zero
        // though no newer update arrived.
        let next_day = at("2026-12-08T00:00:00Z");
        assert!(admission
            .admit(&account, &key(), &budgets, 1, usd("0.01"), next_day)
            .is_ok());
    }

    #[test]
    fn spend_published_for_another_window_or_not_at_all_counts_as_zero() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        let budgets = [budget("bud_day", Some("key"), "1.00", BudgetPeriod::Day)];
        // Yesterday's period, published before the boundary (its end is
        // still ahead of a slow clock, but not of this one).
        admission.apply(&update_with(
            vec![spending(
                "bud_day",
                "2026-12-06T00:00:00Z",
                Some("2026-12-07T00:00:00Z"),
                "5",
            )],
            &[],
        ));
        assert!(admission
            .admit(&account, &key(), &budgets, 1, usd("0.01"), at(NOON))
            .is_ok());
        // An older period start whose end the clock has not passed (the
        // budget was a month budget before): still not this window.
        admission.apply(&update_with(
            vec![spending(
                "bud_day",
                "2026-12-01T00:00:00Z",
                Some("2027-01-01T00:00:00Z"),
                "5",
            )],
            &[],
        ));
        assert!(admission
            .admit(&account, &key(), &budgets, 2, usd("0.01"), at(NOON))
            .is_ok());
        // No published spend yet: zero.
        admission.apply(&update_with(Vec::new(), &[]));
        assert!(admission
            .admit(&account, &key(), &budgets, 3, usd("0.01"), at(NOON))
            .is_ok());
    }

    #[test]
    fn in_flight_and_unconfirmed_costs_count_until_an_update_covers_them() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        let budgets = [budget("bud_day", Some("key"), "1.00", BudgetPeriod::Day)];
        let spent = |amount: &str| {
            vec![spending(
                "bud_day",
                "2026-12-07T00:00:00Z",
                Some("2026-12-08T00:00:00Z"),
                amount,
            )]
        };
        admission.apply(&update_with(spent("0.90"), &[]));
        // 0.10 left: a request holding 0.04 (cap 0.05) leaves room for one more.
        assert!(admission
            .admit(&account, &key(), &budgets, 1, usd("0.04"), at(NOON))
            .is_ok());
        assert!(admission
            .admit(&account, &key(), &budgets, 2, usd("0.04"), at(NOON))
            .is_ok());
        assert_eq!(
            admission.budget_held(&account, Some(&key())),
            Some(Held {
                reserved: usd("0.08"),
                unconfirmed: usd("0")
            })
        );
        assert!(admission
            .admit(&account, &key(), &budgets, 3, usd("0.04"), at(NOON))
            .is_ok());
        let refusal =
            refused_by(admission.admit(&account, &key(), &budgets, 4, usd("0.04"), at(NOON)));
        assert_eq!(refusal.map(|r| r.spent), Some(usd("1.02")));
        // They end costing 0.03 each: held as unconfirmed, still refusing.
        for (reservation, seq) in [(1, 10), (2, 11), (3, 12)] {
            assert!(admission.emitted(&account, &key(), reservation, seq, usd("0.03")));
        }
        assert_eq!(
            admission.budget_held(&account, Some(&key())),
            Some(Held {
                reserved: usd("0"),
                unconfirmed: usd("0.09")
            })
        );
        assert!(admission
            .admit(&account, &key(), &budgets, 4, usd("0.04"), at(NOON))
            .is_ok());
        assert!(admission
            .admit(&account, &key(), &budgets, 5, usd("0.04"), at(NOON))
            .is_err());
        // The ledger applied two of them (spend 0.96): the third's 0.03 and
        // request 4's 0.04 stay held, so 1.03 counts as spent.
        admission.apply(&update_with(spent("0.96"), &[("gw_1", 11)]));
        assert_eq!(
            admission.budget_held(&account, Some(&key())),
            Some(Held {
                reserved: usd("0.04"),
                unconfirmed: usd("0.03")
            })
        );
        let refusal =
            refused_by(admission.admit(&account, &key(), &budgets, 5, usd("0.01"), at(NOON)));
        assert_eq!(refusal.map(|r| r.spent), Some(usd("1.03")));
    }

    #[test]
    fn a_key_budget_binds_its_key_and_an_account_budget_every_key() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        let other = AccessKeyId::from("other");
        let window = ("2026-12-07T00:00:00Z", Some("2026-12-08T00:00:00Z"));
        let mut budgets = vec![budget("bud_key", Some("key"), "1", BudgetPeriod::Day)];
        admission.apply(&update_with(
            vec![
                spending("bud_key", window.0, window.1, "1"),
                spending(
                    "bud_acct",
                    "2026-12-01T00:00:00Z",
                    Some("2027-01-01T00:00:00Z"),
                    "10",
                ),
            ],
            &[],
        ));
        assert!(admission
            .admit(&account, &key(), &budgets, 1, usd("0.01"), at(NOON))
            .is_err());
        assert!(admission
            .admit(&account, &other, &budgets, 2, usd("0.01"), at(NOON))
            .is_ok());
        // Alerts only: spent past its amount, still admitted.
        let mut alerts_only = budget("bud_acct", None, "10", BudgetPeriod::Month);
        alerts_only.refuse = false;
        budgets.push(alerts_only.clone());
        assert!(admission
            .admit(&account, &other, &budgets, 3, usd("0.01"), at(NOON))
            .is_ok());
        budgets[1].refuse = true;
        let refusal =
            refused_by(admission.admit(&account, &other, &budgets, 4, usd("0.01"), at(NOON)));
        assert_eq!(
            refusal.map(|r| r.scope),
            Some(SpendScope::Account(account.clone()))
        );
        // Off: metering only.
        let metering = Admission::new(false, "gw_1".into());
        assert!(metering
            .admit(&account, &key(), &budgets, 1, usd("0.01"), at(NOON))
            .is_ok());
    }

    #[test]
    fn a_budget_reservation_is_capped_at_half_what_the_budget_has_left() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        let budgets = [
            budget("bud_day", Some("key"), "1.00", BudgetPeriod::Day),
            budget("bud_month", Some("key"), "30", BudgetPeriod::Month),
        ];
        admission.apply(&update_with(
            vec![spending(
                "bud_day",
                "2026-12-07T00:00:00Z",
                Some("2026-12-08T00:00:00Z"),
                "0.20",
            )],
            &[],
        ));
        // A request whose maximum is 5.00 holds half of the least left (0.80).
        assert!(admission
            .admit(&account, &key(), &budgets, 1, usd("5.00"), at(NOON))
            .is_ok());
        assert_eq!(
            admission
                .budget_held(&account, Some(&key()))
                .unwrap()
                .reserved,
            usd("0.40")
        );
        assert!(admission
            .admit(&account, &key(), &budgets, 2, usd("5.00"), at(NOON))
            .is_ok());
        assert!(admission
            .admit(&account, &key(), &budgets, 3, usd("0.01"), at(NOON))
            .is_err());
        // The balance's own reservation is capped by the balance (1000/2).
        assert_eq!(admission.credit(&account).unwrap().reserved, usd("10.00"));
    }

    #[test]
    fn a_lifetime_budget_never_resets_and_idle_holds_are_dropped() {
        let admission = Admission::new(true, "gw_1".into());
        let account = AccountId::from("acct");
        let budgets = [budget("bud_life", None, "2", BudgetPeriod::Lifetime)];
        admission.apply(&update_with(
            vec![spending("bud_life", "2026-01-01T00:00:00Z", None, "1.99")],
            &[],
        ));
        assert!(admission
            .admit(&account, &key(), &budgets, 1, usd("0.01"), at(NOON))
            .is_ok());
        assert!(!admission.emitted(&account, &key(), 1, 5, usd("0.01")));
        let refusal = refused_by(admission.admit(
            &account,
            &key(),
            &budgets,
            2,
            usd("0.01"),
            at("2030-01-01T00:00:00Z"),
        ));
        assert_eq!(refusal.as_ref().map(|r| r.resets_at), Some(None));
        assert_eq!(refusal.map(|r| r.spent), Some(usd("2.00")));
        // A lost event stops being held; the holds go once empty.
        admission.lost(&account, None, 5, usd("0.01"));
        assert_eq!(
            admission.budget_held(&account, None),
            Some(Held {
                reserved: usd("0"),
                unconfirmed: usd("0")
            })
        );
        admission.apply(&update_with(Vec::new(), &[]));
        assert_eq!(admission.budget_held(&account, None), None);
    }
}
