//! Per-turn cost of the heist runner with the rehearsal model answering at
//! once: every turn still makes its real loopback HTTP calls (token, memory
//! read, LLM, tools, memory write) to the in-process companions and commits
//! to a real SQLite file with `synchronous = FULL` (a durable commit).
//!
//! Run: `cargo bench --bench turns` (release build). Prints p50/p99 per turn
//! for 100 and 1000 turns with durable commits, 1000 with `NORMAL` for
//! comparison, and the process's peak RSS.

// A bench prints its report to the terminal that ran it.
#![allow(clippy::disallowed_macros)]

use heistd::cli::LocalStack;
use heistd::config::{self, Synchronous};
use heistd::heist::{RunOptions, TurnView};
use heistd::store::StoreHandle;
use parking_lot::Mutex;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let directory = tempfile::tempdir()?;
        let mut base = config::load(None, Vec::new())?;
        base.store.synchronous = Synchronous::Full;
        let stack = LocalStack::start(base, None).await?;
        println!(
            "{:<8} {:<12} {:>10} {:>10} {:>10} {:>12}",
            "turns", "synchronous", "p50 ms", "p99 ms", "mean ms", "turns/s"
        );
        let cases = [
            (100u32, Synchronous::Full),
            (1000, Synchronous::Full),
            (1000, Synchronous::Normal),
        ];
        for (turns, synchronous) in cases {
            let path = directory
                .path()
                .join(format!("bench-{turns}-{synchronous:?}.db"));
            let store = StoreHandle::open_sqlite(&path, synchronous).await?;
            let runner = stack.runner(store)?;
            let samples = Mutex::new(Vec::with_capacity(turns as usize));
            let observer = |view: &TurnView<'_>| samples.lock().push(view.elapsed_ms);
            let started = tokio::time::Instant::now();
            let report = runner
                .run(RunOptions::new(turns, 1), Some(&observer))
                .await?;
            let wall = started.elapsed().as_secs_f64();
            anyhow::ensure!(
                report.failed_turns == 0,
                "{} turns failed",
                report.failed_turns
            );
            let mut samples = samples.into_inner();
            samples.sort_by(f64::total_cmp);
            let at =
                |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
            let mean = samples.iter().sum::<f64>() / samples.len() as f64;
            let synchronous = format!("{synchronous:?}").to_lowercase();
            println!(
                "{turns:<8} {synchronous:<12} {:>10.3} {:>10.3} {:>10.3} {:>12.0}",
                at(0.5),
                at(0.99),
                mean,
                f64::from(turns) / wall
            );
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(line) = status.lines().find(|line| line.starts_with("VmHWM")) {
            println!(
                "peak RSS (whole process, companions included): {}",
                line.trim_start_matches("VmHWM:").trim()
            );
        }
        stack.companions.shutdown().await;
        Ok(())
    })
}
