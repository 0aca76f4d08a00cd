//! A counting global allocator: heap allocations and requested bytes, for figures that do not
//! depend on the CPU's speed (allocations per message move only when the code changes).
//!
//! The `busbench` binary installs it (the `count-allocations` feature, on by default); a
//! program using the library installs it with
//! `#[global_allocator] static A: CountingAllocator = CountingAllocator;`. Without it,
//! [`AllocationCounts::read`] returns `None` and reports leave the figures out.
//!
//! Allocations go to mimalloc: its per-thread free lists make the small, short-lived
//! allocations of a message's trip through the bus (futures, headers, payloads) a fraction of
//! what glibc's malloc spends on them when tasks hop between worker threads.
//!
//! Counters are striped over cache lines, one stripe per thread (threads share stripes round
//! robin), so threads allocating at the same time rarely touch the same line. Reading sums
//! the stripes; the sum is exact once the counted work has finished.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 32;

#[repr(align(128))]
struct Stripe {
    allocations: AtomicU64,
    bytes: AtomicU64,
}

static COUNTERS: [Stripe; STRIPES] = [const {
    Stripe {
        allocations: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    }
}; STRIPES];
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // A `Cell<usize>` needs no destructor, so it is usable while a thread shuts down.
    static THREAD_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe() -> &'static Stripe {
    let index = THREAD_STRIPE
        .try_with(|slot| {
            let mut index = slot.get();
            if index == usize::MAX {
                index = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
                slot.set(index);
            }
            index
        })
        .unwrap_or(0);
    &COUNTERS[index]
}

#[inline]
fn count(size: usize) {
    let stripe = stripe();
    stripe.allocations.fetch_add(1, Ordering::Relaxed);
    stripe.bytes.fetch_add(size as u64, Ordering::Relaxed);
}

/// mimalloc, counting every allocation (and reallocation) and the bytes asked for.
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to mimalloc; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is mimalloc.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Allocations counted so far in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocationCounts {
    /// Calls to allocate or reallocate.
    pub allocations: u64,
    /// Bytes those calls asked for.
    pub bytes: u64,
}

impl AllocationCounts {
    /// The totals so far, or `None` when [`CountingAllocator`] is not the global allocator
    /// (nothing was ever counted).
    pub fn read() -> Option<Self> {
        let mut total = AllocationCounts::default();
        for stripe in &COUNTERS {
            total.allocations += stripe.allocations.load(Ordering::Relaxed);
            total.bytes += stripe.bytes.load(Ordering::Relaxed);
        }
        (total.allocations > 0).then_some(total)
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        AllocationCounts {
            allocations: self.allocations.saturating_sub(earlier.allocations),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}
