//! `heistd demo`: the whole system in one process, one heist with live
//! output, and with `--chaos` the resilience stack at work: injected model
//! and calculator errors and a memory outage in the middle of the run.

use std::path::PathBuf;
use std::time::Duration;

use super::quit::{self, InPlay, Interrupts};
use super::{print_turn, summary, CliError, LocalStack};
use crate::config::{self, Fault};
use crate::health::{self, Probe};
use crate::heist::{self, HeistRunner, RunOptions, RunReport, TurnView};
use crate::store::StoreHandle;
use crate::wire::{Companion, REHEARSAL_MODEL_ID};

pub struct DemoOptions {
    pub turns: Option<u32>,
    pub db: PathBuf,
    pub seed: Option<u64>,
    pub llm: Option<(String, String)>,
    /// Inject faults so the resilience stack has something to do.
    pub chaos: bool,
    /// Ctrl-C: the first ends the heist `interrupted` after its turn, the
    /// second quits at once.
    pub interrupts: Interrupts,
}

impl DemoOptions {
    /// The command line's options, and the signals `main` listens for.
    pub fn new(args: super::args::DemoArgs, interrupts: Interrupts) -> Self {
        let heist = args.heist;
        Self {
            turns: heist.turns,
            db: heist
                .db
                .unwrap_or_else(|| PathBuf::from(super::args::DEMO_DATABASE)),
            seed: heist.seed,
            llm: heist.llm_url.zip(heist.llm_model),
            chaos: args.chaos,
            interrupts,
        }
    }
}

/// The memory service is down from this turn...
const OUTAGE_FIRST_TURN: u32 = 4;
/// ...to this one.
const OUTAGE_LAST_TURN: u32 = 6;

pub async fn demo(options: DemoOptions) -> Result<RunReport, CliError> {
    let in_play = InPlay::default();
    let quit = options.interrupts.quit.clone();
    quit::unless_quit(&in_play, quit, demo_until_quit(&options, &in_play)).await
}

async fn demo_until_quit(options: &DemoOptions, in_play: &InPlay) -> Result<RunReport, CliError> {
    let base = demo_config(options)?;
    let stack = LocalStack::start(base, options.llm.clone()).await?;
    super::sqlite_only(&stack.config, "heistd demo")?;
    let store = StoreHandle::open_configured(&stack.config.store, &stack.config.cluster).await?;
    // A store that cannot be written fails here, before any service call.
    store.probe_write().await?;
    quit::end_stale_sessions(&store, "heistd demo").await?;
    let runner = stack
        .runner(store.clone())?
        .with_stop(options.interrupts.stop.clone())
        .with_notices(std::sync::Arc::new(super::print_notice));
    super::preflight(&runner.clients().llm).await?;
    let turns = options.turns.unwrap_or(stack.config.heist.turns);
    let seed = options.seed.unwrap_or_else(heist::random_seed);
    print_banner(&stack, options, turns, seed);
    if options.chaos {
        start_chaos(&stack, seed, options.llm.is_some());
    }
    out!();
    let observer = |view: &TurnView<'_>| {
        print_turn(view);
        if options.chaos {
            let finished_turn = view.record.turn_id;
            stage_memory_outage(&stack, &runner, finished_turn);
            set_chaos_for_turn(&stack, seed, finished_turn + 1);
        }
    };
    let run_options = RunOptions::new(turns, seed);
    let session_id = runner.start(&run_options).await?;
    in_play.started(&store, &session_id);
    let mut report = runner
        .play(&session_id, &run_options, Some(&observer))
        .await?;
    if options.chaos {
        // A run shorter than the outage must not leave memory down.
        set_fault(&stack, Companion::Memory, Fault::default());
    }
    if report.memory_pending > 0 {
        report.memory_pending = deliver_what_memory_missed(&runner, &report.session_id).await?;
    }
    if options.chaos {
        if let Ok((delivered, all)) = store.outbox_counts(&report.session_id).await {
            out!("outbox: {delivered} of {all} memory writes delivered to the memory service despite the outage\n");
        }
    }
    out!("{}", summary(&report, runner.clients(), store.path()));
    print_service_calls(&store, &report.session_id).await?;
    stack.companions.shutdown().await;
    super::completed(report)
}

/// The config from the environment, writing to `--db`; with `--chaos`,
/// breakers tuned so the demo shows them recovering within the run.
fn demo_config(options: &DemoOptions) -> Result<config::Config, CliError> {
    let mut base = config::load(None, config::process_environment())?;
    base.store.path = options.db.clone();
    if options.chaos {
        chaos_settings(&mut base);
    }
    Ok(base)
}

fn print_banner(stack: &LocalStack, options: &DemoOptions, turns: u32, seed: u64) {
    let model = match &options.llm {
        Some((url, model)) => format!("{model} at {url}"),
        None => format!(
            "{} (the rehearsal model: scripted replies, no language model)",
            REHEARSAL_MODEL_ID
        ),
    };
    let plural = if turns == 1 { "" } else { "s" };
    out!(
        "heistd demo: {} — {turns} turn{plural}, seed {seed}",
        stack.scenario.title
    );
    out!("model: {model}");
    for service in &stack.companions.services {
        out!("  {:<15} {}", service.name, service.base_url());
    }
}

