//! Benchmark 4: how fast the worker drains Kafka into PostgreSQL (rows/s), against a bare
//! multi-row INSERT of the same rows into the same PostgreSQL, in the same run.
//!
//!   cargo run --release --features kafka --example bench_worker_drain [-- ORDERS]
//!
//! Needs PostgreSQL on 127.0.0.1:5432 and a Kafka broker on 127.0.0.1:9092
//! (scripts/services.sh up).

use std::time::{Duration, Instant};

use flashsale::bus::{self, BusSettings, KafkaSettings};
use flashsale::domain::{Item, Order, OrderStatus, Sale};
use flashsale::store;
use flashsale::testkit::fresh_postgres_database;
use sqlx::{Connection, Executor};

const BROKERS: &str = "127.0.0.1:9092";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let orders_n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let sale = Sale {
        id: "drain".into(),
        name: "drain".into(),
        items: vec![Item {
            id: "default".into(),
            stock: orders_n as u32,
        }],
        per_user_limit: 1,
        starts_at: 0,
        ends_at: None,
        payment_window: 0,
        rate_limits: Default::default(),
        paused: false,
        shards: 1,
        queue: None,
        created_at: 0,
    };
    let orders: Vec<Order> = (0..orders_n)
        .map(|n| Order {
            id: format!("{:032x}", n),
            sale_id: sale.id.clone(),
            user_id: format!("user-{n}"),
            items: [("default".to_string(), 1)].into_iter().collect(),
            status: OrderStatus::Paid,
            created_at: n as i64,
            expires_at: None,
            idempotency_key: None,
            fingerprint: "default:1".into(),
        })
        .collect();

    // 1. The worker: orders are put on the bus first, then one worker drains them.
    let worker_db = fresh_postgres_database().await;
    let store = store::connect(&worker_db.parse().map_err(anyhow::Error::msg)?).await?;
    store.create_sale(&sale).await?;
    let run = uuid::Uuid::new_v4().simple();
    let settings = BusSettings {
        url: format!("kafka://{BROKERS}")
            .parse()
            .map_err(anyhow::Error::msg)?,
        capacity: 8192,
        timeout: Duration::from_secs(10),
        kafka: KafkaSettings {
            topic_prefix: format!("bench-{run}."),
            worker_group: format!("bench-{run}"),
            kafka_partitions: 4,
            kafka_replication_factor: None,
            kafka_min_insync_replicas: None,
            kafka_delivery_timeout_ms: 10_000,
            worker_linger_ms: 5,
        },
    };
    let (bus, _) = bus::connect(&settings).await?;
    let mut publishing = tokio::task::JoinSet::new();
    for chunk in orders.chunks(orders_n.div_ceil(64)) {
        let (bus, chunk) = (bus.clone(), chunk.to_vec());
        publishing.spawn(async move {
            for order in chunk {
                bus.publish(&order).await.expect("publish");
            }
        });
    }
    while let Some(done) = publishing.join_next().await {
        done?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let worker = tokio::spawn({
        let store = store.clone();
        async move {
            let linger = settings.kafka.worker_linger();
            flashsale::worker::consume_bus(&settings, 1024, linger, store, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let mut conn = sqlx::PgConnection::connect(&worker_db).await?;
    loop {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders")
            .fetch_one(&mut conn)
            .await?;
        if count as usize >= orders_n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let worker_secs = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    worker.await??;

    // 2. The ceiling: the same rows, straight in, 1,000 per INSERT, one transaction each.
    let bare_db = fresh_postgres_database().await;
    store::connect(&bare_db.parse().map_err(anyhow::Error::msg)?)
        .await?
        .create_sale(&sale)
        .await?;
    let mut conn = sqlx::PgConnection::connect(&bare_db).await?;
    let started = Instant::now();
    for chunk in orders.chunks(1000) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, \
             expires_at, idempotency_key, fingerprint) ",
        );
        insert.push_values(chunk, |mut row, o| {
            row.push_bind(&o.id)
                .push_bind(&o.sale_id)
                .push_bind(&o.user_id)
                .push_bind(r#"{"default":1}"#)
                .push_bind(1i64)
                .push_bind(o.status.as_str())
                .push_bind(o.created_at)
                .push_bind(o.expires_at)
                .push_bind(&o.idempotency_key)
                .push_bind(&o.fingerprint);
        });
        conn.execute(insert.build()).await?;
    }
    let bare_secs = started.elapsed().as_secs_f64();

    let worker_rate = orders_n as f64 / worker_secs;
    let bare_rate = orders_n as f64 / bare_secs;
    println!("worker drain: {worker_rate:.0} rows/s ({orders_n} orders, Kafka -> PostgreSQL)");
    println!("bare multi-row insert: {bare_rate:.0} rows/s (1,000 rows per INSERT)");
    println!("ratio (target >= 0.5): {:.2}", worker_rate / bare_rate);
    Ok(())
}
