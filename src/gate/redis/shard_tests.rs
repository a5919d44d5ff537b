//! The transfer protocol of a sharded sale against a real Redis (ignored without one:
//! `scripts/services.sh up`): any interleaving of purchases, releases and the steps of
//! many transfers (some never finished by their taker, then recovered) keeps every unit
//! of every item in exactly one place: a sub-stock, a live reservation, or a transit
//! entry its receiver has not credited.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;

use super::shards::{Transfer, shard_of, sub_sale, sub_sale_id};
use super::*;
use crate::domain::{Order, PurchaseRequest, now_millis, validate_purchase};

const SHARDS: u32 = 3;
const STOCKS: [u32; 2] = [7, 5];

#[derive(Debug, Clone)]
enum Step {
    /// A buyer buys `units` of item `item` (and one of the other item when `both`).
    Buy {
        user: u8,
        item: usize,
        units: u32,
        both: bool,
    },
    /// The `nth` live order (modulo their number) is released.
    Release { nth: usize },
    /// Step 1 of a new transfer.
    Take {
        from: u32,
        to: u32,
        item: usize,
        wanted: u32,
        share: bool,
    },
    /// Step 2 of the `nth` taken transfer (again, if it was).
    Credit { nth: usize },
    /// Step 3 of the `nth` taken transfer, whether or not credited (a settle before
    /// the credit is a bug the count would show).
    SettleCredited { nth: usize },
    /// A gateway finishes whatever is left in transit.
    Recover,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..12, 0usize..2, 1u32..4, any::<bool>())
            .prop_map(|(user, item, units, both)| Step::Buy { user, item, units, both }),
        2 => (0usize..64).prop_map(|nth| Step::Release { nth }),
        3 => (0u32..SHARDS, 1u32..SHARDS, 0usize..2, 1u32..6, any::<bool>()).prop_map(
            |(from, offset, item, wanted, share)| Step::Take {
                from,
                to: (from + offset) % SHARDS,
                item,
                wanted,
                share,
            }
        ),
        2 => (0usize..64).prop_map(|nth| Step::Credit { nth }),
        2 => (0usize..64).prop_map(|nth| Step::SettleCredited { nth }),
        1 => Just(Step::Recover),
    ]
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

async fn gate() -> RedisGate {
    let url =
        std::env::var("FLASHSALE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    RedisGate::connect(&url, Duration::from_secs(2))
        .await
        .unwrap()
}

/// Every unit of each item, wherever it is: (in sub-stocks, reserved, in transit).
async fn count(gate: &RedisGate, sale: &Sale, live: &[(Sale, Order)]) -> Vec<(i64, i64, i64)> {
    let mut conn = gate.redis.get();
    let mut counts = vec![(0i64, 0i64, 0i64); STOCKS.len()];
    for shard in 0..SHARDS {
        let keys = SaleKeys::new(&sub_sale_id(&sale.id, shard));
        let stock: HashMap<usize, i64> = redis::cmd("HGETALL")
            .arg(&keys.stock)
            .query_async(&mut conn)
            .await
            .unwrap();
        let left: i64 = redis::cmd("HGET")
            .arg(&keys.meta)
            .arg("left")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            left,
            stock.values().sum::<i64>(),
            "meta.left of shard {shard}"
        );
        for (&item, &units) in &stock {
            assert!(units >= 0, "shard {shard} item {item}: {units}");
            counts[item].0 += units;
        }
        for transfer in gate.transfers_from(&sale.id, shard).await.unwrap() {
            let receiver = SaleKeys::new(&sub_sale_id(&sale.id, transfer.to));
            let credited: bool = redis::cmd("SISMEMBER")
                .arg(&receiver.credited)
                .arg(&transfer.id)
                .query_async(&mut conn)
                .await
                .unwrap();
            if !credited {
                for (item, units) in transfer.units {
                    counts[item].2 += i64::from(units);
                }
            }
        }
    }
    for (sub, order) in live {
        for (item, units) in order.units(sub) {
            counts[item].1 += i64::from(units);
        }
    }
    counts
}

