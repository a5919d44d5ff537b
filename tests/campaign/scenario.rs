//! One scenario run: a fresh deployment (its own PostgreSQL database, topics and worker
//! group) on the campaign's Redis and, on Kafka, a tansu broker of the run's own, one sale, the buyers, one fault injected
//! in the middle of the sale and the killed process restarted, then the drain, the
//! payment windows, the sweeps, `flashsale check` and the verdict.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use flashsale::testkit::{ClusterDeployment, SentinelDeployment};

use crate::buyers::{self, Market, Plan};
use crate::helpers::broker::Broker;
use crate::helpers::redis_server::RedisServer;
use crate::helpers::{Backends, Deployment, TestServer};
use crate::verdict::{self, Evidence, SaleShape, Verdict};

const ADMIN_TOKEN: &str = "campaign-admin-token";
/// Seconds a buyer has to pay.
const PAYMENT_WINDOW_S: u32 = 3;
/// How long the broker stays down when it is restarted.
const BROKER_DOWN: Duration = Duration::from_millis(300);
/// How long the store may take to hold every acknowledged order (a consumer group
/// rebalance after a killed worker takes the session timeout, 6 s, and a few more).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);
/// How long, past the last window, the sweeps may take to put every unit back.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Redis gate, Kafka bus, 2 gateways and 2 workers, PostgreSQL.
    Kafka,
    /// Redis gate, in-process bus, 2 gateways, PostgreSQL.
    Memory,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Kafka => "redis+kafka+postgres",
            Kind::Memory => "redis+memory+postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    None,
    FlushAll,
    RedisRestart,
    KillWorker,
    KillGateway,
    BrokerRestart,
    /// Redis FLUSHALL, then clients that hang up (100 ms) on every gateway's sale view
    /// for 3 s: the rebuilds those views start must finish all the same.
    FlushAllHangUp,
    /// Some buyers' orders take 3 s to insert (a trigger), past the 2 s delivery
    /// deadline, and Redis loses the sale meanwhile: no order may land late.
    SlowCommitFlush,
    /// A gateway replaced by one that dies right after its first cancel or expiry is
    /// committed, before its units go back (failpoint `after-end`), then started again.
    CrashAfterEnd,
    /// Behind Sentinel (a primary, two replicas): the replicas stop reading (`DEBUG
    /// SLEEP`, their links cut) while buyers buy, the primary is `kill -9`ed, the
    /// Sentinels promote a replica that missed those decisions (issue #23).
    LaggingFailover,
    /// Behind Sentinel: `SENTINEL FAILOVER` (a clean switch to a replica in sync).
    SentinelFailover,
    /// A Redis Cluster (three masters, two replicas each): the sale's master `kill -9`ed,
    /// a replica takes its slots over.
    ClusterMasterKill,
    /// A Redis Cluster (three masters, a replica each): every slot of the sale's master,
    /// the sale's among them, moved live to another master (`redis-cli --cluster
    /// reshard`).
    SlotMigration,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::None => "none (baseline)",
            Fault::FlushAll => "redis FLUSHALL",
            Fault::RedisRestart => "redis restart, no persistence",
            Fault::KillWorker => "kill -9 worker",
            Fault::KillGateway => "kill -9 gateway",
            Fault::BrokerRestart => "broker restart",
            Fault::FlushAllHangUp => "redis FLUSHALL, clients hang up",
            Fault::SlowCommitFlush => "slow commit across FLUSHALL",
            Fault::CrashAfterEnd => "crash between an end and its release",
            Fault::LaggingFailover => "sentinel failover, lagging replicas",
            Fault::SentinelFailover => "sentinel failover, clean",
            Fault::ClusterMasterKill => "cluster master kill -9",
            Fault::SlotMigration => "cluster slot migration",
        }
    }

    /// The Redis the run's gateways use: the campaign's own server, or a deployment of
    /// the run's own.
    async fn redis(self) -> RunRedis {
        match self {
            Fault::LaggingFailover | Fault::SentinelFailover => {
                RunRedis::Sentinel(SentinelDeployment::start().await)
            }
            Fault::ClusterMasterKill => RunRedis::Cluster(ClusterDeployment::start_with(2).await),
            Fault::SlotMigration => RunRedis::Cluster(ClusterDeployment::start_with(1).await),
            _ => RunRedis::Shared,
        }
    }
}

