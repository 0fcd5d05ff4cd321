//! Accounts and access keys. Tokens are returned once at creation; only
//! their SHA-256 hash is stored.

use crate::db::Database;
use crate::error::StoreError;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use std::sync::Arc;
use tollgate_core::secrets::{display_prefix, generate_access_token, hash_access_token};
use tollgate_core::{AccessKeyId, AccountId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// An access key as stored: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessKeyRecord {
    pub id: AccessKeyId,
    pub account_id: AccountId,
    pub name: String,
    pub token_prefix: String,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly created key: the only time its token is visible.
#[derive(Clone, Debug, Serialize)]
pub struct NewAccessKey {
    pub key: AccessKeyRecord,
    pub token: String,
}

#[derive(Clone)]
pub struct KeyStore {
    conn: Arc<Mutex<Connection>>,
}

fn parse_time(text: String) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AccessKeyRecord> {
    Ok(AccessKeyRecord {
        id: AccessKeyId(row.get(0)?),
        account_id: AccountId(row.get(1)?),
        name: row.get(2)?,
        token_prefix: row.get(3)?,
        token_hash: row.get(4)?,
        created_at: parse_time(row.get(5)?)?,
        revoked_at: row
            .get::<_, Option<String>>(6)?
            .map(parse_time)
            .transpose()?,
    })
}

const KEY_COLUMNS: &str = "id, account_id, name, token_prefix, token_hash, created_at, revoked_at";

impl KeyStore {
    pub fn open(db: &Database) -> Result<KeyStore, StoreError> {
        Ok(KeyStore {
            conn: Arc::new(Mutex::new(db.connect()?)),
        })
    }

    pub fn create_account(&self, name: &str) -> Result<Account, StoreError> {
        let account = Account {
            id: AccountId::generate(),
            name: name.to_owned(),
            created_at: Utc::now(),
        };
        self.conn.lock().execute(
            "INSERT INTO accounts (id, name, created_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                account.id.as_str(),
                account.name,
                account.created_at.to_rfc3339()
            ],
        )?;
        Ok(account)
    }

    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt =
            conn.prepare("SELECT id, name, created_at FROM accounts ORDER BY created_at")?;
        let rows = stmt.query_map([], |row| {
            Ok(Account {
                id: AccountId(row.get(0)?),
                name: row.get(1)?,
                created_at: parse_time(row.get(2)?)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn create_access_key(
        &self,
        account: &AccountId,
        name: &str,
    ) -> Result<NewAccessKey, StoreError> {
        let token = generate_access_token();
        let key = AccessKeyRecord {
            id: AccessKeyId::generate(),
            account_id: account.clone(),
            name: name.to_owned(),
            token_prefix: display_prefix(&token),
            token_hash: hash_access_token(&token),
            created_at: Utc::now(),
            revoked_at: None,
        };
        let changed = self.conn.lock().execute(
            "INSERT INTO access_keys (id, account_id, name, token_prefix, token_hash, created_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?2)",
            rusqlite::params![
                key.id.as_str(),
                key.account_id.as_str(),
                key.name,
                key.token_prefix,
                key.token_hash,
                key.created_at.to_rfc3339()
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("account {account}")));
        }
        Ok(NewAccessKey { key, token })
    }

    /// Every key, revoked ones included, oldest first.
    pub fn access_keys(&self) -> Result<Vec<AccessKeyRecord>, StoreError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM access_keys ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], key_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn access_key_by_token(&self, token: &str) -> Result<Option<AccessKeyRecord>, StoreError> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM access_keys WHERE token_hash = ?1"),
                [hash_access_token(token)],
                key_from_row,
            )
            .optional()?)
    }

    pub fn revoke_access_key(&self, id: &AccessKeyId) -> Result<(), StoreError> {
        let changed = self.conn.lock().execute(
            "UPDATE access_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            rusqlite::params![id.as_str(), Utc::now().to_rfc3339()],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("active access key {id}")));
        }
        Ok(())
    }
}
