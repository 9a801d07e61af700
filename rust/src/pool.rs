//! Worker threads. Each session owns a pool of `n - 1` threads; the thread
//! that calls `forward` is worker 0, so a call hands nothing to another
//! thread and a one-thread session runs entirely on the caller's thread.
//!
//! Inside `Pool::enter`, the kernels split their work with `parallel_for`:
//! the job is published with one atomic store, and the caller waits for the
//! others once it is done. The task indices are cut into one contiguous run
//! per worker (the caller too); each takes its own run's tasks from the
//! front, then helps with the others' runs from their back, in chunks that
//! shrink to single tasks as a run runs out (`RunTasks`). A matmul's
//! tasks are consecutive bands of rows, so each thread reads one long
//! stretch of weights front to back, which the hardware prefetchers follow
//! much better than bands handed out in turn from one counter (those
//! restart a thread's stream every few hundred KiB); a helper leaves the
//! owner's stream unbroken, and a preempted thread still leaves no work
//! behind. Between jobs the workers spin for a while before they sleep, so
//! the many small steps of one decoded token (and the next call, a Python
//! loop iteration later) find them awake. While they wait, they read ahead
//! (`read_ahead`): the caller names the weights each worker will take
//! first in the next job, and the worker loads them into its caches while
//! the caller does the work between jobs (norms, quantizing activations)
//! alone, so that time moves weights from memory too; the worker then
//! finishes its run early and helps with the caller's.
//!
//! A session asked for 0 threads follows the process-wide default, which
//! `set_default_threads` changes at any time.
//!
//! With profiling on (`Pool::set_profiling`), the pool counts where the
//! calling thread's time goes (`Profile`): its jobs, its wait at their ends,
//! and the spans the model and kernels time with `timed`; off, that is a
//! relaxed load per job and per span.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// Most bytes a worker reads ahead: what a core's L2 holds with room to
/// spare, more than it can fetch in the usual time between two jobs.
const MAX_AHEAD: usize = 512 << 10;

/// Bytes a worker loads between two looks at whether a job came.
const AHEAD_STEP: usize = 4096;

/// A run's tasks not yet taken, `next..end`, in one word (`next` in the
/// low half): its owner takes them from the front, a thread done with its
/// own run from the back, so the owner's stream through memory goes on
/// unbroken while the helper starts one of its own at the far end. Alone on
/// its cache line, so that owners of different runs do not contend.
///
/// Tasks go in chunks of a share of what is left (`MAX_CHUNK` at most), so
/// a job's first claims are few and its last ones single tasks: the threads
/// finish within one small task of each other.
#[repr(align(64))]
struct RunTasks(AtomicU64);

/// Most tasks one claim takes: a preempted thread holds back no more.
const MAX_CHUNK: u64 = 8;

impl RunTasks {
    fn new(next: usize, end: usize) -> RunTasks {
        RunTasks(AtomicU64::new(next as u64 | (end as u64) << 32))
    }

    /// The next chunk from the front or the back, if any task is left: a
    /// `2 * runs`-th of what is left, 1 to `MAX_CHUNK` tasks.
    fn take(&self, front: bool, runs: usize) -> Option<std::ops::Range<usize>> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (next, end) = (cur & 0xFFFF_FFFF, cur >> 32);
            if next >= end {
                return None;
            }
            let n = ((end - next) / (2 * runs as u64)).clamp(1, MAX_CHUNK);
            let (new, tasks) = if front {
                (cur + n, next..next + n)
            } else {
                (cur - (n << 32), end - n..end)
            };
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(tasks.start as usize..tasks.end as usize),
                Err(now) => cur = now,
            }
        }
    }
}

/// One job: `run(task)` for every task index below `n_tasks`, in `runs`
/// contiguous runs of tasks (`run_start`), run `r`'s left in `tasks[r]`.
struct Job {
    run: *const (dyn Fn(usize) + Sync),
    runs: usize,
    tasks: [RunTasks; MAX_RUNS],
}

