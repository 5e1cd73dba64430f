//! The built-in defaults: the lowest layer of the config, what `heistd
//! config defaults` prints, and what every key in `config/heistd.toml`
//! shows but `store.path` (tests check both).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::secrets::BUILTIN_SECRET_SUFFIX;
use super::*;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            synchronous: Synchronous::Full,
            group_commit: default_group_commit(),
            commit_delay_ms: default_commit_delay_ms(),
            max_size_mb: 0,
            max_outage_ms: default_max_outage_ms(),
            backend: StoreBackend::Sqlite,
            url: String::new(),
            password_env: String::new(),
            password_file: None,
            pool_size: default_pool_size(),
            password: None,
        }
    }
}

impl Default for HeistConfig {
    fn default() -> Self {
        Self {
            turns: default_turns(),
            scenario: None,
            seed: None,
            context_messages: default_context_messages(),
            max_tool_calls_per_turn: default_max_tool_calls(),
            memory_max_tokens: default_memory_max_tokens(),
            max_model_outage_ms: default_max_model_outage_ms(),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: default_llm_url(),
            model: default_llm_model(),
            temperature: default_temperature(),
            max_tokens: default_max_tokens(),
            api_key_env: default_api_key_env(),
            api_key_file: None,
            api_key: None,
            max_reply_bytes: default_llm_max_reply_bytes(),
            timeout_ms: default_llm_timeout_ms(),
            stream: true,
            idle_timeout_ms: default_llm_idle_timeout_ms(),
            tool_calling: ToolCalling::Text,
            context_tokens: 0,
            min_completion_tokens: default_min_completion_tokens(),
            policy: PolicyConfig::language_model(),
            health: HealthCheckConfig::language_model(),
        }
    }
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            oauth: default_oauth_service(),
            memory: default_memory_service(),
            calculator: default_calculator_service(),
            file_reader: default_file_reader_service(),
            database_query: default_database_query_service(),
        }
    }
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            clients: default_oauth_clients(),
            signing_key_env: default_signing_key_env(),
            signing_key_file: None,
            signing_key: None,
            token_ttl_seconds: default_token_ttl_seconds(),
            memory_client_id: default_memory_client_id(),
        }
    }
}

impl Default for CompanionsConfig {
    fn default() -> Self {
        Self {
            host: default_companion_host(),
            ports: default_companion_ports(),
            fault_injection: false,
            rehearsal_seed: 0,
            faults: BTreeMap::new(),
            database_query: DatabaseToolConfig::default(),
            memory: MemoryServiceConfig::default(),
        }
    }
}

pub(super) fn default_pool_size() -> u32 {
    8
}

pub(super) fn default_store_path() -> PathBuf {
    PathBuf::from("heistd.db")
}
pub(super) fn default_turns() -> u32 {
    12
}
pub(super) fn default_context_messages() -> usize {
    5
}
pub(super) fn default_max_tool_calls() -> usize {
    3
}
pub(super) fn default_memory_max_tokens() -> u32 {
    300
}
pub(super) fn default_max_model_outage_ms() -> u64 {
    300_000
}
pub(super) fn default_min_completion_tokens() -> u32 {
    64
}
pub(super) fn default_llm_url() -> String {
    "http://127.0.0.1:8006/v1".into()
}
pub(super) fn default_llm_model() -> String {
    crate::wire::REHEARSAL_MODEL_ID.into()
}
pub(super) fn default_temperature() -> f64 {
    0.7
}
pub(super) fn default_max_tokens() -> u32 {
    400
}
pub(super) fn default_api_key_env() -> String {
    "HEISTD_LLM_API_KEY".into()
}
pub(super) fn default_llm_timeout_ms() -> u64 {
    120_000
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_llm_idle_timeout_ms() -> u64 {
    30_000
}
pub(super) fn default_llm_max_reply_bytes() -> usize {
    4 * 1024 * 1024
}
pub(super) fn default_service_max_reply_bytes() -> usize {
    1024 * 1024
}
pub(super) fn default_service_timeout_ms() -> u64 {
    5_000
}
pub(super) fn service_on(port: u16) -> ServiceConfig {
    ServiceConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        timeout_ms: default_service_timeout_ms(),
        max_reply_bytes: default_service_max_reply_bytes(),
        policy: PolicyConfig::quick_service(),
        health: HealthCheckConfig::quick_service(),
    }
}
pub(super) fn default_oauth_service() -> ServiceConfig {
    service_on(8001)
}
pub(super) fn default_calculator_service() -> ServiceConfig {
    service_on(8002)
}
pub(super) fn default_file_reader_service() -> ServiceConfig {
    service_on(8003)
}
pub(super) fn default_database_query_service() -> ServiceConfig {
    service_on(8004)
}
pub(super) fn default_memory_service() -> ServiceConfig {
    service_on(8005)
}
pub(super) fn default_signing_key_env() -> String {
    "HEISTD_OAUTH_SIGNING_KEY".into()
}
pub(super) fn default_token_ttl_seconds() -> u64 {
    3600
}
pub(super) fn default_memory_client_id() -> String {
    "heistd".into()
}
pub(super) fn default_companion_host() -> String {
    "127.0.0.1".into()
}
pub(super) fn default_companion_ports() -> BTreeMap<String, u16> {
    [
        (Companion::OAuth, 8001),
        (Companion::Calculator, 8002),
        (Companion::FileReader, 8003),
        (Companion::DatabaseQuery, 8004),
        (Companion::Memory, 8005),
        (Companion::Rehearsal, 8006),
    ]
    .into_iter()
    .map(|(companion, port)| (companion.name().to_string(), port))
    .collect()
}

/// The demo crew's credentials. A real deployment replaces these in its
/// file; `config check` shows them redacted either way.
pub(super) fn default_oauth_clients() -> Vec<OAuthClient> {
    let client = |id: &str, scopes: &[&str]| OAuthClient {
        client_id: id.into(),
        client_secret: Secret::new(format!("{id}{BUILTIN_SECRET_SUFFIX}")),
        client_secret_env: None,
        client_secret_file: None,
        scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
    };
    vec![
        client(
            "planner",
            &[
                "file_reader:use",
                "calculator:use",
                "database_query:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client(
            "hacker",
            &[
                "database_query:use",
                "calculator:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client(
            "safecracker",
            &[
                "calculator:use",
                "file_reader:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client(
            "mole",
            &[
                "file_reader:use",
                "database_query:use",
                "memory:write",
                "memory:read",
            ],
        ),
        client("operator", &["memory:admin"]),
        // heistd's own deliveries to the memory service (the outbox).
        client("heistd", &["memory:admin"]),
    ]
}
