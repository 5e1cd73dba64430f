//! How the listeners that check a secret (the OAuth companion's client
//! secrets, the admin API's token) answer and log failures. The rule that
//! shapes it (issue 20): a correct secret is never refused because of
//! anyone's failures, so the caller checks the secret first, and these
//! tables only decide how a *failure* is answered (401/403 at first, 429
//! with `Retry-After` once its key is over the limit, as nginx's
//! `limit_req` answers) and how it is logged. Failures slow the guesser,
//! never the client that knows its secret.
//!
//! - [`FailureWindows`]: failures per key in a fixed window, in a table of
//!   fixed capacity. When it is full, expired windows go first, then the
//!   ones with the fewest failures, oldest first: a flood of one-off junk
//!   keys evicts junk, not the keys over their limit (the table this
//!   replaces was cleared when full, so junk reset every count). A table
//!   made by [`FailureWindows::for_keys`] holds only the keys it was given
//!   (the configured client ids) and cannot be flushed at all.
//! - [`RefusalLog`]: the first refusal from a source in an interval is
//!   logged in full by the caller; the others are counted and summarised in
//!   one WARN line per source per interval, so 20,000 refused requests make
//!   a few lines, not 20,000.
//!
//! It uses tokio's clock (paused time in tests) and `tracing`, nothing of
//! heistd's.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How often the refusals from one source are summarised.
pub const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Sources summarised one by one at most; refusals from any other source
/// are summed into one line, so a flood from many addresses stays bounded.
const MAX_SUMMARISED_SOURCES: usize = 1024;

/// The source a failure counts against: an IPv4 address (an IPv4-mapped
/// IPv6 one included), or an IPv6 /64, which one host usually holds whole.
pub fn source_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// Failures per key, each key in its own fixed window (from its first
/// failure), in a table that never holds more than its capacity.
pub struct FailureWindows<K> {
    /// Failures allowed per window; the next one is over the limit.
    limit: u32,
    window: Duration,
    capacity: usize,
    /// False for a table of fixed keys ([`Self::for_keys`]): failures of
    /// any other key are not counted here (they count against their source).
    admits_new_keys: bool,
    windows: HashMap<K, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl<K: Hash + Eq + Clone> FailureWindows<K> {
    /// A table of at most `capacity` keys, `limit` failures per `window`.
    pub fn new(limit: u32, window: Duration, capacity: usize) -> Self {
        Self {
            limit,
            window,
            capacity: capacity.max(1),
            admits_new_keys: true,
            windows: HashMap::new(),
        }
    }

    /// A table of exactly `keys`: nothing else is ever counted in it, so
    /// no request can evict them.
    pub fn for_keys(keys: impl IntoIterator<Item = K>, limit: u32, window: Duration) -> Self {
        let now = Instant::now();
        let windows: HashMap<K, Window> = keys
            .into_iter()
            .map(|key| {
                (
                    key,
                    Window {
                        started: now,
                        failures: 0,
                    },
                )
            })
            .collect();
        Self {
            limit,
            window,
            capacity: windows.len().max(1),
            admits_new_keys: false,
            windows,
        }
    }

    /// Counts a failure of `key` at `now`. When the key is now over its
    /// limit: how long until its window ends (the `Retry-After`).
    pub fn record<Q>(&mut self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if !self.windows.contains_key(key) {
            if !self.admits_new_keys {
                return None;
            }
            if self.windows.len() >= self.capacity {
                self.make_room(now);
            }
            self.windows.insert(
                key.to_owned(),
                Window {
                    started: now,
                    failures: 0,
                },
            );
        }
        let window = self.windows.get_mut(key)?;
        if now.duration_since(window.started) >= self.window {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        (window.failures > self.limit).then(|| {
            self.window
                .saturating_sub(now.duration_since(window.started))
        })
    }

    /// Failures of `key` in its current window.
    pub fn failures<Q>(&self, key: &Q, now: Instant) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.windows
            .get(key)
            .filter(|window| now.duration_since(window.started) < self.window)
            .map_or(0, |window| window.failures)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Drops the expired windows; if that frees nothing, an eighth of the
    /// table, fewest failures first (then oldest), so the work is paid once
    /// per eighth of a flood and the keys over their limit stay.
    fn make_room(&mut self, now: Instant) {
        let window = self.window;
        self.windows
            .retain(|_, kept| now.duration_since(kept.started) < window);
        if self.windows.len() < self.capacity {
            return;
        }
        let mut ranked: Vec<(u32, Instant, K)> = self
            .windows
            .iter()
            .map(|(key, kept)| (kept.failures, kept.started, key.clone()))
            .collect();
        let evicted = (self.capacity / 8).clamp(1, ranked.len());
        ranked.select_nth_unstable_by_key(evicted - 1, |(failures, started, _)| {
            (*failures, *started)
        });
        for (_, _, key) in ranked.into_iter().take(evicted) {
            self.windows.remove(&key);
        }
    }
}

/// Refusals counted since the first one of an interval, which was logged.
struct SourceRefusals {
    since: Instant,
    unlogged: BTreeMap<&'static str, u64>,
}

impl SourceRefusals {
    fn starting(now: Instant) -> Self {
        Self {
            since: now,
            unlogged: BTreeMap::new(),
        }
    }

    fn count(&mut self, reason: &'static str) {
        *self.unlogged.entry(reason).or_insert(0) += 1;
    }
}

/// The refusals from one source (`None`: from sources beyond the ones
/// summarised one by one) not logged one by one in an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusalSummary {
    pub source: Option<IpAddr>,
    /// How many, by reason.
    pub reasons: BTreeMap<&'static str, u64>,
    pub over: Duration,
}

impl RefusalSummary {
    pub fn refused(&self) -> u64 {
        self.reasons.values().sum()
    }

