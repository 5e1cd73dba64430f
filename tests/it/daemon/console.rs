//! The web console in headless Chromium (Debian's `chromium`), driven over
//! the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ended by NUL on the browser's fds 3 and 4, so no WebSocket
//! client is needed): the page loads under its Content-Security-Policy
//! with no violation and no script error, lists the sessions, shows a
//! running session's turns growing, starts a heist with the admin token
//! given once in the page, pauses a schedule where the daemon can, and a
//! screenshot of it is not blank.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use heistd::config::Fault;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use super::{eventually, Daemon, ADMIN_TOKEN};
use crate::support::{self, TestStack};

/// A headless Chromium with one page, spoken to over its DevTools pipe.
struct Browser {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next_id: u64,
    /// The page's session (`Target.attachToTarget`, flattened).
    session: String,
    /// Events that arrived while waiting for answers (console entries,
    /// exceptions), for the checks at the end.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        // The shell hands our stdin and stdout to Chromium as fds 3 and 4,
        // the pipe `--remote-debugging-pipe` speaks on.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec chromium "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg("sh")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1280,900",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sh starts chromium");
        let mut child = child;
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        let mut browser = Self {
            child,
            input,
            output,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            _profile: profile,
        };
        let target = browser
            .call_browser("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call_browser(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
    }

    /// A command to the page; its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(&session)).await
    }

    async fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.input.write_all(&bytes).await.expect("to chromium");
        self.input.flush().await.expect("to chromium");
        let limit = Instant::now() + Duration::from_secs(30);
        loop {
            let mut buffer = Vec::new();
            let read = tokio::time::timeout_at(limit, self.output.read_until(0, &mut buffer))
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method} within 30 s"))
                .expect("from chromium");
            assert!(read > 0, "chromium closed its pipe during {method}");
            buffer.pop();
            let answer: Value = serde_json::from_slice(&buffer).expect("DevTools JSON");
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
            self.events.push(answer);
        }
    }

    /// Opens `url` and waits until the page and its script have loaded.
    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for(
            Duration::from_secs(20),
            &format!(
                "location.href.startsWith({}) && document.readyState === 'complete'",
                json!(url)
            ),
        )
        .await;
    }

    /// Runs `expression` in the page; its value (promises awaited).
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy, for up to `within`.
    async fn wait_for(&mut self, within: Duration, expression: &str) -> Value {
        let limit = Instant::now() + within;
        loop {
            let value = self.eval(expression).await;
            if !(value.is_null() || value == false || value == 0 || value == "") {
                return value;
            }
            assert!(
                Instant::now() < limit,
                "not true within {within:?}: {expression}\npage: {}",
                self.eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Console messages and exceptions the page produced.
    fn problems(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|event| {
                event["method"] == "Runtime.exceptionThrown"
                    || (event["method"] == "Log.entryAdded"
                        && event["params"]["entry"]["level"] == "error"
                        // Answers such as the 401 before the token is
                        // given, or the 404 of an endpoint this daemon
                        // lacks, are the page working as meant.
                        && event["params"]["entry"]["source"] != "network")
            })
            .map(Value::to_string)
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The distinct colours of a PNG and the share of its commonest one.
fn colours(png_bytes: &[u8]) -> (usize, f64) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut pixels).expect("a frame");
    let channels = frame.color_type.samples();
    let mut counts = std::collections::HashMap::<&[u8], usize>::new();
    for pixel in pixels[..frame.buffer_size()].chunks(channels) {
        *counts.entry(pixel).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    let commonest = counts.values().copied().max().unwrap_or(0);
    (counts.len(), commonest as f64 / total.max(1) as f64)
}

#[tokio::test]
#[ignore = "needs chromium (Debian's package; .ci/run installs it)"]
async fn the_console_shows_live_sessions_starts_a_run_and_renders_in_chromium() {
    assert!(
        std::process::Command::new("chromium")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success()),
        "needs chromium on PATH: apt-get install chromium"
    );
    let stack = TestStack::start().await;
    // Slow model replies, so a session is still running while the page
    // follows it.
    stack.set_fault(
        "rehearsal",
        Fault {
            latency_ms: 200,
            ..Fault::default()
        },
    );
    let daemon = Daemon::start(
        &stack,
        "[[schedule]]\nname = \"patrol\"\nevery = \"1h\"\nturns = 2\n",
    )
    .await;
    let admin = daemon.admin_url().to_string();
    check_headers(&admin).await;
    let session_id = daemon.start_run(40).await;

    let mut browser = Browser::launch().await;
    browser.navigate(&format!("{admin}/")).await;
    // The sessions list, with the running session in it.
    browser
        .wait_for(
            Duration::from_secs(20),
            &format!("[...document.querySelectorAll('#sessions tbody tr')].some(row => row.textContent.includes('{session_id}') && row.textContent.includes('active'))"),
        )
        .await;
    // Its transcript, growing while the session runs.
    browser
        .eval(&format!("location.hash = '#/session/{session_id}'"))
        .await;
    let first = browser
        .wait_for(
            Duration::from_secs(20),
            "document.querySelectorAll('#transcript li.turn').length",
        )
        .await
        .as_u64()
        .expect("a count");
    browser
        .wait_for(
            Duration::from_secs(30),
            &format!("document.querySelectorAll('#transcript li.turn').length > {first}"),
        )
        .await;
    let live = browser
        .eval("document.getElementById('session-live').textContent")
        .await;
    assert!(live.as_str().is_some_and(|text| !text.is_empty()), "{live}");

    // An action: the page asks for the admin token once, then starts a run.
    browser.eval("location.hash = '#/'").await;
    browser
        .eval("document.getElementById('start-run').click()")
        .await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "!document.getElementById('token-form').hidden",
        )
        .await;
    browser
        .eval(&format!(
            "document.getElementById('token-input').value = '{ADMIN_TOKEN}'; \
             document.getElementById('token-form').requestSubmit()"
        ))
        .await;
    let started = browser
        .wait_for(
            Duration::from_secs(20),
            &format!("location.hash.startsWith('#/session/') && !location.hash.includes('{session_id}') && location.hash"),
        )
        .await;
    let started_id = started
        .as_str()
        .and_then(|hash| hash.strip_prefix("#/session/"))
        .expect("the new session's id")
        .to_string();
    let (status, _) = daemon.get(&format!("/api/v1/sessions/{started_id}")).await;
    assert_eq!(status, 200, "the console's run exists");
    let kept = browser
        .eval("sessionStorage.getItem('heistd.adminToken') === null ? 'none' : 'tab'")
        .await;
    assert_eq!(kept, "tab");
    assert_eq!(browser.eval("localStorage.length").await, 0);
    assert_eq!(browser.eval("document.cookie").await, "");

    // The other views.
    browser.eval("location.hash = '#/services'").await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "document.querySelectorAll('#services tbody tr').length >= 5",
        )
        .await;
    browser.eval("location.hash = '#/cluster'").await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "document.getElementById('cluster-summary').textContent.includes('SQLite')",
        )
        .await;
    pause_a_schedule(&daemon, &mut browser).await;

    // The sessions view, as a person sees it: not blank.
    browser.eval("location.hash = '#/'").await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "document.querySelectorAll('#sessions tbody tr').length >= 2",
        )
        .await;
    let shot = browser
        .call("Page.captureScreenshot", json!({ "format": "png" }))
        .await;
    let png_bytes = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64");
    let (distinct, commonest_share) = colours(&png_bytes);
    assert!(
        distinct >= 8 && commonest_share < 0.95,
        "a blank-looking screenshot: {distinct} colours, the commonest {commonest_share:.3} of it"
    );
    let problems = browser.problems();
    assert!(
        problems.is_empty(),
        "the page logged errors (a CSP violation would be one): {problems:?}"
    );
}

