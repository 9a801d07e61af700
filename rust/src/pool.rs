//! Worker threads. Each session owns a pool of `n - 1` threads; the thread
//! that calls `forward` is worker 0, so a call hands nothing to another
//! thread and a one-thread session runs entirely on the caller's thread.
//!
//! Inside `Pool::enter`, the kernels split their work with `parallel_for`:
//! the job is published with one atomic store, and the caller waits for the
//! others once it is done. The task indices are cut into one contiguous run
//! per worker (the caller too); each takes its own run's tasks in order from
//! the run's counter, then helps with the others' runs from where they are.
//! A matmul's tasks are consecutive bands of rows, so each thread reads one
//! long stretch of weights front to back, which the hardware prefetchers
//! follow much better than bands handed out in turn from one counter (those
//! restart a thread's stream every few hundred KiB), and a preempted thread
//! still leaves no work behind. Between jobs the workers spin for a
//! while before they sleep, so the many small steps of one decoded token
//! (and the next call, a Python loop iteration later) find them awake.
//!
//! A session asked for 0 threads follows the process-wide default, which
//! `set_default_threads` changes at any time.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// How long an idle worker polls for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

/// Most runs a job is cut into; workers past it share runs.
const MAX_RUNS: usize = 64;

/// A run's next task, alone on its cache line so that workers taking tasks
/// from their own runs do not contend.
#[repr(align(64))]
struct RunCounter(AtomicUsize);

/// One job: `run(task)` for every task index below `n_tasks`, in `runs`
/// contiguous runs of tasks (`run_start`), run `r`'s next task in `next[r]`.
struct Job {
    run: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
    runs: usize,
    next: [RunCounter; MAX_RUNS],
}

impl Job {
    fn new(run: *const (dyn Fn(usize) + Sync), n_tasks: usize, threads: usize) -> Job {
        let runs = threads.clamp(1, MAX_RUNS);
        let next =
            std::array::from_fn(|r| RunCounter(AtomicUsize::new(run_start(r, n_tasks, runs))));
        Job {
            run,
            n_tasks,
            runs,
            next,
        }
    }
}

/// The first task of run `r` of `runs` over `n` tasks (`r = runs` gives `n`,
/// the end of the last).
fn run_start(r: usize, n: usize, runs: usize) -> usize {
    r * n / runs
}

struct Shared {
    /// Bumped once per job (and once to stop); workers wait for a change.
    epoch: AtomicUsize,
    /// The current job; written by the caller before it bumps `epoch`.
    job: JobSlot,
    /// Workers (not counting the caller) still inside the current job.
    busy: AtomicUsize,
    stop: AtomicBool,
    /// A worker's panic in the current job, re-raised by the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Sleeping workers wait on `wake`; `sleepers` tells the caller to notify.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// The current job pointer, shared between threads.
struct JobSlot(std::cell::UnsafeCell<*const Job>);
// SAFETY: written only by the caller while no worker reads it (before the
// epoch bump that publishes it, after every worker left the previous job).
unsafe impl Sync for JobSlot {}
unsafe impl Send for JobSlot {}

thread_local! {
    /// The pool a thread is working for: the caller inside `enter`, a worker always.
    static CURRENT: Cell<Option<*const Shared>> = const { Cell::new(None) };
    static THREADS: Cell<usize> = const { Cell::new(1) };
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// Inside a task: a nested `parallel_for` runs on this thread alone.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Threads of the pool this thread works for (1 outside any pool).
pub fn current_threads() -> usize {
    THREADS.with(|t| t.get())
}

/// This thread's index in its pool, `0..current_threads()` (the caller is 0).
pub fn thread_index() -> usize {
    INDEX.with(|i| i.get())
}

/// `f(task)` for every task in `0..n_tasks`, spread over the current pool's
/// threads (in no fixed order or assignment); returns when all are done.
/// Outside a pool, or inside a task, runs them in order on this thread.
pub fn parallel_for(n_tasks: usize, f: impl Fn(usize) + Sync) {
    let shared = CURRENT.with(|c| c.get());
    match shared {
        Some(s) if n_tasks > 1 && current_threads() > 1 && !IN_TASK.with(|t| t.get()) => {
            // SAFETY: `enter` keeps the pool alive while CURRENT points at it.
            unsafe { run_job(&*s, n_tasks, &f) }
        }
        _ => (0..n_tasks).for_each(f),
    }
}

/// `f(i, chunk)` for the `chunk`-long pieces of `data` (the last may be
/// shorter), in parallel: `par_chunks_mut(..).enumerate().for_each(..)`.
pub fn parallel_chunks<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk > 0);
    let (len, base) = (data.len(), SendPtr(data.as_mut_ptr()));
    parallel_for(len.div_ceil(chunk), |i| {
        let base = &base;
        let start = i * chunk;
        // SAFETY: task i alone touches elements start..start+chunk of `data`,
        // which the caller lent us mutably for the whole call.
        let piece =
            unsafe { std::slice::from_raw_parts_mut(base.0.add(start), chunk.min(len - start)) };
        f(i, piece)
    });
}