impl Job {
    fn new(run: *const (dyn Fn(usize) + Sync), n_tasks: usize, threads: usize) -> Job {
        assert!(n_tasks < 1 << 32, "{n_tasks} tasks in one job");
        let runs = threads.clamp(1, MAX_RUNS);
        let tasks = std::array::from_fn(|r| {
            RunTasks::new(run_start(r, n_tasks, runs), run_start(r + 1, n_tasks, runs))
        });
        Job { run, runs, tasks }
    }
}

/// The first task of run `r` of `runs` over `n` tasks (`r = runs` gives `n`,
/// the end of the last).
pub(crate) fn run_start(r: usize, n: usize, runs: usize) -> usize {
    r * n / runs
}

/// Where a session's forward passes spent their time, on the thread that
/// called them, since profiling was turned on or last read
/// (`Pool::take_profile`). Nanoseconds unless named otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// Forward passes (a prompt longer than one pass counts per piece).
    pub forwards: u64,
    /// Tokens they took.
    pub tokens: u64,
    /// Inside the forward passes.
    pub forward_ns: u64,
    /// Parallel jobs (a matmul, the attention, ...).
    pub jobs: u64,
    /// From publishing each job to its end: the caller's share of the work
    /// and its wait for the others.
    pub job_ns: u64,
    /// Of `job_ns`, the wait for the other threads once out of tasks.
    pub wait_ns: u64,
    /// Quantizing matmul inputs (alone for one token per row; a parallel
    /// job for longer batches, which `job_ns` also counts).
    pub quantize_ns: u64,
    /// Bytes of weights the other threads read ahead between jobs.
    pub read_ahead_bytes: u64,
}

/// What `timed` counts.
#[derive(Debug, Clone, Copy)]
pub enum Span {
    Forward,
    Quantize,
}

/// The running counts behind `Profile`.
#[derive(Default)]
struct Counters {
    on: AtomicBool,
    forwards: AtomicU64,
    tokens: AtomicU64,
    forward_ns: AtomicU64,
    jobs: AtomicU64,
    job_ns: AtomicU64,
    wait_ns: AtomicU64,
    quantize_ns: AtomicU64,
    read_ahead_bytes: AtomicU64,
}

impl Counters {
    fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn take(&self) -> Profile {
        let t = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        Profile {
            forwards: t(&self.forwards),
            tokens: t(&self.tokens),
            forward_ns: t(&self.forward_ns),
            jobs: t(&self.jobs),
            job_ns: t(&self.job_ns),
            wait_ns: t(&self.wait_ns),
            quantize_ns: t(&self.quantize_ns),
            read_ahead_bytes: t(&self.read_ahead_bytes),
        }
    }
}

fn nanos(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u64::MAX as u128) as u64
}

/// Run `f`, counting its time under `span` (and, for a forward pass, one
/// pass of `tokens`) when the current pool is profiling and this is its
/// calling thread outside any task; otherwise just run it.
pub fn timed<R>(span: Span, tokens: usize, f: impl FnOnce() -> R) -> R {
    let shared = CURRENT.with(|c| c.get());
    let counters = match shared {
        // SAFETY: `enter` keeps the pool alive while CURRENT points at it.
        Some(s) if thread_index() == 0 && !IN_TASK.with(|t| t.get()) => unsafe { &(*s).profile },
        _ => return f(),
    };
    if !counters.on() {
        return f();
    }
    let start = Instant::now();
    let r = f();
    let ns = nanos(start);
    match span {
        Span::Forward => {
            counters.add(&counters.forward_ns, ns);
            counters.add(&counters.forwards, 1);
            counters.add(&counters.tokens, tokens as u64);
        }
        Span::Quantize => counters.add(&counters.quantize_ns, ns),
    }
    r
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
    /// What each worker may read ahead before the next job.
    ahead: Ahead,
    /// The pool's, kept across a restart of its workers.
    profile: Arc<Counters>,
}

