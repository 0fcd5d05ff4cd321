//! Spend for usage booked before the ledger kept it (ledger migration 3).
//!
//! Those usage entries have no key or start time, so no spend row counted
//! them; a ledger replaying the log from scratch would. At start the ledger
//! reads the log once up to its applied position, finds those entries'
//! events and books their spend — the entry's own debit, by the day the
//! usage started — so an upgraded ledger and a replay agree (and the audit
//! checks them like any other spend).

use super::LedgerService;
use crate::input::LedgerInput;
use crate::sqlite;
use crate::LedgerError;
use std::collections::{HashMap, HashSet};
use tollgate_core::budget::spend_day;
use tollgate_core::{AccessKeyId, AccountId, Usd};
use tollgate_eventlog::topics;

/// Records read from the log per call.
const READ_CHUNK: usize = 10_000;

/// A usage entry without spend, and what its event says.
struct Found {
    seq: i64,
    account: AccountId,
    debit: Usd,
    key: AccessKeyId,
    started_at: chrono::DateTime<chrono::Utc>,
}

impl LedgerService {
    /// Book the spend of usage entries that predate spend; returns how many
    /// were found in the log. Nothing to do (every later start): one query.
    pub async fn backfill_spend(&self) -> Result<usize, LedgerError> {
        let mut pending = {
            let conn = self.db.connect()?;
            sqlite::usage_without_start(&conn)?
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let waiting = pending.len();
        let found = self.find_in_log(&mut pending).await?;
        let booked = found.len();
        self.book(found)?;
        if !pending.is_empty() {
            tracing::warn!(
                missing = pending.len(),
                "usage entries from before spend was kept whose events are no longer in the log: they count towards no budget"
            );
        }
        tracing::info!(
            booked,
            of = waiting,
            "spend booked for usage applied before budgets existed"
        );
        Ok(booked)
    }

    /// Read the account-events topic up to the applied positions and take
    /// the events `pending` names (each once: redeliveries are skipped).
    async fn find_in_log(
        &self,
        pending: &mut HashMap<String, (i64, AccountId, Usd)>,
    ) -> Result<Vec<Found>, LedgerError> {
        let topic = topics::ACCOUNT_EVENTS;
        let mut found = Vec::new();
        for partition in 0..self.log.partitions(topic).await? {
            let applied = {
                let conn = self.db.connect()?;
                sqlite::position(&conn, topic, partition)?.unwrap_or(0)
            };
            let mut offset = 0;
            while offset < applied && !pending.is_empty() {
                let records = self.log.read(topic, partition, offset, READ_CHUNK).await?;
                let Some(last) = records.last() else { break };
                offset = last.offset + 1;
                for record in records.iter().filter(|r| r.offset < applied) {
                    let Ok(LedgerInput::Usage(charge)) = LedgerInput::decode(&record.payload)
                    else {
                        continue;
                    };
                    let source_id = charge.event_id.to_string();
                    if let Some((seq, account, amount)) = pending.remove(&source_id) {
                        found.push(Found {
                            seq,
                            account,
                            debit: -amount,
                            key: charge.access_key_id,
                            started_at: charge.started_at,
                        });
                    }
                }
            }
        }
        Ok(found)
    }

    /// Add the spend and fill the entries' key and start, in one transaction.
    fn book(&self, found: Vec<Found>) -> Result<(), LedgerError> {
        let mut conn = self.writer.lock();
        let mut state = self.state.lock();
        let before = state.spend.clone();
        let tx = conn.transaction()?;
        let mut key_days = HashSet::new();
        let mut account_days = HashSet::new();
        for f in &found {
            let day = spend_day(f.started_at);
            state.spend.add(&f.account, &f.key, day, f.debit);
            key_days.insert((&f.key, day));
            account_days.insert((&f.account, day));
            sqlite::set_usage_origin(&tx, f.seq, &f.key, f.started_at)?;
        }
        let saved = sqlite::save_spend(&tx, &state.spend, &key_days, &account_days)
            .and_then(|()| Ok(tx.commit()?));
        if saved.is_err() {
            state.spend = before;
        }
        // Lifetime parts were read from entries that had no start yet.
        *self.lifetime.lock() = Default::default();
        saved
    }
}
