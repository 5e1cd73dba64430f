//! One turn: gather the context (the agent's token, its compressed memory,
//! the recent transcript), ask the model, turn its reply into tool requests
//! (text and native calls, written into the message in the prototype's
//! notation), run them under the tool policy, and build the record the
//! session commits.
//!
//! [`TurnPlayer`] holds the clients, the config, the scenario and the
//! agents' token cache, and no store handle: it cannot write to the store,
//! and it never decides how the session goes on. The transcript it shows
//! the model is handed to it by the session loop, which read it.

use std::sync::Arc;

use super::prompt::{FittedPrompt, ModelRoom, PromptBuilder, PromptParts};
use super::tools::{ToolRunner, ToolTally, REFUSED_PREFIX};
use super::transcript::TranscriptEntry;
use crate::clients::{
    AccessToken, CallError, ChatMessage, ChatRequest, Clients, LlmClient, MemoryWrite, ModelReply,
    TokenCache, ToolSpec,
};
use crate::config::{Config, Prices};
use crate::metrics as names;
use crate::scenario::{Agent, Scenario};
use crate::store::{ToolCallRecord, TurnRecord, TurnUsage};
use crate::wire::{parse_tool_requests, ToolRequest};

/// Plays one turn and returns its record; the session loop commits it.
pub(super) struct TurnPlayer {
    config: Arc<Config>,
    scenario: Arc<Scenario>,
    clients: Clients,
    /// The agents' OAuth tokens, fetched on first use and kept until
    /// shortly before they expire (shared with `tools`, which forgets a
    /// token a tool service refuses).
    tokens: TokenCache,
    /// The tool policy the turn's requests run under.
    tools: ToolRunner,
}

/// Which turn of which session is played, and how.
pub(super) struct SessionTurn<'a> {
    pub session_id: &'a str,
    pub turn_id: u32,
    pub total_turns: u32,
    pub seed: u64,
    /// Tools are offered as native functions this session (configured, and
    /// the model passed the check).
    pub native: bool,
}

/// The memory service's summary quotes this many of the agent's latest
/// memories word for word (the prototype's `recent_count`).
const MEMORY_RECENT_COUNT: u32 = 3;
/// OpenAI-compatible servers read `seed` as a signed 32-bit integer
/// (llama.cpp and vLLM refuse larger ones), so the session's seed is cut to
/// its low 31 bits for the model.
const MODEL_SEED_MASK: u64 = 0x7FFF_FFFF;

/// A played turn: the record to commit, and how its tool calls went.
pub(super) struct PlayedTurn {
    pub record: TurnRecord,
    pub tools: ToolTally,
}

/// How playing a turn ended.
pub(super) enum TurnResult {
    /// Boxed: a record is large beside an error, and the enum moves.
    Played(Box<PlayedTurn>),
    /// The model could not be reached (or the stack would not call it):
    /// nothing is recorded, and the session waits, then plays it again.
    ModelUnavailable(CallError),
}

/// The model's answer to a turn, or why there is none.
enum Asked {
    Replied {
        reply: ModelReply,
        trimmed: bool,
        usage: TurnUsage,
    },
    Failed(String),
    Unavailable(CallError),
}