/// `f(i, a_chunk, b_chunk)` over two slices cut into the same number of
/// pieces (`a` by `ca`, `b` by `cb`; both exactly whole), in parallel.
pub fn parallel_chunks2<A: Send, B: Send>(
    a: &mut [A],
    ca: usize,
    b: &mut [B],
    cb: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    assert!(
        ca > 0 && cb > 0 && a.len() % ca == 0 && b.len() % cb == 0 && a.len() / ca == b.len() / cb
    );
    let (pa, pb) = (SendPtr(a.as_mut_ptr()), SendPtr(b.as_mut_ptr()));
    parallel_for(a.len() / ca, |i| {
        let (pa, pb) = (&pa, &pb);
        // SAFETY: task i alone touches piece i of each slice (asserted whole).
        let (x, y) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.0.add(i * ca), ca),
                std::slice::from_raw_parts_mut(pb.0.add(i * cb), cb),
            )
        };
        f(i, x, y)
    });
}

struct SendPtr<T>(*mut T);
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Take tasks until none are left: this worker's own run first, then the
/// runs after it, wrapping around.
fn work(job: &Job) {
    IN_TASK.with(|t| t.set(true));
    let own = thread_index() % job.runs;
    for k in 0..job.runs {
        let r = (own + k) % job.runs;
        let end = run_start(r + 1, job.n_tasks, job.runs);
        loop {
            let i = job.next[r].0.fetch_add(1, Ordering::Relaxed);
            if i >= end {
                break;
            }
            // SAFETY: the caller keeps the closure alive until every worker is done.
            unsafe { (*job.run)(i) };
        }
    }
    IN_TASK.with(|t| t.set(false));
}

/// Publish a job, work on it, wait for the other workers.
unsafe fn run_job(s: &Shared, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    // Erase the closure's lifetime: it outlives the job, as we wait below.
    let run: *const (dyn Fn(usize) + Sync) =
        std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f);
    let threads = THREADS.with(|t| t.get());
    let job = Job::new(run, n_tasks, threads);
    let workers = threads - 1;
    *s.job.0.get() = &job;
    s.busy.store(workers, Ordering::Relaxed);
    s.epoch.fetch_add(1, Ordering::SeqCst); // publishes job and busy (release)
    if s.sleepers.load(Ordering::SeqCst) > 0 {
        let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    // A panic in a task must not leave workers holding a dangling job: wait
    // for them before it goes on (and then re-raise it).
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&job)));
    IN_TASK.with(|t| t.set(false));
    while s.busy.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
    }
    let theirs = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = result.err().or(theirs) {
        std::panic::resume_unwind(p);
    }
}

