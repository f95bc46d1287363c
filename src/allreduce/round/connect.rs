//! A round's connections: dialing, accepting, closing, failing members,
//! reading frames off a socket, and the handshake that admits a member
//! (see `allreduce::handshake`). Part of `Round` (round/mod.rs).

use super::*;

impl Round<'_> {
    // ---- connections ------------------------------------------------------

    pub(super) fn new_hello(&self) -> Hello {
        let weight = if let Some(Fault::DeclareWeight(w)) = self.settings.fault { w } else { self.weight };
        Hello { digest: self.digest, nonce: random_bytes(), weight }
    }

    pub(super) fn add_conn(&mut self, mut stream: TcpStream, dialed: Option<usize>, now: Instant) -> Option<usize> {
        let id = self.conns.iter().position(Option::is_none).unwrap_or(self.conns.len());
        if let Err(e) = self.poll.registry().register(&mut stream, Token(id), Interest::READABLE | Interest::WRITABLE) {
            tracing::warn!("registering a connection: {e}");
            return None;
        }
        set_buffers(&stream, self.settings.socket_buffer);
        if let Some(cc) = self.settings.congestion_control.as_deref() {
            set_congestion_control(&stream, cc);
        }
        let hello = self.new_hello();
        let mut conn = Conn::new(stream, dialed, hello, HELLO_LEN.max(AUTH_LEN) as u32, now);
        let header = Header::for_payload(Kind::Hello, self.me as u16, self.round, 0, 0, &hello.encode());
        conn.queue(Out::new(&header, Body::Owned(hello.encode().to_vec())), now);
        if id == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[id] = Some(conn);
        }
        Some(id)
    }

    pub(super) fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let pending = self.conns.iter().flatten().filter(|c| !c.ready).count();
                    if pending >= self.n() + MAX_PENDING {
                        continue; // dropped: too many unauthenticated connections
                    }
                    self.add_conn(stream, None, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn dial(&mut self, j: usize, now: Instant) {
        let m = &mut self.members[j];
        m.next_dial = now + m.backoff;
        m.backoff = (m.backoff * 2).min(DIAL_BACKOFF_MAX);
        match TcpStream::connect(self.group.members[j].addr) {
            Ok(stream) => self.members[j].dialing = self.add_conn(stream, Some(j), now),
            Err(e) => self.members[j].last_refusal = Some(format!("connecting: {e}")),
        }
    }

    pub(super) fn close(&mut self, id: usize) {
        if let Some(mut conn) = self.conns[id].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Some(j) = conn.peer {
                let m = &mut self.members[j];
                if m.conn == Some(id) {
                    m.conn = None;
                }
                if m.dialing == Some(id) {
                    m.dialing = None;
                }
            }
        }
    }

    /// Ends a connection that failed its handshake; a dialed member is
    /// dialed again after the backoff.
    pub(super) fn refuse(&mut self, id: usize, reason: String) {
        let Some(conn) = self.conns[id].as_ref() else { return };
        if conn.kept {
            // The far end kept none, closed it, or sent the old round's
            // last frames: the member is dialed or waited for afresh.
            tracing::debug!("round {}: a kept connection to member {:?} not taken up: {reason}", self.round, conn.peer);
            return self.close(id);
        }
        let addr = conn.stream.peer_addr().map_or("?".into(), |a| a.to_string());
        match conn.peer {
            Some(j) => {
                if self.refused.len() < MAX_REFUSED {
                    self.refused.push(format!("{addr} as member {j}: {reason}"));
                }
                self.members[j].last_refusal = Some(reason);
            }
            None if self.refused.len() < MAX_REFUSED => self.refused.push(format!("{addr}: {reason}")),
            None => {}
        }
        self.close(id);
    }

    /// The connection ended (closed, broken): a failure only if data from
    /// that member was still due.
    pub(super) fn closed(&mut self, id: usize, why: String) {
        let Some(conn) = self.conns[id].as_ref() else { return };
        match (conn.ready, conn.peer) {
            (true, Some(j)) if self.expects_from(j) => self.fail(j, Failure::Disconnected(why)),
            (true, Some(j)) => {
                self.members[j].closed_clean = true;
                self.close(id)
            }
            (true, None) => self.close(id),
            (false, _) => self.refuse(id, format!("connection ended during the handshake: {why}")),
        }
    }

    pub(super) fn fail(&mut self, j: usize, failure: Failure) {
        let m = &mut self.members[j];
        if m.failure.is_none() {
            tracing::debug!("round {}: member {j} failed: {failure}", self.round);
            m.failure = Some(failure);
        }
        for id in [m.conn, m.dialing].into_iter().flatten() {
            self.close(id);
        }
        self.note_connected();
        self.finalize_ready_chunks();
    }

    pub(super) fn on_event(&mut self, id: usize, writable: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else { return };
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.refuse(id, format!("connecting: {e}")),
                Ok(None) => {}
            }
            match conn.stream.peer_addr() {
                Ok(_) => conn.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.refuse(id, format!("connecting: {e}")),
            }
        }
        if writable {
            conn.write_blocked = false;
        }
        for _ in 0..FRAMES_PER_TURN {
            let Some(conn) = self.conns[id].as_mut().filter(|c| c.next_hello.is_none()) else { return };
            match conn.read_frame(now) {
                Got::Frame(h) => {
                    self.bytes_received += (crate::allreduce::wire::HEADER_LEN + h.len as usize) as u64;
                    let payload = conn.take_payload();
                    if conn.ready {
                        self.on_data(id, h, &payload[..h.len as usize]);
                    } else {
                        self.on_handshake(id, h, &payload[..h.len as usize], now);
                    }
                    if let Some(conn) = self.conns[id].as_mut() {
                        conn.put_payload(payload);
                    }
                }
                Got::WouldBlock => return,
                Got::Eof => return self.closed(id, "closed by the peer".into()),
                Got::Broken(why) => return self.closed(id, why),
                Got::Invalid(e) => return self.invalid(id, e.to_string()),
            }
        }
        // More may be waiting, and no new edge will say so: come back after
        // the other sockets had their turn.
        if !self.unread.contains(&id) {
            self.unread.push(id);
        }
    }

    pub(super) fn invalid(&mut self, id: usize, why: String) {
        match self.conns[id].as_ref().map(|c| (c.ready, c.peer)) {
            Some((true, Some(j))) => self.fail(j, Failure::Invalid(why)),
            Some(_) => self.refuse(id, why),
            None => {}
        }
    }

    // ---- handshake --------------------------------------------------------

    pub(super) fn on_handshake(&mut self, id: usize, h: Header, payload: &[u8], now: Instant) {
        let (me, n, round) = (self.me, self.n(), self.round);
        let conn = self.conns[id].as_ref().expect("a live connection");
        let (dialed, peer, peer_hello, my_hello) = (conn.dialed, conn.peer, conn.peer_hello, conn.my_hello);
        let j = h.sender as usize;
        if peer.is_none() && h.kind == Kind::Hello && j < n && j != me {
            // A claim only, but it lets the report say who was refused.
            self.conns[id].as_mut().expect("a live connection").peer = Some(j);
        }
        if h.round != round {
            return self.refuse(id, format!("wrong round {} (this is round {round})", h.round));
        }
        match h.kind {
            Kind::Hello => {
                if peer_hello.is_some() {
                    return self.refuse(id, "second hello".into());
                }
                if j >= n || j == me {
                    return self.refuse(id, format!("claims to be member {j}, which is not another member of this group"));
                }
                if let Some(d) = dialed
                    && d != j
                {
                    return self.refuse(id, format!("dialed member {d} but it says it is member {j}"));
                }
                self.conns[id].as_mut().expect("a live connection").peer = Some(j);
                if dialed.is_none() && j > me {
                    return self.refuse(id, format!("member {j} dials lower members, not the other way round"));
                }
                let hello = match Hello::parse(payload) {
                    Ok(hello) => hello,
                    Err(e) => return self.refuse(id, e.to_string()),
                };
                if hello.digest != self.digest {
                    return self.refuse(id, "different group, vector length or wire settings (group digest differs)".into());
                }
                if !self.seen_nonces.insert(hello.nonce) {
                    return self.refuse(id, "replayed handshake (nonce seen before)".into());
                }
                if !(hello.weight.is_finite() && hello.weight >= 0.0 && hello.weight <= self.settings.max_weight) {
                    return self.refuse(id, format!("weight {} outside 0..={}", hello.weight, self.settings.max_weight));
                }
                if self.members[j].conn.is_some() || self.members[j].failure.is_some() {
                    return self.refuse(id, "member already connected or already dropped this round".into());
                }
                let sig = sign_auth(self.id, round, me as u16, j as u16, &my_hello, &hello.nonce);
                let header = Header::for_payload(Kind::Auth, me as u16, round, 0, 0, &sig);
                let conn = self.conns[id].as_mut().expect("a live connection");
                conn.peer_hello = Some(hello);
                conn.queue(Out::new(&header, Body::Owned(sig.to_vec())), now);
            }
            Kind::Auth => {
                let (Some(peer_hello), Some(p)) = (peer_hello, peer) else {
                    return self.refuse(id, "auth before hello".into());
                };
                if p != j {
                    return self.refuse(id, format!("auth from member {j} on member {p}'s connection"));
                }
                let key = self.group.members[j].key;
                if let Err(e) = verify_auth(&key, round, j as u16, me as u16, &peer_hello, &my_hello.nonce, payload) {
                    return self.refuse(id, e.to_string());
                }
                // Signed, so it is the member's own claim (an unsigned Hello
                // could be anyone's): a weight other than 0 or its credit
                // is a lie, and the member is out of the round.
                if let Some(a) = self.audit
                    && peer_hello.weight != 0.0
                    && peer_hello.weight != a.weights[j]
                {
                    let failure = Failure::FalseWeight { declared: peer_hello.weight, credited: a.weights[j] };
                    self.refuse(id, failure.to_string());
                    return self.fail(j, failure);
                }
                if self.members[j].conn.is_some() || self.members[j].failure.is_some() {
                    return self.refuse(id, "member already connected or already dropped this round".into());
                }
                self.ready(id, j, peer_hello.weight, now);
            }
            other => self.refuse(id, format!("{other:?} frame before the handshake finished")),
        }
    }

    /// The handshake checked out: start exchanging data with member `j`.
    pub(super) fn ready(&mut self, id: usize, j: usize, weight: f32, now: Instant) {
        let (me, round) = (self.me, self.round);
        let mut outs = Vec::with_capacity(self.chunks[j].len() + self.finalized.len() + 1);
        if self.weight > 0.0 {
            // Audited: the signed claim of what our chunks for its span
            // hold, ahead of them (the owner takes no chunk before it).
            if self.audit.is_some() && !self.chunks[j].is_empty() {
                let mut payload = Vec::with_capacity(Statement::BYTES);
                Statement::sign(self.id, round, &self.digest, me, j, self.sent[j]).encode(&mut payload);
                let header = Header::for_payload(Kind::Statement, me as u16, round, j as u32, 0, &payload);
                outs.push(Out::new(&header, Body::Owned(payload)));
            }
            for (c, info) in self.chunks[j].iter().enumerate() {
                let (len, body) = if self.zero_copy {
                    (4 * info.elems.len(), Body::Grad(4 * info.elems.start..4 * info.elems.end))
                } else {
                    (info.bytes.len(), Body::Wire(info.bytes.clone()))
                };
                let header = Header { kind: Kind::Scatter, sender: me as u16, round, span: j as u32, chunk: c as u32, len: len as u32, checksum: 0 };
                let body = if self.settings.fault == Some(Fault::Garbage) { Body::Owned(vec![0xff; len]) } else { body };
                outs.push(Out::deferred(header, body));
            }
        }
        outs.extend((0..self.finalized.len()).filter(|&c| self.finalized[c]).map(|c| self.gather_out(c, j)));
        if !self.finalized.is_empty() && self.all_finalized() {
            outs.push(self.done_out(j));
        }
        let conn = self.conns[id].as_mut().expect("a live connection");
        self.reused += usize::from(conn.kept);
        if let Some(cc) = congestion_control(&conn.stream).filter(|cc| !self.congestion.contains(cc)) {
            self.congestion.push(cc);
        }
        conn.open_data(self.data_max_len);
        for out in outs {
            conn.queue(out, now);
        }
        let m = &mut self.members[j];
        m.conn = Some(id);
        m.weight = Some(weight);
        if m.dialing == Some(id) {
            m.dialing = None;
        }
        self.note_connected();
        self.finalize_ready_chunks();
    }

    /// Records when every member was connected or failed.
    pub(super) fn note_connected(&mut self) {
        if self.connect_s.is_none() && (0..self.n()).all(|j| j == self.me || self.members[j].conn.is_some() || self.members[j].failure.is_some()) {
            self.connect_s = Some(self.start.elapsed().as_secs_f64());
        }
    }
}

