//! Benchmark 6: the local gate's decision, in ns per call (criterion).
//!
//!   cargo bench --bench gate
//!
//! A purchase that gets its unit (window check, the buyer's shard lock and units,
//! compare-and-swap on the stock), from 100,000 returning buyers so that the maps are
//! in their steady state; the sale's stock and per-user limit are high enough never to
//! refuse. Also the sold-out answer, and both from two threads at once (wall time per
//! call over both threads: below the single-threaded figure when they scale).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use flashsale::domain::{Item, Sale, ValidPurchase};
use flashsale::gate::{Decision, LocalGate, StockGate};

const BUYERS: usize = 100_000;

fn sale(stock: u32) -> Sale {
    Sale {
        id: "bench".into(),
        name: "bench".into(),
        items: vec![Item {
            id: "default".into(),
            stock,
        }],
        per_user_limit: u32::MAX,
        starts_at: 0,
        ends_at: None,
        payment_window: 0,
        rate_limits: Default::default(),
        paused: false,
        shards: 1,
        queue: None,
        created_at: 0,
    }
}

fn purchases() -> Vec<ValidPurchase> {
    (0..BUYERS)
        .map(|n| ValidPurchase {
            user_id: format!("buyer-{n}"),
            units: vec![(0, 1)],
            fingerprint: "default:1".into(),
        })
        .collect()
}

fn gate_with(sale: &Sale) -> Arc<LocalGate> {
    let gate = Arc::new(LocalGate::new());
    block_on(gate.open_sale(sale)).expect("the local gate opens any sale");
    gate
}

/// The trait's `open_sale` is async but does not wait on anything in the local gate.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn decide(gate: &LocalGate, sale: &Sale, p: &ValidPurchase) -> Decision {
    gate.decide(sale, p, None, "order", 1).expect("known sale")
}

/// Wall time of `iters` decisions split over `threads` threads.
fn timed(
    threads: usize,
    iters: u64,
    gate: &Arc<LocalGate>,
    sale: &Arc<Sale>,
    buyers: &Arc<Vec<ValidPurchase>>,
) -> Duration {
    let per_thread = iters / threads as u64;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (gate, sale, buyers) = (gate.clone(), sale.clone(), buyers.clone());
            scope.spawn(move || {
                for i in 0..per_thread {
                    let p = &buyers[(i as usize * 7919 + t * 104_729) % BUYERS];
                    black_box(decide(&gate, &sale, p));
                }
            });
        }
    });
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let buyers = Arc::new(purchases());
    let mut group = c.benchmark_group("local gate decision");

    let selling = Arc::new(sale(u32::MAX));
    let gate = gate_with(&selling);
    for p in buyers.iter() {
        decide(&gate, &selling, p); // every buyer known: steady state
    }
    group.bench_function("reserve, 1 thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % BUYERS;
            black_box(decide(&gate, &selling, &buyers[i]))
        })
    });
    group.bench_function("reserve, 2 threads (wall time per call)", |b| {
        b.iter_custom(|iters| timed(2, iters, &gate, &selling, &buyers))
    });

    let sold_out = Arc::new(sale(1));
    let gate = gate_with(&sold_out);
    decide(&gate, &sold_out, &buyers[0]);
    group.bench_function("sold out, 1 thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % BUYERS;
            black_box(decide(&gate, &sold_out, &buyers[i]))
        })
    });
    group.bench_function("sold out, 2 threads (wall time per call)", |b| {
        b.iter_custom(|iters| timed(2, iters, &gate, &sold_out, &buyers))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
