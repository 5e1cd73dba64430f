//! The tool policy of a turn: each request the model made is refused
//! without a call when the turn has used its quota or the agent lacks the
//! tool, fails without a call when the agent has no token, and is otherwise
//! sent to the tool service with the agent's bearer token. Each becomes a
//! [`ToolOutcome`], counted in metrics and recorded as a `tool_usage` row.
//!
//! [`ToolRunner`] holds the policy (the quota, the tool client, and the
//! token cache whose refused tokens it forgets); the agent and its token
//! come with each turn. It decides whether a tool may run; how the call is
//! made and retried is `clients` and `resilience`. It never touches the
//! store: the rows it returns are committed by the session loop.

use tokio::time::Instant;

use super::RunReport;
use crate::clients::{AccessToken, CallError, TokenCache, ToolClient};
use crate::metrics as names;
use crate::scenario::Agent;
use crate::store::ToolCallRecord;
use crate::wire::{Tool, ToolRequest};

/// Starts a refusal's stored error text, so the audit trail (whose
/// `tool_usage` has no outcome column) tells refusals from failures.
pub const REFUSED_PREFIX: &str = "refused: ";

/// How one tool request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutcome {
    /// The tool answered; its result.
    Succeeded { result: String },
    /// The call was made (or could not be, for want of a token) and failed.
    Failed { error: String },
    /// Never sent: the policy refused it.
    Refused { reason: String },
}

impl ToolOutcome {
    /// The metric label: `success`, `failure` or `refused`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "success",
            Self::Failed { .. } => "failure",
            Self::Refused { .. } => "refused",
        }
    }
}

/// How a turn's tool calls went, for the run's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ToolTally {
    pub succeeded: u32,
    pub failed: u32,
    pub refused: u32,
    /// Calls the policy allowed that could not be made because the agent
    /// had no access token: they make the turn a failed one.
    pub without_token: u32,
}

impl ToolTally {
    fn count(&mut self, outcome: &ToolOutcome) {
        match outcome {
            ToolOutcome::Succeeded { .. } => self.succeeded += 1,
            ToolOutcome::Failed { .. } => self.failed += 1,
            ToolOutcome::Refused { .. } => self.refused += 1,
        }
    }

    /// Adds this turn's tool calls to the run's counts.
    pub fn add_to(&self, report: &mut RunReport) {
        report.tool_calls_succeeded += self.succeeded;
        report.tool_calls_failed += self.failed;
        report.tool_calls_refused += self.refused;
    }
}

/// Runs a turn's tool requests under the policy.
pub(super) struct ToolRunner {
    /// `heist.max_tool_calls_per_turn`: requests past it are refused.
    quota: usize,
    /// The tool services, called with the agent's bearer token.
    tools: ToolClient,
    /// The turn player's token cache: a token a tool service refuses (401)
    /// is forgotten here, so the next turn fetches a new one.
    tokens: TokenCache,
}

impl ToolRunner {
    pub fn new(quota: usize, tools: ToolClient, tokens: TokenCache) -> Self {
        Self {
            quota,
            tools,
            tokens,
        }
    }

    /// Runs a turn's requests in order under the policy; returns their rows
    /// and how they went.
    pub(super) async fn run_requests(
        &self,
        agent: &Agent,
        requests: Vec<ToolRequest>,
        token: &Result<AccessToken, CallError>,
    ) -> (Vec<ToolCallRecord>, ToolTally) {
        let mut tally = ToolTally::default();
        let mut records = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            let (outcome, duration_ms) = self.decide_and_run(agent, index, &request, token).await;
            if token.is_err() && matches!(outcome, ToolOutcome::Failed { .. }) {
                tally.without_token += 1;
            }
            metrics::counter!(names::TOOL_CALLS_TOTAL, "tool" => tool_label(&request.tool), "outcome" => outcome.label()).increment(1);
            tally.count(&outcome);
            records.push(record(request, outcome, duration_ms));
        }
        (records, tally)
    }

    /// The policy for the `index`th request of a turn, then the call;
    /// with how long the call took (0 when none was made).
    async fn decide_and_run(
        &self,
        agent: &Agent,
        index: usize,
        request: &ToolRequest,
        token: &Result<AccessToken, CallError>,
    ) -> (ToolOutcome, f64) {
        let quota = self.quota;
        let refused = |reason| (ToolOutcome::Refused { reason }, 0.0);
        if index >= quota {
            return refused(format!("more than {quota} tool calls in one turn"));
        }
        if !agent.may_use(&request.tool) {
            return refused(format!("agent {} may not use {}", agent.name, request.tool));
        }
        match token {
            Err(error) => {
                let error = format!("no access token: {error}");
                (ToolOutcome::Failed { error }, 0.0)
            }
            Ok(token) => {
                let started = Instant::now();
                let outcome = self.run_tool(agent, request, token).await;
                (outcome, started.elapsed().as_secs_f64() * 1000.0)
            }
        }
    }

    async fn run_tool(
        &self,
        agent: &Agent,
        request: &ToolRequest,
        token: &AccessToken,
    ) -> ToolOutcome {
        let outcome = self
            .tools
            .call(&request.tool, &request.parameter, &token.value)
            .await;
        if matches!(outcome, Err(CallError::Status { status: 401, .. })) {
            // The token is no longer accepted (the signing key changed):
            // fetch a new one next time instead of waiting for its expiry.
            self.tokens.evict(&agent.name).await;
        }
        match outcome {
            Ok(result) => ToolOutcome::Succeeded { result },
            Err(error) => ToolOutcome::Failed {
                error: error.to_string(),
            },
        }
    }
}

/// The `tool_usage` row of one request.
fn record(request: ToolRequest, outcome: ToolOutcome, duration_ms: f64) -> ToolCallRecord {
    let (success, tool_result, error) = match outcome {
        ToolOutcome::Succeeded { result } => (true, result, None),
        ToolOutcome::Failed { error } => (false, String::new(), Some(error)),
        ToolOutcome::Refused { reason } => (
            false,
            String::new(),
            Some(format!("{REFUSED_PREFIX}{reason}")),
        ),
    };
    ToolCallRecord {
        tool_name: request.tool,
        tool_params: request.parameter,
        tool_result,
        success,
        error,
        duration_ms,
    }
}

/// Tool names come from model output; only known ones become label values.
fn tool_label(tool: &str) -> &'static str {
    Tool::parse(tool).map_or("unknown", Tool::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_label_and_row() {
        let request = |tool: &str| ToolRequest {
            tool: tool.into(),
            parameter: "2+2".into(),
        };
        let cases = [
            (
                ToolOutcome::Succeeded { result: "4".into() },
                "success",
                true,
                None,
            ),
            (
                ToolOutcome::Failed {
                    error: "HTTP 503".into(),
                },
                "failure",
                false,
                Some("HTTP 503"),
            ),
            (
                ToolOutcome::Refused {
                    reason: "agent mole may not use calculator".into(),
                },
                "refused",
                false,
                Some("refused: agent mole may not use calculator"),
            ),
        ];
        for (outcome, label, success, error) in cases {
            assert_eq!(outcome.label(), label);
            let row = record(request("calculator"), outcome, 1.0);
            assert_eq!(row.success, success);
            assert_eq!(row.error.as_deref(), error);
        }
    }

    #[test]
    fn unknown_tools_share_one_label() {
        assert_eq!(tool_label("calculator"), "calculator");
        assert_eq!(tool_label("rm -rf"), "unknown");
    }
}
