//! Connections kept from one round to the next. Dialing the whole mesh
//! anew every round costs each pair a TCP handshake's round trip before
//! its own one, and, back to back (a verified round's rerun, a benchmark),
//! a congestion window grown in the last round: at 40 ms round trips and
//! up, a visible share of a round.
//!
//! After a round, every connection to a member that ended it in good
//! standing — authenticated, not failed, nothing queued to it, no frame of
//! it half read — stays open in the `Peer`, keyed by the member's key and
//! address. The next round whose group has that member starts its
//! handshake on it instead of dialing: the same Hello and Auth, signed
//! over the new round, group and fresh nonces, so no authentication of the
//! old round carries over. Whatever goes wrong on a kept connection — the
//! far end kept none or closed it, a stale frame of the old round, no
//! answer within the stall timeout — refuses it as any failed handshake
//! is refused, and the member is dialed (or waited for) as if nothing had
//! been kept.
//!
//! A member may finish a round and start the next (a rerun) while another
//! still waits in the old one, say for the ruling: the old round then
//! reads the new round's Hello on the kept connection. Where nothing more
//! is due either way on it, that is no violation: the Hello is set aside
//! with the connection and handled first thing in the next round.
//! Part of `Round` (round/mod.rs).

use super::*;

/// A kept connection unused this long is closed rather than tried: a NAT
/// or firewall between the two may have forgotten it (they drop idle TCP
/// mappings after minutes to hours; keepalives every minute, below, keep
/// most of them). Rounds in the subnet come minutes apart.
pub(super) const KEPT_IDLE_MAX: Duration = Duration::from_secs(600);
/// TCP keepalive on kept connections: first probe after this long idle.
const KEEPALIVE_IDLE_S: libc::c_int = 60;
const KEEPALIVE_INTERVAL_S: libc::c_int = 10;
const KEEPALIVE_PROBES: libc::c_int = 3;

/// An authenticated connection left from an earlier round.
pub(super) struct Kept {
    pub key: PublicKey,
    pub addr: SocketAddr,
    pub stream: TcpStream,
    pub since: Instant,
    /// The next round's Hello, read in the old round.
    pub hello: Option<(Header, Vec<u8>)>,
}

/// Takes, for each other member of `group`, the connection kept to it (same
/// key, same address, not too old); closes the rest.
pub(super) fn take_for(kept: &mut Vec<Kept>, group: &Group, me: usize, now: Instant) -> Vec<(usize, Kept)> {
    let mut out: Vec<(usize, Kept)> = Vec::new();
    for k in kept.drain(..) {
        let j = group.members.iter().position(|m| m.key == k.key && m.addr == k.addr);
        match j {
            Some(j) if j != me && now.duration_since(k.since) < KEPT_IDLE_MAX && !out.iter().any(|(i, _)| *i == j) => out.push((j, k)),
            _ => {} // dropped: closed
        }
    }
    out
}

impl Round<'_> {
    /// Starts the handshake with each member on its kept connection, as
    /// if this peer had just dialed it.
    pub(super) fn adopt(&mut self, kept: Vec<(usize, Kept)>, now: Instant) {
        for (j, k) in kept {
            if let Some(id) = self.add_conn(k.stream, Some(j), now) {
                let conn = self.conns[id].as_mut().expect("just added");
                (conn.kept, conn.connected) = (true, true);
                self.members[j].dialing = Some(id);
                if let Some((h, payload)) = k.hello {
                    self.on_handshake(id, h, &payload, now);
                }
            }
        }
    }

    /// A Hello from member `j` on our authenticated connection: `j` has
    /// moved on to the next round. Set aside for it when nothing is due
    /// either way on this connection any more (`true`).
    pub(super) fn next_rounds_hello(&mut self, id: usize, j: usize, h: Header, payload: &[u8]) -> bool {
        if !self.settings.keep_connections || !self.member_done(j) || self.members[j].failure.is_some() {
            return false;
        }
        let conn = self.conns[id].as_mut().expect("a live connection");
        if conn.next_hello.is_some() {
            return false;
        }
        conn.next_hello = Some((h, payload.to_vec()));
        true
    }

    /// The connections to keep for the next round (see the module's doc).
    pub(super) fn keep(&mut self, now: Instant) -> Vec<Kept> {
        let mut kept = Vec::new();
        if !self.settings.keep_connections {
            return kept;
        }
        for j in 0..self.n() {
            let m = &self.members[j];
            let Some(id) = m.conn.filter(|_| j != self.me && m.failure.is_none() && !m.closed_clean) else { continue };
            if !self.conns[id].as_ref().is_some_and(|c| c.ready && !c.has_output() && c.at_frame_boundary()) {
                continue;
            }
            let mut conn = self.conns[id].take().expect("checked above");
            if self.poll.registry().deregister(&mut conn.stream).is_ok() {
                set_keepalive(&conn.stream);
                let member = &self.group.members[j];
                kept.push(Kept { key: member.key, addr: member.addr, stream: conn.stream, since: now, hello: conn.next_hello });
            }
        }
        kept
    }
}

fn set_keepalive(stream: &TcpStream) {
    for (level, opt, v) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES),
    ] {
        connect::set_int_option(stream, level, opt, v);
    }
}
