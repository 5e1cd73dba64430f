//! The `[services.<name>]` sections: where heistd reaches each companion
//! service it calls (OAuth, memory and the three tools), each with its
//! timeout, reply cap, call policy and health check.
//!
//! This is only configuration; `clients` calls the services.

use serde::{Deserialize, Serialize};

use super::endpoints::{check_service_endpoints, check_url, OutlierConfig};
use super::{HealthCheckConfig, PolicyConfig, SERVICE_NAMES};

/// The services that keep one endpoint: OAuth and memory hold state that
/// is not shared between instances.
const SINGLE_ENDPOINT_SERVICES: [&str; 2] = ["oauth", "memory"];

/// `[services]`: the companion services heistd calls, one table each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// The OAuth service that issues the agents' tokens.
    #[serde(default = "default_oauth_service")]
    pub oauth: ServiceConfig,
    /// The memory service that keeps each session's compressed memory.
    #[serde(default = "default_memory_service")]
    pub memory: ServiceConfig,
    /// The calculator tool.
    #[serde(default = "default_calculator_service")]
    pub calculator: ServiceConfig,
    /// The file reader tool.
    #[serde(default = "default_file_reader_service")]
    pub file_reader: ServiceConfig,
    /// The database query tool.
    #[serde(default = "default_database_query_service")]
    pub database_query: ServiceConfig,
}

/// `[services.<name>]`: one companion service as heistd calls it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Where the service listens (the prototype's ports 8001-8005). The
    /// one-endpoint shorthand: exclusive with `endpoints`.
    pub base_url: String,
    /// Several instances of a stateless tool service (calculator,
    /// file_reader, database_query), instead of `base_url`: each call picks
    /// the least loaded one, a retry goes to another, and one that keeps
    /// failing is ejected. OAuth and memory keep one endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// When an endpoint that keeps failing is set aside.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Per-attempt timeout for calls to this service.
    #[serde(default = "default_service_timeout_ms")]
    pub timeout_ms: u64,
    /// A reply body larger than this is refused (`decode_error`), not read
    /// into memory.
    #[serde(default = "default_service_max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// The calls' deadline, retries, budget, bulkhead and breaker.
    #[serde(default = "PolicyConfig::quick_service")]
    pub policy: PolicyConfig,
    /// The daemon's periodic check of this service.
    #[serde(default = "HealthCheckConfig::quick_service")]
    pub health: HealthCheckConfig,
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

impl ServicesConfig {
    /// The configured services by name, in [`SERVICE_NAMES`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ServiceConfig)> {
        [
            &self.oauth,
            &self.memory,
            &self.calculator,
            &self.file_reader,
            &self.database_query,
        ]
        .into_iter()
        .enumerate()
        .map(|(index, service)| (SERVICE_NAMES[index], service))
    }

    /// Checks each service's URL, policy and bounds; the error is (key, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let defaults = Self::default();
        for ((name, service), (_, default)) in self.iter().zip(defaults.iter()) {
            check_url(&format!("services.{name}.base_url"), &service.base_url)?;
            service.check_endpoints(name, default)?;
            service
                .policy
                .validate(&format!("services.{name}.policy"))?;
            if service.max_reply_bytes == 0 {
                return Err((
                    format!("services.{name}.max_reply_bytes"),
                    "must be at least 1".into(),
                ));
            }
            if service.timeout_ms == 0 {
                return Err((
                    format!("services.{name}.timeout_ms"),
                    "must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// The base URLs of its endpoints: `endpoints`, else `base_url`.
    pub fn endpoint_urls(&self) -> Vec<String> {
        if self.endpoints.is_empty() {
            vec![self.base_url.clone()]
        } else {
            self.endpoints.clone()
        }
    }

    fn check_endpoints(&self, name: &str, default: &ServiceConfig) -> Result<(), (String, String)> {
        let key = format!("services.{name}.endpoints");
        if !self.endpoints.is_empty() {
            if SINGLE_ENDPOINT_SERVICES.contains(&name) {
                return Err((
                    key,
                    format!("{name} keeps one endpoint (its state is not shared between instances): set services.{name}.base_url"),
                ));
            }
            if self.base_url != default.base_url {
                return Err((
                    format!("services.{name}.base_url"),
                    format!(
                        "`services.{name}.base_url` and `{key}` are both set: use one, not both"
                    ),
                ));
            }
        }
        check_service_endpoints(&key, &self.endpoints)?;
        self.outlier.validate(&format!("services.{name}.outlier"))
    }
}

fn service_on(port: u16) -> ServiceConfig {
    ServiceConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        endpoints: Vec::new(),
        outlier: OutlierConfig::default(),
        timeout_ms: default_service_timeout_ms(),
        max_reply_bytes: default_service_max_reply_bytes(),
        policy: PolicyConfig::quick_service(),
        health: HealthCheckConfig::quick_service(),
    }
}

fn default_oauth_service() -> ServiceConfig {
    service_on(8001)
}

fn default_calculator_service() -> ServiceConfig {
    service_on(8002)
}

fn default_file_reader_service() -> ServiceConfig {
    service_on(8003)
}

fn default_database_query_service() -> ServiceConfig {
    service_on(8004)
}

fn default_memory_service() -> ServiceConfig {
    service_on(8005)
}

fn default_service_max_reply_bytes() -> usize {
    1024 * 1024
}

fn default_service_timeout_ms() -> u64 {
    5_000
}
