//! Handler tests of the admin API: a real `DaemonState` over a real store in
//! a temporary directory, requests sent with `oneshot` (no socket), and a
//! small task standing in for the daemon's dispatcher of run requests.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::router;
use crate::config::Synchronous;
use crate::daemon::state::{
    DaemonState, RunCommand, RunRequest, RunningSession, ScheduleStatus, StartRunError,
};
use crate::health::{HealthBoard, HealthState, ServiceHealth};
use crate::store::{NewSession, SessionStatus, StoreHandle};

const ADMIN_TOKEN: &str = "correct-horse-battery-staple";

/// A daemon's state with the pieces a test inspects.
struct TestDaemon {
    state: Arc<DaemonState>,
    /// The store behind `state`, for tests to seed and finish sessions in.
    store: StoreHandle,
    /// Every run request the stand-in dispatcher received, in order.
    run_requests: Arc<Mutex<Vec<RunRequest>>>,
    /// Keeps the store's directory alive as long as the test.
    _directory: tempfile::TempDir,
}

impl TestDaemon {
    /// A daemon whose dispatcher answers every run request with `answer`.
    async fn new(admin_token: Option<&str>, answer: Result<String, StartRunError>) -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let store =
            StoreHandle::open_sqlite(&directory.path().join("audit.db"), Synchronous::Normal)
                .await
                .expect("store opens");
        let config = crate::config::load(None, Vec::new()).expect("default config loads");
        let health = Arc::new(HealthBoard::default());
        health.publish(service_health("llm", HealthState::Up, true));
        health.publish(service_health("calculator", HealthState::Up, false));
        let (run_commands, mut received_commands) = mpsc::channel::<RunCommand>(8);
        let run_requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = run_requests.clone();
        // Stands in for the daemon's dispatcher: records and answers.
        tokio::spawn(async move {
            while let Some((request, reply)) = received_commands.recv().await {
                recorded.lock().push(request);
                let _ = reply.send(answer.clone());
            }
        });
        let state = DaemonState::new(
            Arc::new(config),
            store.clone(),
            health,
            crate::metrics::install(),
            run_commands,
            admin_token.map(str::to_string),
        );
        Self {
            state: Arc::new(state),
            store,
            run_requests,
            _directory: directory,
        }
    }

    async fn accepting() -> Self {
        Self::new(Some(ADMIN_TOKEN), Ok("heist_test_1".into())).await
    }

    fn router(&self) -> Router {
        router(self.state.clone())
    }

    async fn get(&self, uri: &str) -> Reply {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        send(self.router(), request).await
    }

    async fn post_run(&self, authorization: Option<&str>, body: &str) -> Reply {
        let mut request =
            Request::post("/api/v1/runs").header(header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request.body(Body::from(body.to_string())).expect("request");
        send(self.router(), request).await
    }

    async fn create_session(&self, schedule: Option<&str>, scheduled_time: Option<&str>) -> String {
        self.store
            .create_session(NewSession {
                scenario: "bank".into(),
                seed: 7,
                planned_turns: 3,
                schedule: schedule.map(str::to_string),
                scheduled_time: scheduled_time.map(str::to_string),
                trigger: None,
            })
            .await
            .expect("session created")
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts a JSON error reply and returns its message.
    fn error_message(&self, expected_status: StatusCode) -> String {
        assert_eq!(
            self.status,
            expected_status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type(), "application/json");
        let body = self.json();
        let message = body["error"]
            .as_str()
            .expect("an `error` string")
            .to_string();
        assert!(!message.is_empty());
        message
    }
}

async fn send(router: Router, request: Request<Body>) -> Reply {
    let response = router.oneshot(request).await.expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body reads")
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn service_health(service: &str, state: HealthState, required: bool) -> ServiceHealth {
    ServiceHealth {
        service: service.into(),
        state,
        since: None,
        last_error: None,
        last_latency_ms: Some(1.5),
        consecutive_failures: 0,
        consecutive_successes: 3,
        required,
        breaker: "closed".into(),
        endpoints: Vec::new(),
    }
}

#[tokio::test]
async fn healthz_says_alive() {
    let daemon = TestDaemon::accepting().await;
    let reply = daemon.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({ "status": "alive" }));
}

#[tokio::test]
async fn readyz_is_503_until_every_required_service_is_up() {
    // (llm's state, required?, ready?)
    let cases = [
        (HealthState::Down, true, false),
        (HealthState::Unknown, true, false),
        (HealthState::Up, true, true),
        // A service that is not required does not hold readiness back.
        (HealthState::Down, false, true),
    ];
    for (llm_state, required, expect_ready) in cases {
        let daemon = TestDaemon::accepting().await;
        daemon
            .state
            .health
            .publish(service_health("llm", llm_state, required));
        let reply = daemon.get("/readyz").await;
        let body = reply.json();
        let case = format!("{llm_state:?} required={required}: {body}");
        assert_eq!(body["ready"], expect_ready, "{case}");
        if expect_ready {
            assert_eq!(reply.status, StatusCode::OK, "{case}");
            assert_eq!(body["services_not_up"], serde_json::json!([]), "{case}");
        } else {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{case}");
            assert_eq!(
                body["services_not_up"],
                serde_json::json!(["llm"]),
                "{case}"
            );
        }
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let daemon = TestDaemon::accepting().await;
    metrics::counter!(crate::metrics::SESSIONS_TOTAL, "status" => "api_test").increment(1);
    let reply = daemon.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply
        .content_type()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(reply.body).expect("UTF-8");
    assert!(
        text.contains("# TYPE heistd_sessions_total counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"heistd_sessions_total{status="api_test"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn status_shows_what_the_model_client_learned_under_the_llm_service() {
    let daemon = TestDaemon::accepting().await;
    let mut config = crate::config::load(None, Vec::new()).expect("default config loads");
    config.llm.context_tokens = 4096;
    let clients = crate::clients::Clients::from_config(&config).expect("clients");
    daemon.state.set_llm(clients.llm);
    let body = daemon.get("/api/v1/status").await.json();
    let services = body["services"].as_array().expect("services");
    let llm = services
        .iter()
        .find(|service| service["service"] == "llm")
        .expect("the llm service");
    assert_eq!(llm["state"], "up", "{llm}");
    let endpoint = &llm["endpoints"][0];
    assert_eq!(endpoint["endpoint"], "127.0.0.1:8006", "{endpoint}");
    assert_eq!(endpoint["model"], config.llm.model, "{endpoint}");
    assert_eq!(endpoint["context_tokens"], 4096, "{endpoint}");
    assert_eq!(endpoint["context_source"], "configured", "{endpoint}");
    assert_eq!(endpoint["chars_per_token"], 3.5, "{endpoint}");
    assert_eq!(endpoint["ratio_source"], "initial", "{endpoint}");
    assert_eq!(endpoint["token_counting"], "auto", "{endpoint}");
    let calculator = services
        .iter()
        .find(|service| service["service"] == "calculator")
        .expect("the calculator");
    assert_eq!(
        calculator["endpoints"],
        serde_json::json!([]),
        "{calculator}"
    );
}

#[tokio::test]
async fn status_shows_version_services_schedules_running_sessions_and_capacity() {
    let daemon = TestDaemon::accepting().await;
    daemon.state.set_schedules(vec![ScheduleStatus {
        name: "nightly".into(),
        trigger: "every 30m".into(),
        enabled: true,
        next_run: Some(chrono::Utc::now()),
    }]);
    let running = RunningSession {
        session_id: "heist_20250101_000000_0000abcd".into(),
        schedule: Some("nightly".into()),
        started_at: chrono::Utc::now(),
        planned_turns: 12,
    };
    let task =
        daemon
            .state
            .registry()
            .spawn(running, tokio::sync::watch::Sender::new(None), || {
                tokio::spawn(std::future::pending())
            });

    let reply = daemon.get("/api/v1/status").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["started_at"].is_string());
    assert!(body["uptime_seconds"].is_u64());
    // Started without a config file: null, and the SQLite file it writes.
    assert!(body["config_path"].is_null(), "{body}");
    assert!(
        body["store"]
            .as_str()
            .is_some_and(|store| store.ends_with("audit.db")),
        "{body}"
    );
    assert_eq!(
        body["max_concurrent_sessions"],
        daemon.state.config().daemon.max_concurrent_sessions
    );
    let services = body["services"].as_array().expect("services");
    let names: Vec<&str> = services
        .iter()
        .filter_map(|service| service["service"].as_str())
        .collect();
    assert_eq!(names, ["calculator", "llm"]);
    assert_eq!(services[0]["state"], "up");
    assert_eq!(services[0]["breaker"], "closed");
    assert_eq!(body["schedules"][0]["name"], "nightly");
    assert!(body["schedules"][0]["next_run"].is_string());
    assert_eq!(
        body["running_sessions"][0]["session_id"],
        "heist_20250101_000000_0000abcd"
    );
    assert_eq!(body["running_sessions"][0]["planned_turns"], 12);
    task.abort();
}

#[tokio::test]
async fn sessions_list_filters_by_status_and_schedule() {
    let daemon = TestDaemon::accepting().await;
    let manual_active = daemon.create_session(None, None).await;
    let nightly_completed = daemon
        .create_session(Some("nightly"), Some("2025-01-01T02:00:00Z"))
        .await;
    let nightly_failed = daemon
        .create_session(Some("nightly"), Some("2025-01-02T02:00:00Z"))
        .await;
    let hourly_completed = daemon
        .create_session(Some("hourly"), Some("2025-01-01T03:00:00Z"))
        .await;
    let store = &daemon.store;
    store
        .finish_session(&nightly_completed, SessionStatus::Completed, None)
        .await
        .expect("finish");
    store
        .finish_session(&nightly_failed, SessionStatus::Failed, Some("LLM down"))
        .await
        .expect("finish");
    store
        .finish_session(&hourly_completed, SessionStatus::Completed, None)
        .await
        .expect("finish");

    let cases: [(&str, Vec<&String>); 6] = [
        (
            "",
            vec![
                &manual_active,
                &nightly_completed,
                &nightly_failed,
                &hourly_completed,
            ],
        ),
        (
            "?status=completed",
            vec![&nightly_completed, &hourly_completed],
        ),
        (
            "?schedule=nightly",
            vec![&nightly_completed, &nightly_failed],
        ),
        (
            "?status=completed&schedule=nightly",
            vec![&nightly_completed],
        ),
        ("?status=active&schedule=", vec![&manual_active]),
        ("?status=interrupted", vec![]),
    ];
    for (query, expected) in cases {
        let reply = daemon.get(&format!("/api/v1/sessions{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}");
        let body = reply.json();
        let mut found: Vec<&str> = body["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter_map(|session| session["session_id"].as_str())
            .collect();
        found.sort_unstable();
        let mut expected: Vec<&str> = expected.into_iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(found, expected, "{query}");
    }

    let reply = daemon.get("/api/v1/sessions?limit=2").await;
    assert_eq!(
        reply.json()["sessions"].as_array().expect("sessions").len(),
        2
    );
    let reply = daemon.get("/api/v1/sessions?status=failed").await;
    let failed = &reply.json()["sessions"][0];
    assert_eq!(failed["failure_reason"], "LLM down");
    assert_eq!(failed["schedule"], "nightly");
}

#[tokio::test]
async fn sessions_list_refuses_bad_query_strings_with_json_400() {
    let daemon = TestDaemon::accepting().await;
    let cases = [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=1001", "limit"),
        ("status=running", "status"),
        ("status=COMPLETED", "status"),
        ("statu=failed", "statu"),
    ];
    for (query, mentioned) in cases {
        let reply = daemon.get(&format!("/api/v1/sessions?{query}")).await;
        let message = reply.error_message(StatusCode::BAD_REQUEST);
        assert!(message.contains(mentioned), "{query}: {message}");
    }
    let reply = daemon.get("/api/v1/sessions?limit=1000").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn session_detail_returns_the_session_and_404s_an_unknown_id() {
    let daemon = TestDaemon::accepting().await;
    let session_id = daemon.create_session(None, None).await;
    let reply = daemon.get(&format!("/api/v1/sessions/{session_id}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["session"]["session_id"], session_id.as_str());
    assert_eq!(body["session"]["status"], "active");
    for list in ["messages", "tool_usage", "service_calls"] {
        assert!(body[list].is_array(), "{list} in {body}");
    }

    let reply = daemon
        .get("/api/v1/sessions/heist_19700101_000000_deadbeef")
        .await;
    let message = reply.error_message(StatusCode::NOT_FOUND);
    assert!(
        message.contains("heist_19700101_000000_deadbeef"),
        "{message}"
    );
}

#[tokio::test]
async fn runs_demand_the_admin_bearer_token() {
    let daemon = TestDaemon::accepting().await;
    let right = format!("Bearer {ADMIN_TOKEN}");
    let lowercase_scheme = format!("bearer {ADMIN_TOKEN}");
    let basic = format!("Basic {ADMIN_TOKEN}");
    let cases: [(Option<&str>, StatusCode); 8] = [
        (None, StatusCode::UNAUTHORIZED),
        (Some(&basic), StatusCode::UNAUTHORIZED),
        (Some("Bearer"), StatusCode::UNAUTHORIZED),
        (Some("Bearer   "), StatusCode::UNAUTHORIZED),
        (Some("Bearer wrong-token"), StatusCode::FORBIDDEN),
        (
            Some("Bearer correct-horse-battery-stapl"),
            StatusCode::FORBIDDEN,
        ),
        (Some(&right), StatusCode::ACCEPTED),
        (Some(&lowercase_scheme), StatusCode::ACCEPTED),
    ];
    for (authorization, expected_status) in cases {
        let reply = daemon.post_run(authorization, "").await;
        assert_eq!(reply.status, expected_status, "{authorization:?}");
        if expected_status == StatusCode::ACCEPTED {
            assert_eq!(
                reply.json(),
                serde_json::json!({ "session_id": "heist_test_1" })
            );
            continue;
        }
        reply.error_message(expected_status);
        let challenge = reply.headers.get(header::WWW_AUTHENTICATE);
        if expected_status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                challenge.expect("WWW-Authenticate"),
                "Bearer",
                "{authorization:?}"
            );
        } else {
            assert!(challenge.is_none(), "{authorization:?}");
        }
    }
    // Only the two accepted requests reached the dispatcher.
    assert_eq!(daemon.run_requests.lock().len(), 2);
}

#[tokio::test]
async fn runs_are_refused_when_no_admin_token_is_configured() {
    let daemon = TestDaemon::new(None, Ok("heist_test_1".into())).await;
    for authorization in [None, Some("Bearer anything")] {
        let reply = daemon.post_run(authorization, "").await;
        let message = reply.error_message(StatusCode::FORBIDDEN);
        assert!(message.contains("disabled"), "{message}");
        assert!(
            message.contains(&daemon.state.config().daemon.admin_token_env),
            "{message}"
        );
    }
    assert!(daemon.run_requests.lock().is_empty());
}

#[tokio::test]
async fn runs_pass_turns_and_seed_to_the_daemon() {
    let daemon = TestDaemon::accepting().await;
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    for body in [
        "",
        "  \n",
        "{}",
        r#"{"turns": 5, "seed": 42}"#,
        r#"{"turns": 1000}"#,
    ] {
        let reply = daemon.post_run(Some(&authorization), body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{body:?}");
        assert_eq!(reply.json()["session_id"], "heist_test_1");
    }
    let received = daemon.run_requests.lock().clone();
    assert_eq!(
        received,
        [
            RunRequest::default(),
            RunRequest::default(),
            RunRequest::default(),
            RunRequest {
                turns: Some(5),
                seed: Some(42)
            },
            RunRequest {
                turns: Some(1000),
                seed: None
            },
        ]
    );
}

#[tokio::test]
async fn runs_refuse_bad_bodies_with_json_400() {
    let daemon = TestDaemon::accepting().await;
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    let cases = [
        ("{not json", "invalid JSON"),
        (r#"{"turns": 0}"#, "turns"),
        (r#"{"turns": 1001}"#, "turns"),
        (r#"{"turns": -3}"#, "invalid JSON"),
        (r#"{"turns": "five"}"#, "invalid JSON"),
        (r#"{"turn": 5}"#, "turn"),
        ("[]", "JSON object"),
        ("[1, 2]", "JSON object"),
        ("7", "JSON object"),
    ];
    for (body, mentioned) in cases {
        let reply = daemon.post_run(Some(&authorization), body).await;
        let message = reply.error_message(StatusCode::BAD_REQUEST);
        assert!(message.contains(mentioned), "{body}: {message}");
    }
    assert!(daemon.run_requests.lock().is_empty());
}

#[tokio::test]
async fn runs_check_the_token_before_the_body() {
    let daemon = TestDaemon::accepting().await;
    let reply = daemon.post_run(None, "{not json").await;
    reply.error_message(StatusCode::UNAUTHORIZED);
    let reply = daemon
        .post_run(Some("Bearer wrong"), r#"{"turns": 0}"#)
        .await;
    reply.error_message(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn runs_refuse_oversized_bodies() {
    let daemon = TestDaemon::accepting().await;
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    let body = format!(
        r#"{{"turns": 5, "padding": "{}"}}"#,
        "x".repeat(super::MAX_RUN_BODY_BYTES)
    );
    let reply = daemon.post_run(Some(&authorization), &body).await;
    reply.error_message(StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn runs_map_the_daemons_refusals_to_statuses() {
    let cases = [
        (
            StartRunError::AtCapacity { running: 2 },
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            StartRunError::QueueFull {
                queued: 100,
                max_queued: 100,
            },
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (StartRunError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
        (
            StartRunError::Failed("disk I/O error at /var/lib/heistd/audit.db".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    for (refusal, expected_status) in cases {
        let daemon = TestDaemon::new(Some(ADMIN_TOKEN), Err(refusal.clone())).await;
        let reply = daemon
            .post_run(Some(&authorization), r#"{"turns": 3}"#)
            .await;
        let message = reply.error_message(expected_status);
        // Internals (paths, SQLite errors) stay in the log.
        assert!(!message.contains("/var/lib"), "{refusal:?}: {message}");
    }
}

#[tokio::test]
async fn a_spent_daily_budget_is_a_429_naming_the_key_with_retry_after() {
    let reason = "daemon.max_tokens_per_day (1000) reached: 1000 tokens used by the runs started on 2026-12-07 (UTC); more runs start the next UTC day";
    let refusal = StartRunError::BudgetSpent {
        reason: reason.into(),
        retry_after_seconds: 3600,
    };
    let daemon = TestDaemon::new(Some(ADMIN_TOKEN), Err(refusal)).await;
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    let reply = daemon.post_run(Some(&authorization), "").await;
    assert_eq!(reply.error_message(StatusCode::TOO_MANY_REQUESTS), reason);
    assert_eq!(
        reply
            .headers
            .get(header::RETRY_AFTER)
            .map(|value| value.as_bytes()),
        Some(&b"3600"[..])
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let daemon = TestDaemon::accepting().await;
    let reply = daemon.get("/api/v1/nothing-here").await;
    let message = reply.error_message(StatusCode::NOT_FOUND);
    assert!(message.contains("/api/v1/nothing-here"), "{message}");

    let request = Request::delete("/healthz")
        .body(Body::empty())
        .expect("request");
    let reply = send(daemon.router(), request).await;
    reply.error_message(StatusCode::METHOD_NOT_ALLOWED);
    let allowed = reply.headers.get(header::ALLOW).expect("an Allow header");
    assert!(
        allowed.to_str().expect("ASCII").contains("GET"),
        "{allowed:?}"
    );
    let reply = daemon.get("/api/v1/runs").await;
    reply.error_message(StatusCode::METHOD_NOT_ALLOWED);
}

/// The daemon's state with its config changed by `change` (as a reload
/// would apply it), keeping the admin token.
fn reconfigured(daemon: &TestDaemon, change: impl FnOnce(&mut crate::config::Config)) {
    let mut config = (*daemon.state.config()).clone();
    change(&mut config);
    daemon
        .state
        .set_config(Arc::new(config), Some(ADMIN_TOKEN.to_string()));
}

/// GET `uri` with `authorization` as the `Authorization` header, if any.
async fn get_with(daemon: &TestDaemon, uri: &str, authorization: Option<&str>) -> Reply {
    let mut request = Request::get(uri);
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    send(
        daemon.router(),
        request.body(Body::empty()).expect("request"),
    )
    .await
}

#[tokio::test]
async fn reads_need_the_admin_token_when_read_requires_token_is_on() {
    let daemon = TestDaemon::accepting().await;
    reconfigured(&daemon, |config| {
        config.daemon.read_requires_token = Some(true)
    });
    let session_id = daemon.create_session(None, None).await;
    let reads = [
        "/api/v1/status".to_string(),
        "/api/v1/sessions".to_string(),
        format!("/api/v1/sessions/{session_id}"),
    ];
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    for uri in &reads {
        let reply = get_with(&daemon, uri, None).await;
        let message = reply.error_message(StatusCode::UNAUTHORIZED);
        assert!(message.contains("Authorization"), "{uri}: {message}");
        assert_eq!(
            reply
                .headers
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{uri}"
        );
        let reply = get_with(&daemon, uri, Some("Bearer not-the-token")).await;
        reply.error_message(StatusCode::FORBIDDEN);
        let reply = get_with(&daemon, uri, Some(&authorization)).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {:?}", reply.json());
    }
    // The event streams are reads too (their answers never end here: a
    // refusal is all this reads).
    for uri in [
        "/api/v1/events".to_string(),
        format!("/api/v1/sessions/{session_id}/events"),
    ] {
        let reply = get_with(&daemon, &uri, None).await;
        reply.error_message(StatusCode::UNAUTHORIZED);
        let reply = get_with(&daemon, &uri, Some("Bearer not-the-token")).await;
        reply.error_message(StatusCode::FORBIDDEN);
    }
    // The probes and the metrics stay open for load balancers and Prometheus.
    for uri in ["/healthz", "/readyz", "/metrics"] {
        let reply = get_with(&daemon, uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri} without a token");
    }
}

#[tokio::test]
async fn reads_are_open_when_read_requires_token_is_off() {
    let daemon = TestDaemon::accepting().await;
    reconfigured(&daemon, |config| {
        // Even beyond loopback, an explicit `false` wins.
        config.daemon.admin_address = "0.0.0.0:9750".into();
        config.daemon.read_requires_token = Some(false);
    });
    let session_id = daemon.create_session(None, None).await;
    for uri in [
        "/api/v1/status".to_string(),
        "/api/v1/sessions".to_string(),
        format!("/api/v1/sessions/{session_id}"),
    ] {
        let reply = get_with(&daemon, &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {:?}", reply.json());
    }
}

#[tokio::test]
async fn read_requires_token_defaults_to_whether_the_admin_address_is_loopback() {
    // (admin_address, reads need the token?)
    let cases = [
        ("127.0.0.1:9750", false),
        ("[::1]:9750", false),
        ("localhost:9750", false),
        ("0.0.0.0:9750", true),
        ("192.0.2.10:9750", true),
    ];
    for (address, expected) in cases {
        let daemon = TestDaemon::accepting().await;
        reconfigured(&daemon, |config| {
            config.daemon.admin_address = address.into();
            config.daemon.read_requires_token = None;
        });
        assert_eq!(
            daemon.state.config().daemon.reads_need_token(),
            expected,
            "{address}"
        );
        let reply = get_with(&daemon, "/api/v1/sessions", None).await;
        let expected_status = if expected {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        assert_eq!(reply.status, expected_status, "{address}");
    }
    // And the default config (loopback) keeps reads open.
    let config = crate::config::load(None, Vec::new()).expect("default config loads");
    assert!(!config.daemon.reads_need_token());
}

#[tokio::test]
async fn status_shows_each_schedules_last_and_next_slot_from_the_store() {
    let daemon = TestDaemon::accepting().await;
    let schedule = |text: &str| {
        let fields: crate::config::ScheduleFields = toml::from_str(text).expect("fields");
        crate::config::ScheduleConfig::try_from(fields).expect("a valid trigger")
    };
    reconfigured(&daemon, |config| {
        config.schedule = vec![
            schedule("name = \"hourly\"\nevery = \"1h\"\n"),
            schedule("name = \"off\"\nevery = \"1h\"\nenabled = false\n"),
        ]
    });
    daemon
        .create_session(Some("hourly"), Some("2026-01-01T05:00:00+00:00"))
        .await;
    let body = daemon.get("/api/v1/status").await.json();
    let schedules = body["cluster"]["schedules"].as_array().expect("schedules");
    assert_eq!(schedules.len(), 2, "{body}");
    assert_eq!(schedules[0]["name"], "hourly");
    assert_eq!(schedules[0]["last_slot"], "2026-01-01T05:00:00Z");
    let next: chrono::DateTime<chrono::Utc> = schedules[0]["next_slot"]
        .as_str()
        .expect("a next slot")
        .parse()
        .expect("RFC 3339");
    let now = chrono::Utc::now();
    assert!(
        next > now && next - now <= chrono::Duration::hours(1),
        "{next}"
    );
    assert_eq!(next.timestamp() % 3600, 0, "slots fall on the hour");
    assert_eq!(schedules[1]["enabled"], false);
    assert!(schedules[1]["last_slot"].is_null());
    assert!(schedules[1]["next_slot"].is_null());
    assert_eq!(body["cluster"]["queued_runs"], 0);
}

#[tokio::test]
async fn steering_routes_check_the_token_before_the_body() {
    let daemon = TestDaemon::accepting().await;
    for path in [
        "/api/v1/sessions/heist_x/cancel",
        "/api/v1/schedules/nightly/pause",
        "/api/v1/schedules/nightly/resume",
        "/api/v1/schedules/nightly/trigger",
        "/api/v1/schedules/nightly/backfill",
    ] {
        let request = Request::post(path)
            .body(Body::from("{not json"))
            .expect("request");
        send(daemon.router(), request)
            .await
            .error_message(StatusCode::UNAUTHORIZED);
        let request = Request::get(path).body(Body::empty()).expect("request");
        send(daemon.router(), request)
            .await
            .error_message(StatusCode::METHOD_NOT_ALLOWED);
    }
}
