//! Execution hooks: the thread pool for pure maths, and the caller-thread callbacks
//! (interrupt checks, progress).
//!
//! The callbacks are only ever invoked on the thread that called into this crate, between
//! batches of parallel work, never from a rayon worker (PostgreSQL functions must not be called
//! from other threads).

use crate::error::Result;

/// A progress report: `done` units of `total` (if known) in the named phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    pub phase: &'a str,
    pub done: u64,
    pub total: Option<u64>,
}

/// Callbacks and thread pool handed to every long computation.
pub struct Hooks<'a> {
    /// Pool for the parallel maths; `None`: rayon's global pool.
    pub pool: Option<&'a rayon::ThreadPool>,
    /// Called between batches on the caller's thread; an `Err` (normally
    /// [`NudgeError::Cancelled`](crate::NudgeError::Cancelled)) stops the computation and is
    /// returned as is.
    pub check_interrupts: &'a mut dyn FnMut() -> Result<()>,
    /// Called between batches on the caller's thread.
    pub progress: &'a mut dyn FnMut(Progress<'_>),
}

impl<'a> Hooks<'a> {
    pub fn new(
        pool: Option<&'a rayon::ThreadPool>,
        check_interrupts: &'a mut dyn FnMut() -> Result<()>,
        progress: &'a mut dyn FnMut(Progress<'_>),
    ) -> Self {
        Hooks {
            pool,
            check_interrupts,
            progress,
        }
    }

    /// Hooks that never interrupt and ignore progress, on rayon's global pool (tests, benches).
    pub fn noop() -> Hooks<'static> {
        // The closures are zero-sized, so leaking their boxes allocates nothing.
        let check: &'static mut dyn FnMut() -> Result<()> = Box::leak(Box::new(|| Ok(())));
        let progress: &'static mut dyn FnMut(Progress<'_>) =
            Box::leak(Box::new(|_: Progress<'_>| {}));
        Hooks {
            pool: None,
            check_interrupts: check,
            progress,
        }
    }

    /// Like [`Hooks::noop`] but running the maths on `pool`.
    pub fn noop_on(pool: &'a rayon::ThreadPool) -> Hooks<'a> {
        let check: &'a mut dyn FnMut() -> Result<()> = Box::leak(Box::new(|| Ok(())));
        let progress: &'a mut dyn FnMut(Progress<'_>) = Box::leak(Box::new(|_: Progress<'_>| {}));
        Hooks {
            pool: Some(pool),
            check_interrupts: check,
            progress,
        }
    }

    /// Calls `check_interrupts` (caller's thread).
    pub fn check(&mut self) -> Result<()> {
        (self.check_interrupts)()
    }

    /// Calls `progress` (caller's thread).
    pub fn report(&mut self, phase: &str, done: u64, total: Option<u64>) {
        (self.progress)(Progress { phase, done, total })
    }

    /// Number of threads the maths will run on.
    pub fn threads(&self) -> usize {
        threads(self.pool)
    }
}

pub(crate) fn threads(pool: Option<&rayon::ThreadPool>) -> usize {
    match pool {
        Some(p) => p.current_num_threads().max(1),
        None => rayon::current_num_threads().max(1),
    }
}

/// Runs pure maths `f` on the pool (or, without one, right here: rayon calls inside `f` then
/// use the current/global pool).
pub(crate) fn install<R: Send>(
    pool: Option<&rayon::ThreadPool>,
    f: impl FnOnce() -> R + Send,
) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_call_through() {
        let mut calls = 0;
        let mut seen = Vec::new();
        {
            let mut ci = || {
                calls += 1;
                Ok(())
            };
            let mut pr = |p: Progress<'_>| seen.push((p.phase.to_string(), p.done, p.total));
            let mut h = Hooks::new(None, &mut ci, &mut pr);
            h.check().unwrap();
            h.check().unwrap();
            h.report("x", 3, Some(4));
            assert!(h.threads() >= 1);
        }
        assert_eq!(calls, 2);
        assert_eq!(seen, vec![("x".to_string(), 3, Some(4))]);
        let mut n = Hooks::noop();
        assert!(n.check().is_ok());
        n.report("y", 0, None);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let h = Hooks::noop_on(&pool);
        assert_eq!(h.threads(), 3);
        assert_eq!(install(h.pool, rayon::current_num_threads), 3);
    }
}
