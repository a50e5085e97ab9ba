//! The sessions: a slab indexed by [`SessionIdx`], with the client-id and connection
//! indexes kept in step with it.
//!
//! A [`SessionIdx`] is handed out by [`Sessions::insert`] and stays valid until
//! [`Sessions::remove`]; everything that keeps one (the topic tree, shared groups, timers,
//! the connection index) forgets it before or as the session is removed. So looking up an
//! index that names no session is a broken invariant, not a case to handle: [`Sessions::get`]
//! reports it (a `debug_assert!` in tests and debug builds, an error in the log otherwise) and
//! returns [`MissingSession`]. Looking up a client id or a connection is different: a client
//! may be unknown and a connection gone, so those return an `Option`.
//!
//! A session's connection (`Session::conn`) is set and cleared only here
//! ([`Sessions::attach`], [`Sessions::take_conn`], [`Sessions::detach_conn`]), so it always
//! agrees with the connection index.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::session::{ConnId, Session};

/// Names one session of the broker, from its insertion until its removal. Only
/// the broker's `Sessions` makes them; a removed session's index is reused for a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionIdx(u32);

#[cfg(test)]
impl SessionIdx {
    /// An index made up for a test of what keeps indexes (not one `Sessions` handed out).
    pub(crate) fn made_up(n: u32) -> SessionIdx {
        SessionIdx(n)
    }
}

impl fmt::Display for SessionIdx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A [`SessionIdx`] that names no session: a bug in the broker, already reported when this
/// is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingSession(pub SessionIdx);

impl fmt::Display for MissingSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no session at index {}", self.0)
    }
}

impl std::error::Error for MissingSession {}

/// Every session, connected or not, and who finds which.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    slots: Vec<Option<Session>>,
    /// Slots emptied by `remove`, reused first.
    free: Vec<SessionIdx>,
    by_client_id: HashMap<Arc<str>, SessionIdx>,
    by_conn: HashMap<ConnId, SessionIdx>,
}

/// Shows a broken invariant where it is found: panics in debug builds (and so in every test),
/// logs an error in release builds, where the broker carries on without the session.
#[track_caller]
fn missing(idx: SessionIdx) -> MissingSession {
    let at = std::panic::Location::caller();
    debug_assert!(false, "no session at index {idx} (looked up at {at})");
    tracing::error!(%idx, %at, "bug: no session at this index");
    MissingSession(idx)
}

