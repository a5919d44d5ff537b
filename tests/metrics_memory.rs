//! Issue #24: the histograms' samples do not pile up between two scrapes of `/metrics`.
//! The exporter keeps each recorded sample until it is folded into the buckets; without
//! the recorder's upkeep that happened only at a scrape, and a `serve` nobody scraped
//! grew by every request it answered. Live heap bytes are counted by this binary's
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use flashsale::observe::metrics::{PURCHASE_DURATION, UPKEEP_EVERY, install};

/// The system allocator, counting the bytes asked for and not yet given back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A million purchase timings and no scrape: kept, they are 8 MB or more; folded, next
/// to nothing. The folded samples' blocks are freed by epoch (crossbeam) as the recording
/// goes on, so the test goes on recording, slowly, as a server would.
#[test]
fn histogram_samples_are_folded_without_a_scrape() {
    let _handle = install();
    let histogram = metrics::histogram!(PURCHASE_DURATION);
    let trickle = |for_how_long: Duration| {
        let until = std::time::Instant::now() + for_how_long;
        while std::time::Instant::now() < until {
            for _ in 0..100 {
                histogram.record(0.001);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    trickle(UPKEEP_EVERY * 2);
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..1_000_000u32 {
        histogram.record(f64::from(i % 1000) / 1e5);
    }
    trickle(UPKEEP_EVERY * 4);
    let grown = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        grown < 1_000_000,
        "{grown} bytes still held after a million samples and no scrape"
    );
}
