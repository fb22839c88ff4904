//! Settings (GUCs) users tune, all under the `nudge.` prefix.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Corpus rows per batch (memory: about 3 x batch_rows x dim x 4 bytes: the batch being read,
/// one queued, one being computed). Small batches keep the memory warm: 1024 fitted SciFact
/// ~15% faster than 8192 (bench/).
pub static BATCH_ROWS: GucSetting<i32> = GucSetting::<i32>::new(1024);
/// Worker threads for the maths; 0 means one per CPU.
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Report progress of long fits and evaluations as NOTICEs.
pub static PROGRESS: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Run the corpus pass of a fit on the shards of a Citus distributed table (off: read every
/// row on the coordinator).
pub static CITUS_PUSHDOWN: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Seconds between two progress reports within a phase.
pub static PROGRESS_INTERVAL: GucSetting<f64> = GucSetting::<f64>::new(2.0);

pub fn init() {
    GucRegistry::define_int_guc(
        c"nudge.batch_rows",
        c"Corpus rows read per batch by nudge_fit and nudge_evaluate.",
        c"Memory held for the corpus is about 3 x batch_rows x dimensions x 4 bytes.",
        &BATCH_ROWS,
        64,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"nudge.threads",
        c"Worker threads for nudge's matrix products; 0 uses one per CPU.",
        c"Threads only compute; all database access stays on the backend's own thread.",
        &THREADS,
        0,
        1024,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"nudge.progress",
        c"Report the phase, rows done and elapsed time of long fits and evaluations as NOTICEs.",
        c"",
        &PROGRESS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"nudge.citus_pushdown",
        c"Run the corpus pass of nudge_fit on the shards of a Citus distributed table.",
        c"Each shard sends back only its top-k per validation query and its moving records; off reads every row on the coordinator.",
        &CITUS_PUSHDOWN,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"nudge.progress_interval",
        c"Seconds between two progress NOTICEs within one phase.",
        c"",
        &PROGRESS_INTERVAL,
        0.0,
        3600.0,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Run `f` with PostgreSQL setting `name` set to `value`, as a function's `SET` clause does:
/// in a GUC nest level of its own, restored when `f` returns (an error aborts the transaction,
/// which restores it too).
pub fn with_setting<R>(name: &std::ffi::CStr, value: &std::ffi::CStr, f: impl FnOnce() -> R) -> R {
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: pops the nest level pushed below, on the backend's thread.
                unsafe { pgrx::pg_sys::AtEOXact_GUC(true, self.0) };
            }
        }
    }
    // SAFETY: the fmgr_security_definer pattern: a new nest level, a session-level SAVE.
    let level = unsafe {
        let level = pgrx::pg_sys::NewGUCNestLevel();
        pgrx::pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pgrx::pg_sys::GucContext::PGC_USERSET,
            pgrx::pg_sys::GucSource::PGC_S_SESSION,
            pgrx::pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let _restore = Restore(level);
    f()
}
