//! The node's query server: HTTP/1.1 `POST /IsAlive|/Train|/AllReduce`
//! with signed JSON bodies, one connection per request. Nothing a caller
//! sends is trusted: header lines, header count and body size are bounded
//! before anything is read, reading and writing time out, and at most
//! `max_concurrent` requests are served at once (others get 503 at once).
//! Every refusal is a JSON `{"error": ...}` with a fitting status; the
//! server keeps serving whatever arrives.

use super::auth::ReplayGuard;
use super::bittensor::hotkey::Hotkey;
use super::bittensor::{axon, btauth};
use super::protocol::Query;
use crate::allreduce::{Identity, PublicKey};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// What a node does with authenticated queries.
pub trait Handler: Send + Sync + 'static {
    /// Whether `caller` may query this node (the registry's members).
    fn known(&self, caller: &PublicKey) -> bool;
    /// Answers a query; an `Err` goes back as HTTP 500 with the message.
    fn handle(&self, caller: &PublicKey, query: Query) -> Result<Query, String>;
    /// Serves `POST /State`: a parameter tensor in fp16 (see
    /// `protocol::StateRequest`). Nodes without state refuse.
    fn state(&self, _caller: &PublicKey, _tensor: &str) -> Result<Vec<u8>, String> {
        Err("this node serves no state".into())
    }
    /// Serves `POST /Join` (open to any signed caller): registers it.
    fn join(&self, _caller: &PublicKey, _req: super::protocol::JoinRequest) -> Result<u16, String> {
        Err("this node serves no registry".into())
    }
    /// Serves `POST /Registry` (open to any signed caller): the nodes.
    fn registry(&self) -> Result<Vec<super::registry::Node>, String> {
        Err("this node serves no registry".into())
    }
    /// Whether a Bittensor hotkey (SS58) may query this node in the axon
    /// convention (see `bittensor::axon`).
    fn known_hotkey(&self, _ss58: &str) -> bool {
        false
    }
    /// Answers a query from a Bittensor hotkey.
    fn handle_hotkey(&self, _ss58: &str, _query: Query) -> Result<Query, String> {
        Err("this node answers no Bittensor callers".into())
    }
}

/// Queries any signed caller may send (the rest need a known caller).
const OPEN_QUERIES: [&str; 2] = ["Join", "Registry"];

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_body: usize,
    pub max_concurrent: usize,
    /// For reading a request and writing the answer.
    pub io_timeout: Duration,
    /// Accepted clock difference of a query's nonce.
    pub clock_window: Duration,
    /// This node's Bittensor hotkey: with one, queries in the axon
    /// convention (`bt_header_*` headers) are answered too.
    pub hotkey: Option<Hotkey>,
    /// Where queries answered and refused are counted.
    pub metrics: Option<Arc<super::metrics::NodeMetrics>>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_body: 1 << 20,
            max_concurrent: 64,
            io_timeout: Duration::from_secs(10),
            clock_window: Duration::from_secs(60),
            hotkey: None,
            metrics: None,
        }
    }
}

const MAX_HEADER_LINE: usize = 8 << 10;
const MAX_HEADERS: usize = 64;

pub struct QueryServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    id: Identity,
    handler: Arc<dyn Handler>,
    cfg: ServerConfig,
    guard: ReplayGuard,
    active: AtomicUsize,
}

