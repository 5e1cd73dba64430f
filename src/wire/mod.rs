//! What crosses the wire between heistd and its companions: the tools, the
//! companion services, their paths and headers, the rehearsal model's id,
//! and the `[TOOL:name:parameter]` notation in which a reply asks for tools.
//! Each of these is spelt once, here, so the clients that send a request and
//! the services that answer it cannot drift apart.
//!
//! Text that came over the wire is logged through [`loggable`], which
//! escapes control characters and truncates, so a client cannot forge log
//! lines or flood the log.
//!
//! The bodies that both sides of a call spell are here too, as serde
//! structs: the memory companion's (`memory`) and OpenAI chat completions
//! (`openai`), which the LLM client sends and the rehearsal model answers.
//!
//! It is the bottom of the crate: it must import nothing from it, and it
//! holds no behaviour beyond naming, parsing and escaping what is on the wire.

pub mod events;
pub mod memory;
pub mod openai;

pub use memory::{
    CompressedMemoryReply, CompressedMemoryRequest, CompressedSummary, MemoryWrite,
    SessionCountReply,
};

/// Characters of a value that came over the wire that a log line keeps.
pub const LOG_VALUE_MAX_CHARS: usize = 256;

/// A value that came over the wire, safe to put in a log field: control
/// characters (newlines, escape codes) are escaped as `\n`, `\u{1b}`, and
/// anything past [`LOG_VALUE_MAX_CHARS`] characters is cut, saying so.
pub fn loggable(value: &str) -> String {
    let mut shown = String::new();
    for (kept, character) in value.chars().enumerate() {
        if kept == LOG_VALUE_MAX_CHARS {
            let rest = value.chars().count() - kept;
            shown.push_str(&format!("...({rest} more characters)"));
            break;
        }
        if character.is_control() || character == '\\' {
            shown.extend(character.escape_default());
        } else {
            shown.push(character);
        }
    }
    shown
}

/// A tool an agent may be granted. One tool is one service, named like it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tool {
    Calculator,
    FileReader,
    DatabaseQuery,
}

impl Tool {
    /// Every tool, in the order the config and the scenario list them.
    pub const ALL: [Tool; 3] = [Tool::Calculator, Tool::FileReader, Tool::DatabaseQuery];

    /// The tool's name: in a scenario's `tools`, in `[TOOL:name:...]`, in
    /// OAuth scopes, and as its service's name in the config.
    pub const fn name(self) -> &'static str {
        match self {
            Tool::Calculator => "calculator",
            Tool::FileReader => "file_reader",
            Tool::DatabaseQuery => "database_query",
        }
    }

    /// The tool's one endpoint on its service (the prototype's paths, which
    /// do not all follow the tool's name).
    pub fn path(self) -> &'static str {
        match self {
            Tool::Calculator => "/tools/calculator",
            Tool::FileReader => "/tools/read_file",
            Tool::DatabaseQuery => "/tools/query_db",
        }
    }

    /// The JSON field of the request body that carries the tool's one
    /// parameter (`{"expression": ...}`, `{"filename": ...}`, `{"query": ...}`).
    pub fn parameter_field(self) -> &'static str {
        match self {
            Tool::Calculator => "expression",
            Tool::FileReader => "filename",
            Tool::DatabaseQuery => "query",
        }
    }

    /// The scope a token must carry for the tool's service to run it.
    pub fn scope(self) -> String {
        tool_scope(self.name())
    }

    /// The companion service that runs this tool.
    pub fn companion(self) -> Companion {
        match self {
            Tool::Calculator => Companion::Calculator,
            Tool::FileReader => Companion::FileReader,
            Tool::DatabaseQuery => Companion::DatabaseQuery,
        }
    }

    /// The tool named `name`, if it is one; names come from model output and
    /// scenario files, so an unknown one is an answer, not an error.
    pub fn parse(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|tool| tool.name() == name)
    }
}

/// Every tool's name, in [`Tool::ALL`] order.
pub const TOOL_NAMES: [&str; 3] = [
    Tool::Calculator.name(),
    Tool::FileReader.name(),
    Tool::DatabaseQuery.name(),
];

/// The OAuth scope that lets a token use the tool named `tool`
/// (`calculator:use`); an agent asks for one per tool it holds.
pub fn tool_scope(tool: &str) -> String {
    format!("{tool}:use")
}

/// A companion service shipped in the binary, by the name that
/// `heistd services NAME`, `[companions.ports]` and `[companions.faults]` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Companion {
    OAuth,
    Memory,
    Calculator,
    FileReader,
    DatabaseQuery,
    Rehearsal,
}

/// Every companion's name, in the order they start and are listed.
pub const COMPANION_NAMES: [&str; 6] = [
    Companion::OAuth.name(),
    Companion::Memory.name(),
    Companion::Calculator.name(),
    Companion::FileReader.name(),
    Companion::DatabaseQuery.name(),
    Companion::Rehearsal.name(),
];

impl Companion {
    /// Every companion, in [`COMPANION_NAMES`] order.
    pub const ALL: [Companion; 6] = [
        Companion::OAuth,
        Companion::Memory,
        Companion::Calculator,
        Companion::FileReader,
        Companion::DatabaseQuery,
        Companion::Rehearsal,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Companion::OAuth => "oauth",
            Companion::Memory => "memory",
            Companion::Calculator => "calculator",
            Companion::FileReader => "file_reader",
            Companion::DatabaseQuery => "database_query",
            Companion::Rehearsal => "rehearsal",
        }
    }

    pub fn parse(name: &str) -> Option<Companion> {
        Companion::ALL
            .into_iter()
            .find(|companion| companion.name() == name)
    }
}