async fn run(steps: Vec<Step>) {
    let gate = gate().await;
    let now = now_millis();
    let sale = crate::testkit::sale()
        .random_id()
        .stocks(&STOCKS)
        .limit(1000)
        .shards(SHARDS)
        .window(now - 1000, None)
        .created_at(now)
        .build();
    // Opening spreads the stock by transfers: counted from the start.
    gate.open_sale(&sale).await.unwrap();
    let mut live: Vec<(Sale, Order)> = Vec::new();
    let mut transfers: Vec<Transfer> = Vec::new();
    for step in steps {
        match step {
            Step::Buy {
                user,
                item,
                units,
                both,
            } => {
                let user = format!("buyer-{user}");
                let shard = shard_of(&user, SHARDS);
                let sub = sub_sale(&sale, shard);
                let mut items = std::collections::BTreeMap::new();
                items.insert(sale.items[item].id.clone(), units);
                if both {
                    items.insert(sale.items[1 - item].id.clone(), 1);
                }
                let request = PurchaseRequest {
                    user_id: user,
                    quantity: None,
                    items: Some(items),
                };
                let purchase = validate_purchase(&sub, request).unwrap();
                let id = uuid::Uuid::now_v7().simple().to_string();
                if let Decision::Reserved { at } =
                    gate.reserve(&sub, &purchase, None, &id, now).await.unwrap()
                {
                    let order = Order::new(id, &sub, &purchase, None, at);
                    live.push((sub, order));
                }
            }
            Step::Release { nth } => {
                if !live.is_empty() {
                    let (sub, order) = live.remove(nth % live.len());
                    gate.release(&sub, &order, false).await.unwrap();
                }
            }
            Step::Take {
                from,
                to,
                item,
                wanted,
                share,
            } => {
                if let Some(transfer) = gate
                    .take_units(&sale.id, from, to, &[(item, wanted)], share)
                    .await
                    .unwrap()
                {
                    transfers.push(transfer);
                }
            }
            Step::Credit { nth } => {
                if !transfers.is_empty() {
                    let transfer = &transfers[nth % transfers.len()];
                    gate.credit_units(&sale.id, transfer).await.unwrap();
                }
            }
            Step::SettleCredited { nth } => {
                if !transfers.is_empty() {
                    let transfer = transfers[nth % transfers.len()].clone();
                    // As the protocol does: settle only what is credited.
                    gate.finish_transfer(&sale.id, &transfer).await.unwrap();
                }
            }
            Step::Recover => {
                gate.recover_transfers(&sale.id, SHARDS).await.unwrap();
            }
        }
        let counts = count(&gate, &sale, &live).await;
        for (item, &(stocked, reserved, moving)) in counts.iter().enumerate() {
            assert_eq!(
                stocked + reserved + moving,
                i64::from(STOCKS[item]),
                "item {item}: {stocked} in sub-stocks + {reserved} reserved + {moving} in \
                 transit after {step:?}"
            );
        }
    }
    // Once every transfer is finished, nothing is in transit and nothing was lost.
    gate.recover_transfers(&sale.id, SHARDS).await.unwrap();
    for shard in 0..SHARDS {
        assert!(
            gate.transfers_from(&sale.id, shard)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let counts = count(&gate, &sale, &live).await;
    for (item, &(stocked, reserved, moving)) in counts.iter().enumerate() {
        assert_eq!(moving, 0);
        assert_eq!(stocked + reserved, i64::from(STOCKS[item]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    #[ignore = "needs Redis (scripts/services.sh up)"]
    fn any_interleaving_of_purchases_releases_and_transfers_keeps_every_unit(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        runtime().block_on(run(steps));
    }
}

/// What a crowd of buyers heard from an engine selling one sharded sale.
struct Crowd {
    sold: usize,
    sold_out: usize,
    unavailable: usize,
}

/// The buyers numbered `buyers`, one unit each, 32 at a time, each retrying 503s for up
/// to 10 s.
async fn crowd(engine: &crate::testkit::TestEngine, buyers: std::ops::Range<usize>) -> Crowd {
    use futures_util::StreamExt;
    let answers: Vec<Result<(), crate::engine::EngineError>> = futures_util::stream::iter(buyers)
        .map(|n| async move {
            let user = format!("buyer-{n}");
            let until = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match engine.buy(&user, Some("k")).await {
                    Err(crate::engine::EngineError::Unavailable(_))
                        if tokio::time::Instant::now() < until =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    other => return other.map(|_| ()),
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut crowd = Crowd {
        sold: 0,
        sold_out: 0,
        unavailable: 0,
    };
    for answer in answers {
        match answer {
            Ok(()) => crowd.sold += 1,
            Err(crate::engine::EngineError::Refused(Refusal::SoldOut)) => crowd.sold_out += 1,
            Err(e) => {
                eprintln!("a buyer heard {e}");
                crowd.unavailable += 1
            }
        }
    }
    crowd
}

async fn sharded_engine(url: &str, stock: u32, shards: u32) -> crate::testkit::TestEngine {
    let target = RedisTarget::parse(url).unwrap();
    let acks = if url.starts_with("redis-cluster") {
        ReplicaAcks {
            replicas: 1,
            timeout: Duration::from_millis(250),
        }
    } else {
        ReplicaAcks::NONE
    };
    let gate = RedisGate::connect_to(target, Duration::from_secs(2), acks)
        .await
        .unwrap();
    crate::testkit::TestEngine::with(crate::testkit::Setup {
        gate: std::sync::Arc::new(gate),
        bus_capacity: 4096,
        stock,
        per_user_limit: 1,
        shards,
        ..crate::testkit::Setup::default()
    })
    .await
}

/// Exact sell-out: as many buyers as units, spread over three sub-stocks by a hash that
/// fills them unevenly, all get a unit (a sub-stock that ran dry borrowed: no buyer told
/// `sold_out` while another sub-stock had a unit), each stored once; the next buyers
/// are told `sold_out`. Five sales.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis (scripts/services.sh up)"]
async fn a_sale_over_three_shards_sells_out_exactly() {
    let url =
        std::env::var("FLASHSALE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    for _ in 0..5 {
        let stock = 200;
        let engine = sharded_engine(&url, stock, 3).await;
        let heard = crowd(&engine, 0..stock as usize).await;
        assert_eq!(heard.unavailable, 0);
        assert_eq!(
            (heard.sold, heard.sold_out),
            (stock as usize, 0),
            "every buyer of the {stock} got a unit"
        );
        let late = crowd(&engine, stock as usize..stock as usize + 50).await;
        assert_eq!((late.sold, late.sold_out), (0, 50));
        tokio::time::sleep(Duration::from_millis(300)).await; // the writer stores the last
        let stored = engine.stored_orders().await;
        let units: u32 = stored.iter().map(|o| o.total_units()).sum();
        assert_eq!(units, stock, "every unit stored once");
        assert_eq!(engine.remaining().await, vec![0]);
        let mut buyers = std::collections::HashSet::new();
        assert!(stored.iter().all(|o| buyers.insert(o.user_id.clone())));
        engine.stop().await;
    }
}
