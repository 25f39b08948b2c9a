//! How the fused kernels split their work over rayon's threads.

use rayon::prelude::*;

/// Below this many multiply-adds a kernel runs in one piece on the calling thread.
const SPLIT_ABOVE: usize = 1 << 20;
/// Blocks per thread, so that work stealing can even out a slow thread.
const BLOCKS_PER_THREAD: usize = 2;

/// How many blocks to cut a kernel of `flops` multiply-adds into, at most `max_blocks`:
/// one on a single thread or for a small kernel.
pub(crate) fn blocks_for(flops: usize, max_blocks: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads <= 1 || flops < SPLIT_ABOVE {
        1
    } else {
        (threads * BLOCKS_PER_THREAD).min(max_blocks).max(1)
    }
}

/// Whether rayon has one thread: then a kernel runs on the calling thread, which is cheaper
/// than handing it to the pool's one worker and sleeping until it is done.
pub(crate) fn single_threaded() -> bool {
    rayon::current_num_threads() <= 1
}

/// Runs `tasks` on rayon's threads (or in order, if there is one), stopping at the first
/// error.
pub(crate) fn run_all<T: Send>(
    tasks: Vec<T>,
    f: impl Fn(T) -> candle_core::Result<()> + Sync + Send,
) -> candle_core::Result<()> {
    map_all(tasks, f).map(drop)
}

/// Maps `tasks` on rayon's threads (or in order, if there is one), keeping their order and
/// stopping at the first error.
pub(crate) fn map_all<T: Send, R: Send>(
    tasks: Vec<T>,
    f: impl Fn(T) -> candle_core::Result<R> + Sync + Send,
) -> candle_core::Result<Vec<R>> {
    if tasks.len() <= 1 || single_threaded() {
        tasks.into_iter().map(f).collect()
    } else {
        tasks.into_par_iter().map(f).collect()
    }
}
