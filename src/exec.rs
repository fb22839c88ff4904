//! How the core's work runs inside a backend: a private worker pool whose threads block
//! every signal (Postgres delivers signals to the backend's main thread only), interrupt
//! checks and progress NOTICEs, both called back on the main thread between batches.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use pgrx::prelude::*;

use crate::error::OrRaise;
use crate::guc;

thread_local! {
    static POOL: RefCell<Option<(usize, Rc<rayon::ThreadPool>)>> = const { RefCell::new(None) };
    /// CPUs available to the backend (std reads the cgroup limits on every call: ~0.1 ms).
    static CPUS: usize = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
}

/// The worker pool for `nudge.threads` (built once per backend and size).
pub fn pool() -> Rc<rayon::ThreadPool> {
    let wanted = match guc::THREADS.get() {
        n if n > 0 => n as usize,
        _ => CPUS.with(|n| *n),
    };
    POOL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some((n, pool)) = slot.as_ref() {
            if *n == wanted {
                return pool.clone();
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(wanted)
            .thread_name(|i| format!("nudge-worker-{i}"))
            .start_handler(|_| block_all_signals())
            .build()
            .unwrap_or_else(|e| {
                crate::error::raise(
                    pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
                    format!("nudge: could not start {wanted} worker threads: {e}"),
                )
            });
        let pool = Rc::new(pool);
        *slot = Some((wanted, pool.clone()));
        pool
    })
}

fn block_all_signals() {
    // SAFETY: plain libc calls on a local signal set, on the worker thread itself.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Honour a pending cancel / statement_timeout / terminate: raises the usual ERROR.
pub fn check_interrupts() -> nudge_core::Result<()> {
    pg_sys::check_for_interrupts!();
    Ok(())
}

/// Progress NOTICEs for calls running longer than `nudge.progress_interval`: one when a
/// phase starts, then at most one per interval.
pub struct Reporter {
    what: &'static str,
    start: Instant,
    last: Instant,
    phase: String,
    enabled: bool,
}

impl Reporter {
    pub fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Reporter { what, start: now, last: now, phase: String::new(), enabled: guc::PROGRESS.get() }
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn report(&mut self, phase: &str, done: u64, total: Option<u64>) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let interval = guc::PROGRESS_INTERVAL.get();
        // Short calls stay quiet: nothing is reported before the first interval has passed.
        if now.duration_since(self.start).as_secs_f64() < interval {
            return;
        }
        let new_phase = phase != self.phase;
        if !new_phase && now.duration_since(self.last).as_secs_f64() < interval {
            return;
        }
        self.last = now;
        if new_phase {
            self.phase = phase.to_string();
        }
        let elapsed = self.elapsed();
        let amount = match total {
            Some(t) if t > 0 => {
                let pct = (done as f64 / t as f64 * 100.0).min(100.0);
                format!("{done} of {t} ({pct:.0}%)")
            }
            _ => format!("{done}"),
        };
        notice!("{}: {phase}: {amount}, {elapsed:.1} s", self.what);
    }
}

/// Run `f` with hooks wired to this backend: the worker pool, interrupt checks and progress.
/// `rows_total` (the planner's estimate of the corpus size) completes the core's corpus-pass
/// reports, which count rows without knowing the total.
pub fn with_hooks<R>(
    reporter: &mut Reporter,
    rows_total: Option<u64>,
    f: impl FnOnce(&mut nudge_core::Hooks<'_>) -> R,
) -> R {
    let pool = pool();
    let mut check = check_interrupts;
    let mut progress = |p: nudge_core::Progress<'_>| reporter.report(p.phase, p.done, p.total.or(rows_total));
    let mut hooks = nudge_core::Hooks::new(Some(&*pool), &mut check, &mut progress);
    f(&mut hooks)
}

/// A corpus pass's maths on a worker of the pool, one batch behind the reads: the backend's
/// thread reads and decodes rows (only it may call Postgres) and hands batches of (keys,
/// row-major vectors, and each row's partition id in a partitioned pass) over a channel of one to a job that runs `push` on `state`; used buffers
/// come back for reuse, and `finish` returns the state. The job never calls Postgres and
/// catches panics (a panicking spawned job would abort the backend); interrupts are checked on
/// the backend's thread, between batches and while it waits. If the backend errors out
/// mid-scan, the channel closes and the job drops the state after its current batch.
/// One batch: keys, row-major vectors, partition ids (empty unless partitioned).
pub type Batch = (Vec<u64>, Vec<f32>, Vec<u32>);

pub struct Pusher<T> {
    tx: std::sync::mpsc::SyncSender<Batch>,
    free: std::sync::mpsc::Receiver<Batch>,
    done: std::sync::mpsc::Receiver<(T, nudge_core::Result<()>)>,
    batch_rows: usize,
}

/// One batch of the maths: `(state, keys, vectors, partition ids)`.
pub type PushFn<T> = fn(&mut T, &[u64], ndarray::ArrayView2<f32>, Option<&[u32]>) -> nudge_core::Result<()>;

impl<T: Send + 'static> Pusher<T> {
    pub fn start(mut state: T, dim: usize, push: PushFn<T>) -> Pusher<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
        let (free_tx, free) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        pool().spawn(move || {
            let mut result = Ok(());
            for (keys, data, parts) in rx {
                if result.is_ok() {
                    let pushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let view = ndarray::ArrayView2::from_shape((keys.len(), dim), &data).map_err(|_| {
                            nudge_core::NudgeError::InvalidParameter {
                                name: "corpus batch",
                                message: "rows x dimensions do not match the buffer".into(),
                            }
                        })?;
                        push(&mut state, &keys, view, (!parts.is_empty()).then_some(&parts[..]))
                    }));
                    result = pushed.unwrap_or_else(|_| {
                        Err(nudge_core::NudgeError::InvalidParameter {
                            name: "corpus batch",
                            message: "the corpus pass failed unexpectedly".into(),
                        })
                    });
                }
                let _ = free_tx.send((keys, data, parts));
            }
            let _ = done_tx.send((state, result));
        });
        Pusher { tx, free, done, batch_rows: guc::BATCH_ROWS.get().max(1) as usize }
    }

    /// Buffers for the next batch, emptied (reused when the job has handed some back).
    pub fn empty_buffers(&self) -> Batch {
        let (mut keys, mut data, mut parts) = self.free.try_recv().unwrap_or_default();
        keys.clear();
        data.clear();
        parts.clear();
        (keys, data, parts)
    }

    /// Hands the batch over (empty batches are dropped).
    pub fn push(&self, batch: Batch) {
        if !batch.0.is_empty() {
            // (fails only if the job is gone, which `finish` reports)
            let _ = self.tx.send(batch);
        }
    }

    /// Hands the batch over once it holds `nudge.batch_rows` rows, leaving empty buffers and
    /// checking interrupts; true if it did.
    pub fn push_if_full(&self, batch: &mut Batch) -> bool {
        if batch.0.len() < self.batch_rows {
            return false;
        }
        let empty = self.empty_buffers();
        self.push(std::mem::replace(batch, empty));
        check_interrupts().ok();
        true
    }

    /// Waits for the last batch (checking interrupts) and returns the state, or raises the
    /// job's error.
    pub fn finish(self) -> T {
        drop(self.tx);
        loop {
            match self.done.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok((state, result)) => {
                    result.or_raise();
                    return state;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => check_interrupts().ok(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => crate::error::raise(
                    pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    "nudge: the corpus pass worker stopped",
                ),
            };
        }
    }
}
