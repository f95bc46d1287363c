//! A small read-only HTTP listener for what a node shows operators (its
//! `/metrics`, the master validator's dashboard): GET only, one bounded
//! request head per connection, timeouts, one connection at a time, its
//! own thread and port — never a route of the query server, so a browser
//! or scraper carries no signature and can never take a query slot.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Most bytes of a request head read.
const MAX_HEAD: usize = 8 << 10;

/// What a GET of a path returns.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply { status: 200, content_type, body: body.into() }
    }

    pub fn not_found(what: &str) -> Reply {
        Reply { status: 404, content_type: "text/plain; charset=utf-8", body: format!("{what}\n").into_bytes() }
    }
}

/// Answers a GET of a path (the query string included).
pub type Handler = dyn Fn(&str) -> Reply + Send + Sync;

/// The listener; stops when dropped.
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// Serves `handler` on `addr` (port 0 picks one); `name` is for logs.
    pub fn start(addr: SocketAddr, name: &'static str, handler: Arc<Handler>) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &*handler),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => {
                        tracing::warn!("{name}: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        Ok(Endpoint { addr, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let text = |status, why: String| Reply { status, content_type: "text/plain; charset=utf-8", body: why.into_bytes() };
    let reply = match request_line(&stream) {
        Ok((method, path)) if method == "GET" => handler(&path),
        Ok(_) => text(405, "only GET here\n".into()),
        Err(why) => text(400, format!("{why}\n")),
    };
    let reason = match reply.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Request",
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&reply.body));
    if reply.status != 200 {
        // Unread request bytes would make the close a reset, which can
        // destroy the reply before the client reads it: read (a bounded
        // amount, briefly) what the client still sends.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = std::io::copy(&mut (&stream).take(1 << 16), &mut std::io::sink());
    }
}

/// The method and path of a request, its head read to the blank line (at
/// most `MAX_HEAD` bytes).
fn request_line(stream: &TcpStream) -> Result<(String, String), String> {
    let mut r = BufReader::new(stream).take(MAX_HEAD as u64);
    let mut first = String::new();
    r.read_line(&mut first).map_err(|e| format!("reading the request: {e}"))?;
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Err("the request head is incomplete or over 8 KiB".into()),
            Ok(_) if line.trim_end().is_empty() => break,
            Ok(_) => {}
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
    let mut parts = first.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(m), Some(p)) => Ok((m.to_string(), p.to_string())),
        _ => Err(format!("malformed request line {:?}", first.trim_end())),
    }
}