impl TurnPlayer {
    pub fn new(config: Arc<Config>, scenario: Arc<Scenario>, clients: Clients) -> Self {
        let tokens = TokenCache::default();
        let tools = ToolRunner::new(
            config.heist.max_tool_calls_per_turn,
            clients.tools.clone(),
            tokens.clone(),
        );
        Self {
            config,
            scenario,
            clients,
            tokens,
            tools,
        }
    }

    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Plays one turn of `session` for `agent`, showing the model
    /// `transcript` (or failing the turn with the reason it could not be
    /// read).
    pub async fn play_turn(
        &self,
        session: &SessionTurn<'_>,
        agent: &Agent,
        transcript: Result<Vec<TranscriptEntry>, String>,
    ) -> TurnResult {
        let mut record = TurnRecord {
            session_id: session.session_id.to_string(),
            turn_id: session.turn_id,
            agent_name: agent.name.clone(),
            agent_role: agent.role.clone(),
            message: String::new(),
            error: None,
            tool_calls: Vec::new(),
            memory_payload: None,
            service_calls: Vec::new(),
            prompt_tokens: None,
            completion_tokens: None,
            finish_reason: None,
            trimmed: false,
            endpoint: None,
            model: None,
            fallback: false,
            usage: TurnUsage::default(),
        };
        let token = self.token_for(agent).await;
        let (reply, trimmed) = match self.ask_model(session, agent, transcript).await {
            Asked::Replied {
                reply,
                trimmed,
                usage,
            } => {
                record.usage = usage;
                (reply, trimmed)
            }
            Asked::Unavailable(error) => return TurnResult::ModelUnavailable(error),
            Asked::Failed(error) => {
                record.error = Some(error);
                return TurnResult::Played(Box::new(PlayedTurn {
                    record,
                    tools: ToolTally::default(),
                }));
            }
        };
        note_reply(&mut record, &reply, trimmed);
        let (message, requests) = requests_in(&reply);
        let (mut calls, mut tools) = self.tools.run_requests(agent, requests, &token).await;
        // Tools the agent asked for could not run without a token: the
        // turn did not do what it said, so it fails (a turn that asked for
        // no tool is not hurt by a missing token).
        if let (Err(error), true) = (&token, tools.without_token > 0) {
            record.error = Some(format!(
                "no access token for {}: {error}; {} tool call(s) could not run",
                agent.name, tools.without_token
            ));
        }
        if session.native {
            if let Some(malformed) = malformed_native_request(&reply) {
                tools.refused += 1;
                calls.push(malformed);
            }
        }
        record.tool_calls = calls;
        let write = MemoryWrite {
            agent_id: agent.name.clone(),
            turn_id: session.turn_id as i64,
            message: message.clone(),
            game_session_id: session.session_id.to_string(),
        };
        // A failed turn is not context (the transcript leaves it out), so
        // memory does not get it either.
        if record.error.is_none() {
            record.memory_payload = serde_json::to_string(&write).ok();
        }
        record.message = message;
        TurnResult::Played(Box::new(PlayedTurn { record, tools }))
    }

    /// Builds a prompt that fits from the agent's memory and the transcript
    /// and asks the model; a context-length error teaches the client the
    /// window, and the turn asks once more, trimmed.
    async fn ask_model(
        &self,
        session: &SessionTurn<'_>,
        agent: &Agent,
        transcript: Result<Vec<TranscriptEntry>, String>,
    ) -> Asked {
        let memory = self
            .compressed_memory(session.session_id, session.turn_id, agent)
            .await;
        let transcript = match transcript {
            Ok(transcript) => transcript,
            Err(error) => return Asked::Failed(format!("cannot read the transcript: {error}")),
        };
        let parts = PromptParts {
            memory,
            transcript,
            turn_id: session.turn_id,
            total_turns: session.total_turns,
            native: session.native,
        };
        let native_tools = self.native_tools(agent, session.native);
        let prompt = PromptBuilder {
            scenario: &self.scenario,
            agent,
        };
        let llm = &self.clients.llm;
        let mut last_error = None;
        for _ in 0..2 {
            // Fitted each time: a context-length error teaches the window.
            let (fitted, tier) = match self.fit_to_a_model(&prompt, &parts, &native_tools).await {
                Ok(fitted) => fitted,
                Err(error) => return Asked::Failed(error),
            };
            let request = ChatRequest {
                messages: &fitted.messages,
                seed: session.seed & MODEL_SEED_MASK,
                tools: &native_tools,
                max_tokens: fitted.max_tokens,
            };
            match llm.complete_from_tier(request, tier).await {
                Ok(reply) => {
                    let usage = turn_usage(
                        &reply,
                        || llm.estimate_tokens(&fitted.messages, &native_tools),
                        || completion_estimate(llm, &reply),
                        self.prices(&reply),
                    );
                    return Asked::Replied {
                        reply,
                        trimmed: fitted.trimmed,
                        usage,
                    };
                }
                Err(error) if error.context_overflow().is_some() => {
                    tracing::warn!(turn_id = session.turn_id, %error, "the prompt did not fit the model's context; trimming it");
                    last_error = Some(error);
                }
                Err(error) if error.is_outage() => return Asked::Unavailable(error),
                Err(error) => {
                    tracing::warn!(turn_id = session.turn_id, agent = %agent.name, %error, "LLM call failed; turn recorded as failed");
                    return Asked::Failed(error.to_string());
                }
            }
        }
        let error = last_error
            .map(|error| error.to_string())
            .unwrap_or_default();
        Asked::Failed(format!(
            "{error} (trimmed to llm.context_tokens = {} and still too long: lower heist.context_messages, \
             heist.memory_max_tokens or llm.max_tokens)",
            self.clients.llm.context_tokens().unwrap_or_default()
        ))
    }

