//! Test-only counts of work, so tests can check that what once cost the square of its input
//! stays linear by counting, which load cannot change, not by timing: the bytes the current
//! thread allocates (a global allocator that counts them: joining a path anew for every
//! length, placing or tracing every refusal allocated the square).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; the count is a
// const-initialised thread-local that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn count(bytes: usize) {
    // `try_with`: the thread-local may already be gone while a thread ends.
    let _ = BYTES.try_with(|b| b.set(b.get() + bytes as u64));
}

/// How much work one call did on this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub bytes: u64,
}

fn now() -> Work {
    Work {
        bytes: BYTES.with(Cell::get),
    }
}

/// What `f` returns, and the work this thread did while it ran.
pub fn counted<T>(f: impl FnOnce() -> T) -> (T, Work) {
    let before = now();
    let out = f();
    let after = now();
    (
        out,
        Work {
            bytes: after.bytes - before.bytes,
        },
    )
}

/// What `work(n)` returns, after checking that it costs about twice what `work(n / 2)` does,
/// not four times, in bytes allocated.
pub fn linear<T>(n: usize, work: impl Fn(usize) -> T) -> T {
    let (_, half) = counted(|| work(n / 2));
    let (out, full) = counted(|| work(n));
    assert!(
        full.bytes < 3 * half.bytes,
        "{half:?} for {}, {full:?} for {n}: the square of the input",
        n / 2
    );
    out
}