/// Pauses the schedule `patrol` from the schedules view, where the daemon
/// has schedule control (`GET /api/v1/schedules`).
async fn pause_a_schedule(daemon: &Daemon, browser: &mut Browser) {
    browser.eval("location.hash = '#/schedules'").await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "[...document.querySelectorAll('#schedules tbody tr')].find(row => row.textContent.includes('patrol'))?.querySelector('button')",
        )
        .await;
    browser
        .eval("[...[...document.querySelectorAll('#schedules tbody tr')].find(row => row.textContent.includes('patrol')).querySelectorAll('button')].find(button => button.textContent === 'Pause').click()")
        .await;
    eventually(Duration::from_secs(10), "patrol paused", async || {
        let (_, body) = daemon.get("/api/v1/schedules").await;
        body["schedules"]
            .as_array()?
            .iter()
            .any(|schedule| schedule["name"] == "patrol" && schedule["paused"] == true)
            .then_some(())
    })
    .await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "[...document.querySelectorAll('#schedules tbody tr')].some(row => row.textContent.includes('patrol') && row.textContent.includes('paused'))",
        )
        .await;
}

/// The page and its files carry the console's security headers.
async fn check_headers(admin: &str) {
    for (path, content_type) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let response = support::http()
            .get(format!("{admin}{path}"))
            .send()
            .await
            .expect("the console answers");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let policy = header("content-security-policy");
        assert!(
            policy.contains("script-src 'self'")
                && policy.contains("frame-ancestors 'none'")
                && !policy.contains("unsafe-inline")
                && !policy.contains("unsafe-eval"),
            "{policy}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("x-frame-options"), "DENY");
        assert!(header("set-cookie").is_empty());
    }
}

#[tokio::test]
#[ignore = "needs chromium (Debian's package; .ci/run installs it)"]
async fn the_console_asks_for_the_token_when_reads_need_it() {
    let stack = TestStack::start().await;
    let daemon = Daemon::start(&stack, "[daemon]\nread_requires_token = true\n").await;
    let session_id = daemon.start_run(2).await;
    let mut browser = Browser::launch().await;
    browser.navigate(&format!("{}/", daemon.admin_url())).await;
    // Nothing is shown before the token is given.
    browser
        .wait_for(
            Duration::from_secs(20),
            "!document.getElementById('token-form').hidden",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#sessions tbody tr').length")
            .await,
        0
    );
    browser
        .eval(&format!(
            "document.getElementById('token-input').value = '{ADMIN_TOKEN}'; \
             document.getElementById('token-form').requestSubmit()"
        ))
        .await;
    browser
        .wait_for(
            Duration::from_secs(20),
            &format!(
                "document.querySelector('#sessions tbody').textContent.includes('{session_id}')"
            ),
        )
        .await;
    // Once per tab: the form stays away through the next refresh (the
    // page reads every 2 s), which sends the kept token.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        browser
            .eval("document.getElementById('token-form').hidden")
            .await,
        true
    );
    let problems = browser.problems();
    assert!(problems.is_empty(), "{problems:?}");
}
