//! `heistd demo`: the whole system in one process, one heist with live
//! output, and with `--chaos` the resilience stack at work: injected model
//! and calculator errors and a memory outage in the middle of the run.

use std::path::PathBuf;
use std::time::Duration;

use super::{print_turn, summary, CliError, LocalStack};
use crate::config::{self, Fault};
use crate::heist::{self, RunOptions, RunReport, TurnView};
use crate::store::StoreHandle;
use crate::wire::{Companion, REHEARSAL_MODEL_ID};

pub struct DemoOptions {
    pub turns: Option<u32>,
    pub db: PathBuf,
    pub seed: Option<u64>,
    pub llm: Option<(String, String)>,
    /// Inject faults so the resilience stack has something to do.
    pub chaos: bool,
    /// Becomes true on Ctrl-C: the heist ends `interrupted` after its turn.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl DemoOptions {
    /// The command line's options, and the stop signal `main` listens for.
    pub fn new(args: super::args::DemoArgs, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            turns: args.turns,
            db: args.db,
            seed: args.seed,
            llm: args.llm_url.zip(args.llm_model),
            chaos: args.chaos,
            stop,
        }
    }
}

/// The memory service is down from this turn...
const OUTAGE_FIRST_TURN: u32 = 4;
/// ...to this one.
const OUTAGE_LAST_TURN: u32 = 6;

pub async fn demo(options: DemoOptions) -> Result<RunReport, CliError> {
    let mut base = config::load(None, config::process_environment())?;
    base.store.path = options.db.clone();
    if options.chaos {
        // A short wait in open, so the memory breaker lets the outbox
        // through within the demo rather than ten seconds later.
        base.services.memory.policy.breaker.wait_in_open_ms = 1_000;
        // A wider window for the model: a quarter of requests failing should
        // show retries at work, not open the breaker on a short unlucky run
        // (turns then fail in microseconds until it half-opens).
        base.llm.policy.breaker.window_size = 20;
        base.llm.policy.breaker.minimum_calls = 10;
        base.llm.policy.breaker.wait_in_open_ms = 1_000;
    }
    let stack = LocalStack::start(base, options.llm.clone()).await?;
    let store = StoreHandle::open_configured(&stack.config.store, &stack.config.cluster).await?;
    let runner = stack.runner(store.clone())?.with_stop(options.stop.clone());
    let turns = options.turns.unwrap_or(stack.config.heist.turns);
    let seed = options.seed.unwrap_or_else(heist::random_seed);
    let model = match &options.llm {
        Some((url, model)) => format!("{model} at {url}"),
        None => format!(
            "{} (the rehearsal model: scripted replies, no language model)",
            REHEARSAL_MODEL_ID
        ),
    };
    println!(
        "heistd demo: {} — {turns} turns, seed {seed}",
        stack.scenario.title
    );
    println!("model: {model}");
    for service in &stack.companions.services {
        println!("  {:<15} {}", service.name, service.base_url());
    }
    if options.chaos {
        println!(
            "chaos: the model answers 503 to a quarter of requests, the calculator 500 to a third, and the \
             memory service is down from turn {OUTAGE_FIRST_TURN} to turn {OUTAGE_LAST_TURN}: watch retries, \
             failures and the outbox catching up"
        );
        set_fault(
            &stack,
            Companion::Rehearsal,
            Fault {
                error_rate: 0.25,
                error_status: 503,
                ..Fault::default()
            },
        );
        set_fault(
            &stack,
            Companion::Calculator,
            Fault {
                error_rate: 0.33,
                error_status: 500,
                ..Fault::default()
            },
        );
    }
    println!();
    let observer = |view: &TurnView<'_>| {
        print_turn(view);
        if options.chaos {
            if view.record.turn_id + 1 == OUTAGE_FIRST_TURN {
                println!("   !! the memory service goes down\n");
                set_fault(
                    &stack,
                    Companion::Memory,
                    Fault {
                        refuse: true,
                        ..Fault::default()
                    },
                );
            } else if view.record.turn_id == OUTAGE_LAST_TURN {
                println!("   !! the memory service is back\n");
                set_fault(&stack, Companion::Memory, Fault::default());
            }
        }
    };
    let mut report = runner
        .run(RunOptions::new(turns, seed), Some(&observer))
        .await?;
    if options.chaos {
        // A run shorter than the outage must not leave memory down.
        set_fault(&stack, Companion::Memory, Fault::default());
    }
    if report.memory_pending > 0 {
        // The memory breaker may still be open after the outage: give it a
        // few seconds, then the outbox delivers what memory missed.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            report.memory_pending = runner.deliver_outbox(&report.session_id).await?;
            if report.memory_pending == 0 {
                break;
            }
        }
    }
    if options.chaos {
        if let Ok((delivered, all)) = store.outbox_counts(&report.session_id).await {
            println!("outbox: {delivered} of {all} memory writes delivered to the memory service despite the outage\n");
        }
    }
    println!("{}", summary(&report, runner.clients(), store.path()));
    let detail = store.session(&report.session_id).await?;
    if !detail.service_calls.is_empty() {
        let retried = detail
            .service_calls
            .iter()
            .filter(|row| row.call.attempts > 1)
            .count();
        println!(
            "  {} calls failed or needed retries ({retried} retried); each is a row in service_calls:\n  \
             SELECT turn_id, service, operation, attempts, outcome, last_error FROM service_calls WHERE session_id = '{}'",
            detail.service_calls.len(),
            report.session_id
        );
    }
    stack.companions.shutdown().await;
    super::completed(report)
}

fn set_fault(stack: &LocalStack, companion: Companion, fault: Fault) {
    if let Some(running) = stack.companions.get(companion.name()) {
        running.fault.set(fault);
    }
}
