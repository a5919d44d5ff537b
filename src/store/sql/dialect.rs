//! What differs between SQLite and PostgreSQL in the statements flashsale generates.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// The database's clock in milliseconds since the epoch, as an SQL expression: the
    /// store's transitions decide "is the payment window over" on one clock, whatever the
    /// clock of the gateway asking.
    pub(super) fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// `rows` tuples of `columns` placeholders for a generated multi-row statement.
    /// SQLite gets anonymous `?`: sqlx looks every parameter up by name, and SQLite's
    /// name lookup is a linear scan, so `$N` made a 10,000-parameter insert quadratic
    /// (5.7% of a selling run's CPU in `sqlite3_bind_parameter_name`).
    pub(super) fn value_rows(self, rows: usize, columns: usize) -> String {
        let mut sql = String::with_capacity(rows * columns * 6);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..columns {
                if column > 0 {
                    sql.push_str(", ");
                }
                match self {
                    Dialect::Sqlite => sql.push('?'),
                    Dialect::Postgres => {
                        sql.push('$');
                        sql.push_str(&(row * columns + column + 1).to_string());
                    }
                }
            }
            sql.push(')');
        }
        sql
    }

    /// Gives `$1` units of sale `$2` back to buyer `$3` (on SQLite, in the writer's
    /// guard: `sqlite_layout.rs`).
    pub(super) fn release_buyer_units(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "UPDATE guard.buyer_units SET units = units - $1 \
                 WHERE sale = (SELECT rowid FROM sales WHERE id = $2) AND user_id = $3"
            }
            Dialect::Postgres => {
                "UPDATE buyers SET units = units - $1 WHERE sale_id = $2 AND user_id = $3"
            }
        }
    }
}
