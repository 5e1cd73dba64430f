//! What a session does when the model is unavailable (refused connections,
//! timeouts, 5xx or 429 after retries, an open breaker): it does not record
//! the turn; it waits, probing the model itself (`GET /models`, once a
//! second, past the breaker), and when the model answers it half-opens the
//! breaker so the same turn is played at once, instead of waiting out
//! `wait_in_open_ms`. The wait is bounded by `heist.max_model_outage_ms`;
//! past it the session ends `failed` with the last real error, never "breaker
//! open". Also here: the once-per-model check that native tool calling
//! really works, which decides the session's tool protocol.
//!
//! [`ModelWatch`] holds the LLM client and these settings; the session
//! loop owns it and asks it to wait. It decides only whether the session
//! waits; retries and the breaker itself are `resilience`'s, and it never
//! touches the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::control::RunControl;
use super::prompt::PromptBuilder;
use super::RunNotice;
use crate::clients::{CallError, LlmClient};
use crate::config::ToolCalling;
use crate::metrics as names;
use crate::scenario::Scenario;
use crate::wire::MODELS_PATH;

/// Watches the model for a session: waits out its outages and checks its
/// native tool calling.
pub(super) struct ModelWatch {
    llm: LlmClient,
    /// The agents whose tools the native check offers.
    scenario: Arc<Scenario>,
    /// `llm.tool_calling`: native calling is checked only when configured.
    tool_calling: ToolCalling,
    /// `heist.max_model_outage_ms`: how long one outage may pause a session.
    max_outage: Duration,
}

/// The session probes a model it is waiting for this often.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Counts a session in `heistd_sessions_waiting{reason}` while held,
/// however the wait ends.
pub(super) struct Waiting(&'static str);

impl Waiting {
    /// `reason`: `model` or `store` (`metrics::labels::WAITING_REASONS`).
    pub fn start(reason: &'static str) -> Self {
        metrics::gauge!(names::SESSIONS_WAITING, "reason" => reason).increment(1.0);
        Self(reason)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!(names::SESSIONS_WAITING, "reason" => self.0).decrement(1.0);
    }
}

/// One stretch of model unavailability within a session.
pub(super) struct Outage {
    started: Instant,
    /// The session counts as waiting for the model until the outage ends.
    _waiting: Waiting,
    /// The last error a real attempt got; a refusal by the stack (open
    /// breaker, full bulkhead) never replaces it.
    last_error: Option<String>,
}

/// How a wait for the model ended.
pub(super) enum Waited {
    /// It answered: play the turn again.
    Back,
    /// `heist.max_model_outage_ms` passed.
    GaveUp,
    /// The session was told to stop.
    Stopped,
}

impl Outage {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            _waiting: Waiting::start("model"),
            last_error: None,
        }
    }

    /// Notes a failed turn's error.
    pub fn saw(&mut self, error: &CallError) {
        if !error.is_rejection() || self.last_error.is_none() {
            self.last_error = Some(error.to_string());
        }
    }

    pub fn last_error(&self) -> &str {
        self.last_error.as_deref().unwrap_or("unknown")
    }

    /// The session's failure reason when the outage outlasted the limit.
    pub fn failure_reason(&self, turn_id: u32) -> String {
        format!(
            "the model was unavailable for {:.0} s before turn {turn_id} (heist.max_model_outage_ms); last error: {}",
            self.started.elapsed().as_secs_f64(),
            self.last_error()
        )
    }
}

impl ModelWatch {
    pub fn new(
        llm: LlmClient,
        scenario: Arc<Scenario>,
        tool_calling: ToolCalling,
        max_outage: Duration,
    ) -> Self {
        Self {
            llm,
            scenario,
            tool_calling,
            max_outage,
        }
    }