    fn log(&self, what: &str) {
        let source = self.source.map_or_else(
            || "other or unknown addresses".to_string(),
            |source| source.to_string(),
        );
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, count)| format!("{reason} x{count}"))
            .collect();
        let reasons = reasons.join(", ");
        let refused = self.refused();
        let seconds = self.over.as_secs().max(1);
        tracing::warn!(
            %source,
            refused,
            seconds,
            "{what}: {refused} more requests from {source} in the last {seconds} s ({reasons})"
        );
    }
}

/// Refusals per source per interval: the first one logged by the caller,
/// the rest summed into a line per source and interval.
pub struct RefusalLog {
    /// What is refused: the start of each summary line (`token refused`).
    what: &'static str,
    interval: Duration,
    state: Mutex<RefusalState>,
}

#[derive(Default)]
struct RefusalState {
    /// `None`: requests with no known peer (a router called without a socket).
    sources: HashMap<Option<IpAddr>, SourceRefusals>,
    /// Refusals from sources past [`MAX_SUMMARISED_SOURCES`].
    others: Option<SourceRefusals>,
}

impl RefusalLog {
    pub fn new(what: &'static str, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            what,
            interval,
            state: Mutex::new(RefusalState::default()),
        })
    }

    /// Notes a refusal from `source` for `reason`. True when the caller
    /// should log it in full now: the first from its source in an interval.
    pub fn refused(&self, source: Option<IpAddr>, reason: &'static str, now: Instant) -> bool {
        let source = source.map(source_of);
        let mut state = self.state.lock();
        let tracked = state.sources.len();
        let finished = match state.sources.get_mut(&source) {
            Some(refusals) if now.duration_since(refusals.since) < self.interval => {
                refusals.count(reason);
                return false;
            }
            Some(refusals) => std::mem::replace(refusals, SourceRefusals::starting(now)),
            None if tracked < MAX_SUMMARISED_SOURCES => {
                state.sources.insert(source, SourceRefusals::starting(now));
                return true;
            }
            None => {
                state
                    .others
                    .get_or_insert_with(|| SourceRefusals::starting(now))
                    .count(reason);
                return false;
            }
        };
        drop(state);
        if !finished.unlogged.is_empty() {
            RefusalSummary {
                source,
                reasons: finished.unlogged,
                over: now.duration_since(finished.since),
            }
            .log(self.what);
        }
        true
    }

    /// Takes the summaries of the intervals that have ended by `now`; their
    /// sources' next refusals are logged in full again.
    pub fn take_due(&self, now: Instant) -> Vec<RefusalSummary> {
        let interval = self.interval;
        let due = |refusals: &SourceRefusals| now.duration_since(refusals.since) >= interval;
        let mut state = self.state.lock();
        let mut summaries = Vec::new();
        state.sources.retain(|source, refusals| {
            if !due(refusals) {
                return true;
            }
            if !refusals.unlogged.is_empty() {
                summaries.push(RefusalSummary {
                    source: *source,
                    reasons: std::mem::take(&mut refusals.unlogged),
                    over: now.duration_since(refusals.since),
                });
            }
            false
        });
        if state.others.as_ref().is_some_and(due) {
            if let Some(others) = state.others.take() {
                summaries.push(RefusalSummary {
                    source: None,
                    reasons: others.unlogged,
                    over: now.duration_since(others.since),
                });
            }
        }
        summaries
    }

    /// Logs the summaries of the intervals that have ended by `now`.
    pub fn flush(&self, now: Instant) {
        for summary in self.take_due(now) {
            summary.log(self.what);
        }
    }

    /// Flushes once per interval in a task that ends when the log is
    /// dropped, so a burst's summary is written even if no refusal follows
    /// it. Without a runtime (a router built in a plain test) it does
    /// nothing: the summaries are then written by the next refusals.
    pub fn spawn_flusher(log: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(log);
        let interval = log.interval;
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(log) = weak.upgrade() else {
                    return;
                };
                log.flush(Instant::now());
            }
        });
    }
}

