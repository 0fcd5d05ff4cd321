//! Schema migrations for every component that keeps tables in the SQLite
//! file. Each component has its own version table, so components sharing the
//! file keep separate histories and evolve apart.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// A component's numbered migrations: step `i` is version `i + 1`, applied
/// once, in order. Never edit a released step; append a new one.
#[derive(Clone, Copy, Debug)]
pub struct Migrations {
    /// The component's version table (`version`, `applied_at`).
    pub table: &'static str,
    pub steps: &'static [&'static str],
}

impl Migrations {
    /// Apply the pending steps in one immediate transaction: two processes
    /// opening the same file at once apply each step exactly once, and a
    /// failing step leaves the file as it was.
    pub fn apply(&self, conn: &mut Connection) -> Result<(), rusqlite::Error> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (version INTEGER PRIMARY KEY, applied_at TEXT)",
            self.table
        ))?;
        // The ledger's table was created without the column by earlier
        // releases; its recorded versions stay, with no time.
        let has_applied_at = tx
            .query_row(
                "SELECT 1 FROM pragma_table_info(?1) WHERE name = 'applied_at'",
                [self.table],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !has_applied_at {
            tx.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN applied_at TEXT",
                self.table
            ))?;
        }
        let applied: i64 = tx.query_row(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {}", self.table),
            [],
            |row| row.get(0),
        )?;
        let record = format!(
            "INSERT INTO {} (version, applied_at) VALUES (?1, ?2)",
            self.table
        );
        for (version, sql) in (1_i64..).zip(self.steps) {
            if version > applied {
                tx.execute_batch(sql)?;
                tx.execute(
                    &record,
                    rusqlite::params![version, chrono::Utc::now().to_rfc3339()],
                )?;
            }
        }
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FIRST: Migrations = Migrations {
        table: "first_migrations",
        steps: &[
            "CREATE TABLE first_a (x INTEGER)",
            "CREATE TABLE first_b (y INTEGER)",
        ],
    };
    const SECOND: Migrations = Migrations {
        table: "second_migrations",
        steps: &["CREATE TABLE second_a (x INTEGER)"],
    };

    fn versions(conn: &Connection, table: &str) -> Vec<i64> {
        conn.prepare(&format!("SELECT version FROM {table} ORDER BY version"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn components_sharing_a_file_keep_separate_histories() {
        let mut conn = Connection::open_in_memory().unwrap();
        FIRST.apply(&mut conn).unwrap();
        SECOND.apply(&mut conn).unwrap();
        // A second run applies nothing (the CREATEs would fail if it did).
        FIRST.apply(&mut conn).unwrap();
        SECOND.apply(&mut conn).unwrap();
        assert_eq!(versions(&conn, "first_migrations"), vec![1, 2]);
        assert_eq!(versions(&conn, "second_migrations"), vec![1]);
    }

    #[test]
    fn a_table_without_applied_at_keeps_its_versions_and_gains_the_column() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE first_migrations (version INTEGER PRIMARY KEY);
             INSERT INTO first_migrations (version) VALUES (1);
             CREATE TABLE first_a (x INTEGER);",
        )
        .unwrap();
        FIRST.apply(&mut conn).unwrap();
        let rows: Vec<(i64, Option<String>)> = conn
            .prepare("SELECT version, applied_at FROM first_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], (1, None));
        assert_eq!(rows[1].0, 2);
        assert!(rows[1].1.is_some());
    }

    #[test]
    fn a_failing_step_leaves_the_file_as_it_was() {
        const BROKEN: Migrations = Migrations {
            table: "broken_migrations",
            steps: &["CREATE TABLE broken_a (x INTEGER)", "NOT SQL"],
        };
        let mut conn = Connection::open_in_memory().unwrap();
        assert!(BROKEN.apply(&mut conn).is_err());
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name LIKE 'broken%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }
}
