//! The companion services that ship in the heistd binary: OAuth, memory, the
//! three tool services and the rehearsal model. Each is an axum router built
//! by its own `router(state)` so handlers can be tested without a socket; this
//! module starts them on listeners (ephemeral loopback ports in tests and the
//! demo), wraps every one in fault injection, and stops them on request.
//!
//! They speak the prototype's wire API (DESIGN.md), spelt in `wire`, and are
//! given only their slice of the config ([`CompanionsSettings`]). They must
//! not touch the audit store, nor use anything of heistd's but `wire`,
//! `metrics`, `config` and `scenario`: they are the outside world as heistd
//! sees it.

pub mod calculator;
pub mod database;
pub mod fault;
pub mod memory;
pub mod memory_file;
pub mod oauth;
pub mod query_pool;
pub mod query_worker;
pub mod rehearsal;
pub mod token;
pub mod tools;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::CompanionsSettings;
use crate::scenario::Scenario;
use crate::wire::{Companion, COMPANION_NAMES, OPENAI_PREFIX};
use fault::FaultSwitch;
use token::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("unknown service `{0}`; expected one of {names}", names = COMPANION_NAMES.join(", "))]
    UnknownService(String),
    #[error("cannot listen on {address} for {service}: {source}")]
    Bind {
        service: String,
        address: String,
        source: std::io::Error,
    },
    #[error("shift database: {0}")]
    Database(String),
    #[error("memory file (companions.memory.path): {0}")]
    MemoryFile(String),
}

/// What every companion may need, built once per process.
#[derive(Clone)]
pub struct CompanionContext {
    pub scenario: Arc<Scenario>,
    /// Shared by OAuth (signs) and the tool and memory services (verify).
    pub signing_key: SigningKey,
    /// The companions' slice of the config.
    pub settings: Arc<CompanionsSettings>,
}

/// A companion listening on its address.
pub struct RunningService {
    pub name: &'static str,
    pub address: SocketAddr,
    /// Faults can be set here directly or over `POST /fault`.
    pub fault: Arc<FaultSwitch>,
    task: JoinHandle<()>,
}

/// A set of running companions and the switch that stops them.
pub struct Companions {
    pub services: Vec<RunningService>,
    /// The key their tokens are signed with (tests forge and expire tokens).
    signing_key: SigningKey,
    stop: watch::Sender<bool>,
}

impl RunningService {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Companions {
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    pub fn get(&self, name: &str) -> Option<&RunningService> {
        self.services.iter().find(|service| service.name == name)
    }

    /// Base URL of a running companion; the rehearsal model's includes `/v1`.
    pub fn url(&self, name: &str) -> Option<String> {
        let service = self.get(name)?;
        Some(if name == Companion::Rehearsal.name() {
            format!("{}{OPENAI_PREFIX}", service.base_url())
        } else {
            service.base_url()
        })
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for service in self.services {
            let _ = service.task.await;
        }
    }
}

/// Starts the named companions. `ports` maps a name to its port; a missing
/// name or port 0 gets an ephemeral port.
pub async fn start(
    names: &[&str],
    context: &CompanionContext,
    host: &str,
    ports: &BTreeMap<String, u16>,
    fault_injection: bool,
) -> Result<Companions, ServiceError> {
    let (stop, stopped) = watch::channel(false);
    let mut services = Vec::new();
    for name in names {
        let companion =
            Companion::parse(name).ok_or_else(|| ServiceError::UnknownService(name.to_string()))?;
        let name = companion.name();
        let router = router(companion, context)?;
        let port = ports.get(name).copied().unwrap_or(0);
        let address = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|source| ServiceError::Bind {
                service: name.to_string(),
                address: address.clone(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| ServiceError::Bind {
            service: name.to_string(),
            address: address.clone(),
            source,
        })?;
        let switch = Arc::new(FaultSwitch::default());
        if let Some(fault) = context.settings.faults.get(name) {
            tracing::warn!(service = name, ?fault, "starting with an injected fault");
            switch.set(fault.clone());
        }
        let app = fault::wrap(router, switch.clone(), fault_injection);
        let listener = fault::FaultyListener::new(listener, switch.clone());
        let mut stopped = stopped.clone();
        let limits = context.settings.http.limits();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            crate::http::serve(listener, app, limits, name, shutdown).await;
        });
        tracing::debug!(service = name, address = %bound, "companion service listening");
        services.push(RunningService {
            name,
            address: bound,
            fault: switch,
            task,
        });
    }
    Ok(Companions {
        services,
        signing_key: context.signing_key.clone(),
        stop,
    })
}

/// The router of one companion, without fault injection.
pub fn router(companion: Companion, context: &CompanionContext) -> Result<Router, ServiceError> {
    // Verifiers refuse tokens that live longer than OAuth issues them for.
    let key = context
        .signing_key
        .clone()
        .with_max_lifetime(context.settings.oauth.token_ttl_seconds);
    Ok(match companion {
        Companion::OAuth => oauth::router(oauth::OAuthState::new(&context.settings.oauth, key)),
        Companion::Memory => memory::router(
            memory::MemoryState::open(key, context.settings.memory.clone())
                .map_err(ServiceError::MemoryFile)?,
        ),
        Companion::Calculator => tools::calculator_router(key),
        Companion::FileReader => tools::file_reader_router(key, context.scenario.clone()),
        Companion::DatabaseQuery => {
            let limits = &context.settings.database_query;
            // Bad shift SQL fails the start here, not at the first query.
            database::ShiftDatabase::build(&context.scenario.shifts_sql, limits)
                .map_err(ServiceError::Database)?;
            let program = limits
                .worker_program
                .clone()
                .unwrap_or_else(query_pool::default_worker_program);
            let pool = query_pool::QueryPool::new(program, &context.scenario.shifts_sql, limits)
                .map_err(ServiceError::Database)?;
            tools::database_query_router(key, pool)
        }
        Companion::Rehearsal => rehearsal::router(rehearsal::RehearsalState::new(
            context.scenario.clone(),
            context.settings.rehearsal_seed,
        )),
    })
}

/// A JSON error reply: `{"success": false, "result": null, "error": "..."}`,
/// the tool services' shape, which every companion uses for its errors.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "success": false, "result": null, "error": message.into() });
    (status, Json(body)).into_response()
}

/// `Json<T>` whose rejections are JSON error bodies rather than plain text,
/// and which takes only a JSON object: serde would otherwise read an array
/// field by field, in declaration order.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match Json::<serde_json::Value>::from_request(request, state).await {
            Ok(Json(value)) => value,
            Err(rejection) => {
                return Err(error_response(rejection.status(), rejection.body_text()))
            }
        };
        if !value.is_object() {
            return Err(error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map(Self).map_err(|error| {
            error_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Failed to deserialize the JSON body into the target type: {error}"),
            )
        })
    }
}

/// The `/health` reply every companion gives.
pub fn health_body(service: &str) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "status": "healthy", "service": service, "version": env!("CARGO_PKG_VERSION") }),
    )
}