/// What was counted is not lost at shutdown: the summaries still open
/// are written when the log goes with its listener.
impl Drop for RefusalLog {
    fn drop(&mut self) {
        let now = Instant::now();
        let state = std::mem::take(self.state.get_mut());
        let open = state
            .sources
            .into_iter()
            .chain(state.others.map(|others| (None, others)));
        for (source, refusals) in open {
            if !refusals.unlogged.is_empty() {
                RefusalSummary {
                    source,
                    reasons: refusals.unlogged,
                    over: now.duration_since(refusals.since),
                }
                .log(self.what);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_answers_how_long_until_the_window_ends() {
        let mut table = FailureWindows::<IpAddr>::new(3, WINDOW, 100);
        let source: IpAddr = "127.0.0.1".parse().expect("ip");
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(table.record(&source, start), None);
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            table.record(&source, Instant::now()),
            Some(Duration::from_secs(40))
        );
        tokio::time::advance(Duration::from_secs(40)).await;
        // A new window: counted afresh.
        assert_eq!(table.record(&source, Instant::now()), None);
        assert_eq!(table.failures(&source, Instant::now()), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_junk_keys_evicts_junk_not_the_keys_over_their_limit() {
        let mut table = FailureWindows::<String>::new(10, WINDOW, 1_000);
        let now = Instant::now();
        for _ in 0..12 {
            table.record("guesser", now);
        }
        for junk in 0..50_000 {
            table.record(format!("junk-{junk}").as_str(), now);
            assert!(table.len() <= 1_000);
        }
        assert_eq!(table.failures("guesser", now), 12);
        assert!(table.record("guesser", now).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_of_fixed_keys_counts_only_them() {
        let mut table = FailureWindows::for_keys(["planner".to_string()], 2, WINDOW);
        let now = Instant::now();
        for junk in 0..1_000 {
            assert_eq!(table.record(format!("junk-{junk}").as_str(), now), None);
        }
        assert_eq!(table.len(), 1);
        assert_eq!(table.record("planner", now), None);
        assert_eq!(table.record("planner", now), None);
        assert_eq!(table.record("planner", now), Some(WINDOW));
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64_and_a_mapped_ipv4_its_address() {
        let parse = |text: &str| text.parse::<IpAddr>().expect("ip");
        assert_eq!(
            source_of(parse("2001:db8:1:2:aaaa::1")),
            parse("2001:db8:1:2::")
        );
        assert_eq!(source_of(parse("::ffff:10.0.0.7")), parse("10.0.0.7"));
        assert_eq!(source_of(parse("127.3.4.5")), parse("127.3.4.5"));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_logged_first_then_summed_per_source_per_interval() {
        let log = RefusalLog::new("token refused", REFUSAL_SUMMARY_INTERVAL);
        let one: IpAddr = "127.0.0.1".parse().expect("ip");
        let two: IpAddr = "127.0.0.2".parse().expect("ip");
        let now = Instant::now();
        assert!(log.refused(Some(one), "wrong secret", now));
        assert!(log.refused(Some(two), "wrong secret", now));
        for _ in 0..1_999 {
            assert!(!log.refused(Some(one), "wrong secret", now));
        }
        assert!(!log.refused(Some(one), "too many failed attempts", now));
        assert!(log.take_due(now).is_empty(), "the interval has not ended");
        tokio::time::advance(REFUSAL_SUMMARY_INTERVAL).await;
        let summaries = log.take_due(Instant::now());
        // One line for the 2,000 from one; nothing unlogged from two.
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0].source, Some(one));
        assert_eq!(summaries[0].refused(), 2_000);
        assert_eq!(summaries[0].reasons["too many failed attempts"], 1);
        assert_eq!(summaries[0].over, REFUSAL_SUMMARY_INTERVAL);
        // A new interval: its first refusal is logged in full again.
        assert!(log.refused(Some(one), "wrong secret", Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_from_more_sources_than_it_tracks_are_summed_together() {
        let log = RefusalLog::new("token refused", REFUSAL_SUMMARY_INTERVAL);
        let now = Instant::now();
        let mut logged = 0;
        for index in 0..(MAX_SUMMARISED_SOURCES as u32 + 500) {
            let source = IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + index));
            logged += usize::from(log.refused(Some(source), "wrong secret", now));
        }
        assert_eq!(logged, MAX_SUMMARISED_SOURCES);
        tokio::time::advance(REFUSAL_SUMMARY_INTERVAL).await;
        let summaries = log.take_due(Instant::now());
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].source, None);
        assert_eq!(summaries[0].refused(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_writes_a_bursts_summary_and_ends_with_its_log() {
        let log = RefusalLog::new("token refused", REFUSAL_SUMMARY_INTERVAL);
        RefusalLog::spawn_flusher(&log);
        let source: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(log.refused(Some(source), "wrong secret", Instant::now()));
        assert!(!log.refused(Some(source), "wrong secret", Instant::now()));
        tokio::time::sleep(REFUSAL_SUMMARY_INTERVAL * 2).await;
        // Flushed by the task: nothing is left to take.
        assert!(log.take_due(Instant::now()).is_empty());
        assert!(log.refused(Some(source), "wrong secret", Instant::now()));
        assert_eq!(
            Arc::strong_count(&log),
            1,
            "the task holds no strong reference"
        );
    }
}
