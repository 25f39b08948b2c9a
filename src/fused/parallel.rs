//! How the fused kernels split their work over threads.
//!
//! They run on candle's own thread pool (`candle_core::utils::barrier_pool`): the calling
//! thread works too, and the pool's workers spin for a while after each job before they
//! park, so the dozen short parallel regions of a training step do not each pay for waking
//! a sleeping thread (tens of microseconds in a virtual machine). candle's element-wise ops
//! use the same pool, so the two never compete for the cores. Its size is
//! `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the number of cores.
//!
//! The pool runs one job at a time (calls from several threads take turns), and a task
//! must not start parallel work of its own: the calling thread would wait on itself.

use std::sync::Mutex;

use candle_core::utils::barrier_pool;

/// Below this many multiply-adds a kernel runs in one piece on the calling thread.
const SPLIT_ABOVE: usize = 1 << 20;
/// Blocks per thread for a matrix product cut into blocks of its rows or columns (the fused
/// linear layer). One: the largest, most efficient products (MNIST epoch +10 % over two,
/// docs/PERFORMANCE.md §5), since every block packs the other operand again. (The
/// convolutions, whose products take one image or a few whatever the cut, take four.)
pub(crate) const PRODUCT_BLOCKS_PER_THREAD: usize = 1;

/// The threads a kernel may use: the pool's workers and the calling thread.
fn threads() -> usize {
    barrier_pool().n_workers() + 1
}

/// How many blocks to cut a kernel of `flops` multiply-adds into: `per_thread` for each
/// thread, at most `max_blocks`; one on a single thread or for a small kernel.
pub(crate) fn blocks_for(flops: usize, max_blocks: usize, per_thread: usize) -> usize {
    let threads = threads();
    if threads <= 1 || flops < SPLIT_ABOVE {
        1
    } else {
        (threads * per_thread).min(max_blocks).max(1)
    }
}

/// Runs `tasks` on the pool (or in order on the calling thread, if it is alone); the first
/// error in task order is returned.
pub(crate) fn run_all<T: Send>(
    tasks: Vec<T>,
    f: impl Fn(T) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<()> {
    map_all(tasks, f).map(drop)
}

/// Runs infallible `tasks` on the pool (or in order on the calling thread, if it is alone).
pub(crate) fn for_each<T: Send>(tasks: Vec<T>, f: impl Fn(T) + Sync) -> candle_core::Result<()> {
    run_all(tasks, |task| {
        f(task);
        Ok(())
    })
}

/// Maps `tasks` on the pool (or in order on the calling thread, if it is alone), keeping
/// their order; the first error in task order is returned.
pub(crate) fn map_all<T: Send, R: Send>(
    tasks: Vec<T>,
    f: impl Fn(T) -> candle_core::Result<R> + Sync,
) -> candle_core::Result<Vec<R>> {
    if tasks.len() <= 1 || threads() <= 1 {
        return tasks.into_iter().map(f).collect();
    }
    // Each slot holds a task until a thread takes it, then its result.
    let slots: Vec<Mutex<Slot<T, R>>> = tasks
        .into_iter()
        .map(|t| Mutex::new(Slot::Task(t)))
        .collect();
    barrier_pool().execute_chunked(slots.len(), |range| {
        for slot in &slots[range] {
            let Ok(mut slot) = slot.lock() else { continue };
            if let Slot::Task(task) = std::mem::replace(&mut *slot, Slot::Taken) {
                *slot = Slot::Done(f(task));
            }
        }
    });
    slots
        .into_iter()
        .map(|slot| match slot.into_inner() {
            Ok(Slot::Done(result)) => result,
            _ => candle_core::bail!("a fused kernel's task did not run"),
        })
        .collect()
}

/// A task waiting for a thread, taken, or done.
enum Slot<T, R> {
    Task(T),
    Taken,
    Done(candle_core::Result<R>),
}