    /// The prices of the endpoint that answered `reply`: `[llm]`'s for a
    /// primary endpoint; none for a fallback (a fallback is another
    /// provider: its price is never assumed to be the primary's; per
    /// endpoint prices go here when endpoints carry them).
    fn prices(&self, reply: &ModelReply) -> Option<Prices> {
        if reply.fallback {
            return None;
        }
        self.config.llm.prices()
    }

    /// The prompt fitted to the primary models' smallest known window, or
    /// when it cannot fit there, to the first fallback list's that it fits;
    /// with the tier the call must go to. The error is the primaries'.
    async fn fit_to_a_model(
        &self,
        prompt: &PromptBuilder<'_>,
        parts: &PromptParts,
        native_tools: &[ToolSpec],
    ) -> Result<(FittedPrompt, u32), String> {
        let llm = &self.clients.llm;
        let mut first_error = None;
        for tier in std::iter::once(0).chain(llm.fallback_tiers()) {
            let Some(sizing) = llm.sizing_view(tier) else {
                continue;
            };
            match self.fit_prompt(&sizing, prompt, parts, native_tools).await {
                Ok(fitted) => return Ok((fitted, tier)),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or_default())
    }

    /// The prompt fitted to `sizing`'s window by its estimate; with
    /// `llm.token_counting = "server"` the server counts the fitted prompt
    /// too, and one it counts too long is fitted again (the count has made
    /// the estimate denser, or taught the window).
    async fn fit_prompt(
        &self,
        sizing: &LlmClient,
        prompt: &PromptBuilder<'_>,
        parts: &PromptParts,
        tools: &[ToolSpec],
    ) -> Result<FittedPrompt, String> {
        let estimate = |messages: &[_], tools: &[_]| sizing.estimate_tokens(messages, tools);
        let mut checks = 0;
        loop {
            // Read each time: the window may have been learned since.
            let room = ModelRoom {
                window: sizing.context_tokens(),
                max_tokens: sizing.max_tokens(),
                min_completion_tokens: self.config.llm.min_completion_tokens,
                estimate: &estimate,
            };
            let fitted = prompt.fit(parts.clone(), tools, &room)?;
            checks += 1;
            // After three counts still too long: the server will refuse it,
            // and the turn fits it once more.
            if checks == 3 {
                return Ok(fitted);
            }
            let Some(counted) = sizing.count_tokens(&fitted.messages, tools).await else {
                return Ok(fitted);
            };
            let fits = sizing
                .context_tokens()
                .is_none_or(|window| counted.saturating_add(fitted.max_tokens) <= window);
            if fits {
                return Ok(fitted);
            }
        }
    }

    /// The agent's compressed memory; without it the turn goes on.
    async fn compressed_memory(&self, session_id: &str, turn_id: u32, agent: &Agent) -> String {
        let memory = self
            .clients
            .memory
            .compressed(
                &agent.name,
                session_id,
                self.config.heist.memory_max_tokens,
                MEMORY_RECENT_COUNT,
            )
            .await;
        memory.unwrap_or_else(|error| {
            tracing::warn!(turn_id, %error, "no compressed memory this turn");
            String::new()
        })
    }

    /// The agent's tools as native function specs, when the session uses
    /// native tool calling; none otherwise.
    fn native_tools(&self, agent: &Agent, native: bool) -> Vec<ToolSpec> {
        if !native {
            return Vec::new();
        }
        PromptBuilder {
            scenario: &self.scenario,
            agent,
        }
        .native_tools()
    }

    async fn token_for(&self, agent: &Agent) -> Result<AccessToken, CallError> {
        let Some(secret) = self.config.client_secret(&agent.name) else {
            return Err(CallError::Refused {
                service: "oauth".into(),
                message: format!("no client secret configured for agent {}", agent.name),
            });
        };
        let token = self
            .tokens
            .get(&self.clients.oauth, &agent.name, secret, &agent.scopes())
            .await;
        if let Err(error) = &token {
            tracing::warn!(agent = %agent.name, %error, "no access token; tool calls will fail this turn");
        }
        token
    }
}

/// What the turn's model call used: the server's `usage`, with each count
/// it left out estimated (and the turn marked so), and its cost at
/// `prices` (none without prices: a cost is never guessed).
fn turn_usage(
    reply: &ModelReply,
    prompt_estimate: impl FnOnce() -> u32,
    completion_estimate: impl FnOnce() -> u32,
    prices: Option<Prices>,
) -> TurnUsage {
    let prompt_tokens = reply.prompt_tokens.unwrap_or_else(prompt_estimate);
    let completion_tokens = reply.completion_tokens.unwrap_or_else(completion_estimate);
    TurnUsage {
        prompt_tokens,
        completion_tokens,
        estimated: reply.prompt_tokens.is_none() || reply.completion_tokens.is_none(),
        cost: prices
            .map(|prices| prices.cost(u64::from(prompt_tokens), u64::from(completion_tokens))),
    }
}

/// The reply's tokens as the client estimates text (its calibrated
/// characters per token): its text and native calls as one message, less
/// what an empty message is estimated at (the chat template's share).
fn completion_estimate(llm: &LlmClient, reply: &ModelReply) -> u32 {
    let mut text = reply.content.clone();
    for (tool, parameter) in &reply.tool_calls {
        text.push_str(tool);
        text.push_str(parameter);
    }
    llm.estimate_tokens(&[ChatMessage::user(text)], &[])
        .saturating_sub(llm.estimate_tokens(&[ChatMessage::user(String::new())], &[]))
}

/// Copies what the server said about the reply into the record, and
/// counts its tokens (and their cost, when priced) by the endpoint and
/// model that answered; a reply cut at `max_tokens` is logged and counted.
fn note_reply(record: &mut TurnRecord, reply: &ModelReply, trimmed: bool) {
    record.prompt_tokens = reply.prompt_tokens;
    record.completion_tokens = reply.completion_tokens;
    record.finish_reason = reply.finish_reason.clone();
    record.trimmed = trimmed;
    record.endpoint = Some(reply.endpoint.clone());
    record.model = Some(reply.model.clone());
    record.fallback = reply.fallback;
    names::count_model_usage(
        crate::config::LLM_SERVICE,
        &reply.endpoint,
        &reply.model,
        (
            u64::from(record.usage.prompt_tokens),
            u64::from(record.usage.completion_tokens),
        ),
        record.usage.cost,
    );
    if trimmed {
        metrics::counter!(names::MODEL_PROMPTS_TRIMMED_TOTAL).increment(1);
    }
    if reply.was_cut_short() {
        tracing::warn!(
            turn_id = record.turn_id,
            completion_tokens = reply.completion_tokens,
            "the model's reply was cut at max_tokens (finish_reason: length)"
        );
        metrics::counter!(names::MODEL_REPLIES_TRUNCATED_TOTAL).increment(1);
    }
}

/// In native mode, a reply that writes `functions.NAME: ...` as text (some
/// chat templates do) asked for a tool in a way that cannot be run: it is
/// recorded as a refused, malformed request, and the text stays the message.
fn malformed_native_request(reply: &ModelReply) -> Option<ToolCallRecord> {
    if !reply.tool_calls.is_empty() {
        return None;
    }
    let start = reply.content.find("functions.")?;
    let rest = &reply.content[start + "functions.".len()..];
    let name: String = rest
        .chars()
        .take_while(|character| character.is_alphanumeric() || *character == '_')
        .collect();
    let after = rest[name.len()..].trim_start();
    if name.is_empty() || !after.starts_with(':') {
        return None;
    }
    let parameter = after[1..]
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    metrics::counter!(names::TOOL_CALLS_TOTAL, "tool" => "unknown", "outcome" => "refused")
        .increment(1);
    Some(ToolCallRecord {
        tool_name: name.clone(),
        tool_params: parameter,
        tool_result: String::new(),
        success: false,
        error: Some(format!(
            "{REFUSED_PREFIX}malformed native tool request: the model wrote `functions.{name}:` \
             as text instead of a tool call"
        )),
        duration_ms: 0.0,
    })
}

/// The reply's message and every tool it asks for. Native calls are written
/// into the message in the prototype's notation, so the audit trail reads
/// the same either way (and the text is what later prompts and memory show).
fn requests_in(reply: &ModelReply) -> (String, Vec<ToolRequest>) {
    let mut message = reply.content.trim().to_string();
    let mut requests = parse_tool_requests(&message);
    for (tool, parameter) in &reply.tool_calls {
        let request = ToolRequest {
            tool: tool.clone(),
            parameter: parameter.clone(),
        };
        // A model that both writes and natively calls the same tool asked
        // once, not twice.
        if requests.contains(&request) {
            continue;
        }
        if !message.is_empty() {
            message.push(' ');
        }
        message.push_str(&request.notation());
        requests.push(request);
    }
    (message, requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_calls_are_written_into_the_message_once() {
        let reply = ModelReply {
            content: " Checking. [TOOL:calculator:2+2] ".into(),
            tool_calls: vec![
                ("calculator".into(), "2+2".into()),
                ("file_reader".into(), "vault_specs.txt".into()),
            ],
            ..ModelReply::default()
        };
        let (message, requests) = requests_in(&reply);
        assert_eq!(
            message,
            "Checking. [TOOL:calculator:2+2] [TOOL:file_reader:vault_specs.txt]"
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].tool, "file_reader");
    }

    #[test]
    fn usage_is_the_servers_else_estimated_and_costed_only_with_prices() {
        let prices = Prices {
            prompt_per_million: 2.0,
            completion_per_million: 10.0,
        };
        let counted = ModelReply {
            prompt_tokens: Some(1000),
            completion_tokens: Some(100),
            ..ModelReply::default()
        };
        let never = || -> u32 { panic!("the server counted it") };
        let usage = turn_usage(&counted, never, never, Some(prices));
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1000, 100));
        assert!(!usage.estimated);
        assert_eq!(usage.cost, Some((1000.0 * 2.0 + 100.0 * 10.0) / 1e6));
        assert_eq!(turn_usage(&counted, never, never, None).cost, None);
        // A count the server left out is estimated, and the turn says so.
        let half = ModelReply {
            prompt_tokens: Some(1000),
            ..ModelReply::default()
        };
        let usage = turn_usage(&half, never, || 42, None);
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1000, 42));
        assert!(usage.estimated);
        let none = turn_usage(&ModelReply::default(), || 7, || 3, None);
        assert_eq!((none.prompt_tokens, none.completion_tokens), (7, 3));
        assert!(none.estimated);
    }

    #[test]
    fn functions_name_text_is_a_refused_malformed_request() {
        let reply = ModelReply {
            content: "Let me check.\nfunctions.file_reader: vault_specs.txt".into(),
            ..ModelReply::default()
        };
        let row = malformed_native_request(&reply).expect("recognised");
        assert_eq!(
            (row.tool_name.as_str(), row.tool_params.as_str()),
            ("file_reader", "vault_specs.txt")
        );
        assert!(!row.success);
        assert!(row
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("refused: malformed"));
        let plain = ModelReply {
            content: "The functions. of a vault: many".into(),
            ..ModelReply::default()
        };
        assert!(malformed_native_request(&plain).is_none());
    }
}
