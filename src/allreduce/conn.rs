//! One TCP connection of a round: non-blocking frame reading into a buffer
//! allocated once per connection, and a queue of outgoing frames written
//! with vectored writes straight from where their bytes already live (the
//! round's encoded vector), so nothing is copied or allocated per chunk.

use super::handshake::Hello;
use super::wire::{HEADER_LEN, Header, Kind, WireError, checksum};
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;
use std::time::Instant;

/// Where an outgoing frame's payload lives.
pub(super) enum Body {
    /// Small control payloads (handshake, summary).
    Owned(Vec<u8>),
    /// A range of the round's encoded vector.
    Wire(Range<usize>),
    /// A byte range of the caller's vector itself (fp32 on the wire is the
    /// vector's own bytes on little-endian hosts: no copy at all).
    Grad(Range<usize>),
}

/// Where `Body::Wire` and `Body::Grad` point.
#[derive(Clone, Copy)]
pub(super) struct Sources<'a> {
    pub wire: &'a [u8],
    pub grad: &'a [u8],
}

pub(super) struct Out {
    hdr: [u8; HEADER_LEN],
    kind: Kind,
    body: Body,
    /// The header still needs the payload's checksum (see `deferred`).
    pending: Option<Header>,
    /// Bytes of header + payload already written.
    sent: usize,
}

/// Frames whose checksums are computed ahead of the socket: enough to fill
/// a write, few enough that their payloads are still in cache when the
/// kernel copies them.
const CHECKSUM_AHEAD: usize = 4;

impl Out {
    pub fn new(header: &Header, body: Body) -> Out {
        Out { hdr: header.encode(), kind: header.kind, body, pending: None, sent: 0 }
    }

    /// A frame whose payload checksum is computed just before it is
    /// written, so that its bytes are read from memory once for both.
    pub fn deferred(header: Header, body: Body) -> Out {
        Out { hdr: [0; HEADER_LEN], kind: header.kind, body, pending: Some(header), sent: 0 }
    }

    fn seal(&mut self, src: Sources) {
        if let Some(mut h) = self.pending.take() {
            h.checksum = checksum(self.payload(src));
            self.hdr = h.encode();
        }
    }

    fn payload<'a>(&'a self, src: Sources<'a>) -> &'a [u8] {
        match &self.body {
            Body::Owned(v) => v,
            Body::Wire(r) => &src.wire[r.clone()],
            Body::Grad(r) => &src.grad[r.clone()],
        }
    }
}

/// What one attempt to read a frame found.
pub(super) enum Got {
    /// A whole frame; its payload is at the start of `take_payload()`.
    Frame(Header),
    /// Nothing more to read now.
    WouldBlock,
    /// The far end closed the connection between frames.
    Eof,
    /// Closed mid-frame, or a socket error.
    Broken(String),
    /// A header that is not a valid frame, or a payload whose checksum fails.
    Invalid(WireError),
}

/// Payload bytes of completed frames, by kind (for fault injection and the
/// report).
#[derive(Default, Clone, Copy)]
pub(super) struct Written {
    pub bytes: u64,
    pub scatter_payload: u64,
    pub gather_payload: u64,
}

pub(super) struct Conn {
    pub stream: TcpStream,
    /// The member this end dialed (`None`: accepted from the listener).
    pub dialed: Option<usize>,
    /// A dialed connection is established once the socket reports it.
    pub connected: bool,
    /// The member the far end proved (or claimed, before `ready`) to be.
    pub peer: Option<usize>,
    pub my_hello: Hello,
    pub peer_hello: Option<Hello>,
    /// Both handshake signatures checked: data frames may flow.
    pub ready: bool,
    /// Kept from an earlier round (`round::keep`), not dialed or accepted.
    pub kept: bool,
    /// The far end's Hello for the next round, read while this one still
    /// ran (see `round::keep`): nothing more is read here this round.
    pub next_hello: Option<(Header, Vec<u8>)>,
    hdr: [u8; HEADER_LEN],
    hdr_fill: usize,
    cur: Option<Header>,
    payload: Vec<u8>,
    pay_fill: usize,
    /// Largest payload accepted now (small until the handshake is done).
    max_len: u32,
    out: VecDeque<Out>,
    pub write_blocked: bool,
    pub last_read: Instant,
    pub last_write: Instant,
    /// The last write of anything but the adjudicator's Waiting frames:
    /// those keep a member waiting for the ruling, and must not make a
    /// member that withholds its testimony look waited on forever.
    pub last_data_write: Instant,
    /// Bytes the peer had acknowledged when `poll_delivery` last looked,
    /// and when that count last grew.
    acked: u64,
    pub last_acked: Instant,
}

impl Conn {
    pub fn new(stream: TcpStream, dialed: Option<usize>, my_hello: Hello, handshake_max: u32, now: Instant) -> Conn {
        Conn {
            stream,
            dialed,
            connected: dialed.is_none(),
            peer: dialed,
            my_hello,
            peer_hello: None,
            ready: false,
            kept: false,
            next_hello: None,
            hdr: [0; HEADER_LEN],
            hdr_fill: 0,
            cur: None,
            payload: vec![0; handshake_max as usize],
            pay_fill: 0,
            max_len: handshake_max,
            out: VecDeque::with_capacity(64),
            write_blocked: false,
            last_read: now,
            last_write: now,
            last_data_write: now,
            acked: 0,
            last_acked: now,
        }
    }

