//! The database tool's time limit against one slow function call (issue
//! 20, defect 3), with real processes: `heistd services all` in its own
//! process, whose query workers are its children. SQLite's interrupt acts
//! only between steps, so `instr` over two long strings used to run for
//! seconds past the limit, and on after its reply; now its worker is killed
//! at the limit, and with its request when the client hangs up. Each test
//! measures the CPU time of the whole process tree (the services process,
//! its reaped children, its live ones) from /proc.

use std::time::Duration;

use serde_json::{json, Value};

use crate::services_process::ServicesProcess;

/// Small, so the tests run in seconds.
const TIME_LIMIT_MS: u64 = 1_000;

/// One call that takes seconds of CPU inside SQLite, between no two steps.
const INSTR: &str =
    "SELECT instr(printf('%.*c',1000000,'a'), printf('%.*c',500000,'a')||'b') AS slow";

/// The services with the database tool's limit at [`TIME_LIMIT_MS`], its
/// workers run from the test's `heistd`.
fn start_services() -> ServicesProcess {
    let program = env!("CARGO_BIN_EXE_heistd");
    ServicesProcess::start_with(
        &format!(
            "[companions.database_query]\n\
             time_limit_ms = {TIME_LIMIT_MS}\nworker_program = \"{program}\"\n"
        ),
        &[],
    )
}

fn query_url(services: &ServicesProcess) -> String {
    format!("{}/tools/query_db", services.url("database_query"))
}

/// CPU time (user + system) of the services process, of the children
/// it has reaped, and of every live process below it.
fn tree_cpu(services: &ServicesProcess) -> Duration {
    let ticks = tree_ticks(services.pid());
    // USER_HZ is 100 on every Linux the tests run on.
    Duration::from_millis(ticks * 10)
}

/// How long after now the tree's CPU time stopped growing: the first
/// moment from which it grew by at most two ticks over the next 500 ms,
/// looked for within `bound`.
async fn cpu_settles(services: &ServicesProcess, bound: Duration) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    let mut samples = std::collections::VecDeque::new();
    while started.elapsed() < bound {
        let (now, cpu) = (started.elapsed(), tree_cpu(services));
        while let Some(&(then, earlier)) = samples.front() {
            if now - then < Duration::from_millis(500) {
                break;
            }
            if cpu - earlier <= Duration::from_millis(20) {
                return Some(then);
            }
            samples.pop_front();
        }
        samples.push_back((now, cpu));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// utime + stime + cutime + cstime of `pid`, and the same of every child.
fn tree_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0; // exited between the listing and the read
    };
    // Fields after the command (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let own: u64 = fields
        .get(11..15)
        .unwrap_or_default()
        .iter()
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let children: u64 = tasks
        .flatten()
        .map(|task| task.path().join("children"))
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(tree_ticks)
        .sum();
    own + children
}

/// Status, error text and how long the answer took.
async fn query(url: &str, token: &str, sql: &str) -> (u16, String, Duration) {
    let started = tokio::time::Instant::now();
    let reply = crate::support::http()
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "query": sql }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("answered");
    let status = reply.status().as_u16();
    let body: Value = reply.json().await.expect("a JSON reply");
    let error = body["error"].as_str().unwrap_or_default().to_string();
    (status, error, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instr_query_is_stopped_at_its_time_limit_and_its_cpu_with_it() {
    let services = start_services();
    let token = services.token("hacker", "database_query:use").await;
    let limit = Duration::from_millis(TIME_LIMIT_MS);
    // Warm up: the first worker is started and the tree is quiet.
    let (status, _, _) = query(&query_url(&services), &token, "SELECT 1").await;
    assert_eq!(status, 200);
    cpu_settles(&services, Duration::from_secs(10))
        .await
        .expect("an idle services process is quiet");
    let before = tree_cpu(&services);

    let (status, error, took) = query(&query_url(&services), &token, INSTR).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error.contains("time limit of 1000 ms"),
        "a clear reason: {error}"
    );
    assert!(
        took < limit + Duration::from_secs(1),
        "answered after {took:?}"
    );
    let settled = cpu_settles(&services, Duration::from_secs(5))
        .await
        .expect("the tree's CPU time stops growing");
    assert!(
        settled < Duration::from_secs(1),
        "CPU time still grew {settled:?} after the answer"
    );
    // The query's CPU (and the replacement worker's start) within the limit.
    let used = tree_cpu(&services) - before;
    assert!(
        used < limit + Duration::from_millis(500),
        "the query used {used:?} of CPU"
    );
    // The tool still answers, on a fresh worker.
    let (status, error, _) = query(&query_url(&services), &token, "SELECT 1 AS one").await;
    assert_eq!(status, 200, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_at_once_are_stopped_and_leave_select_1_answering() {
    let services = start_services();
    let (hacker, planner) = (
        services.token("hacker", "database_query:use").await,
        services.token("planner", "database_query:use").await,
    );
    let limit = Duration::from_millis(TIME_LIMIT_MS);
    let url = query_url(&services);
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let (url, token) = (url.clone(), hacker.clone());
            tokio::spawn(async move { query(&url, &token, INSTR).await })
        })
        .collect();
    // Beside them, from another client: a worker is left for it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, error, took) = query(&url, &planner, "SELECT 1 AS one").await;
    assert_eq!(status, 200, "{error}");
    assert!(took < limit, "SELECT 1 took {took:?}");

    let mut refused = 0;
    for answer in slow {
        let (status, error, took) = answer.await.expect("joined");
        assert!(
            took < limit + Duration::from_secs(1),
            "answered after {took:?}"
        );
        match status {
            400 => assert!(error.contains("time limit"), "{error}"),
            // Past the hacker's share of the 16 workers (12): at once.
            429 => refused += 1,
            other => panic!("{other}: {error}"),
        }
    }
    assert!(
        refused <= 4,
        "{refused} refused: more than the share allows"
    );
    let settled = cpu_settles(&services, Duration::from_secs(5))
        .await
        .expect("the tree's CPU time stops growing");
    assert!(
        settled < Duration::from_secs(1),
        "CPU time still grew {settled:?} after the answers"
    );
    let (status, error, _) = query(&url, &hacker, "SELECT 1 AS one").await;
    assert_eq!(status, 200, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_takes_its_query_with_it() {
    let services = start_services();
    let token = services.token("hacker", "database_query:use").await;
    let (status, _, _) = query(&query_url(&services), &token, "SELECT 1").await;
    assert_eq!(status, 200);
    let gave_up = crate::support::http()
        .post(query_url(&services))
        .bearer_auth(&token)
        .json(&json!({ "query": INSTR }))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up first: {gave_up:?}");
    // Left to run, the worker would burn on to the 1,000 ms limit, 700 ms
    // after the hang-up; killed with its request, it stops at once.
    let settled = cpu_settles(&services, Duration::from_secs(5))
        .await
        .expect("the tree's CPU time stops growing");
    assert!(
        settled < Duration::from_millis(400),
        "CPU time still grew {settled:?} after the client hung up"
    );
}
