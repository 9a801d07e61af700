//! `pyffi_token_queue`: hands generated tokens from the thread that runs
//! `pyffi_generate` to another thread, without calling back into the other
//! side's runtime per token. Pass `pyffi_token_queue_push` as the generate
//! callback and the queue as its `user_data`; the consumer waits in
//! `pyffi_token_queue_pop`. Python's `generate(stream=True)` runs on it: a
//! Python callback per token would make the generating thread take the
//! interpreter lock for every token.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{guard, pyffi_error, pyffi_status, run, set};

/// A queue of tokens from one producer to one consumer.
pub struct pyffi_token_queue {
    state: Mutex<State>,
    ready: Condvar,
    /// Bumped by every push and by `finish`: the consumer polls it a while
    /// before it sleeps, so that a token a few tens of microseconds away
    /// finds it awake (waking a sleeping thread costs the producer more,
    /// and a virtual machine's idle CPU more still).
    changes: AtomicU64,
}

/// How long `pop` polls before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

#[derive(Default)]
struct State {
    tokens: VecDeque<i32>,
    /// The producer is done: no token comes after those queued.
    finished: bool,
    /// The consumer is gone: `push` refuses tokens (generation stops).
    closed: bool,
    /// The consumer sleeps on `ready`: the producer must wake it.
    sleeping: bool,
}

impl pyffi_token_queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `pyffi_token_queue_pop`: a token was written to `*token`.
pub const PYFFI_QUEUE_TOKEN: i32 = 1;
/// `pyffi_token_queue_pop`: the producer finished and every token was taken.
pub const PYFFI_QUEUE_END: i32 = 0;
/// `pyffi_token_queue_pop`: no token within the timeout (ask again).
pub const PYFFI_QUEUE_TIMEOUT: i32 = -1;
/// `pyffi_token_queue_pop`: `queue` or `token` is NULL.
pub const PYFFI_QUEUE_INVALID: i32 = -2;

/// A new, empty queue in `*out`; free it with `pyffi_token_queue_free` once
/// both sides are done with it.
#[no_mangle]
pub unsafe extern "C" fn pyffi_token_queue_new(
    out: *mut *mut pyffi_token_queue,
    err: *mut *mut pyffi_error,
) -> pyffi_status {
    set(out, std::ptr::null_mut());
    run(err, || {
        if out.is_null() {
            return Err(crate::error::invalid_argument("out is NULL"));
        }
        let q = pyffi_token_queue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            changes: AtomicU64::new(0),
        };
        set(out, Box::into_raw(Box::new(q)));
        Ok(())
    })
}

/// A `pyffi_token_callback`: queues `token` on the queue `user_data` points
/// to. Returns false (stop generating) once the consumer closed the queue,
/// or for a NULL queue.
#[no_mangle]
pub unsafe extern "C" fn pyffi_token_queue_push(user_data: *mut c_void, token: i32) -> bool {
    let Some(q) = (user_data as *const pyffi_token_queue).as_ref() else {
        return false;
    };
    guard(false, || {
        let mut s = q.lock();
        if s.closed {
            return false;
        }
        s.tokens.push_back(token);
        q.changes.fetch_add(1, Ordering::Release);
        if s.sleeping {
            q.ready.notify_one();
        }
        true
    })
}

/// The producer: no more tokens (call once generation has returned).
#[no_mangle]
pub unsafe extern "C" fn pyffi_token_queue_finish(queue: *const pyffi_token_queue) {
    if let Some(q) = queue.as_ref() {
        guard((), || {
            q.lock().finished = true;
            q.changes.fetch_add(1, Ordering::Release);
            q.ready.notify_all();
        })
    }
}

/// The consumer: take no more tokens; the producer's next push returns
/// false, which stops generation.
#[no_mangle]
pub unsafe extern "C" fn pyffi_token_queue_close(queue: *const pyffi_token_queue) {
    if let Some(q) = queue.as_ref() {
        guard((), || {
            let mut s = q.lock();
            s.closed = true;
            s.tokens.clear();
        })
    }
}

