//! The static agent's global allocator: dlmalloc, behind one of std's futex mutexes.
//!
//! musl's own allocator (mallocng) maps and unmaps memory for every mid-sized allocation, so a
//! step spends much of its time in mmap/munmap with it. dlmalloc (the allocator Rust's own wasm
//! targets use) keeps its memory. Its bundled `GlobalDlmalloc` guards the heap with a pthread mutex,
//! whose lock and unlock through musl are costly calls once the process has a
//! second thread (the agent's log writer). std's `Mutex` on Linux is a futex word, one atomic
//! instruction each way when uncontended, which it almost always is (the log writer allocates
//! rarely). BENCHMARKS.md has the figures of each.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The global allocator of the static agent (`#[global_allocator]` in its binary). Default: an
/// empty heap that grows on first use.
pub struct Allocator(Mutex<Heap>);

/// dlmalloc's state, reached only through [`Allocator`]'s mutex.
struct Heap(dlmalloc::Dlmalloc);

// SAFETY: `Dlmalloc` holds raw pointers into memory it owns and is not tied to the thread that
// made it; every access goes through the mutex, so no two threads touch it at once.
unsafe impl Send for Heap {}

impl Allocator {
    /// An allocator with an empty heap.
    pub const fn new() -> Allocator {
        Allocator(Mutex::new(Heap(dlmalloc::Dlmalloc::new())))
    }

    /// The heap, locked. A poisoned lock is taken as it is: the agent is built with
    /// `panic = "abort"`, and dlmalloc leaves its state consistent between calls in any case.
    fn heap(&self) -> MutexGuard<'_, Heap> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Allocator {
    fn default() -> Allocator {
        Allocator::new()
    }
}

// SAFETY: each method forwards to the matching dlmalloc call with the layout's size and alignment,
// under the lock; dlmalloc upholds GlobalAlloc's contract for those calls.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.heap().0.malloc(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.heap().0.free(ptr, layout.size(), layout.align())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.heap().0.calloc(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.heap().0.realloc(ptr, layout.size(), layout.align(), new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocator on its own (not as the global one): blocks of many sizes and alignments come
    /// back aligned, hold what is written to them, survive a realloc, and are freed, from four
    /// threads at once.
    #[test]
    fn allocates_aligned_blocks_that_keep_their_contents_across_threads() {
        static HEAP: Allocator = Allocator::new();
        std::thread::scope(|scope| {
            for t in 0..4u8 {
                scope.spawn(move || {
                    let mut blocks = Vec::new();
                    for i in 0..2000usize {
                        let align = 1 << (i % 7);
                        let size = 1 + (i * 37) % 5000;
                        let layout = Layout::from_size_align(size, align).unwrap();
                        let zeroed = i % 3 == 0;
                        // SAFETY: a non-zero size; the block is used within its layout and freed once.
                        let ptr = unsafe {
                            if zeroed {
                                HEAP.alloc_zeroed(layout)
                            } else {
                                HEAP.alloc(layout)
                            }
                        };
                        assert!(!ptr.is_null());
                        assert_eq!(ptr as usize % align, 0, "alignment {align}");
                        if zeroed {
                            // SAFETY: `size` bytes were just allocated at `ptr`.
                            assert!(unsafe { std::slice::from_raw_parts(ptr, size) }.iter().all(|&b| b == 0));
                        }
                        // SAFETY: as above.
                        unsafe { ptr.write_bytes(t ^ i as u8, size) };
                        blocks.push((ptr, layout, t ^ i as u8));
                    }
                    for (ptr, layout, fill) in &mut blocks {
                        let new_size = layout.size() * 2;
                        // SAFETY: `ptr` came from HEAP with `layout`; the new size is non-zero.
                        *ptr = unsafe { HEAP.realloc(*ptr, *layout, new_size) };
                        // SAFETY: the first `layout.size()` bytes were kept by realloc.
                        assert!(unsafe { std::slice::from_raw_parts(*ptr, layout.size()) }.iter().all(|b| b == fill));
                        *layout = Layout::from_size_align(new_size, layout.align()).unwrap();
                    }
                    for (ptr, layout, _) in blocks {
                        // SAFETY: each block is freed once, with the layout it has now.
                        unsafe { HEAP.dealloc(ptr, layout) };
                    }
                });
            }
        });
    }
}
