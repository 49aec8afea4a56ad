//! A yardstick for `bench/compare.sh`, not part of Shoal: the least work an
//! HTTP/1.1 reverse proxy can do on this machine. It parses a request head,
//! adds X-Forwarded-For, picks the backend with the fewest requests in
//! flight, forwards over a kept-alive backend connection and copies the
//! response back; nothing else (no health checks, timeouts, metrics,
//! chunked bodies or streaming; its one retry is for a kept-alive backend
//! connection closed meanwhile). What it reaches is about the most any
//! proxy doing the same work on the same cores can reach, so it tells
//! which throughput targets the machine allows at all.
//!
//! With `--tcp TCP_LISTEN` it is also the least an L4 proxy can do on
//! TCP_LISTEN: connect each client to the backend with the fewest open
//! connections and copy bytes both ways (`tokio::io::copy_bidirectional`),
//! nothing else.
//!
//! With `--uring` the HTTP yardstick runs on monoio, an io_uring runtime,
//! instead of tokio: the same work, with each worker's system calls batched
//! into one io_uring_enter per round of completions (its ring defers the
//! kernel's completion work to that call). It shows what the same proxy
//! gains from io_uring on this machine.
//!
//! Usage: forwarder [--uring] [--tcp TCP_LISTEN] LISTEN BACKEND... (one
//! single-threaded runtime and one SO_REUSEPORT listener per core and
//! address; `--tcp` is not offered with `--uring`).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};

mod stream;
use stream::Stream;

/// Largest request or response head, request body and response body it
/// accepts (bodies are buffered whole).
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
const MAX_HEADERS: usize = 64;

const USAGE: &str = "usage: forwarder [--uring] [--tcp TCP_LISTEN] LISTEN BACKEND...";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let uring = args.next_if(|a| a == "--uring").is_some();
    let tcp_listen: Option<SocketAddr> = if args.peek().map(String::as_str) == Some("--tcp") {
        args.next();
        let addr = args.next().context(USAGE)?;
        Some(addr.parse().context("TCP_LISTEN is not an address")?)
    } else {
        None
    };
    let listen: SocketAddr = args
        .next()
        .context(USAGE)?
        .parse()
        .context("LISTEN is not an address")?;
    let backends = args
        .map(|a| a.parse().with_context(|| format!("backend {a} is not an address")))
        .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
    if backends.is_empty() {
        bail!(USAGE);
    }
    if uring && tcp_listen.is_some() {
        bail!("--tcp is not offered with --uring (bench/kernel-relay has io_uring L4 loops)");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = (0..cores)
        .map(|i| {
            let listener = bind(listen)?;
            let tcp_listener = tcp_listen.map(bind).transpose()?;
            let backends = backends.clone();
            std::thread::Builder::new()
                .name(format!("forwarder-{i}"))
                .spawn(move || {
                    if uring {
                        uring_worker(listener, backends)
                    } else {
                        worker(listener, tcp_listener, backends)
                    }
                })
                .context("spawning a worker")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for w in workers {
        match w.join() {
            Ok(result) => result?,
            Err(_) => bail!("a worker panicked"),
        }
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn worker(
    listener: std::net::TcpListener,
    tcp_listener: Option<std::net::TcpListener>,
    addrs: Vec<SocketAddr>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener)?;
        let backends = Rc::new(Backends::new(addrs));
        if let Some(tcp_listener) = tcp_listener {
            let tcp_listener = TcpListener::from_std(tcp_listener)?;
            tokio::task::spawn_local(pass_through(tcp_listener, Rc::clone(&backends)));
        }
        loop {
            let (client, peer) = accept(&listener).await;
            tokio::task::spawn_local(serve_and_report(client, peer, Rc::clone(&backends)));
        }
    })
}

/// A worker on monoio's io_uring driver. Its ring is entered by this thread
/// alone, and the kernel's completion work waits for that thread's next
/// io_uring_enter instead of interrupting it (DEFER_TASKRUN, without which
/// io_uring gained nothing here: docs/benchmarks.md, "io_uring").
fn uring_worker(listener: std::net::TcpListener, addrs: Vec<SocketAddr>) -> anyhow::Result<()> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_single_issuer().setup_defer_taskrun();
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(ring)
        .build()
        .context("starting monoio's io_uring runtime (kernel 6.1 or later, io_uring not disabled)")?;
    runtime.block_on(async move {
        let listener = monoio::net::TcpListener::from_std(listener)?;
        let backends = Rc::new(Backends::new(addrs));
        loop {
            match listener.accept().await {
                Ok((client, peer)) => {
                    monoio::spawn(serve_and_report(client, peer, Rc::clone(&backends)));
                }
                Err(e) => eprintln!("forwarder: accept: {e}"),
            }
        }
    })
}