impl QueryServer {
    /// Serves on `addr` (port 0 picks one) until `stop` or drop.
    pub fn start(addr: SocketAddr, id: Identity, handler: Arc<dyn Handler>, cfg: ServerConfig) -> std::io::Result<QueryServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let guard = ReplayGuard::new(cfg.clock_window, 1 << 20);
        let shared = Arc::new(Shared { id, handler, cfg, guard, active: AtomicUsize::new(0) });
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.cfg.max_concurrent {
                            shared.active.fetch_sub(1, Ordering::SeqCst);
                            let mut stream = stream;
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                            reply(&mut stream, 503, &error_json("busy: too many requests at once"));
                            if let Some(m) = &shared.cfg.metrics {
                                m.record_query(None, 503);
                            }
                            continue;
                        }
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            serve_one(stream, &shared);
                            shared.active.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        Ok(QueryServer { addr, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for QueryServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error_json(msg: &str) -> Vec<u8> {
    serde_json::json!({ "error": msg }).to_string().into_bytes()
}

fn reply(s: &mut TcpStream, status: u16, body: &[u8]) {
    reply_typed(s, status, "application/json", body)
}

fn reply_typed(s: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    reply_with(s, status, content_type, &[], body)
}

fn reply_with(s: &mut TcpStream, status: u16, content_type: &str, headers: &[(String, String)], body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n", body.len());
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).and_then(|_| s.flush());
}

/// Reads one line of at most `MAX_HEADER_LINE` bytes.
fn read_line(r: &mut impl BufRead) -> Result<String, (u16, String)> {
    let mut line = Vec::new();
    let n = r.take(MAX_HEADER_LINE as u64 + 1).read_until(b'\n', &mut line).map_err(|e| (408, format!("reading the request: {e}")))?;
    if n > MAX_HEADER_LINE {
        return Err((431, "header line too long".into()));
    }
    if n == 0 {
        return Err((400, "connection closed before the request was complete".into()));
    }
    String::from_utf8(line).map(|l| l.trim_end_matches(['\r', '\n']).to_string()).map_err(|_| (400, "header is not UTF-8".into()))
}

fn serve_one(mut stream: TcpStream, sh: &Shared) {
    let _ = stream.set_read_timeout(Some(sh.cfg.io_timeout));
    let _ = stream.set_write_timeout(Some(sh.cfg.io_timeout));
    let started = std::time::Instant::now();
    let (mut axon_reply, mut query) = (None, None);
    let (status, content_type, body) = match answer(&stream, sh, &mut axon_reply, &mut query) {
        Ok((content_type, body)) => (200, content_type, body),
        Err((status, msg)) => {
            tracing::debug!("query refused ({status}): {msg}");
            match &axon_reply {
                // The axon convention's error shape: {"message": ...}.
                Some(_) => (status, "application/json", serde_json::json!({ "message": msg }).to_string().into_bytes()),
                None => (status, "application/json", error_json(&msg)),
            }
        }
    };
    let headers = match (&axon_reply, &sh.cfg.hotkey) {
        (Some((name, dendrite)), Some(me)) => {
            let message = if status == 200 { "Success".to_string() } else { String::from_utf8_lossy(&body).into_owned() };
            axon::response_headers(me, name, dendrite.as_ref(), status, &message, started.elapsed().as_secs_f64())
        }
        _ => Vec::new(),
    };
    reply_with(&mut stream, status, content_type, &headers, &body);
    if let Some(m) = &sh.cfg.metrics {
        m.record_query(query, status);
    }
}

/// Set once a request is known to follow the axon convention: its synapse
/// name and, once verified, its dendrite.
type AxonReply = Option<(String, Option<axon::Dendrite>)>;

/// Answers one request; `query` is set to its query's name once known.
fn answer(
    stream: &TcpStream,
    sh: &Shared,
    axon_reply: &mut AxonReply,
    query: &mut Option<&'static str>,
) -> Result<(&'static str, Vec<u8>), (u16, String)> {
    let mut r = BufReader::new(stream);
    let request = read_line(&mut r)?;
    let mut parts = request.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let line = read_line(&mut r)?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err((431, format!("more than {MAX_HEADERS} headers")));
        }
        let (k, v) = line.split_once(':').ok_or((400, format!("malformed header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if method != "POST" {
        return Err((405, format!("{method} not allowed: queries are POST /IsAlive, /Train, /AllReduce, /State, /Join or /Registry")));
    }
    let name = path.strip_prefix('/').unwrap_or(path);
    if Query::parse(name, b"{}").is_none() && !["State", "Join", "Registry"].contains(&name) {
        return Err((404, format!("no query {path:?}: queries are POST /IsAlive, /Train, /AllReduce, /State, /Join or /Registry")));
    }
    *query = ["IsAlive", "Train", "AllReduce", "State", "Join", "Registry"].into_iter().find(|n| *n == name);
    let len: usize =
        get("content-length").ok_or((411, "Content-Length required".to_string()))?.parse().map_err(|_| (400, "bad Content-Length".to_string()))?;
    if len > sh.cfg.max_body {
        return Err((413, format!("body of {len} bytes exceeds the limit of {}", sh.cfg.max_body)));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| (408, format!("reading the body: {e}")))?;
    if btauth::is_btauth_request(get) {
        let Some(me) = &sh.cfg.hotkey else {
            return Err((400, "this node has no Bittensor hotkey: sign with dtrain's x-dtrain-* headers".into()));
        };
        let caller = btauth::verify(get, &body, method, path, &me.ss58(), &sh.guard, |k| sh.handler.known_hotkey(k)).map_err(|e| {
            let status = if matches!(e, super::auth::AuthError::Unknown(_)) { 403 } else { 401 };
            (status, e.to_string())
        })?;
        let query = match Query::parse(name, &body) {
            Some(q) => q.map_err(|e| (400, format!("malformed {name} body: {e}")))?,
            None => return Err((404, format!("no query {name:?} for Bittensor callers: IsAlive, Train or AllReduce"))),
        };
        let answer = sh.handler.handle_hotkey(&caller, query).map_err(|e| (500, e))?;
        return Ok(("application/json", answer.to_json()));
    }
    if axon::is_axon_request(get) {
        let Some(me) = &sh.cfg.hotkey else {
            return Err((400, "this node has no Bittensor hotkey: sign with dtrain's x-dtrain-* headers".into()));
        };
        *axon_reply = Some((name.to_string(), None));
        let query = match Query::parse(name, &body) {
            Some(q) => q.map_err(|e| (400, format!("malformed {name} body: {e}")))?,
            None => return Err((404, format!("no synapse {name:?} here: IsAlive, Train or AllReduce"))),
        };
        let dendrite = axon::verify(get, &query, me, &sh.guard, |k| sh.handler.known_hotkey(k)).map_err(|e| {
            let status = if matches!(e, super::auth::AuthError::Unknown(_)) { 403 } else { 401 };
            (status, e.to_string())
        })?;
        let hotkey = dendrite.hotkey.clone();
        *axon_reply = Some((name.to_string(), Some(dendrite)));
        let answer = sh.handler.handle_hotkey(&hotkey, query).map_err(|e| (500, e))?;
        return Ok(("application/json", answer.to_json()));
    }
    let open = OPEN_QUERIES.contains(&name);
    let caller = sh.guard.verify(get, &sh.id.public(), &body, |k| open || sh.handler.known(k)).map_err(|e| {
        let status = if matches!(e, super::auth::AuthError::Unknown(_)) { 403 } else { 401 };
        (status, e.to_string())
    })?;
    if name == "Join" {
        let req: super::protocol::JoinRequest = serde_json::from_slice(&body).map_err(|e| (400, format!("malformed Join body: {e}")))?;
        let uid = sh.handler.join(&caller, req).map_err(|e| (400, e))?;
        return Ok(("application/json", serde_json::json!({ "uid": uid }).to_string().into_bytes()));
    }
    if name == "Registry" {
        let nodes = sh.handler.registry().map_err(|e| (404, e))?;
        return Ok(("application/json", serde_json::to_vec(&nodes).expect("plain data serializes")));
    }
    if name == "State" {
        let req: super::protocol::StateRequest = serde_json::from_slice(&body).map_err(|e| (400, format!("malformed State body: {e}")))?;
        return sh.handler.state(&caller, &req.tensor).map(|b| ("application/octet-stream", b)).map_err(|e| (404, e));
    }
    let query = Query::parse(name, &body).expect("known name").map_err(|e| (400, format!("malformed {name} body: {e}")))?;
    let answer = sh.handler.handle(&caller, query).map_err(|e| (500, e))?;
    Ok(("application/json", answer.to_json()))
}