/// The next token, waiting up to `timeout_ms` for one: PYFFI_QUEUE_TOKEN
/// (written to `*token`), PYFFI_QUEUE_END once the producer finished and the
/// queue is empty, PYFFI_QUEUE_TIMEOUT, or PYFFI_QUEUE_INVALID.
#[no_mangle]
pub unsafe extern "C" fn pyffi_token_queue_pop(
    queue: *const pyffi_token_queue,
    timeout_ms: u32,
    token: *mut i32,
) -> i32 {
    let Some(q) = queue.as_ref() else {
        return PYFFI_QUEUE_INVALID;
    };
    if token.is_null() {
        return PYFFI_QUEUE_INVALID;
    }
    guard(PYFFI_QUEUE_INVALID, || {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(timeout_ms as u64);
        let mut s = q.lock();
        loop {
            if let Some(t) = s.tokens.pop_front() {
                set(token, t);
                return PYFFI_QUEUE_TOKEN;
            }
            if s.finished {
                return PYFFI_QUEUE_END;
            }
            let now = Instant::now();
            if now >= deadline {
                return PYFFI_QUEUE_TIMEOUT;
            }
            if now < start + SPIN {
                // Poll without the lock until something changes or the spin ends.
                let seen = q.changes.load(Ordering::Acquire);
                drop(s);
                let mut polls = 0u32;
                while q.changes.load(Ordering::Acquire) == seen {
                    std::hint::spin_loop();
                    polls = polls.wrapping_add(1);
                    if polls % 64 == 0 && Instant::now() >= (start + SPIN).min(deadline) {
                        break;
                    }
                }
                s = q.lock();
                continue;
            }
            s.sleeping = true;
            s = q
                .ready
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            s.sleeping = false;
        }
    })
}

/// Frees a queue; NULL is a no-op. Neither side may use it afterwards.
#[no_mangle]
pub unsafe extern "C" fn pyffi_token_queue_free(queue: *mut pyffi_token_queue) {
    if !queue.is_null() {
        drop(Box::from_raw(queue));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_go_across_threads_in_order_and_close_stops_the_producer() {
        unsafe {
            let mut q = std::ptr::null_mut();
            assert_eq!(
                pyffi_token_queue_new(&mut q, std::ptr::null_mut()),
                pyffi_status::PYFFI_OK
            );
            let addr = q as usize;
            let producer = std::thread::spawn(move || {
                for t in 0..1000 {
                    assert!(pyffi_token_queue_push(addr as *mut c_void, t));
                }
                pyffi_token_queue_finish(addr as *const pyffi_token_queue);
            });
            let mut got = Vec::new();
            let mut tok = 0;
            loop {
                match pyffi_token_queue_pop(q, 1000, &mut tok) {
                    PYFFI_QUEUE_TOKEN => got.push(tok),
                    PYFFI_QUEUE_END => break,
                    PYFFI_QUEUE_TIMEOUT => continue,
                    r => panic!("pop: {r}"),
                }
            }
            producer.join().unwrap();
            assert_eq!(got, (0..1000).collect::<Vec<_>>());
            // Empty, not finished: a timeout; closed: pushes are refused.
            let mut q2 = std::ptr::null_mut();
            assert_eq!(
                pyffi_token_queue_new(&mut q2, std::ptr::null_mut()),
                pyffi_status::PYFFI_OK
            );
            assert_eq!(pyffi_token_queue_pop(q2, 1, &mut tok), PYFFI_QUEUE_TIMEOUT);
            assert!(pyffi_token_queue_push(q2 as *mut c_void, 5));
            pyffi_token_queue_close(q2);
            assert!(!pyffi_token_queue_push(q2 as *mut c_void, 6));
            pyffi_token_queue_finish(q2);
            assert_eq!(pyffi_token_queue_pop(q2, 1, &mut tok), PYFFI_QUEUE_END);
            // NULL arguments: an error status and message, or a refusal.
            let mut err = std::ptr::null_mut();
            assert_eq!(
                pyffi_token_queue_new(std::ptr::null_mut(), &mut err),
                pyffi_status::PYFFI_INVALID_ARGUMENT
            );
            assert!(!err.is_null());
            super::super::error::pyffi_error_free(err);
            assert!(!pyffi_token_queue_push(std::ptr::null_mut(), 1));
            assert_eq!(
                pyffi_token_queue_pop(std::ptr::null(), 1, &mut tok),
                PYFFI_QUEUE_INVALID
            );
            assert_eq!(
                pyffi_token_queue_pop(q2, 1, std::ptr::null_mut()),
                PYFFI_QUEUE_INVALID
            );
            pyffi_token_queue_finish(std::ptr::null());
            pyffi_token_queue_close(std::ptr::null());
            pyffi_token_queue_free(std::ptr::null_mut());
            pyffi_token_queue_free(q);
            pyffi_token_queue_free(q2);
        }
    }
}