async fn serve_and_report<S: Stream>(client: S, peer: SocketAddr, backends: Rc<Backends<S>>) {
    if let Err(e) = serve(client, peer, &backends).await
        && !is_disconnect(&e)
    {
        eprintln!("forwarder: {peer}: {e:#}");
    }
}

/// The next client connection; a failed accept (e.g. out of descriptors)
/// is reported and the loop goes on.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => eprintln!("forwarder: accept: {e}"),
        }
    }
}

/// The L4 yardstick: each client connection goes to the backend with the
/// fewest of this worker's connections open, bytes copied both ways.
async fn pass_through(listener: TcpListener, backends: Rc<Backends<TcpStream>>) {
    loop {
        let (mut client, peer) = accept(&listener).await;
        let backends = Rc::clone(&backends);
        tokio::task::spawn_local(async move {
            let i = backends.least_loaded();
            backends.in_flight.borrow_mut()[i] += 1;
            let copied = async {
                client.set_nodelay(true)?;
                let mut upstream = TcpStream::connect(backends.addrs[i]).await?;
                upstream.set_nodelay(true)?;
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
            }
            .await;
            backends.in_flight.borrow_mut()[i] -= 1;
            if let Err(e) = copied
                && !is_io_disconnect(&e)
            {
                eprintln!("forwarder: {peer} (tcp): {e}");
            }
        });
    }
}

/// One worker's backends: its idle connections and requests (HTTP) or
/// connections (TCP) in flight.
struct Backends<S> {
    addrs: Vec<SocketAddr>,
    idle: RefCell<Vec<Vec<S>>>,
    in_flight: RefCell<Vec<u32>>,
}

impl<S> Backends<S> {
    fn new(addrs: Vec<SocketAddr>) -> Self {
        let n = addrs.len();
        Self {
            addrs,
            idle: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            in_flight: RefCell::new(vec![0; n]),
        }
    }

    fn least_loaded(&self) -> usize {
        let in_flight = self.in_flight.borrow();
        (0..in_flight.len()).min_by_key(|&i| in_flight[i]).unwrap_or(0)
    }
}

/// A byte buffer holding what was read and not yet consumed.
struct Buffer {
    bytes: Box<[u8]>,
    len: usize,
}

impl Buffer {
    fn new() -> Self {
        Self {
            bytes: vec![0; MAX_HEAD].into(),
            len: 0,
        }
    }

    /// Reads more; false at end of stream.
    async fn fill(&mut self, from: &mut impl Stream) -> anyhow::Result<bool> {
        if self.len == self.bytes.len() {
            bail!("head larger than {MAX_HEAD} bytes");
        }
        let (read, bytes) = from.read_into(std::mem::take(&mut self.bytes), self.len).await;
        self.bytes = bytes;
        let n = read?;
        self.len += n;
        Ok(n > 0)
    }

    fn consume(&mut self, n: usize) {
        self.bytes.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

async fn serve<S: Stream>(mut client: S, peer: SocketAddr, backends: &Backends<S>) -> anyhow::Result<()> {
    let forwarded = format!("x-forwarded-for: {}\r\n", peer.ip());
    let mut from_client = Buffer::new();
    let mut from_backend = Buffer::new();
    let mut request = Vec::with_capacity(1024);
    let mut response = Vec::with_capacity(4096);
    loop {
        let Some(head) = read_request(&mut client, &mut from_client, &mut request, &forwarded).await? else {
            return Ok(());
        };
        let i = backends.least_loaded();
        backends.in_flight.borrow_mut()[i] += 1;
        let outcome = exchange(backends, i, &mut request, &head, &mut from_backend, &mut response).await;
        backends.in_flight.borrow_mut()[i] -= 1;
        outcome?;
        write_all(&mut client, &mut response).await?;
        if head.close {
            return Ok(());
        }
    }
}

struct RequestHead {
    is_head: bool,
    close: bool,
}

/// Reads one request into `out` (head with X-Forwarded-For, then body);
/// None when the client closed between requests.
async fn read_request(
    client: &mut impl Stream,
    buf: &mut Buffer,
    out: &mut Vec<u8>,
    forwarded: &str,
) -> anyhow::Result<Option<RequestHead>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = req.parse(&buf.bytes[..buf.len])? {
            let method = req.method.unwrap_or("GET");
            out.clear();
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            let mut body_len = 0;
            let mut close = req.version == Some(0);
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = content_length(h.value)?;
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked request bodies are not supported");
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                    continue;
                }
                push_header(out, h);
            }
            out.extend_from_slice(forwarded.as_bytes());
            out.extend_from_slice(b"\r\n");
            let is_head = method == "HEAD";
            if body_len > MAX_BODY {
                bail!("request body over {MAX_BODY} bytes");
            }
            buf.consume(head_len);
            let buffered = body_len.min(buf.len);
            out.extend_from_slice(&buf.bytes[..buffered]);
            buf.consume(buffered);
            let start = out.len();
            out.resize(start + body_len - buffered, 0);
            let (read, back) = client.read_exact_into(std::mem::take(out), start).await;
            *out = back;
            read?;
            return Ok(Some(RequestHead { is_head, close }));
        }
        if !buf.fill(client).await? {
            if buf.len == 0 {
                return Ok(None);
            }
            bail!("client closed within a request");
        }
    }
}