/// Says what `--chaos` does, and makes the model and the calculator fail
/// part of the time for the whole run, starting with turn 1.
fn start_chaos(stack: &LocalStack, seed: u64, external_model: bool) {
    // Faults are injected into heistd's own companions: a model given with
    // --llm-url is not one of them, so it is left alone and the line says so.
    let model = if external_model {
        "the model at --llm-url is left alone (heistd injects faults only into its own services)"
    } else {
        "the model answers 503 to a quarter of requests"
    };
    out!(
        "chaos: {model}, the calculator answers 500 to a third, and the memory service is down \
         from turn {OUTAGE_FIRST_TURN} to turn {OUTAGE_LAST_TURN}: watch retries, failures and the \
         outbox catching up"
    );
    set_chaos_for_turn(stack, seed, 1);
}

/// The model's and the calculator's faults for one turn, set before it
/// starts: each is seeded from the heist's seed and the turn, so the k-th
/// call of a turn meets the same fault in every run with this seed, however
/// long the calls before it took (faults follow the seed, the turn and the
/// call index, never timing). Only retry counts may differ between runs,
/// where timing decides whether a retry is allowed at all.
fn set_chaos_for_turn(stack: &LocalStack, seed: u64, turn: u32) {
    let turn_seed = |service: u64| {
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ (u64::from(turn) << 8) ^ service
    };
    set_fault(
        stack,
        Companion::Rehearsal,
        Fault {
            error_rate: 0.25,
            error_status: 503,
            seed: Some(turn_seed(1)),
            ..Fault::default()
        },
    );
    set_fault(
        stack,
        Companion::Calculator,
        Fault {
            error_rate: 0.33,
            error_status: 500,
            seed: Some(turn_seed(2)),
            ..Fault::default()
        },
    );
}

/// Called after each turn: takes the memory service down before
/// [`OUTAGE_FIRST_TURN`] and brings it back after [`OUTAGE_LAST_TURN`],
/// where a health check sees it up (see [`memory_seen_back`]).
fn stage_memory_outage(stack: &LocalStack, runner: &HeistRunner, finished_turn: u32) {
    if finished_turn + 1 == OUTAGE_FIRST_TURN {
        out!("   !! the memory service goes down\n");
        set_fault(
            stack,
            Companion::Memory,
            Fault {
                refuse: true,
                ..Fault::default()
            },
        );
    } else if finished_turn == OUTAGE_LAST_TURN {
        set_fault(stack, Companion::Memory, Fault::default());
        out!(
            "   !! the memory service is back\n{}\n",
            memory_seen_back(runner)
        );
    }
}

/// What a daemon's health checker does when a service answers again: its
/// breaker, open since the outage, lets calls through again. The demo has
/// no checker and its turns take milliseconds, far less than the breaker's
/// wait in open, so it probes the memory service's health once itself and,
/// seeing it up, half-opens the breaker: the next memory calls (the
/// outbox's writes, the next turn's read) are its probes, and close it.
/// Returns the line that says so.
fn memory_seen_back(runner: &HeistRunner) -> String {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let memory = &runner.clients().memory.service;
    let handle = Handle::current();
    // The observer that calls this is synchronous; only a multi-thread
    // runtime (main's) can wait for the probe on this thread.
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        memory.half_open_breaker();
        return "   !! its breaker half-opens: the next memory calls are its probes".into();
    }
    let probe = health::probe(memory, Probe::Health, crate::clients::PROBE_TIMEOUT);
    let report = tokio::task::block_in_place(|| handle.block_on(probe));
    if report.up {
        memory.half_open_breaker();
        "   !! a health check sees it up: its breaker half-opens, and the next memory calls are its probes".into()
    } else {
        format!(
            "   !! a health check does not see it up yet ({}): its breaker waits out its open time",
            report.detail
        )
    }
}

/// Delivers the session's pending memory writes; returns how many are
/// still pending.
async fn deliver_what_memory_missed(
    runner: &HeistRunner,
    session_id: &str,
) -> Result<usize, CliError> {
    // The memory breaker may still be open after the outage: give it a
    // few seconds, then the outbox delivers what memory missed.
    let mut pending = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        pending = runner.deliver_outbox(session_id).await?;
        if pending == 0 {
            break;
        }
    }
    Ok(pending)
}

/// Points at the `service_calls` rows, when calls failed or were retried.
async fn print_service_calls(store: &StoreHandle, session_id: &str) -> Result<(), CliError> {
    let detail = store.session(session_id).await?;
    if !detail.service_calls.is_empty() {
        let retried = detail
            .service_calls
            .iter()
            .filter(|row| row.call.attempts > 1)
            .count();
        out!(
            "  {} calls failed or needed retries ({retried} retried); each is a row in service_calls:\n  \
             SELECT turn_id, service, operation, attempts, outcome, last_error FROM service_calls WHERE session_id = '{}'",
            detail.service_calls.len(),
            session_id
        );
    }
    Ok(())
}

/// The chaos run's settings: short breaker waits, so the demo shows
/// recovery within its turns.
fn chaos_settings(base: &mut config::Config) {
    // A short wait in open: a breaker that opens again (its probe met the
    // outage) lets the outbox through within a second of the demo's end
    // rather than ten seconds later.
    base.services.memory.policy.breaker.wait_in_open_ms = 1_000;
    // A wider window for the model: a quarter of requests failing should
    // show retries at work, not open the breaker on a short unlucky run
    // (turns then fail in microseconds until it half-opens).
    base.llm.policy.breaker.window_size = 20;
    base.llm.policy.breaker.minimum_calls = 10;
    base.llm.policy.breaker.wait_in_open_ms = 1_000;
}

fn set_fault(stack: &LocalStack, companion: Companion, fault: Fault) {
    if let Some(running) = stack.companions.get(companion.name()) {
        running.fault.set(fault);
    }
}
