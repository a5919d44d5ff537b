//! The tickets of the sales' lines (issue #25): appended a batch per transaction (the
//! line's group commit), decided a batch at a time, read back at a restart.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Dialect, SqlStore};
use crate::domain::{QueueSettings, Sale, Ticket, TicketStatus};
use crate::store::{OrderStore as _, StoreError, TicketCounts, TicketStore};

const COLUMNS: &str = "id, sale_id, user_id, seq, fingerprint, nonce, joined_at, status, \
                       order_id, refusal, decided_at";

fn ticket_from_row(row: &AnyRow) -> Result<Ticket, StoreError> {
    let status: String = row.try_get("status")?;
    let seq: i64 = row.try_get("seq")?;
    Ok(Ticket {
        id: row.try_get("id")?,
        sale_id: row.try_get("sale_id")?,
        user_id: row.try_get("user_id")?,
        seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("seq = {seq}")))?,
        fingerprint: row.try_get("fingerprint")?,
        nonce: row.try_get("nonce")?,
        joined_at: row.try_get("joined_at")?,
        status: TicketStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("ticket status {status:?}")))?,
        order_id: row.try_get("order_id")?,
        refusal: row.try_get("refusal")?,
        decided_at: row.try_get("decided_at")?,
    })
}

#[async_trait]
impl TicketStore for SqlStore {
    async fn append_tickets(&self, tickets: &[Ticket]) -> Result<(), StoreError> {
        // One statement, all the tickets as one JSON parameter: atomic without a
        // transaction around it, prepared once, and no per-row parameters to bind
        // (binding 64 rows × 11 `$n` took a quarter of the writer's time on SQLite).
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO tickets (id, sale_id, user_id, seq, fingerprint, nonce, joined_at, \
                 status, order_id, refusal, decided_at) \
                 SELECT value ->> 'id', value ->> 'sale_id', value ->> 'user_id', \
                 value ->> 'seq', value ->> 'fingerprint', value ->> 'nonce', \
                 value ->> 'joined_at', value ->> 'status', value ->> 'order_id', \
                 value ->> 'refusal', value ->> 'decided_at' FROM json_each($1)"
            }
            Dialect::Postgres => {
                "INSERT INTO tickets (id, sale_id, user_id, seq, fingerprint, nonce, joined_at, \
                 status, order_id, refusal, decided_at) \
                 SELECT id, sale_id, user_id, seq, fingerprint, nonce, joined_at, status, \
                 order_id, refusal, decided_at \
                 FROM json_to_recordset($1::json) AS t(id text, sale_id text, user_id text, \
                 seq bigint, fingerprint text, nonce text, joined_at bigint, status text, \
                 order_id text, refusal text, decided_at bigint)"
            }
        };
        let rows: Vec<serde_json::Value> = tickets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id,
                    "sale_id": t.sale_id,
                    "user_id": t.user_id,
                    "seq": t.seq,
                    "fingerprint": t.fingerprint,
                    "nonce": t.nonce,
                    "joined_at": t.joined_at,
                    "status": t.status.as_str(),
                    "order_id": t.order_id,
                    "refusal": t.refusal,
                    "decided_at": t.decided_at,
                })
            })
            .collect();
        sqlx::query(sql)
            .bind(serde_json::Value::Array(rows).to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn settle_tickets(&self, decided: &[Ticket]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for t in decided {
            // Only a waiting ticket moves: a decision is made once.
            sqlx::query(
                "UPDATE tickets SET status = $1, order_id = $2, refusal = $3, decided_at = $4 \
                 WHERE id = $5 AND status = 'waiting'",
            )
            .bind(t.status.as_str())
            .bind(t.order_id.clone())
            .bind(t.refusal.clone())
            .bind(t.decided_at)
            .bind(t.id.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_ticket(&self, id: &str) -> Result<Option<Ticket>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tickets WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ticket_from_row).transpose()
    }

    async fn buyer_ticket(
        &self,
        sale_id: &str,
        user_id: &str,
    ) -> Result<Option<Ticket>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tickets WHERE sale_id = $1 AND user_id = $2"
        )))
        .bind(sale_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(ticket_from_row).transpose()
    }

    async fn sale_tickets(&self, sale_id: &str) -> Result<Vec<Ticket>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tickets WHERE sale_id = $1 ORDER BY seq"
        )))
        .bind(sale_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ticket_from_row).collect()
    }

    async fn ticket_counts(&self, sale_id: &str) -> Result<TicketCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM tickets WHERE sale_id = $1 GROUP BY status",
        )
        .bind(sale_id)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = TicketCounts::default();
        for row in rows {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            let slot = match TicketStatus::parse(&status) {
                Some(TicketStatus::Waiting) => &mut counts.waiting,
                Some(TicketStatus::Decided) => &mut counts.decided,
                Some(TicketStatus::Timeout) => &mut counts.timed_out,
                Some(TicketStatus::Closed) => &mut counts.closed,
                None => return Err(StoreError::Corrupt(format!("ticket status {status:?}"))),
            };
            *slot = n.max(0) as u64;
        }
        Ok(counts)
    }

    async fn set_queue(
        &self,
        sale_id: &str,
        queue: &QueueSettings,
    ) -> Result<Option<Sale>, StoreError> {
        let updated = sqlx::query("UPDATE sales SET queue = $1 WHERE id = $2")
            .bind(serde_json::to_string(queue).expect("settings serialize"))
            .bind(sale_id)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_sale(sale_id).await
    }
}