/// No Nagle delay (frames are written whole); buffer sizes where set.
fn set_buffers(stream: &TcpStream, size: Option<usize>) {
    let _ = stream.set_nodelay(true);
    if let Some(size) = size {
        let v = size.min(i32::MAX as usize) as libc::c_int;
        set_int_option(stream, libc::SOL_SOCKET, libc::SO_SNDBUF, v);
        set_int_option(stream, libc::SOL_SOCKET, libc::SO_RCVBUF, v);
    }
}

/// setsockopt with an int value; a failure leaves the kernel's default.
pub(super) fn set_int_option(stream: &TcpStream, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor and a c_int option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Asks for congestion control `name` on this connection; a kernel without
/// it (or not allowing it to this process) keeps its default, which is
/// only slower on lossy links.
#[cfg(target_os = "linux")]
pub(super) fn set_congestion_control(stream: &TcpStream, name: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor and a byte buffer of the given length.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr() as *const libc::c_void,
            name.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!("congestion control {name}: {}", io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn set_congestion_control(_: &TcpStream, _: &str) {}

/// The congestion control this connection runs, as the kernel says.
#[cfg(target_os = "linux")]
pub(super) fn congestion_control(stream: &TcpStream) -> Option<String> {
    use std::os::fd::AsRawFd;
    let mut name = [0u8; 32];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: a valid socket descriptor and a buffer of `len` bytes.
    let r =
        unsafe { libc::getsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_mut_ptr() as *mut libc::c_void, &mut len) };
    let name = &name[..(len as usize).min(name.len())];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    (r == 0 && end > 0).then(|| String::from_utf8_lossy(&name[..end]).into_owned())
}

#[cfg(not(target_os = "linux"))]
pub(super) fn congestion_control(_: &TcpStream) -> Option<String> {
    None
}