fn worker_main(s: Arc<Shared>, index: usize, threads: usize) {
    CURRENT.with(|c| c.set(Some(Arc::as_ptr(&s))));
    THREADS.with(|t| t.set(threads));
    INDEX.with(|i| i.set(index));
    // The epoch the pool started at: a job published before this thread got
    // here must still be seen as new.
    let mut seen = 0;
    loop {
        // Poll for a new epoch, then sleep.
        let start = Instant::now();
        let mut polls = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            polls = polls.wrapping_add(1);
            if polls % 256 == 0 && start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the caller set the job before bumping the epoch and keeps
        // it until `busy` reaches 0.
        let job = unsafe { &**s.job.0.get() };
        // A panicking task is caught here and handed to the caller.
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(job))) {
            IN_TASK.with(|t| t.set(false));
            *s.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

/// `n - 1` worker threads plus the caller of `enter`.
struct Workers {
    shared: Arc<Shared>,
    threads: usize,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    fn start(n: usize) -> Result<Workers> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: JobSlot(std::cell::UnsafeCell::new(std::ptr::null())),
            busy: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut w = Workers {
            shared,
            threads: n,
            handles: Vec::new(),
        };
        for i in 1..n {
            let s = Arc::clone(&w.shared);
            let h = std::thread::Builder::new()
                .name(format!("pyffi-worker-{i}"))
                .spawn(move || worker_main(s, i, n))
                .map_err(|e| {
                    invalid_argument(format!("could not start {n} worker threads: {e}"))
                })?;
            w.handles.push(h); // on an error, Drop stops the ones started
        }
        Ok(w)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let s = &self.shared;
        s.stop.store(true, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

pub struct Pool {
    requested: usize,
    workers: Workers,
}

impl Pool {
    pub fn new(requested: usize) -> Result<Pool> {
        let n = if requested == 0 {
            default_threads()
        } else {
            requested
        };
        Ok(Pool {
            requested,
            workers: Workers::start(n.max(1))?,
        })
    }

    pub fn threads(&self) -> usize {
        self.workers.threads
    }

    /// Run `f` on this thread as worker 0 of the pool (restarted first if it
    /// follows the default and that changed): `parallel_for` inside it uses
    /// the pool's threads.
    pub fn enter<R>(&mut self, f: impl FnOnce() -> R) -> Result<R> {
        if self.requested == 0 {
            let want = default_threads().max(1);
            if want != self.workers.threads {
                self.workers = Workers::start(want)?;
            }
        }
        let w = &self.workers;
        let saved = (CURRENT.with(|c| c.get()), current_threads(), thread_index());
        CURRENT.with(|c| c.set(Some(Arc::as_ptr(&w.shared))));
        THREADS.with(|t| t.set(w.threads));
        INDEX.with(|i| i.set(0));
        // Restore on the way out, a panic included.
        struct Restore((Option<*const Shared>, usize, usize));
        impl Drop for Restore {
            fn drop(&mut self) {
                let (c, t, i) = self.0;
                CURRENT.with(|x| x.set(c));
                THREADS.with(|x| x.set(t));
                INDEX.with(|x| x.set(i));
            }
        }
        let _restore = Restore(saved);
        Ok(f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn each_worker_takes_its_own_run_front_to_back() {
        for n in [2, 3] {
            let mut pool = Pool::new(n).unwrap();
            let tasks = 300;
            let order: Vec<Mutex<Vec<usize>>> = (0..n).map(|_| Mutex::new(Vec::new())).collect();
            pool.enter(|| {
                parallel_for(tasks, |i| order[thread_index()].lock().unwrap().push(i));
            })
            .unwrap();
            let order: Vec<Vec<usize>> =
                order.into_iter().map(|m| m.into_inner().unwrap()).collect();
            // The caller starts at the front of its run, the first.
            assert_eq!(order[0][0], 0);
            for (t, seen) in order.iter().enumerate() {
                let own = run_start(t, tasks, n)..run_start(t + 1, tasks, n);
                let mine: Vec<usize> = seen.iter().copied().filter(|i| own.contains(i)).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "thread {t}: {mine:?}");
            }
            assert_eq!(order.iter().map(Vec::len).sum::<usize>(), tasks);
        }
    }

    #[test]
    fn every_task_runs_once_on_every_pool_size() {
        for n in [1, 2, 3, 5] {
            let mut pool = Pool::new(n).unwrap();
            for tasks in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
                let seen_threads = Mutex::new(std::collections::HashSet::new());
                pool.enter(|| {
                    parallel_for(tasks, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                        assert!(thread_index() < current_threads());
                        seen_threads.lock().unwrap().insert(thread_index());
                    })
                })
                .unwrap();
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "n={n} tasks={tasks}"
                );
                assert!(seen_threads.lock().unwrap().len() <= n);
            }
        }
    }

    #[test]
    fn chunks_cover_the_slice_and_nested_calls_run_inline() {
        let mut pool = Pool::new(2).unwrap();
        let mut v = vec![0usize; 1003];
        pool.enter(|| {
            parallel_chunks(&mut v, 10, |i, c| {
                parallel_for(c.len(), |_| {}); // nested: inline, no deadlock
                for (k, x) in c.iter_mut().enumerate() {
                    *x = i * 10 + k;
                }
            })
        })
        .unwrap();
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
        // Outside a pool: in order on this thread.
        let order = Mutex::new(Vec::new());
        parallel_for(5, |i| order.lock().unwrap().push(i));
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn sleeping_workers_wake_and_a_dropped_pool_stops_them() {
        let mut pool = Pool::new(3).unwrap();
        for round in 0..3 {
            if round > 0 {
                std::thread::sleep(SPIN * 4); // the workers go to sleep
            }
            let sum = AtomicU64::new(0);
            pool.enter(|| {
                parallel_for(64, |i| {
                    sum.fetch_add(i as u64, Ordering::Relaxed);
                })
            })
            .unwrap();
            assert_eq!(sum.load(Ordering::Relaxed), 64 * 63 / 2);
        }
        drop(pool); // joins its threads
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_still_works() {
        let mut pool = Pool::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.enter(|| parallel_for(100, |i| assert!(i != 0, "task 0 fails")))
                .unwrap()
        }));
        assert!(
            r.is_err(),
            "the panic reaches the caller, whichever thread ran task 0"
        );
        let sum = AtomicU64::new(0);
        pool.enter(|| {
            parallel_for(10, |i| {
                sum.fetch_add(i as u64, Ordering::Relaxed);
            })
        })
        .unwrap();
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