/// Where a run's gate lives.
pub enum RunRedis {
    /// The campaign's Redis server (`Services::redis`).
    Shared,
    Sentinel(SentinelDeployment),
    Cluster(ClusterDeployment),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One item, 150 units, one per buyer.
    Limit1,
    /// One item, 200 units, two per buyer (buyers take 1 or 2).
    Limit2,
    /// Three items (60 + 60 + 40), two units per buyer across them, baskets of 1–2 items.
    MultiItem,
}

impl Shape {
    pub fn label(self) -> &'static str {
        match self {
            Shape::Limit1 => "limit 1",
            Shape::Limit2 => "limit 2",
            Shape::MultiItem => "multi-item",
        }
    }

    fn sale(self) -> SaleShape {
        match self {
            Shape::Limit1 => SaleShape {
                items: vec![(flashsale::domain::DEFAULT_ITEM.into(), 150)],
                limit: 1,
            },
            Shape::Limit2 => SaleShape {
                items: vec![(flashsale::domain::DEFAULT_ITEM.into(), 200)],
                limit: 2,
            },
            Shape::MultiItem => SaleShape {
                items: vec![
                    ("red".into(), 60),
                    ("green".into(), 60),
                    ("blue".into(), 40),
                ],
                limit: 2,
            },
        }
    }

    fn baskets(self) -> Vec<BTreeMap<String, u32>> {
        let basket = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
            pairs.iter().map(|(i, n)| (i.to_string(), *n)).collect()
        };
        let default = flashsale::domain::DEFAULT_ITEM;
        match self {
            Shape::Limit1 => vec![basket(&[(default, 1)])],
            Shape::Limit2 => vec![
                basket(&[(default, 1)]),
                basket(&[(default, 1)]),
                basket(&[(default, 2)]),
            ],
            Shape::MultiItem => vec![
                basket(&[("red", 1)]),
                basket(&[("green", 1)]),
                basket(&[("blue", 1)]),
                basket(&[("red", 1), ("blue", 1)]),
                basket(&[("green", 1), ("blue", 1)]),
                basket(&[("red", 2)]),
            ],
        }
    }

    /// Buyers: about 2.5 times the stock in units; 3 to 6 intents each.
    fn plan(self, seed: u64) -> Plan {
        let buyers = match self {
            Shape::Limit1 => 450,
            Shape::Limit2 => 480,
            Shape::MultiItem => 460,
        };
        Plan {
            buyers,
            intents: (3, 6),
            arrival: Duration::from_secs(5),
            stop_after: Duration::from_secs(25),
            think_ms: (150, 900),
            double_click_ratio: 0.15,
            late_replay_ratio: 0.2,
            pay_ratio: 0.5,
            payment_window: Duration::from_secs(PAYMENT_WINDOW_S as u64),
            baskets: self.baskets(),
            concurrency: 48,
            seed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub kind: Kind,
    pub fault: Fault,
    pub shape: Shape,
    pub seed: u64,
}

impl Scenario {
    pub fn name(&self) -> String {
        format!(
            "{} / {} / {}",
            self.kind.label(),
            self.fault.label(),
            self.shape.label()
        )
    }
}

/// The campaign: 24 faulted runs and 10 baselines over both deployments and the three
/// sale shapes. Worker and broker faults apply to the Kafka bus only; the Sentinel and
/// Cluster faults run on deployments of their own.
pub fn campaign() -> Vec<Scenario> {
    use Fault::*;
    use Kind::*;
    use Shape::*;
    let runs = [
        (Kafka, None, Limit1),
        (Kafka, FlushAll, Limit1),
        (Kafka, KillWorker, Limit1),
        (Kafka, BrokerRestart, Limit1),
        (Kafka, None, Limit2),
        (Kafka, KillWorker, Limit2),
        (Kafka, KillGateway, Limit2),
        (Kafka, None, MultiItem),
        (Kafka, KillWorker, MultiItem),
        (Kafka, KillGateway, MultiItem),
        (Kafka, BrokerRestart, MultiItem),
        (Kafka, None, Limit1),
        (Memory, None, Limit1),
        (Memory, KillGateway, Limit1),
        (Memory, None, Limit2),
        (Memory, RedisRestart, Limit2),
        (Memory, None, MultiItem),
        (Memory, FlushAll, MultiItem),
        (Memory, None, Limit1),
        (Memory, None, Limit2),
        (Memory, None, MultiItem),
        (Kafka, FlushAllHangUp, Limit2),
        (Memory, FlushAllHangUp, Limit1),
        (Memory, SlowCommitFlush, Limit2),
        (Kafka, CrashAfterEnd, Limit1),
        (Memory, CrashAfterEnd, MultiItem),
        (Memory, LaggingFailover, Limit1),
        (Kafka, LaggingFailover, Limit2),
        (Memory, SentinelFailover, MultiItem),
        (Kafka, SentinelFailover, Limit1),
        (Memory, ClusterMasterKill, Limit2),
        (Kafka, ClusterMasterKill, MultiItem),
        (Memory, SlotMigration, Limit1),
        (Kafka, SlotMigration, Limit2),
    ];
    runs.iter()
        .enumerate()
        .map(|(n, &(kind, fault, shape))| Scenario {
            kind,
            fault,
            shape,
            seed: 0x5eed_0000 + n as u64,
        })
        .collect()
}

/// The services the campaign owns, shared by its runs (one run at a time).
pub struct Services {
    pub redis: RedisServer,
    /// A copy of the `flashsale` binary taken when the campaign started: every run
    /// tests the same code, whatever is rebuilt meanwhile.
    pub binary: std::path::PathBuf,
    /// The broker of the current Kafka run: each Kafka run starts its own (in ~50 ms),
    /// so that a broker that broke (tansu 0.6 sometimes panics after a restart) cannot
    /// spoil the runs after it.
    pub broker: Option<Broker>,
    /// The current run's Redis: the shared server, or a Sentinel or Cluster deployment
    /// of the run's own.
    pub topology: RunRedis,
}

/// What a run found, or why it could not finish.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub scenario: Scenario,
    pub verdict: Verdict,
    /// The harness itself failed (a process did not start, a panic): no verdict.
    pub error: Option<String>,
    /// The test broker itself broke during the run (its log shows a panic): the verdict
    /// is printed but not judged, the run is tried again (10 attempts in all).
    pub environment: Option<String>,
    pub fault_note: String,
    pub seconds: f64,
    pub logs: String,
}

