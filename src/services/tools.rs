//! The three tool services, each its own router: calculator
//! (`POST /tools/calculator {expression}`), file reader
//! (`POST /tools/read_file {filename}`) and database query
//! (`POST /tools/query_db {query}`). All answer `{success, result, error}`
//! and demand a bearer token carrying the tool's scope: 401 without a valid
//! token, 403 with the wrong scope.
//!
//! The tools' own logic lives in `calculator` and `database`; this module is
//! only HTTP, auth and the shape of replies.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::query_pool::QueryPool;
use super::token::{unix_now, Claims, SigningKey};
use super::{calculator, error_response, health_body, JsonBody};
use crate::scenario::Scenario;
use crate::wire::{Tool, HEALTH_PATH};

/// File names longer than this are refused before any lookup.
pub const MAX_FILENAME_LENGTH: usize = 128;
/// Queries longer than this are refused before SQLite sees them.
pub const MAX_QUERY_LENGTH: usize = 2_000;

#[derive(Debug, Deserialize)]
struct CalculatorRequest {
    expression: String,
}

#[derive(Debug, Deserialize)]
struct ReadFileRequest {
    filename: String,
}

#[derive(Debug, Deserialize)]
struct QueryRequest {
    query: String,
}

pub fn calculator_router(key: SigningKey) -> Router {
    guarded(
        Router::new().route(Tool::Calculator.path(), post(calculate)),
        key,
        Tool::Calculator,
    )
}

pub fn file_reader_router(key: SigningKey, scenario: Arc<Scenario>) -> Router {
    guarded(
        Router::new()
            .route(Tool::FileReader.path(), post(read_file))
            .with_state(scenario),
        key,
        Tool::FileReader,
    )
}

pub fn database_query_router(key: SigningKey, database: Arc<QueryPool>) -> Router {
    guarded(
        Router::new()
            .route(Tool::DatabaseQuery.path(), post(query_db))
            .with_state(database),
        key,
        Tool::DatabaseQuery,
    )
}

/// Puts the tool's route behind the token check, which runs before the
/// body is read (so nobody learns the request format without a token), and
/// adds the open `/health`.
fn guarded(tool_routes: Router, key: SigningKey, tool: Tool) -> Router {
    let requirement = Arc::new(Requirement {
        key,
        scope: tool.scope(),
    });
    tool_routes
        .route_layer(axum::middleware::from_fn_with_state(
            requirement,
            require_scope,
        ))
        .route(
            HEALTH_PATH,
            get(move || async move { health_body(tool.name()) }),
        )
}

struct Requirement {
    key: SigningKey,
    scope: String,
}

async fn require_scope(
    State(requirement): State<Arc<Requirement>>,
    request: Request,
    next: Next,
) -> Response {
    match authorize(request.headers(), &requirement.key, &requirement.scope) {
        Ok(claims) => {
            // Handlers that share out work per client read who it is.
            let mut request = request;
            request.extensions_mut().insert(claims);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Why a request was not authorized; answers 401 or 403 as JSON.
#[derive(Debug)]
pub enum AuthError {
    Unauthenticated(String),
    Forbidden(String),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthenticated(message) => {
                let mut response = error_response(StatusCode::UNAUTHORIZED, message);
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Self::Forbidden(message) => error_response(StatusCode::FORBIDDEN, message),
        }
    }
}

/// Checks the bearer token and its scope.
pub fn authorize(headers: &HeaderMap, key: &SigningKey, scope: &str) -> Result<Claims, AuthError> {
    let claims = authenticate(headers, key)?;
    if !claims.has_scope(scope) {
        return Err(AuthError::Forbidden(format!("token lacks scope `{scope}`")));
    }
    Ok(claims)
}

/// Checks the bearer token (signature, issuer, expiry), whatever its scopes.
pub fn authenticate(headers: &HeaderMap, key: &SigningKey) -> Result<Claims, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(AuthError::Unauthenticated("missing bearer token".into()));
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Unauthenticated(
            "the bearer token is empty".into(),
        ));
    }
    let token = text
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| {
            AuthError::Unauthenticated("authorization header is not a bearer token".into())
        })?;
    key.verify(token.trim(), unix_now())
        .map_err(|error| AuthError::Unauthenticated(error.to_string()))
}

fn success(result: serde_json::Value) -> Response {
    Json(serde_json::json!({ "success": true, "result": result, "error": null })).into_response()
}

async fn calculate(JsonBody(request): JsonBody<CalculatorRequest>) -> Response {
    match calculator::evaluate(&request.expression) {
        Ok(value) => success(serde_json::Value::String(calculator::format_number(value))),
        Err(error) => error_response(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

async fn read_file(
    State(scenario): State<Arc<Scenario>>,
    JsonBody(request): JsonBody<ReadFileRequest>,
) -> Response {
    let filename = request.filename.trim();
    if filename.is_empty() || filename.chars().count() > MAX_FILENAME_LENGTH {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("filename must be 1 to {MAX_FILENAME_LENGTH} characters"),
        );
    }
    // Documents are looked up by exact name in the scenario's table, never
    // on the file system, so no path can escape it.
    match scenario.documents.get(filename) {
        Some(text) => success(serde_json::Value::String(text.clone())),
        None => {
            let available = scenario
                .documents
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            error_response(
                StatusCode::NOT_FOUND,
                format!("no document named `{filename}`; available: {available}"),
            )
        }
    }
}

async fn query_db(
    State(database): State<Arc<QueryPool>>,
    Extension(claims): Extension<Claims>,
    JsonBody(request): JsonBody<QueryRequest>,
) -> Response {
    if request.query.chars().count() > MAX_QUERY_LENGTH {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("query is over {MAX_QUERY_LENGTH} characters"),
        );
    }
    match database.query(&claims.sub, request.query).await {
        Ok(rows) => success(rows),
        Err(error) => error_response(
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
            error.to_string(),
        ),
    }
}
