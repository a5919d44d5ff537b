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

    /// Gives units of sale `$1` back to many buyers, `values` a list of
    /// `(user_id, units)` rows (`VALUES` names them `column1`, `column2` on both).
    pub(super) fn release_units_of_buyers(self, values: &str) -> String {
        match self {
            Dialect::Sqlite => format!(
                "UPDATE guard.buyer_units SET units = buyer_units.units - v.column2 \
                 FROM (VALUES {values}) AS v \
                 WHERE buyer_units.sale = (SELECT rowid FROM sales WHERE id = $1) \
                 AND buyer_units.user_id = v.column1"
            ),
            Dialect::Postgres => format!(
                "UPDATE buyers SET units = buyers.units - v.column2 \
                 FROM (VALUES {values}) AS v \
                 WHERE buyers.sale_id = $1 AND buyers.user_id = v.column1"
            ),
        }
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
