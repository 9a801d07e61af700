//! Worker threads. Each session owns a pool; a whole forward pass runs inside
//! one `install`, so the per-op cost is a fork/join among warm workers.
//! A session asked for 0 threads follows the process-wide default, which
//! `set_default_threads` changes at any time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{invalid_argument, Result};

static DEFAULT_THREADS: AtomicUsize = AtomicUsize::new(0);
static CPUS: OnceLock<usize> = OnceLock::new();

/// The process-wide default: set by `set_default_threads`, else the number of CPUs.
pub fn default_threads() -> usize {
    match DEFAULT_THREADS.load(Ordering::Relaxed) {
        // Asked once: the answer reads cgroup files, too slow for every call.
        0 => *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
}

/// 0 restores the automatic default.
pub fn set_default_threads(n: usize) {
    DEFAULT_THREADS.store(n, Ordering::Relaxed);
}

pub struct Pool {
    requested: usize,
    built_for: usize,
    pool: rayon::ThreadPool,
}

fn build(n: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("pyffi-worker-{i}"))
        .build()
        .map_err(|e| invalid_argument(format!("could not start {n} worker threads: {e}")))
}

impl Pool {
    pub fn new(requested: usize) -> Result<Pool> {
        let n = if requested == 0 { default_threads() } else { requested };
        Ok(Pool { requested, built_for: n, pool: build(n)? })
    }

    pub fn threads(&self) -> usize {
        self.built_for
    }

    /// The pool to run on now, rebuilt if the default changed since.
    pub fn get(&mut self) -> Result<&rayon::ThreadPool> {
        if self.requested == 0 {
            let want = default_threads();
            if want != self.built_for {
                self.pool = build(want)?;
                self.built_for = want;
            }
        }
        Ok(&self.pool)
    }
}
