//! Cost of the resilience stack per call, against bare reqwest to the same
//! loopback server (the in-process calculator's `GET /health`), interleaved
//! call by call so both see the same machine; and the latency of a call
//! rejected by an open breaker, which must not touch the network.
//!
//! Run: `cargo bench --bench resilience` (release build).

// A bench prints its report to the terminal that ran it.
#![allow(clippy::disallowed_macros)]

use std::time::Duration;

use heistd::cli::LocalStack;
use heistd::clients::{CallError, ServiceClient};
use heistd::config::{self, PolicyConfig};
use heistd::resilience::{BreakerState, Policy};
use tokio::time::Instant;

const CALLS: usize = 5_000;
const REJECTIONS: usize = 100_000;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Record metrics as the daemon does, so their cost is in the figures.
    let _metrics = heistd::metrics::install();
    runtime.block_on(async {
        let stack = LocalStack::start(config::load(None, Vec::new())?, None).await?;
        let base_url = stack.companions.url("calculator").unwrap_or_default();
        let http = heistd::clients::http_client()?;
        let guarded = ServiceClient::new(
            "calculator",
            &base_url,
            Policy::new(5_000, PolicyConfig::quick_service()),
            http.clone(),
        );
        let health = format!("{base_url}/health");

        let mut bare = Vec::with_capacity(CALLS);
        let mut stacked = Vec::with_capacity(CALLS);
        for index in 0..CALLS + 200 {
            let started = Instant::now();
            let _: serde_json::Value = http.get(&health).send().await?.json().await?;
            let bare_time = started.elapsed();
            let started = Instant::now();
            let _: serde_json::Value = guarded.get_json("/health").await?;
            let stacked_time = started.elapsed();
            // The first 200 rounds warm the connection pool and caches.
            if index >= 200 {
                bare.push(bare_time);
                stacked.push(stacked_time);
            }
        }

        let mut open_policy = PolicyConfig::quick_service();
        open_policy.max_attempts = 1;
        open_policy.breaker.minimum_calls = 1;
        open_policy.breaker.wait_in_open_ms = 3_600_000;
        let dead = ServiceClient::new(
            "dead",
            "http://127.0.0.1:9",
            Policy::new(1_000, open_policy),
            http,
        );
        let _ = dead.get_json::<serde_json::Value>("/health").await;
        anyhow::ensure!(
            dead.breaker_state() == BreakerState::Open,
            "the breaker did not open"
        );
        let mut rejected = Vec::with_capacity(REJECTIONS);
        for _ in 0..REJECTIONS {
            let started = Instant::now();
            let outcome = dead.get_json::<serde_json::Value>("/health").await;
            rejected.push(started.elapsed());
            anyhow::ensure!(
                matches!(outcome, Err(CallError::CircuitOpen { .. })),
                "not rejected: {outcome:?}"
            );
        }

        let (bare_p50, bare_p99) = percentiles(&mut bare);
        let (stack_p50, stack_p99) = percentiles(&mut stacked);
        let (open_p50, open_p99) = percentiles(&mut rejected);
        println!("{CALLS} calls each, interleaved, GET /health on loopback");
        println!("{:<28} {:>10} {:>10}", "", "p50 µs", "p99 µs");
        println!(
            "{:<28} {:>10.1} {:>10.1}",
            "bare reqwest",
            micros(bare_p50),
            micros(bare_p99)
        );
        println!(
            "{:<28} {:>10.1} {:>10.1}",
            "resilience stack",
            micros(stack_p50),
            micros(stack_p99)
        );
        println!(
            "{:<28} {:>10.3} {:>10.3}",
            "ratio stack / bare",
            micros(stack_p50) / micros(bare_p50),
            micros(stack_p99) / micros(bare_p99)
        );
        println!(
            "{:<28} {:>10.2} {:>10.2}",
            "rejected by open breaker",
            micros(open_p50),
            micros(open_p99)
        );
        stack.companions.shutdown().await;
        Ok(())
    })
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    (at(0.5), at(0.99))
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
