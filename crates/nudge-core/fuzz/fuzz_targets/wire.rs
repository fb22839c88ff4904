//! Every decoder of the shard path on one input (Request, TopKRequest, both replies,
//! ShardSpec, Partial), and the ShardPass / TopK a decoded message sets up: see
//! `nudge_core::wire::fuzzing::run_one`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nudge_core::wire::fuzzing::run_one(data);
});