    /// Reads the kernel's delivery progress (Linux's `TCP_INFO`): bytes the
    /// peer acknowledged count as progress (`last_acked`) even while the
    /// socket takes nothing more — on a slow link its buffer holds seconds
    /// of data. Returns whether sent bytes are still unacknowledged (the
    /// path is slow), `None` where the kernel does not say.
    pub fn poll_delivery(&mut self, now: Instant) -> Option<bool> {
        let (acked, in_flight) = tcp_delivery(&self.stream)?;
        if acked != self.acked {
            self.acked = acked;
            self.last_acked = now;
        }
        Some(in_flight)
    }

    /// After the handshake: accept data frames up to `max_len` bytes. The
    /// one large allocation of the connection.
    pub fn open_data(&mut self, max_len: u32) {
        self.ready = true;
        self.max_len = max_len;
        self.payload = vec![0; max_len as usize];
    }

    fn payload(&self) -> &[u8] {
        &self.payload[..self.pay_fill]
    }

    /// Lends out the receive buffer (the frame just read is at its start)
    /// so the frame can be handled while the connection is changed.
    pub fn take_payload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.payload)
    }

    /// Returns the lent buffer, unless the handshake finished meanwhile and
    /// `open_data` put a larger one in its place.
    pub fn put_payload(&mut self, payload: Vec<u8>) {
        if self.payload.is_empty() {
            self.payload = payload;
        }
    }

    /// Reads until a whole frame is in or the socket would block.
    pub fn read_frame(&mut self, now: Instant) -> Got {
        if self.cur.is_some() && self.pay_fill == self.cur.map_or(0, |h| h.len as usize) {
            // The previous frame was handed out: start the next one.
            self.cur = None;
            self.hdr_fill = 0;
            self.pay_fill = 0;
        }
        loop {
            let (buf, header_part) = match self.cur {
                None => (&mut self.hdr[self.hdr_fill..], true),
                Some(h) => {
                    if self.pay_fill == h.len as usize {
                        return match h.verify(self.payload()) {
                            Ok(()) => Got::Frame(h),
                            Err(e) => Got::Invalid(e),
                        };
                    }
                    (&mut self.payload[self.pay_fill..h.len as usize], false)
                }
            };
            match self.stream.read(buf) {
                Ok(0) => {
                    return if header_part && self.hdr_fill == 0 { Got::Eof } else { Got::Broken("connection closed mid-frame".into()) };
                }
                Ok(n) => {
                    self.last_read = now;
                    if header_part {
                        self.hdr_fill += n;
                        if self.hdr_fill == HEADER_LEN {
                            match Header::parse(&self.hdr, self.max_len) {
                                Ok(h) => self.cur = Some(h),
                                Err(e) => return Got::Invalid(e),
                            }
                        }
                    } else {
                        self.pay_fill += n;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Got::Broken(e.to_string()),
            }
        }
    }

    pub fn queue(&mut self, out: Out, now: Instant) {
        if self.out.is_empty() {
            // Time without write progress counts only while something waits.
            self.last_write = now;
        }
        // Averaged chunks (and the summary after them) go ahead of scatter
        // frames not yet begun, one scatter frame between two of them:
        // their bytes were just encoded and are still in cache for the
        // kernel's copy, the far end can finish its copy of our span while
        // our scatter frames still flow, and neither direction starves.
        let at = match out.kind {
            Kind::Gather | Kind::Done => {
                let after_last = self.out.iter().rposition(|o| matches!(o.kind, Kind::Gather | Kind::Done)).map(|i| i + 1);
                // (Never ahead of the handshake's frames, which may still wait.)
                let first_scatter = || self.out.iter().position(|o| o.kind == Kind::Scatter && o.sent == 0);
                let start = after_last.or_else(first_scatter).unwrap_or(self.out.len());
                start + usize::from(self.out.get(start).is_some_and(|o| o.kind == Kind::Scatter))
            }
            // The adjudication's frames go ahead of every data frame not yet
            // begun: the round's end waits on them, and a member whose
            // uplink is saturated by its span must not be left out for
            // testifying late.
            Kind::Testimony | Kind::Ruling | Kind::Waiting => {
                self.out.iter().position(|o| o.sent == 0 && matches!(o.kind, Kind::Scatter | Kind::Gather | Kind::Done)).unwrap_or(self.out.len())
            }
            _ => self.out.len(),
        };
        self.out.insert(at, out);
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// No frame half read: the stream can be handed to the next round.
    pub fn at_frame_boundary(&self) -> bool {
        match self.cur {
            None => self.hdr_fill == 0,
            Some(h) => self.pay_fill == h.len as usize,
        }
    }

    /// Writes queued frames until done or the socket would block.
    /// `max_frames` bounds the frames in one write (fault injection).
    pub fn flush(&mut self, src: Sources, now: Instant, max_frames: usize) -> io::Result<Written> {
        let mut done = Written::default();
        while !self.out.is_empty() && !self.write_blocked {
            let ahead = max_frames.min(CHECKSUM_AHEAD);
            self.out.iter_mut().take(ahead).for_each(|o| o.seal(src));
            let mut slices = [IoSlice::new(&[]); 64];
            let mut used = 0;
            for o in self.out.iter().take(max_frames) {
                if used + 2 > slices.len() || o.pending.is_some() {
                    break;
                }
                let payload = o.payload(src);
                if o.sent < HEADER_LEN {
                    slices[used] = IoSlice::new(&o.hdr[o.sent..]);
                    slices[used + 1] = IoSlice::new(payload);
                    used += 2;
                } else {
                    slices[used] = IoSlice::new(&payload[o.sent - HEADER_LEN..]);
                    used += 1;
                }
            }
            match self.stream.write_vectored(&slices[..used]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes")),
                Ok(mut n) => {
                    self.last_write = now;
                    done.bytes += n as u64;
                    while n > 0 {
                        let front = self.out.front_mut().expect("written bytes belong to queued frames");
                        if front.kind != Kind::Waiting {
                            self.last_data_write = now;
                        }
                        let len = front.payload(src).len();
                        let left = HEADER_LEN + len - front.sent;
                        if n < left {
                            front.sent += n;
                            break;
                        }
                        n -= left;
                        match front.kind {
                            Kind::Scatter => done.scatter_payload += len as u64,
                            Kind::Gather => done.gather_payload += len as u64,
                            _ => {}
                        }
                        self.out.pop_front();
                    }
                    if max_frames < usize::MAX {
                        return Ok(done);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// (Bytes acknowledged, whether any sent bytes are unacknowledged.)
#[cfg(target_os = "linux")]
fn tcp_delivery(stream: &TcpStream) -> Option<(u64, bool)> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor; `info` and `len` are a correctly
    // sized out-buffer for TCP_INFO, which the kernel fills up to `len`.
    let (ok, len, info) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let ok =
            libc::getsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut info as *mut libc::tcp_info as *mut libc::c_void, &mut len)
                == 0;
        (ok, len as usize, info)
    };
    // (Kernels before 4.1 fill less and have no byte count.)
    (ok && len >= std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8).then_some((info.tcpi_bytes_acked, info.tcpi_unacked > 0))
}

#[cfg(not(target_os = "linux"))]
fn tcp_delivery(_: &TcpStream) -> Option<(u64, bool)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _far = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (near, _) = listener.accept().unwrap();
        let hello = Hello { digest: [0; 32], nonce: [0; 32], weight: 1.0 };
        Conn::new(TcpStream::from_std(near), None, hello, 64, Instant::now())
    }

    fn frame(kind: Kind, chunk: u32) -> Out {
        let header = Header::for_payload(kind, 0, 1, 0, chunk, &[]);
        Out::new(&header, Body::Owned(Vec::new()))
    }

    #[test]
    fn averaged_chunks_interleave_with_scatter_frames_after_the_handshake() {
        let mut c = conn();
        let now = Instant::now();
        for (kind, chunk) in [(Kind::Hello, 0), (Kind::Auth, 0), (Kind::Scatter, 0), (Kind::Scatter, 1), (Kind::Scatter, 2)] {
            c.queue(frame(kind, chunk), now);
        }
        for (kind, chunk) in [(Kind::Gather, 0), (Kind::Gather, 1), (Kind::Done, 0), (Kind::Abort, 0)] {
            c.queue(frame(kind, chunk), now);
        }
        use Kind::*;
        assert_eq!(order(&c), [(Hello, 0), (Auth, 0), (Scatter, 0), (Gather, 0), (Scatter, 1), (Gather, 1), (Scatter, 2), (Done, 0), (Abort, 0)]);
    }

    fn order(c: &Conn) -> Vec<(Kind, usize)> {
        c.out.iter().map(|o| (o.kind, u32::from_le_bytes(o.hdr[20..24].try_into().unwrap()) as usize)).collect()
    }

    #[test]
    fn testimony_and_ruling_jump_the_data_not_yet_begun() {
        let mut c = conn();
        let now = Instant::now();
        for (kind, chunk) in [(Kind::Scatter, 0), (Kind::Gather, 0), (Kind::Scatter, 1), (Kind::Done, 0)] {
            c.queue(frame(kind, chunk), now);
        }
        // The first frame is partly written: it must be finished first.
        c.out[0].sent = 3;
        c.queue(frame(Kind::Testimony, 7), now);
        c.queue(frame(Kind::Ruling, 8), now);
        use Kind::*;
        assert_eq!(order(&c), [(Scatter, 0), (Testimony, 7), (Ruling, 8), (Gather, 0), (Scatter, 1), (Done, 0)]);
        // With nothing but control frames queued they keep their order.
        let mut c = conn();
        c.queue(frame(Kind::Abort, 0), now);
        c.queue(frame(Kind::Testimony, 1), now);
        assert_eq!(order(&c), [(Abort, 0), (Testimony, 1)]);
    }
}
