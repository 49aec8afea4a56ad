//! A small blocking HTTP/1.1 client over std sockets: enough to drive the
//! proxy precisely (keep-alive, chosen source address, raw bytes) without
//! hiding what goes over the wire.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case header names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The demo backend that served the response.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    /// The session id the demo backend's `/session` set (`sid=...; Path=/`).
    pub fn session_id(&self) -> Option<&str> {
        self.header("set-cookie")?.strip_prefix("sid=")?.split(';').next()
    }
}

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr`, from `source` if given (any 127.x address works on
/// Linux loopback without configuration).
pub fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect_timeout(&addr, IO_TIMEOUT)?,
        Some(ip) => connect_from(addr, ip)?,
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Binds the local side to `ip` before connecting (std cannot).
fn connect_from(addr: SocketAddr, ip: IpAddr) -> Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr} from {ip}"))?;
    Ok(socket.into())
}

/// One request on a fresh connection (`Connection: close`).
pub fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    request(addr, None, "GET", path, &[], b"")
}

/// A request on a fresh connection with extra headers and a body.
pub fn request(
    addr: SocketAddr,
    source: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let mut conn = KeepAlive::open(addr, source)?;
    conn.send(method, path, headers, body, true)
}

/// A request sent over the TCP listener: the same bytes as HTTP, then the
/// client half-closes, as a one-shot TCP client would.
pub fn tcp_get(addr: SocketAddr, source: Option<IpAddr>, path: &str) -> Result<HttpResponse> {
    let mut stream = connect(addr, source)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: shoal-test\r\nConnection: close\r\n\r\n"
    )?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, "GET")
}

/// A client connection reused for several requests.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn open(addr: SocketAddr, source: Option<IpAddr>) -> Result<Self> {
        Ok(Self {
            reader: BufReader::new(connect(addr, source)?),
        })
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) -> Result<HttpResponse> {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str("Host: shoal-test\r\n");
        }

        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        read_response(&mut self.reader, method)
    }
}

/// Reads one response: status line, headers, and a body framed by
/// Content-Length, chunked encoding, or the end of the connection.
pub fn read_response(reader: &mut BufReader<TcpStream>, method: &str) -> Result<HttpResponse> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("connection closed before a response");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?
        .parse()
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| anyhow!("bad header line {l:?}"))?;
        headers
            .entry(k.trim().to_ascii_lowercase())
            .and_modify(|old: &mut String| {
                old.push_str(", ");
                old.push_str(v.trim());
            })
            .or_insert_with(|| v.trim().to_string());
    }
    let mut body = Vec::new();
    let no_body = method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().context("bad content-length")?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    reader.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(HttpResponse { status, headers, body })
}