/// Per worker, the address and length of the bytes its next job reads
/// first, under a sequence number (odd while the caller writes). A worker
/// counts itself in `reading` before it looks, and stops as soon as the
/// number changes; the caller clears the ranges when it leaves the pool and
/// waits for `reading` to drop to 0, so nothing is read past `enter`.
struct Ahead {
    seq: AtomicUsize,
    ranges: [(AtomicUsize, AtomicUsize); MAX_RUNS],
    reading: AtomicUsize,
    /// Bytes the workers read (for the tests).
    #[cfg(test)]
    touched: AtomicUsize,
}

impl Ahead {
    fn new() -> Ahead {
        Ahead {
            seq: AtomicUsize::new(0),
            ranges: std::array::from_fn(|_| (AtomicUsize::new(0), AtomicUsize::new(0))),
            reading: AtomicUsize::new(0),
            #[cfg(test)]
            touched: AtomicUsize::new(0),
        }
    }

    /// Worker `index`: read its range if one was set since `taken` (then
    /// updated), until done, a new range, or `job_came()`; `count(bytes)`
    /// gets what it read before the read counts as over (so the caller
    /// leaving the pool finds it counted).
    fn read(
        &self,
        index: usize,
        taken: &mut usize,
        job_came: impl Fn() -> bool,
        count: impl Fn(usize),
    ) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq == *taken || seq % 2 == 1 {
            return; // the cheap look of every poll
        }
        self.reading.fetch_add(1, Ordering::SeqCst);
        let seq = self.seq.load(Ordering::SeqCst);
        let (at, len) = &self.ranges[index % MAX_RUNS];
        let (at, len) = (at.load(Ordering::SeqCst), len.load(Ordering::SeqCst));
        if seq % 2 == 0 && self.seq.load(Ordering::SeqCst) == seq {
            *taken = seq;
            let stop = || job_came() || self.seq.load(Ordering::Relaxed) != seq;
            // SAFETY: the range is live until the caller has seen `reading`
            // drop to 0 after changing `seq`, and we stop once it changed.
            let read = unsafe { touch(at as *const u8, len.min(MAX_AHEAD), stop) };
            #[cfg(test)]
            self.touched.fetch_add(read, Ordering::Relaxed);
            if read > 0 {
                count(read);
            }
        }
        self.reading.fetch_sub(1, Ordering::SeqCst);
    }

    /// The caller: set every worker's range (`range(i)`; (0, 0) for none).
    fn set(&self, workers: usize, range: impl Fn(usize) -> (usize, usize)) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq + 1, Ordering::SeqCst);
        for i in 0..workers.min(MAX_RUNS) {
            let (at, len) = range(i);
            self.ranges[i].0.store(at, Ordering::SeqCst);
            self.ranges[i].1.store(len, Ordering::SeqCst);
        }
        self.seq.store(seq + 2, Ordering::SeqCst);
    }

    /// The caller, leaving the pool: no range is read from here on.
    fn clear(&self, workers: usize) {
        if self.ranges[..workers.min(MAX_RUNS)]
            .iter()
            .any(|r| r.1.load(Ordering::Relaxed) != 0)
        {
            self.set(workers, |_| (0, 0));
        }
        // A worker may still be reading a range set before the last `set`.
        while self.reading.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

/// Load one byte of every cache line of `len` bytes at `at`, a step at a
/// time, until done or `stop()`: the lines come into this core's caches
/// (real loads: prefetch instructions past the few the core tracks are
/// dropped).
///
/// Returns the bytes it read.
///
/// # Safety
/// The bytes must stay readable until this returns.
unsafe fn touch(at: *const u8, len: usize, stop: impl Fn() -> bool) -> usize {
    let mut off = 0;
    let mut sum = 0u8;
    while off < len && !stop() {
        let end = (off + AHEAD_STEP).min(len);
        while off < end {
            sum = sum.wrapping_add(std::ptr::read_volatile(at.add(off)));
            off += 64;
        }
    }
    std::hint::black_box(sum);
    off.min(len)
}

/// Tell the current pool's idle workers what the next job will read first:
/// `first(run, runs)` is run `run`'s bytes (of `runs`; worker `i` starts on
/// run `i`), of which they read up to `MAX_AHEAD` into their caches until
/// the next job comes. They read nothing once the caller leaves `enter`, so
/// the bytes need only live that long. Outside a pool, in a one-thread pool
/// or inside a task it does nothing.
pub fn read_ahead<'a>(first: impl Fn(usize, usize) -> &'a [u8]) {
    let (Some(s), threads) = (CURRENT.with(|c| c.get()), current_threads()) else {
        return;
    };
    if threads < 2 || IN_TASK.with(|t| t.get()) || thread_index() != 0 {
        return;
    }
    let runs = threads.min(MAX_RUNS);
    // SAFETY: `enter` keeps the pool alive while CURRENT points at it.
    unsafe { &(*s).ahead }.set(threads, |i| {
        if i == 0 {
            return (0, 0); // the caller: busy
        }
        let b = first(i % runs, runs);
        (b.as_ptr() as usize, b.len())
    });
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

/// Take tasks until none are left: this worker's own run first, front to
/// back, then the runs after it, wrapping around, each from its back (the
/// tasks of a chunk in order).
fn work(job: &Job) {
    IN_TASK.with(|t| t.set(true));
    let own = thread_index() % job.runs;
    for k in 0..job.runs {
        let r = (own + k) % job.runs;
        while let Some(chunk) = job.tasks[r].take(k == 0, job.runs) {
            for i in chunk {
                // SAFETY: the caller keeps the closure alive until every worker is done.
                unsafe { (*job.run)(i) };
            }
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
    let started = s.profile.on().then(Instant::now);
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
    let done = started.map(|_| Instant::now());
    while s.busy.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
    }
    if let (Some(started), Some(done)) = (started, done) {
        let p = &s.profile;
        p.add(&p.jobs, 1);
        p.add(&p.job_ns, nanos(started));
        p.add(&p.wait_ns, nanos(done));
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
    let mut ahead_taken = 0;
    loop {
        // Poll for a new epoch (reading ahead when asked), then sleep.
        let start = Instant::now();
        let mut polls = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            s.ahead.read(
                index,
                &mut ahead_taken,
                || s.epoch.load(Ordering::Relaxed) != seen,
                |read| {
                    if s.profile.on() {
                        s.profile.add(&s.profile.read_ahead_bytes, read as u64);
                    }
                },
            );
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
    fn start(n: usize, profile: Arc<Counters>) -> Result<Workers> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: JobSlot(std::cell::UnsafeCell::new(std::ptr::null())),
            busy: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            ahead: Ahead::new(),
            profile,
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
            workers: Workers::start(n.max(1), Arc::default())?,
        })
    }

    pub fn threads(&self) -> usize {
        self.workers.threads
    }

    /// Turn the counting behind `take_profile` on or off (off at first).
    pub fn set_profiling(&self, on: bool) {
        self.workers.shared.profile.on.store(on, Ordering::Relaxed);
    }

    /// The counts since profiling was turned on or last taken; they restart
    /// from zero.
    pub fn take_profile(&self) -> Profile {
        self.workers.shared.profile.take()
    }

    /// Run `f` on this thread as worker 0 of the pool (restarted first if it
    /// follows the default and that changed): `parallel_for` inside it uses
    /// the pool's threads.
    pub fn enter<R>(&mut self, f: impl FnOnce() -> R) -> Result<R> {
        if self.requested == 0 {
            let want = default_threads().max(1);
            if want != self.workers.threads {
                let profile = Arc::clone(&self.workers.shared.profile);
                self.workers = Workers::start(want, profile)?;
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
        // Whatever `f` asked the workers to read ahead lives only as long.
        struct Clear<'a>(&'a Workers);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                self.0.shared.ahead.clear(self.0.threads);
            }
        }
        let _clear = Clear(w);
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
            // The caller starts at the front of its run, the first (if the
            // others left it any task: on a slow or busy machine they may not).
            assert!(order[0].first().is_none_or(|&i| i == 0), "{order:?}");
            for (t, seen) in order.iter().enumerate() {
                let own = run_start(t, tasks, n)..run_start(t + 1, tasks, n);
                let mine: Vec<usize> = seen.iter().copied().filter(|i| own.contains(i)).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "thread {t}: {mine:?}");
            }
            assert_eq!(order.iter().map(Vec::len).sum::<usize>(), tasks);
        }
    }

    #[test]
    fn a_run_is_taken_from_the_front_by_its_owner_and_the_back_by_others() {
        // Alternate claims from both ends: every task once, the front ones
        // ascending from 0, the back ones descending from 100, chunks of a
        // quarter of what is left (at most MAX_CHUNK), single tasks at the end.
        let r = RunTasks::new(0, 100);
        let (mut front, mut back, mut sizes) = (0, 100, Vec::new());
        for k in 0.. {
            let Some(c) = r.take(k % 2 == 0, 2) else {
                break;
            };
            let left = back - front;
            assert_eq!(
                c.len(),
                (left / 4).clamp(1, MAX_CHUNK as usize),
                "{c:?} of {left}"
            );
            if k % 2 == 0 {
                assert_eq!(c.start, front);
                front = c.end;
            } else {
                assert_eq!(c.end, back);
                back = c.start;
            }
            sizes.push(c.len());
        }
        assert_eq!(front, back);
        assert_eq!(sizes[..2], [8, 8]);
        assert_eq!(sizes[sizes.len() - 3..], [1, 1, 1]);
        // The caller's tasks are slow: the other thread, done with its run,
        // takes the caller's last tasks, a chunk at a time from the back.
        let mut pool = Pool::new(2).unwrap();
        let taken = Mutex::new(Vec::new());
        let helping = AtomicBool::new(false);
        pool.enter(|| {
            parallel_for(80, |i| {
                if thread_index() == 0 {
                    // The first task waits for the helper to come (up to
                    // 20 s: a busy machine may not run it for a while).
                    let t0 = Instant::now();
                    while i == 0
                        && !helping.load(Ordering::SeqCst)
                        && t0.elapsed() < Duration::from_secs(20)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                } else if i < 40 {
                    helping.store(true, Ordering::SeqCst);
                }
                taken.lock().unwrap().push((thread_index(), i));
            })
        })
        .unwrap();
        let taken = taken.into_inner().unwrap();
        let mut caller: Vec<usize> = taken.iter().filter(|t| t.0 == 0).map(|t| t.1).collect();
        let mut helped: Vec<usize> = taken
            .iter()
            .filter(|t| t.0 == 1 && t.1 < 40)
            .map(|t| t.1)
            .collect();
        assert!(!helped.is_empty(), "no help in 40 slow tasks: {taken:?}");
        // The caller took a front part of its run, the helper the rest.
        caller.sort();
        helped.sort();
        assert_eq!(caller, (0..helped[0]).collect::<Vec<_>>(), "{taken:?}");
        assert_eq!(helped, (helped[0]..40).collect::<Vec<_>>(), "{taken:?}");
    }

    #[test]
    fn profiling_counts_jobs_and_spans_of_the_calling_thread_while_on() {
        let ms = |n| std::thread::sleep(Duration::from_millis(n));
        let data = vec![1u8; 1 << 16];
        let work = |pool: &mut Pool| {
            pool.enter(|| {
                timed(Span::Forward, 3, || {
                    for _ in 0..5 {
                        parallel_for(4, |_| ms(1));
                    }
                    timed(Span::Quantize, 0, || ms(2));
                    // The other thread reads ahead while the caller is away.
                    read_ahead(|_, _| &data[..]);
                    ms(5);
                });
                // Inside a task, or outside a pool: run, not counted.
                parallel_for(2, |_| timed(Span::Quantize, 0, || ms(50)));
            })
            .unwrap();
            timed(Span::Forward, 7, || ());
        };
        let mut pool = Pool::new(2).unwrap();
        work(&mut pool);
        assert_eq!(pool.take_profile(), Profile::default(), "off at first");
        pool.set_profiling(true);
        work(&mut pool);
        let p = pool.take_profile();
        assert_eq!((p.forwards, p.tokens, p.jobs), (1, 3, 6), "{p:?}");
        let ms_ns = 1_000_000;
        // Every job lasts at least its slowest task; a wait is part of its job.
        assert!(p.job_ns >= 6 * ms_ns && p.wait_ns <= p.job_ns, "{p:?}");
        // 2 ms, not the 50 ms more of the caller's task (the margin is for
        // a sleep that overshoots on a busy machine).
        assert!(
            p.quantize_ns >= 2 * ms_ns && p.quantize_ns < 50 * ms_ns,
            "{p:?}"
        );
        assert!(p.forward_ns >= 5 * ms_ns + 2 * ms_ns + 5 * ms_ns, "{p:?}");
        // Whether the other thread got to read in those 5 ms is up to the
        // scheduler (CI runs tests side by side on 2 cores): bounded here,
        // waited for below.
        assert!(p.read_ahead_bytes <= data.len() as u64, "{p:?}");
        assert_eq!(
            pool.take_profile(),
            Profile::default(),
            "taking restarts the counts"
        );
        let counters = Arc::clone(&pool.workers.shared);
        let read = || counters.profile.read_ahead_bytes.load(Ordering::Relaxed);
        let mut offers = 0u64;
        pool.enter(|| {
            let t0 = Instant::now();
            while read() == 0 && t0.elapsed() < Duration::from_secs(20) {
                parallel_for(2, |_| {});
                read_ahead(|_, _| &data[..]);
                offers += 1;
                ms(2);
            }
        })
        .unwrap();
        let p = pool.take_profile();
        assert!(
            p.read_ahead_bytes > 0 && p.read_ahead_bytes <= offers * data.len() as u64,
            "{p:?} after {offers} offers"
        );
        pool.set_profiling(false);
        work(&mut pool);
        assert_eq!(pool.take_profile(), Profile::default());
    }

    #[test]
    fn workers_read_ahead_only_inside_enter() {
        let data = vec![7u8; 3 * MAX_AHEAD];
        let mut pool = Pool::new(3).unwrap();
        let touched = |p: &Pool| p.workers.shared.ahead.touched.load(Ordering::SeqCst);
        let asked = Mutex::new(Vec::new());
        let shared = Arc::clone(&pool.workers.shared);
        pool.enter(|| {
            // The workers read their parts (MAX_AHEAD at most) while the
            // caller waits; a job first, as workers idle for long sleep.
            let read = || shared.ahead.touched.load(Ordering::SeqCst);
            let t0 = Instant::now();
            while read() < 2 * MAX_AHEAD && t0.elapsed() < Duration::from_secs(20) {
                parallel_for(2, |_| {});
                read_ahead(|run, runs| {
                    asked.lock().unwrap().push((run, runs));
                    &data[run * MAX_AHEAD..]
                });
                std::thread::sleep(Duration::from_millis(2));
            }
            assert!(read() >= 2 * MAX_AHEAD);
            // A job still runs (and cuts any reading short).
            read_ahead(|run, _| &data[run..]);
            let sum = AtomicU64::new(0);
            parallel_for(10, |i| {
                sum.fetch_add(i as u64, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 45);
            read_ahead(|_, _| &data[..]);
        })
        .unwrap();
        let asked = asked.into_inner().unwrap();
        assert!(asked.contains(&(1, 3)) && asked.contains(&(2, 3)));
        assert!(
            asked.iter().all(|a| *a == (1, 3) || *a == (2, 3)),
            "{asked:?}"
        );
        // Out of `enter`: no range left, and nothing read from here on (a
        // worker may still look, and find the ranges empty); the bytes may go.
        let a = &pool.workers.shared.ahead;
        assert!(a.ranges.iter().all(|r| r.1.load(Ordering::SeqCst) == 0));
        let after = touched(&pool);
        drop(data);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(touched(&pool), after);
        // Outside a pool: nothing to do.
        read_ahead(|_, _| -> &[u8] { panic!("asked outside a pool") });
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
