//! Which connections a listener keeps: at most `max_connections` in all and
//! `max_connections_per_ip` from one source address. When a new connection
//! would pass either cap, the oldest idle connection (no request in flight:
//! connected and silent, part-way through its headers, or kept alive
//! between requests) of the source that holds too many is closed to make
//! room, as nginx reuses its idle and keep-alive connections when it runs
//! out; failing that, the oldest whose request waits for its client to send
//! more of the body (a slow body holds a connection as surely as silence).
//! So a source that opens a thousand idle sockets only ever churns its
//! own, and a probe of `/health` from any address, that one included, is
//! let in. When the listener is full, only a source holding at least two
//! more than the newcomer's gives one up (equal sources do not evict each
//! other back and forth), so idle connections spread one or two per
//! source over hundreds of sources can leave a newcomer nothing to
//! replace: then, as when everything it could replace is being served,
//! the new one is refused. A source is what `limiter::source_of` says (an
//! IPv6 /64 is one).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The connections one listener holds, by source address.
#[derive(Clone)]
pub(super) struct Admission {
    table: Arc<Mutex<Table>>,
}

/// Why a new connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Its source holds `max_connections_per_ip`, every one of them busy.
    SourceFull,
    /// The listener holds `max_connections` and none it may replace is idle.
    ListenerFull,
}

/// A connection let in; dropping it gives its place back.
pub(super) struct Admitted {
    table: Arc<Mutex<Table>>,
    source: IpAddr,
    id: u64,
    state: Arc<ConnectionState>,
}

/// What the accept loop and a connection's task share about it.
#[derive(Default)]
pub(super) struct ConnectionState {
    /// A request is being handled: the connection is not replaced then.
    busy: AtomicBool,
    /// The request in flight waits for its client to send more body.
    waiting_for_client: AtomicBool,
    /// Signalled when the connection was chosen to make room.
    evicted: Notify,
}

struct Table {
    max_connections: usize,
    max_per_source: usize,
    next_id: u64,
    open: usize,
    /// Each source's connections, oldest (lowest id) first.
    sources: HashMap<IpAddr, BTreeMap<u64, Arc<ConnectionState>>>,
}

impl Admission {
    pub(super) fn new(max_connections: usize, max_per_source: usize) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table {
                max_connections: max_connections.max(1),
                max_per_source: max_per_source.max(1),
                next_id: 0,
                open: 0,
                sources: HashMap::new(),
            })),
        }
    }

    /// Lets a connection from `source` in, replacing an idle one when a cap
    /// is reached; the replaced connection's task is told through
    /// [`ConnectionState::evicted`]. `Ok` carries whether one was replaced.
    pub(super) fn admit(&self, source: IpAddr) -> Result<(Admitted, bool), Refused> {
        let mut table = self.table.lock();
        let held = table.sources.get(&source).map_or(0, BTreeMap::len);
        let mut replaced = false;
        if held >= table.max_per_source {
            if !table.evict_oldest_idle(source) {
                return Err(Refused::SourceFull);
            }
            replaced = true;
        } else if table.open >= table.max_connections {
            // Only from a source that would still hold more than the
            // newcomer's, so sharing out the listener evens it out.
            let victim = table
                .sources
                .iter()
                .filter(|(_, connections)| connections.len() > held + 1)
                .filter(|(_, connections)| connections.values().any(|state| state.replaceable()))
                .max_by_key(|(_, connections)| connections.len())
                .map(|(address, _)| *address);
            match victim {
                Some(victim) if table.evict_oldest_idle(victim) => replaced = true,
                _ => return Err(Refused::ListenerFull),
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        table.open += 1;
        let state = Arc::new(ConnectionState::default());
        table
            .sources
            .entry(source)
            .or_default()
            .insert(id, state.clone());
        drop(table);
        Ok((
            Admitted {
                table: self.table.clone(),
                source,
                id,
                state,
            },
            replaced,
        ))
    }

    /// Connections held now (in all, and from `source`).
    #[cfg(test)]
    fn held(&self, source: IpAddr) -> (usize, usize) {
        let table = self.table.lock();
        let from_source = table.sources.get(&source).map_or(0, BTreeMap::len);
        (table.open, from_source)
    }
}

impl Table {
    /// Takes the oldest idle connection of `source` out of the table (or,
    /// with none idle, the oldest waiting for its client) and tells its
    /// task to close; false when every one is being served.
    fn evict_oldest_idle(&mut self, source: IpAddr) -> bool {
        let Some(connections) = self.sources.get_mut(&source) else {
            return false;
        };
        let oldest = |wanted: fn(&ConnectionState) -> bool| {
            connections
                .iter()
                .find(|(_, state)| wanted(state))
                .map(|(id, _)| *id)
        };
        let Some(id) = oldest(ConnectionState::is_idle)
            .or_else(|| oldest(ConnectionState::is_waiting_for_client))
        else {
            return false;
        };
        if let Some(state) = connections.remove(&id) {
            state.evicted.notify_one();
        }
        if connections.is_empty() {
            self.sources.remove(&source);
        }
        self.open -= 1;
        true
    }
}

impl Admitted {
    pub(super) fn state(&self) -> Arc<ConnectionState> {
        self.state.clone()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        // An evicted connection has already given its place back.
        let Some(connections) = table.sources.get_mut(&self.source) else {
            return;
        };
        if connections.remove(&self.id).is_none() {
            return;
        }
        if connections.is_empty() {
            table.sources.remove(&self.source);
        }
        table.open -= 1;
    }
}

impl ConnectionState {
    fn is_idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire)
    }

    fn replaceable(&self) -> bool {
        self.is_idle() || self.is_waiting_for_client()
    }

    /// A request is in flight and its body waits for the client: closing
    /// the connection then cuts only a client too slow to finish.
    pub(super) fn is_waiting_for_client(&self) -> bool {
        self.busy.load(Ordering::Acquire) && self.waiting_for_client.load(Ordering::Acquire)
    }

    /// Said by the request's body as it waits for bytes and gets them.
    pub(super) fn set_waiting_for_client(&self, waiting: bool) {
        self.waiting_for_client.store(waiting, Ordering::Release);
    }

    /// Marks a request in flight until the guard is dropped.
    pub(super) fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.store(true, Ordering::Release);
        BusyGuard(self.clone())
    }

    pub(super) fn is_busy(&self) -> bool {
        !self.is_idle()
    }

    /// Resolves once the connection was chosen to make room.
    pub(super) async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// Holds a connection busy while a request is handled.