impl Sessions {
    /// Adds a session, indexed by its client id (which no other session may have); it is
    /// not connected yet ([`Sessions::attach`]).
    pub(crate) fn insert(&mut self, mut session: Session) -> SessionIdx {
        let client_id = session.client_id.clone();
        if let Some(conn) = session.conn.take() {
            // The connection index is set by `attach` alone, so that the two agree.
            debug_assert!(
                false,
                "session {client_id:?} inserted with connection {conn}"
            );
            tracing::error!(client_id = %client_id, conn, "bug: session inserted connected");
        }
        let idx = match self.free.pop() {
            Some(idx) => {
                if let Some(slot) = self.slots.get_mut(idx.0 as usize) {
                    *slot = Some(session);
                }
                idx
            }
            None => {
                self.slots.push(Some(session));
                // Four billion sessions do not fit in memory long before this saturates.
                SessionIdx(u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX))
            }
        };
        if let Some(old) = self.by_client_id.insert(client_id.clone(), idx) {
            debug_assert!(
                false,
                "two sessions for one client id {client_id:?}: {old}, {idx}"
            );
            tracing::error!(client_id = %client_id, %old, %idx, "bug: two sessions for one client id");
        }
        idx
    }

    /// Removes a session and its index entries; its index may be handed out again.
    #[track_caller]
    pub(crate) fn remove(&mut self, idx: SessionIdx) -> Result<Session, MissingSession> {
        let Some(session) = self.slots.get_mut(idx.0 as usize).and_then(Option::take) else {
            return Err(missing(idx));
        };
        if self.by_client_id.get(&session.client_id) == Some(&idx) {
            self.by_client_id.remove(&session.client_id);
        }
        if let Some(conn) = session.conn {
            self.by_conn.remove(&conn);
        }
        self.free.push(idx);
        Ok(session)
    }

    /// The session `idx` names; see the module documentation for when it is missing.
    #[track_caller]
    pub(crate) fn get(&self, idx: SessionIdx) -> Result<&Session, MissingSession> {
        match self.slots.get(idx.0 as usize).and_then(Option::as_ref) {
            Some(s) => Ok(s),
            None => Err(missing(idx)),
        }
    }

    /// The session `idx` names, to change it (but for its connection: see
    /// [`Sessions::attach`]).
    #[track_caller]
    pub(crate) fn get_mut(&mut self, idx: SessionIdx) -> Result<&mut Session, MissingSession> {
        match self.slots.get_mut(idx.0 as usize).and_then(Option::as_mut) {
            Some(s) => Ok(s),
            None => Err(missing(idx)),
        }
    }

    /// The session of `client_id`, if the broker has one.
    pub(crate) fn by_client_id(&self, client_id: &str) -> Option<SessionIdx> {
        self.by_client_id.get(client_id).copied()
    }

    /// The session connection `conn` is attached to, if it still is.
    pub(crate) fn by_conn(&self, conn: ConnId) -> Option<SessionIdx> {
        self.by_conn.get(&conn).copied()
    }

    /// Binds connection `conn` to session `idx`, which has none (a takeover first takes the
    /// old one with [`Sessions::take_conn`]); returns the session.
    #[track_caller]
    pub(crate) fn attach(
        &mut self,
        idx: SessionIdx,
        conn: ConnId,
    ) -> Result<&mut Session, MissingSession> {
        let Some(s) = self.slots.get_mut(idx.0 as usize).and_then(Option::as_mut) else {
            return Err(missing(idx));
        };
        if let Some(old) = s.conn.replace(conn) {
            debug_assert!(
                false,
                "session {idx} attached to {conn} while {old} held it"
            );
            tracing::error!(%idx, conn, old, "bug: session attached twice");
            self.by_conn.remove(&old);
        }
        self.by_conn.insert(conn, idx);
        Ok(s)
    }

    /// Unbinds session `idx` from its connection; returns that connection (`None`: it had
    /// none, as an offline session has not).
    #[track_caller]
    pub(crate) fn take_conn(&mut self, idx: SessionIdx) -> Result<Option<ConnId>, MissingSession> {
        let s = self.get_mut(idx)?;
        let conn = s.conn.take();
        if let Some(conn) = conn {
            self.by_conn.remove(&conn);
        }
        Ok(conn)
    }

    /// Unbinds connection `conn` from its session; returns the session (`None`: the
    /// connection was not attached, or not any more: taken over, or closed before).
    pub(crate) fn detach_conn(&mut self, conn: ConnId) -> Option<SessionIdx> {
        let idx = self.by_conn.remove(&conn)?;
        if let Ok(s) = self.get_mut(idx) {
            s.conn = None;
        }
        Some(idx)
    }

    /// Sessions known, connected or not.
    pub(crate) fn len(&self) -> usize {
        self.by_client_id.len()
    }

    /// Connections attached to a session.
    pub(crate) fn connected(&self) -> usize {
        self.by_conn.len()
    }

    /// Every session.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.slots.iter().flatten()
    }

    /// Every session by client id.
    pub(crate) fn client_ids(&self) -> impl Iterator<Item = (&Arc<str>, SessionIdx)> {
        self.by_client_id.iter().map(|(id, &idx)| (id, idx))
    }

    /// Every attached connection with its session.
    pub(crate) fn conns(&self) -> impl Iterator<Item = (ConnId, SessionIdx)> + '_ {
        self.by_conn.iter().map(|(&conn, &idx)| (conn, idx))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use makelaar_proto::ProtocolVersion;

    use super::*;
    use crate::session::ClientLimits;

    fn session(id: &str) -> Session {
        let client = ClientLimits {
            inflight_window: 1,
            max_packet_size: None,
            problem_information: true,
        };
        Session::new(Arc::from(id), ProtocolVersion::V5, client)
    }

    /// The indexes agree with the slab: every id and connection names a live session that
    /// has that id or connection, and every live session is indexed by its id.
    fn check(s: &Sessions) {
        for (id, idx) in s.client_ids() {
            assert_eq!(&s.get(idx).unwrap().client_id, id);
        }
        for (conn, idx) in s.conns() {
            assert_eq!(s.get(idx).unwrap().conn, Some(conn));
        }
        assert_eq!(s.iter().count(), s.len());
        let attached = s.iter().filter(|x| x.conn.is_some()).count();
        assert_eq!(attached, s.connected());
    }

    #[test]
    fn insert_find_remove() {
        let mut s = Sessions::default();
        let a = s.insert(session("a"));
        let b = s.insert(session("b"));
        assert_ne!(a, b);
        assert_eq!(s.by_client_id("a"), Some(a));
        assert_eq!(s.by_client_id("b"), Some(b));
        assert_eq!(s.by_client_id("c"), None);
        assert_eq!(s.len(), 2);
        check(&s);
        let gone = s.remove(a).unwrap();
        assert_eq!(&*gone.client_id, "a");
        assert_eq!(s.by_client_id("a"), None);
        assert_eq!(s.len(), 1);
        check(&s);
        // The slot is reused: the index now names the new session.
        let c = s.insert(session("c"));
        assert_eq!(c, a);
        assert_eq!(&*s.get(c).unwrap().client_id, "c");
        check(&s);
    }

    #[test]
    fn attach_take_and_detach_keep_the_connection_index() {
        let mut s = Sessions::default();
        let a = s.insert(session("a"));
        assert_eq!(s.by_conn(7), None);
        s.attach(a, 7).unwrap();
        assert_eq!(s.by_conn(7), Some(a));
        assert_eq!(s.get(a).unwrap().conn, Some(7));
        assert_eq!(s.connected(), 1);
        check(&s);
        // A takeover: the old connection is taken, the new one attached.
        assert_eq!(s.take_conn(a).unwrap(), Some(7));
        assert_eq!(s.by_conn(7), None);
        assert_eq!(s.take_conn(a).unwrap(), None);
        s.attach(a, 8).unwrap();
        check(&s);
        // The old connection going away later finds nothing to detach.
        assert_eq!(s.detach_conn(7), None);
        assert_eq!(s.detach_conn(8), Some(a));
        assert_eq!(s.get(a).unwrap().conn, None);
        assert_eq!(s.connected(), 0);
        check(&s);
        // Removing a connected session forgets its connection too.
        s.attach(a, 9).unwrap();
        s.remove(a).unwrap();
        assert_eq!(s.by_conn(9), None);
        assert_eq!(s.connected(), 0);
        check(&s);
    }

    /// Many operations in a made-up order (a fixed pseudo-random sequence): the indexes
    /// agree with the slab after each, and agree with a plain model of who is where.
    #[test]
    fn indexes_stay_in_step_over_a_long_run() {
        let mut s = Sessions::default();
        // Client id number → (index, attached connection), the model.
        let mut model: HashMap<u32, (SessionIdx, Option<ConnId>)> = HashMap::new();
        let mut next_conn: ConnId = 1;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = (x % 40) as u32;
            let name = format!("c{id}");
            match (model.get(&id).copied(), (x >> 8) % 4) {
                (None, _) => {
                    let idx = s.insert(session(&name));
                    model.insert(id, (idx, None));
                }
                (Some((idx, _)), 0) => {
                    s.remove(idx).unwrap();
                    model.remove(&id);
                }
                (Some((idx, old)), 1) => {
                    // A takeover when connected, else a plain connect.
                    assert_eq!(s.take_conn(idx).unwrap(), old);
                    s.attach(idx, next_conn).unwrap();
                    model.insert(id, (idx, Some(next_conn)));
                    next_conn += 1;
                }
                (Some((idx, old)), _) => {
                    // The connection goes away (offline: one never attached, 0, does).
                    let conn = old.unwrap_or(0);
                    let detached = s.detach_conn(conn);
                    assert_eq!(detached, old.map(|_| idx));
                    model.insert(id, (idx, None));
                }
            }
            check(&s);
            assert_eq!(s.len(), model.len());
            for (id, (idx, conn)) in &model {
                assert_eq!(s.by_client_id(&format!("c{id}")), Some(*idx));
                assert_eq!(s.get(*idx).unwrap().conn, *conn);
                if let Some(conn) = conn {
                    assert_eq!(s.by_conn(*conn), Some(*idx));
                }
            }
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "no session at index")]
    fn a_removed_index_is_a_bug_that_shows() {
        let mut s = Sessions::default();
        let a = s.insert(session("a"));
        s.remove(a).unwrap();
        let _ = s.get(a);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "two sessions for one client id")]
    fn a_client_id_names_one_session() {
        let mut s = Sessions::default();
        s.insert(session("a"));
        s.insert(session("a"));
    }
}