/// The client-credentials grant (OAuth service).
pub const TOKEN_PATH: &str = "/token";
/// Every companion's liveness endpoint.
pub const HEALTH_PATH: &str = "/health";
/// Appends one turn to an agent's memory (memory service).
pub const STORE_MEMORY_PATH: &str = "/tools/store_memory";
/// An agent's compressed memory within a token budget (memory service).
pub const COMPRESSED_MEMORY_PATH: &str = "/tools/get_compressed_memory";
/// Sets, shows and clears a companion's injected fault.
pub const FAULT_PATH: &str = "/fault";
/// Where an OpenAI-compatible API lives below a server's root: the LLM's
/// configured base URL includes it, the rehearsal model serves under it.
pub const OPENAI_PREFIX: &str = "/v1";
/// Chat completions, below an OpenAI-compatible base URL.
pub const CHAT_COMPLETIONS_PATH: &str = "/chat/completions";
/// The one user message of heistd's preflight chat (`max_tokens` 1), which
/// the rehearsal model recognises and answers "OK".
pub const PREFLIGHT_PROMPT: &str = "Say OK.";
/// The model list, below an OpenAI-compatible base URL.
pub const MODELS_PATH: &str = "/models";

/// Makes a retried memory write count once (`Idempotency-Key`; HTTP header
/// names are case-insensitive, and lower case is how `http` stores them).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The model id the rehearsal model reports and accepts, and the default
/// `llm.model`.
pub const REHEARSAL_MODEL_ID: &str = "heistd-rehearsal";

/// One tool request found in a reply. The tool is kept as written: a model
/// may ask for a tool that does not exist, and that request is recorded
/// (refused) like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRequest {
    pub tool: String,
    pub parameter: String,
}

impl ToolRequest {
    /// The request in the reply notation, `[TOOL:name:parameter]`.
    pub fn notation(&self) -> String {
        format!("{TOOL_REQUEST_OPENING}{}:{}]", self.tool, self.parameter)
    }
}

const TOOL_REQUEST_OPENING: &str = "[TOOL:";

/// Every well-formed `[TOOL:name:parameter]` in `reply`, in order. The
/// parameter runs to the closing bracket and may itself contain colons
/// (`SELECT ... '22:00'`). Malformed ones (no closing bracket, no
/// parameter) are not requests and are left as text.
pub fn parse_tool_requests(reply: &str) -> Vec<ToolRequest> {
    let mut requests = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find(TOOL_REQUEST_OPENING) {
        let after = &rest[start + TOOL_REQUEST_OPENING.len()..];
        let Some(end) = after.find(']') else { break };
        let inner = &after[..end];
        if let Some((tool, parameter)) = inner.split_once(':') {
            let (tool, parameter) = (tool.trim(), parameter.trim());
            if !tool.is_empty() && !parameter.is_empty() && !tool.contains(char::is_whitespace) {
                requests.push(ToolRequest {
                    tool: tool.to_string(),
                    parameter: parameter.to_string(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_values_cannot_forge_lines_or_flood() {
        let forged = "mole\n2025-01-01T00:00:00Z INFO token issued client_id=operator scope=memory:admin\u{1b}[2J";
        let shown = loggable(forged);
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert!(
            shown.starts_with("mole\\n2025") && shown.contains("\\u{1b}[2J"),
            "{shown}"
        );
        let flood = "x".repeat(2_000_000);
        let shown = loggable(&flood);
        assert!(shown.len() < 400, "{}", shown.len());
        assert!(shown.ends_with("...(1999744 more characters)"), "{shown}");
        assert_eq!(loggable("planner"), "planner");
    }

    #[test]
    fn parses_requests_in_order_and_ignores_malformed_ones() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("no tools here", &[]),
            ("Let me check [TOOL:calculator:2 + 2] now", &[("calculator", "2 + 2")]),
            ("[TOOL:file_reader:vault_specs.txt] and [TOOL:database_query:SELECT * FROM shifts WHERE start_time >= '22:00']",
             &[("file_reader", "vault_specs.txt"), ("database_query", "SELECT * FROM shifts WHERE start_time >= '22:00'")]),
            ("[TOOL:calculator:] [TOOL::x] [TOOL:calculator 2] [TOOL:calculator:1", &[]),
            ("[TOOL: calculator : 7*6 ]", &[("calculator", "7*6")]),
            ("[TOOL:two words:x]", &[]),
        ];
        for (reply, expected) in cases {
            let parsed: Vec<(String, String)> = parse_tool_requests(reply)
                .into_iter()
                .map(|request| (request.tool, request.parameter))
                .collect();
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(tool, parameter)| (tool.to_string(), parameter.to_string()))
                .collect();
            assert_eq!(parsed, expected, "{reply}");
        }
    }

    #[test]
    fn a_request_written_in_its_notation_parses_back() {
        let request = ToolRequest {
            tool: "database_query".into(),
            parameter: "SELECT name FROM guards WHERE start_time >= '22:00'".into(),
        };
        assert_eq!(parse_tool_requests(&request.notation()), vec![request]);
    }

    #[test]
    fn every_tool_parses_from_its_name_and_is_a_companion() {
        for tool in Tool::ALL {
            assert_eq!(Tool::parse(tool.name()), Some(tool));
            assert_eq!(tool.companion().name(), tool.name());
        }
        assert_eq!(Tool::parse("read_file"), None, "a path is not a name");
        for companion in Companion::ALL {
            assert_eq!(Companion::parse(companion.name()), Some(companion));
        }
        assert_eq!(Companion::parse("vault"), None);
    }
}