/// Injects the fault once the sale is well under way (a third of its stock acknowledged,
/// or 2 s into the arrivals), then restarts what it killed.
async fn inject(
    scenario: &Scenario,
    market: &Market,
    total_stock: u64,
    deployment: &Deployment,
    gateways: &Mutex<Vec<TestServer>>,
    workers: &Mutex<Vec<tokio::process::Child>>,
    services: &mut Services,
) -> String {
    if scenario.fault == Fault::None {
        return String::new();
    }
    let mut rng = fastrand::Rng::with_seed(scenario.seed ^ 0xfa17);
    while market.acked_units.load(Ordering::Relaxed) * 3 < total_stock
        && market.elapsed_ms() < 2_000
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_ms = market.elapsed_ms();
    let acked = market.acked_units.load(Ordering::Relaxed);
    let what = match scenario.fault {
        Fault::None => unreachable!(),
        Fault::FlushAll => {
            services.redis.flushall().await;
            "FLUSHALL".to_string()
        }
        Fault::RedisRestart => {
            services.redis.restart().await;
            "redis-server killed and started empty".to_string()
        }
        Fault::KillWorker => {
            let mut workers = workers.lock().await;
            let victim = rng.usize(..workers.len());
            workers[victim].kill().await.expect("kill -9 worker");
            workers[victim] = deployment.worker().await;
            format!("worker {victim} killed, a new one started")
        }
        Fault::KillGateway => {
            let mut gateways = gateways.lock().await;
            let victim = rng.usize(..gateways.len());
            gateways[victim].kill9().await;
            let replacement = deployment.gateway().await;
            market.gateways.write()[victim] = replacement.base.clone();
            gateways[victim] = replacement;
            format!("gateway {victim} killed, a new one started")
        }
        Fault::FlushAllHangUp => {
            services.redis.flushall().await;
            let urls: Vec<String> = market.gateways.read().clone();
            let impatient = reqwest::Client::new();
            let mut hung_up = 0;
            for _ in 0..30 {
                for url in &urls {
                    let view = impatient
                        .get(format!("{url}/api/sales/{}", market.sale))
                        .timeout(Duration::from_millis(100))
                        .send()
                        .await;
                    hung_up += usize::from(view.is_err());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            format!("FLUSHALL, then {hung_up} sale views hung up on")
        }
        Fault::SlowCommitFlush => {
            use sqlx::Connection;
            let mut db = sqlx::PgConnection::connect(&deployment.store_url)
                .await
                .expect("connect to the run's database");
            sqlx::raw_sql(
                "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.user_id LIKE '%3' THEN PERFORM pg_sleep(3); END IF; \
                 RETURN NEW; END $$; \
                 CREATE TRIGGER slow_insert BEFORE INSERT ON orders \
                 FOR EACH ROW EXECUTE FUNCTION slow_insert();",
            )
            .execute(&mut db)
            .await
            .expect("slow trigger");
            tokio::time::sleep(Duration::from_millis(500)).await;
            services.redis.flushall().await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            sqlx::raw_sql("DROP TRIGGER slow_insert ON orders")
                .execute(&mut db)
                .await
                .expect("drop the slow trigger");
            "inserts of buyers *3 slowed to 3 s for 4.5 s, FLUSHALL 0.5 s in".to_string()
        }
        Fault::CrashAfterEnd => {
            let mut gateways = gateways.lock().await;
            let victim = rng.usize(..gateways.len());
            gateways[victim].kill9().await;
            let mut doomed = deployment
                .gateway_with_env(&[("FLASHSALE_FAILPOINT", "after-end")])
                .await;
            market.gateways.write()[victim] = doomed.base.clone();
            // Its sweeper expires an overdue order within a window or two (3 s each).
            let waited = Instant::now();
            while !doomed.exited() && waited.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let crashed = doomed.exited();
            let replacement = deployment.gateway().await;
            market.gateways.write()[victim] = replacement.base.clone();
            gateways[victim] = replacement;
            format!(
                "gateway {victim} replaced by one that {} ({:.1} s later), started again",
                if crashed {
                    "died after ending an order"
                } else {
                    "never ended an order"
                },
                waited.elapsed().as_secs_f64()
            )
        }
        Fault::LaggingFailover => {
            let RunRedis::Sentinel(sentinel) = &mut services.topology else {
                unreachable!("a Sentinel run")
            };
            sentinel.cut_off_replicas(3000).await;
            // Buyers buy on the primary meanwhile; none of it reaches a replica.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let primary = sentinel.primary;
            sentinel.kill(primary).await;
            let promoted = sentinel.wait_for_failover().await;
            format!(
                "replicas asleep and cut off for 0.5 s of buying, primary killed, {promoted} promoted"
            )
        }
        Fault::SentinelFailover => {
            let RunRedis::Sentinel(sentinel) = &mut services.topology else {
                unreachable!("a Sentinel run")
            };
            sentinel.failover().await;
            let promoted = sentinel.wait_for_failover().await;
            format!("SENTINEL FAILOVER, {promoted} promoted")
        }
        Fault::ClusterMasterKill => {
            let RunRedis::Cluster(cluster) = &mut services.topology else {
                unreachable!("a Cluster run")
            };
            let key = format!("{{sale:{}}}:meta", market.sale);
            let master = cluster.master_of(&key).await.expect("the sale's master");
            cluster.kill(master).await;
            let waited = Instant::now();
            let mut promoted = None;
            while waited.elapsed() < Duration::from_secs(20) {
                promoted = cluster.master_of(&key).await.filter(|&p| p != master);
                if promoted.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            format!(
                "the sale's master {master} killed; {} took the slot {:.1} s later",
                promoted.map_or("no replica".to_string(), |p| p.to_string()),
                waited.elapsed().as_secs_f64()
            )
        }
        Fault::SlotMigration => {
            let RunRedis::Cluster(cluster) = &mut services.topology else {
                unreachable!("a Cluster run")
            };
            let key = format!("{{sale:{}}}:meta", market.sale);
            let from = cluster.master_of(&key).await.expect("the sale's master");
            let mut to = None;
            for &port in &cluster.ports {
                if port != from
                    && flashsale::testkit::sentinel::info(port, "replication")
                        .await
                        .contains("role:master")
                {
                    to = Some(port);
                    break;
                }
            }
            let to = to.expect("another master");
            let started = Instant::now();
            cluster.reshard(from, to).await;
            format!(
                "every slot of {from} (the sale's) moved to {to} in {:.1} s; the sale's master now {:?}",
                started.elapsed().as_secs_f64(),
                cluster.master_of(&key).await
            )
        }
        Fault::BrokerRestart => {
            let broker = services
                .broker
                .as_mut()
                .expect("a broker for Kafka scenarios");
            broker.kill9().await;
            // Down for less than the producers' delivery timeout: requests in flight at
            // the kill have an unknown outcome, and nothing times out meanwhile (a
            // longer outage makes librdkafka bump its idempotent producer's epoch, on
            // which tansu 0.6 panics more often than not: it proves nothing then).
            tokio::time::sleep(BROKER_DOWN).await;
            broker.resume().await;
            format!(
                "broker killed, restarted {} ms later",
                BROKER_DOWN.as_millis()
            )
        }
    };
    format!(
        "{what} at {:.1} s ({acked}/{total_stock} units acknowledged, back at {:.1} s)",
        at_ms as f64 / 1000.0,
        market.elapsed_ms() as f64 / 1000.0
    )
}

/// Runs one scenario to its verdict.
pub async fn run(scenario: Scenario, services: Arc<Mutex<Services>>) -> RunResult {
    let started = Instant::now();
    let mut services = services.lock().await;
    let backends = match scenario.kind {
        Kind::Kafka => Backends::RedisKafkaPostgres,
        Kind::Memory => Backends::RedisMemoryPostgres,
    };
    let mut deployment = Deployment::new(backends, &["--admin-token", ADMIN_TOKEN]).await;
    // The last run's own Redis processes end here (killed on drop).
    services.topology = scenario.fault.redis().await;
    deployment.redis_url = match &services.topology {
        RunRedis::Shared => services.redis.url(),
        RunRedis::Sentinel(sentinel) => sentinel.url(),
        RunRedis::Cluster(cluster) => cluster.url(),
    };
    deployment.binary = services.binary.clone();
    if scenario.kind == Kind::Kafka {
        services.broker = Some(Broker::start().await);
    }
    if let Some(broker) = &services.broker {
        deployment.kafka_url = broker.url();
    }
    let logs = deployment.dir.path().display().to_string();

    let (first, second) = tokio::join!(deployment.gateway(), deployment.gateway());
    let mut workers = Vec::new();
    if scenario.kind == Kind::Kafka {
        let (a, b) = tokio::join!(deployment.worker(), deployment.worker());
        workers = vec![a, b];
    }
    let shape = scenario.shape.sale();
    let mut new_sale = json!({
        "name": format!("campaign {}", scenario.name()),
        "per_user_limit": shape.limit,
        "payment_window": PAYMENT_WINDOW_S,
    });
    if scenario.shape == Shape::MultiItem {
        new_sale["items"] = shape
            .items
            .iter()
            .map(|(id, stock)| json!({"id": id, "stock": stock}))
            .collect();
    } else {
        new_sale["stock"] = json!(shape.items[0].1);
    }
    // A deployment just formed (a Cluster whose replicas have only just synced) may
    // answer 503 for a moment: retried, as an operator would, for up to 15 s.
    let new_sale: flashsale::api::requests::NewSale =
        serde_json::from_value(new_sale).expect("a sale the API accepts");
    let creating = Instant::now();
    let sale = loop {
        match first.api.create_sale(&new_sale).await {
            Ok(sale) => break sale.id,
            Err(e) if creating.elapsed() < Duration::from_secs(15) => {
                tracing::debug!(error = %e, "create sale: retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("create sale: {e:?}"),
        }
    };
    let total_stock: u64 = shape.items.iter().map(|(_, s)| *s as u64).sum();

    let plan = scenario.shape.plan(scenario.seed);
    let market = Arc::new(Market::new(
        vec![first.base.clone(), second.base.clone()],
        sale.clone(),
        ADMIN_TOKEN.to_string(),
        plan.concurrency,
    ));
    let gateways = Mutex::new(vec![first, second]);
    let finished = std::sync::atomic::AtomicBool::new(false);
    let workers = Mutex::new(workers);
    let broker_log = services.broker.as_ref().map(|b| b.log_path());
    let (ledger, fault_note, ()) = tokio::join!(
        async {
            let ledger = buyers::run(market.clone(), &plan).await;
            finished.store(true, Ordering::Relaxed);
            ledger
        },
        inject(
            &scenario,
            &market,
            total_stock,
            &deployment,
            &gateways,
            &workers,
            &mut services
        ),
        watch_broker(broker_log, &market, &finished),
    );
    let load_done_ms = market.elapsed_ms();

    // Drain: every acknowledged order in the store (or the timeout).
    let store = flashsale::store::connect(&deployment.store_url.parse().unwrap())
        .await
        .expect("open the store");
    let acked: HashSet<String> = ledger
        .intents
        .iter()
        .flat_map(|i| i.accepted_ids().into_iter().map(str::to_string))
        .collect();
    // A run whose broker broke proves nothing: no waiting for it.
    let aborted = market.aborted();
    let drain_timeout = if aborted {
        Duration::ZERO
    } else {
        DRAIN_TIMEOUT
    };
    let drain_started = Instant::now();
    let mut stored = loop {
        let stored = store.sale_orders(&sale).await.expect("read orders");
        let ids: HashSet<&str> = stored.iter().map(|o| o.id.as_str()).collect();
        if acked.iter().all(|id| ids.contains(id.as_str()))
            || drain_started.elapsed() >= drain_timeout
        {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drained_s = drain_started.elapsed().as_secs_f64();
    let drained = drained_s < DRAIN_TIMEOUT.as_secs_f64() && !aborted;
    // Orders stuck on the bus cannot expire: no use waiting long for the sweeps then.
    let settle_timeout = match (drained, aborted) {
        (_, true) => Duration::ZERO,
        (true, false) => SETTLE_TIMEOUT,
        (false, false) => Duration::from_secs(5),
    };

    // Past every window (and the hold grace of 1 s), the sweeps put every unpaid unit
    // back: wait for it, up to SETTLE_TIMEOUT.
    let last_window = stored
        .iter()
        .filter_map(|o| o.expires_at)
        .max()
        .unwrap_or(0);
    let wait_until = last_window + 2_500;
    let now = flashsale::domain::now_millis();
    if wait_until > now && !aborted {
        tokio::time::sleep(Duration::from_millis((wait_until - now) as u64)).await;
    }
    let settle_started = Instant::now();
    let urls: Vec<String> = market.gateways.read().clone();
    let (remaining, read_at) = loop {
        stored = store.sale_orders(&sale).await.expect("read orders");
        let read_at = flashsale::domain::now_millis();
        let remaining = remaining_stock(&market.http, &urls, &sale).await;
        let settled = remaining.as_ref().is_some_and(|left| {
            shape.items.iter().zip(left).all(|((item, stock), &left)| {
                let sold: u64 = stored
                    .iter()
                    .filter(|o| o.status.holds_stock() && !o.is_overdue(read_at))
                    .filter_map(|o| o.items.get(item).map(|&u| u as u64))
                    .sum();
                sold + left as u64 == *stock as u64
            })
        }) && !stored.iter().any(|o| o.is_overdue(read_at));
        if settled || settle_started.elapsed() > settle_timeout {
            break (remaining, read_at);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut histories = HashMap::new();
    for order in stored.iter().filter(|o| !o.status.holds_stock()) {
        let history = store.order_history(&order.id).await.expect("order history");
        histories.insert(order.id.clone(), history);
    }

    let check = match aborted {
        true => None,
        false => Some(deployment.run("check", &["--sale", &sale]).await),
    };
    let check_ok = check.as_ref().is_none_or(|c| c.status.success());
    let (out, err) = match &check {
        Some(c) => (c.stdout.clone(), c.stderr.clone()),
        None => (b"checked nothing: the broker broke".to_vec(), Vec::new()),
    };
    let out = String::from_utf8_lossy(&out);
    let err = String::from_utf8_lossy(&err);
    let lines: Vec<&str> = out.lines().chain(err.lines()).collect();
    // `… bus lag N: OK`: messages the workers have not stored yet.
    let bus_lag = lines.iter().find_map(|l| {
        let rest = &l[l.find("bus lag ")? + "bus lag ".len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u64>()
            .ok()
    });

    let mut verdict = verdict::judge(&Evidence {
        sale: &shape,
        ledger: &ledger,
        stored: &stored,
        histories: &histories,
        remaining,
        now: read_at,
        check_ok,
        bus_lag,
    });
    verdict.details.push(format!(
        "load {:.1} s, drained in {drained_s:.1} s, settled in {:.1} s",
        load_done_ms as f64 / 1000.0,
        settle_started.elapsed().as_secs_f64()
    ));
    if !check_ok {
        let shown: Vec<&str> = lines.iter().copied().take(8).collect();
        verdict
            .details
            .push(format!("check said: {}", shown.join(" | ")));
    } else if let Some(summary) = lines.iter().find(|l| l.starts_with("checked ")) {
        verdict.details.push(format!("check said: {summary}"));
    }
    let environment = services.broker.as_ref().and_then(|broker| {
        let log = std::fs::read_to_string(broker.log_path()).unwrap_or_default();
        let at = log.find("panicked at")?;
        let what: String = log[at..].lines().take(2).collect::<Vec<_>>().join(" ");
        Some(format!(
            "the tansu broker panicked: {what} (log {})",
            broker.log_path().display()
        ))
    });
    RunResult {
        scenario,
        verdict,
        error: None,
        environment,
        fault_note,
        seconds: started.elapsed().as_secs_f64(),
        logs,
    }
}

/// Watches the test broker's log while the buyers run: once tansu has panicked (its
/// storage task dies, and with it every answer), the run is aborted.
async fn watch_broker(
    log: Option<std::path::PathBuf>,
    market: &Market,
    finished: &std::sync::atomic::AtomicBool,
) {
    let Some(log) = log else { return };
    while !finished.load(Ordering::Relaxed) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("panicked at") {
            market.abort.store(true, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Remaining units per item as a gateway tells them (retried on 503 and on a dead one).
async fn remaining_stock(http: &reqwest::Client, urls: &[String], sale: &str) -> Option<Vec<u32>> {
    for attempt in 0..10 {
        let url = format!("{}/api/sales/{sale}", urls[attempt % urls.len()]);
        if let Ok(response) = http.get(url).send().await
            && response.status() == 200
            && let Ok(view) = response.json::<flashsale::client::SaleView>().await
        {
            return Some(view.items.iter().map(|i| i.remaining).collect());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