/// Sends `request` to backend `i` and reads its whole response into `out`
/// (its head rewritten for the client's Connection), keeping the backend
/// connection when the backend allows.
async fn exchange<S: Stream>(
    backends: &Backends<S>,
    i: usize,
    request: &mut Vec<u8>,
    client: &RequestHead,
    buf: &mut Buffer,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut upstream = send(backends, i, request, buf).await?;
    out.clear();
    let (head_len, body_len, keep) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = resp.parse(&buf.bytes[..buf.len])? {
            let code = resp.code.unwrap_or(0);
            let mut body_len = None;
            let mut keep = resp.version == Some(1);
            out.extend_from_slice(format!("HTTP/1.1 {code} {}\r\n", resp.reason.unwrap_or("")).as_bytes());
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = Some(content_length(h.value)?);
                } else if h.name.eq_ignore_ascii_case("connection") {
                    keep = !h.value.eq_ignore_ascii_case(b"close");
                    continue;
                }
                push_header(out, h);
            }
            if client.close {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            let body_len = match body_len {
                _ if client.is_head || code == 204 || code == 304 => 0,
                Some(n) => n,
                None => bail!("a response without Content-Length is not supported"),
            };
            if body_len > MAX_RESPONSE_BODY {
                bail!("response body over {MAX_RESPONSE_BODY} bytes");
            }
            break (head_len, body_len, keep);
        }
        if !buf.fill(&mut upstream).await? {
            bail!("backend closed within its response head");
        }
    };
    let have = buf.len.min(head_len + body_len);
    out.extend_from_slice(&buf.bytes[head_len..have]);
    let start = out.len();
    out.resize(start + head_len + body_len - have, 0);
    let (read, back) = upstream.read_exact_into(std::mem::take(out), start).await;
    *out = back;
    read?;
    if keep && buf.len == have {
        backends.idle.borrow_mut()[i].push(upstream);
    }
    Ok(())
}

fn push_header(out: &mut Vec<u8>, h: &httparse::Header<'_>) {
    out.extend_from_slice(h.name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(h.value);
    out.extend_from_slice(b"\r\n");
}

/// A peer going away (wrk resets its connections when it stops) is not
/// worth a line.
fn is_disconnect(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(is_io_disconnect)
}

fn is_io_disconnect(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof
    )
}

/// Writes `request` to backend `i` and waits for the first bytes of the
/// answer. A kept-alive connection the backend has meanwhile closed fails
/// before any byte comes back; then the request goes once more, over a new
/// connection, as every proxy does.
async fn send<S: Stream>(
    backends: &Backends<S>,
    i: usize,
    request: &mut Vec<u8>,
    buf: &mut Buffer,
) -> anyhow::Result<S> {
    buf.len = 0;
    let idle = backends.idle.borrow_mut()[i].pop();
    if let Some(mut conn) = idle
        && write_all(&mut conn, request).await.is_ok()
        && buf.fill(&mut conn).await.unwrap_or(false)
    {
        return Ok(conn);
    }
    let mut conn = S::connect(backends.addrs[i]).await?;
    write_all(&mut conn, request).await?;
    if !buf.fill(&mut conn).await? {
        bail!("backend closed before its response head");
    }
    Ok(conn)
}

/// Writes `bytes` whole, lending them to the stream.
async fn write_all(to: &mut impl Stream, bytes: &mut Vec<u8>) -> io::Result<()> {
    let (written, back) = to.write_all(std::mem::take(bytes)).await;
    *bytes = back;
    written
}

fn content_length(value: &[u8]) -> anyhow::Result<usize> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .context("bad Content-Length")
}