    /// Waits until the model answers a probe (then half-opens its breaker),
    /// until its breaker lets a probe call through by itself, until the
    /// outage has lasted `heist.max_model_outage_ms`, or until told to stop.
    pub async fn wait_for_the_model(
        &self,
        turn_id: u32,
        outage: &Outage,
        control: &RunControl,
    ) -> Waited {
        let limit = outage.started + self.max_outage;
        let paused = Instant::now();
        tracing::warn!(
            turn_id,
            last_error = outage.last_error(),
            "the model is unavailable; the session waits"
        );
        let waited = loop {
            let now = Instant::now();
            if now >= limit {
                break Waited::GaveUp;
            }
            control.notify(&RunNotice::ModelPaused {
                turn_id,
                remaining: limit - now,
                last_error: outage.last_error().to_string(),
            });
            if !control
                .sleep_unless_stopped(PROBE_INTERVAL.min(limit - now))
                .await
            {
                break Waited::Stopped;
            }
            if self.some_endpoint_answers().await {
                break Waited::Back;
            }
            if self.llm.service.breaker_open_remaining() == Some(Duration::ZERO) {
                break Waited::Back;
            }
        };
        let paused = paused.elapsed();
        count_pause(paused);
        if matches!(waited, Waited::Back) {
            tracing::info!(
                turn_id,
                paused_ms = paused.as_millis() as u64,
                "the model is back"
            );
            control.notify(&RunNotice::ModelBack { turn_id, paused });
        }
        waited
    }

    /// Whether the session plays with native tool calling: configured, and
    /// the model really returns `tool_calls` (checked once per model). A
    /// model that cannot say (unavailable now) is given the benefit of the
    /// doubt; the check runs again next session.
    pub async fn session_uses_native_tools(&self, control: &RunControl) -> bool {
        if self.tool_calling != ToolCalling::Native {
            return false;
        }
        let Some(agent) = self
            .scenario
            .agents
            .iter()
            .find(|agent| !agent.tools.is_empty())
        else {
            return true;
        };
        let prompt = PromptBuilder {
            scenario: &self.scenario,
            agent,
        };
        let Some(tool) = prompt.native_tools().into_iter().next() else {
            return true;
        };
        match self.llm.supports_native_tools(&tool).await {
            Ok(true) => true,
            Ok(false) => {
                let notice = RunNotice::TextToolsFallback {
                    model: self.llm.model().to_string(),
                };
                tracing::warn!("{notice}");
                control.notify(&notice);
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot check native tool calling now; trying it");
                true
            }
        }
    }

    /// Sizes each endpoint left to its server from the slots it says it
    /// has (once per endpoint that answers), before a session's first turn.
    pub async fn learn_slots(&self) {
        self.llm.learn_slots().await;
    }

    /// One probe of each model endpoint, past its breaker; each that
    /// answers has its breaker half-opened and its ejection ended.
    async fn some_endpoint_answers(&self) -> bool {
        let mut any = false;
        for index in 0..self.llm.endpoint_count() {
            if model_answers(&self.llm.endpoint_view(index)).await {
                self.llm.service.guard().endpoint_answered(index);
                any = true;
            }
        }
        any
    }
}

/// One probe of the model, past its breaker. Any HTTP answer but a 5xx
/// means the server is up (a 404 on `/models` still answered).
async fn model_answers(llm: &LlmClient) -> bool {
    let probe: Result<serde_json::Value, CallError> = llm.service.probe_json(MODELS_PATH).await;
    match probe {
        Ok(_) => true,
        Err(CallError::Status { status, .. }) => status < 500,
        Err(_) => false,
    }
}

/// Milliseconds of model-outage pauses not yet counted as a whole second:
/// the counter is in whole seconds, and short pauses must add up rather
/// than be cut to nothing.
static PAUSE_MS_NOT_COUNTED: parking_lot::Mutex<u64> = parking_lot::Mutex::new(0);

fn count_pause(paused: Duration) {
    let whole_seconds = {
        let mut not_counted = PAUSE_MS_NOT_COUNTED.lock();
        *not_counted += paused.as_millis() as u64;
        let whole_seconds = *not_counted / 1000;
        *not_counted %= 1000;
        whole_seconds
    };
    if whole_seconds > 0 {
        metrics::counter!(names::MODEL_OUTAGE_PAUSE_SECONDS_TOTAL).increment(whole_seconds);
    }
}
