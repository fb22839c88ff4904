//! Mutational fuzzing of the shard wire format on stable Rust, one thread:
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release -p nudge-core --example fuzz_wire -- --seconds 600 [--seed N]
//! cargo run --release -p nudge-core --example fuzz_wire -- --write-seeds DIR   # libFuzzer's seeds
//! ```
//!
//! Mutates valid messages of every kind (bit flips, byte writes, size fields overwritten with
//! small, boundary and huge values, truncation, insertion, deletion, duplication, splicing,
//! mutated nested messages wrapped correctly) and runs every decoder on each input, plus the
//! shard pass / top-k a decoded message sets up (`nudge_core::wire::fuzzing::run_one`). Inputs
//! that decode are kept (up to 4096) as further seeds. A panic or an abort ends the process;
//! run it under `ulimit -v` to make an oversized allocation fail loudly. Prints the count of
//! inputs executed and how many decoded as each message.
//!
//! The libFuzzer target over the same function is in `crates/nudge-core/fuzz/`.

use std::time::{Duration, Instant};

use nudge_core::partial::{Partial, ShardSpec};
use nudge_core::wire::{fuzzing, Reply, Request, TopKRequest};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<u64>().expect("a number"))
            .unwrap_or(default)
    };
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--write-seeds")
        .and_then(|i| args.get(i + 1))
    {
        std::fs::create_dir_all(dir).expect("create the seed directory");
        for (i, s) in fuzzing::seeds().iter().enumerate() {
            std::fs::write(format!("{dir}/seed-{i:02}"), s).expect("write a seed");
        }
        return;
    }
    let seconds = arg("--seconds", 10);
    let mut state = arg("--seed", 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut corpus = fuzzing::seeds();
    let n_seeds = corpus.len();
    for s in &corpus {
        fuzzing::run_one(s);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let (mut inputs, mut bytes) = (0u64, 0u64);
    let mut decoded = [0u64; 6];
    let names = [
        "shard spec",
        "partial",
        "pass request",
        "top-k request",
        "pass reply",
        "top-k reply",
    ];
    let mut last_report = start;
    loop {
        // the clock is read once every 256 inputs
        if inputs % 256 == 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if now - last_report >= Duration::from_secs(60) {
                last_report = now;
                eprintln!("{:>5} s: {inputs} inputs", (now - start).as_secs());
            }
        }
        let b = fuzzing::mutate(&corpus, &mut next);
        fuzzing::run_one(&b);
        inputs += 1;
        bytes += b.len() as u64;
        let ok = [
            ShardSpec::from_bytes(&b).is_ok(),
            Partial::from_bytes(&b).is_ok(),
            Request::from_bytes(&b).is_ok(),
            TopKRequest::from_bytes(&b).is_ok(),
            Reply::parse(&b).is_ok(),
            TopKRequest::parse_reply(&b).is_ok(),
        ];
        for (d, ok) in decoded.iter_mut().zip(ok) {
            *d += ok as u64;
        }
        // keep inputs that decode as something (new shapes to mutate further)
        if ok.iter().any(|&o| o) && b.len() <= 1 << 16 {
            if corpus.len() < n_seeds + 4096 {
                corpus.push(b);
            } else {
                let i = n_seeds + (next() % 4096) as usize;
                corpus[i] = b;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz_wire: {inputs} inputs in {secs:.0} s ({:.0}/s, mean {:.0} bytes), no crash",
        inputs as f64 / secs,
        bytes as f64 / inputs.max(1) as f64
    );
    for (name, d) in names.iter().zip(decoded) {
        println!("  decoded as {name}: {d}");
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(l) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!(
                "  peak resident memory: {}",
                l.trim_start_matches("VmHWM:").trim()
            );
        }
    }
}