pub(super) struct BusyGuard(Arc<ConnectionState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.waiting_for_client.store(false, Ordering::Release);
        self.0.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn address(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_past_its_share_replaces_its_own_oldest_idle_connection() {
        let admission = Admission::new(10, 3);
        let first: Vec<_> = (0..3)
            .map(|_| admission.admit(address(1)).expect("within the share").0)
            .collect();
        assert_eq!(admission.held(address(1)), (3, 3));
        let (fourth, replaced) = admission.admit(address(1)).expect("replaces one");
        assert!(replaced);
        assert_eq!(admission.held(address(1)), (3, 3));
        // The oldest was told, and its drop does not count twice.
        tokio::time::timeout(Duration::from_secs(1), first[0].state.evicted())
            .await
            .expect("the oldest is told");
        drop(first);
        assert_eq!(admission.held(address(1)), (1, 1));
        drop(fourth);
        assert_eq!(admission.held(address(1)), (0, 0));
    }

    #[test]
    fn busy_connections_are_never_replaced() {
        let admission = Admission::new(10, 2);
        let held: Vec<_> = (0..2)
            .map(|_| admission.admit(address(1)).expect("admitted").0)
            .collect();
        let _guards: Vec<_> = held.iter().map(|admitted| admitted.state.busy()).collect();
        assert_eq!(admission.admit(address(1)).err(), Some(Refused::SourceFull));
        // Another source is still let in.
        assert!(admission.admit(address(2)).is_ok());
    }

    #[test]
    fn a_connection_waiting_for_its_slow_body_is_replaced_after_the_idle_ones() {
        let admission = Admission::new(10, 2);
        let (waiting, _) = admission.admit(address(1)).expect("admitted");
        let (served, _) = admission.admit(address(1)).expect("admitted");
        let _waiting_busy = waiting.state.busy();
        waiting.state.set_waiting_for_client(true);
        let _served_busy = served.state.busy();
        let (newcomer, replaced) = admission
            .admit(address(1))
            .expect("the slow body makes room");
        assert!(replaced);
        let _newcomer_busy = newcomer.state.busy();
        assert_eq!(admission.held(address(1)), (2, 2));
        // The one being served and the newcomer remain: nothing to replace.
        assert_eq!(admission.admit(address(1)).err(), Some(Refused::SourceFull));
        drop(waiting);
        assert_eq!(
            admission.held(address(1)),
            (2, 2),
            "no place given back twice"
        );
    }

    #[test]
    fn a_full_listener_takes_room_from_the_source_holding_the_most() {
        let admission = Admission::new(4, 3);
        let _heavy: Vec<_> = (0..3)
            .map(|_| admission.admit(address(1)).expect("admitted").0)
            .collect();
        let _light = admission.admit(address(2)).expect("admitted");
        assert_eq!(admission.held(address(1)), (4, 3));
        let (_newcomer, replaced) = admission.admit(address(3)).expect("room made");
        assert!(replaced);
        assert_eq!(admission.held(address(1)), (4, 2));
        assert_eq!(admission.held(address(3)), (4, 1));
    }

    #[test]
    fn a_full_listener_of_even_sources_refuses_rather_than_evens_out_further() {
        let admission = Admission::new(2, 2);
        let _one = admission.admit(address(1)).expect("admitted");
        let _two = admission.admit(address(2)).expect("admitted");
        assert_eq!(
            admission.admit(address(3)).err(),
            Some(Refused::ListenerFull)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_task_is_woken_even_when_told_before_it_waits() {
        let admission = Admission::new(1, 1);
        let (old, _) = admission.admit(address(1)).expect("admitted");
        let state = old.state();
        let _new = admission.admit(address(1)).expect("replaces");
        tokio::time::timeout(Duration::from_secs(1), state.evicted())
            .await
            .expect("told at once");
        // A request in flight marks the connection busy, and only for as long.
        let guard = state.busy();
        assert!(state.is_busy());
        drop(guard);
        assert!(!state.is_busy());
    }
}
