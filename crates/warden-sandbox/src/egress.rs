//! The egress guard: the only way out of a sandbox's network namespace (INV-011).
//!
//! An HTTP proxy on a Unix socket (bound into the sandbox, reached through the forwarder). It
//! takes `CONNECT host:port` and absolute-form `http://` requests, allows only hosts on the
//! tool's allowlist, resolves the name itself, refuses any answer that holds a non-public
//! address (loopback, RFC 1918, link-local and the metadata services, CGNAT, ULA, ...) unless
//! the operator listed that network, connects to the address it checked (never resolving
//! again), caps the bytes each way and the connection rate, and reports every allowed and
//! refused connection.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixListener, UnixStream};
pub use warden_core::net::{non_public, valid_host, HostRule, Net};

/// Longest request head the proxy reads.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to resolve a name, and to connect.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy allows for one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Allowed destinations; empty: nothing.
    pub allow: Vec<HostRule>,
    /// Non-public networks the operator allows.
    pub private_allow: Vec<Net>,
    /// Bytes a connection may send out.
    pub max_bytes_out: u64,
    /// Bytes a connection may bring in.
    pub max_bytes_in: u64,
    /// Connections per minute.
    pub connections_per_minute: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow: Vec::new(),
            private_allow: Vec::new(),
            max_bytes_out: 10 << 20,
            max_bytes_in: 100 << 20,
            connections_per_minute: 60,
        }
    }
}

/// One connection the proxy allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The host asked for.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Allowed or refused.
    pub allowed: bool,
    /// The address connected to (allowed) or refused.
    pub address: Option<SocketAddr>,
    /// Why, in words.
    pub reason: String,
}

/// Resolves names (the system resolver in production; a fixed table in tests).
pub trait Resolve: Send + Sync {
    /// The addresses of `host`.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The system resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A fixed table of names: for tests, and for pinning a name to known addresses.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver(pub std::collections::BTreeMap<String, IpAddr>);

impl Resolve for StaticResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        let found = self.0.get(host).map(|ip| vec![SocketAddr::new(*ip, port)]);
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
        })
    }
}

/// Where events go (the ledger, in Warden).
pub type Recorder = Arc<dyn Fn(Event) + Send + Sync>;

/// One sandbox's egress proxy.
pub struct Proxy {
    policy: Policy,
    resolver: Arc<dyn Resolve>,
    record: Recorder,
    recent: Mutex<Vec<Instant>>,
    /// Connections open at once (a sandbox cannot exhaust Warden's file descriptors).
    slots: Arc<tokio::sync::Semaphore>,
    /// Refusals recorded in the current minute, and those left out.
    refusals: Mutex<(Instant, u32, u32)>,
}

/// Connections one sandbox may hold open through the proxy at once.
const MAX_OPEN: usize = 64;
/// Refusals recorded per minute; beyond that they are counted and recorded as one summary.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 60;
/// A spliced connection with no byte either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A refusal: the status line and the reason.
struct Refusal(&'static str, String);

impl Proxy {
    /// A proxy.
    #[must_use]
    pub fn new(policy: Policy, resolver: Arc<dyn Resolve>, record: Recorder) -> Arc<Proxy> {
        Arc::new(Proxy {
            policy,
            resolver,
            record,
            recent: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_OPEN)),
            refusals: Mutex::new((Instant::now(), 0, 0)),
        })
    }

    /// Records a refusal, at most [`REFUSALS_RECORDED_PER_MINUTE`] a minute (a sandbox cannot
    /// fill the ledger with them); the ones left out are recorded as a count.
    fn refused(&self, host: String, port: u16, reason: String) {
        let summary = {
            let Ok(mut r) = self.refusals.lock() else {
                return;
            };
            let mut summary = None;
            if r.0.elapsed() >= Duration::from_secs(60) {
                if r.2 > 0 {
                    summary = Some(r.2);
                }
                *r = (Instant::now(), 0, 0);
            }
            if r.1 >= REFUSALS_RECORDED_PER_MINUTE {
                r.2 = r.2.saturating_add(1);
                return;
            }
            r.1 += 1;
            summary
        };
        if let Some(n) = summary {
            (self.record)(Event {
                host: String::new(),
                port: 0,
                allowed: false,
                address: None,
                reason: format!(
                    "{n} further refusals in the last minute were not recorded one by one"
                ),
            });
        }
        (self.record)(Event {
            host,
            port,
            allowed: false,
            address: None,
            reason,
        });
    }

    /// Serves connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(_) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                drop(conn);
                self.refused(
                    String::new(),
                    0,
                    format!("more than {MAX_OPEN} connections open at once"),
                );
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                me.handle(conn).await;
                drop(permit);
            });
        }
    }

    fn rate_ok(&self) -> bool {
        let now = Instant::now();
        let Ok(mut recent) = self.recent.lock() else {
            return false;
        };
        recent.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if recent.len() >= self.policy.connections_per_minute as usize {
            return false;
        }
        recent.push(now);
        true
    }

    async fn handle(&self, mut client: UnixStream) {
        let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
            Ok(Ok(h)) => h,
            Ok(Err(why)) => {
                let why = why.to_string();
                let _ = refuse(&mut client, "400 Bad Request", &why).await;
                self.refused(String::new(), 0, why);
                return;
            }
            Err(_) => {
                self.refused(
                    String::new(),
                    0,
                    format!(
                        "no complete request head within {}s",
                        HEAD_TIMEOUT.as_secs()
                    ),
                );
                return;
            }
        };
        let target = match parse_target(&head) {
            Ok(t) => t,
            Err(why) => {
                let why = why.to_string();
                let _ = refuse(&mut client, "400 Bad Request", &why).await;
                self.refused(String::new(), 0, why);
                return;
            }
        };
        let (host, port) = (target.host.clone(), target.port);
        // Every request counts against the rate, allowed or not.
        let opened = if self.rate_ok() {
            self.open(&target).await
        } else {
            Err(Refusal(
                "429 Too Many Requests",
                format!(
                    "more than {} connections in a minute",
                    self.policy.connections_per_minute
                ),
            ))
        };
        match opened {
            Err(Refusal(status, why)) => {
                let _ = refuse(&mut client, status, &why).await;
                self.refused(host, port, why);
            }
            Ok((upstream, addr)) => {
                (self.record)(Event {
                    host,
                    port,
                    allowed: true,
                    address: Some(addr),
                    reason: "allowed by the egress allowlist".into(),
                });
                self.splice(client, upstream, target, head).await;
            }
        }
    }

    /// Checks, resolves and connects.
    async fn open(&self, t: &Target) -> Result<(TcpStream, SocketAddr), Refusal> {
        // INVARIANT (fail-closed): only hosts on the allowlist, only public addresses (or the
        // operator's listed networks), connected to exactly the address that was checked.
        if !self.policy.allow.iter().any(|r| r.matches(&t.host, t.port)) {
            return Err(Refusal(
                "403 Forbidden",
                format!("`{}:{}` is not on the egress allowlist", t.host, t.port),
            ));
        }
        let addrs = match t.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, t.port)],
            Err(_) => tokio::time::timeout(STEP_TIMEOUT, self.resolver.resolve(&t.host, t.port))
                .await
                .map_err(|_| {
                    Refusal(
                        "502 Bad Gateway",
                        format!("resolving `{}` timed out", t.host),
                    )
                })?
                .map_err(|e| {
                    Refusal(
                        "502 Bad Gateway",
                        format!("cannot resolve `{}`: {e}", t.host),
                    )
                })?,
        };
        if addrs.is_empty() {
            return Err(Refusal(
                "502 Bad Gateway",
                format!("`{}` has no address", t.host),
            ));
        }
        for a in &addrs {
            if let Some(why) = non_public(a.ip()) {
                if !self.policy.private_allow.iter().any(|n| n.contains(a.ip())) {
                    return Err(Refusal(
                        "403 Forbidden",
                        format!("`{}` resolves to {} ({why})", t.host, a.ip()),
                    ));
                }
            }
        }
        let mut last = String::new();
        for a in addrs {
            match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    // A relay adds no Nagle wait to what it carries.
                    let _ = s.set_nodelay(true);
                    return Ok((s, a));
                }
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: timed out"),
            }
        }
        Err(Refusal(
            "502 Bad Gateway",
            format!("cannot connect to `{}`: {last}", t.host),
        ))
    }

    async fn splice(
        &self,
        mut client: UnixStream,
        mut upstream: TcpStream,
        t: Target,
        head: Vec<u8>,
    ) {
        if t.connect {
            if client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            if let Some(rest) = head.get(t.head_len..) {
                if upstream.write_all(rest).await.is_err() {
                    return;
                }
            }
        } else {
            // Absolute form: one request, in origin form, to the host it names (its `Host`
            // header must agree), and the connection closes after the answer: a second,
            // pipelined request cannot ride along to another virtual host unchecked.
            let rewritten = match origin_form(&t, &head) {
                Ok(r) => r,
                Err(why) => {
                    let why = why.to_string();
                    let _ = refuse(&mut client, "400 Bad Request", &why).await;
                    self.refused(t.host.clone(), t.port, why);
                    return;
                }
            };
            if upstream.write_all(&rewritten).await.is_err() {
                return;
            }
        }
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        let out = copy_capped(cr, uw, self.policy.max_bytes_out);
        let back = copy_capped(ur, cw, self.policy.max_bytes_in);
        tokio::pin!(out, back);
        // INVARIANT (INV-011): a direction over its cap ends the whole connection at once.
        let capped = tokio::select! {
            o = &mut out => if o { Some("out") } else if back.await { Some("in") } else { None },
            b = &mut back => if b { Some("in") } else if out.await { Some("out") } else { None },
        };
        if let Some(dir) = capped {
            self.refused(
                t.host.clone(),
                t.port,
                format!("payload cap exceeded ({dir}): connection cut"),
            );
        }
    }
}

/// Entry point for `cargo fuzz` (`fuzz/fuzz_targets/egress_head.rs`), also replayed by the
/// tests: parses a request head as the proxy does; returns the destination it names.
///
/// # Errors
/// Why the head is refused.
pub fn parse_head(head: &[u8]) -> Result<(String, u16), HeadError> {
    parse_target(head).map(|t| (t.host, t.port))
}

/// Copies until EOF or `cap` bytes; returns whether the cap was exceeded.
async fn copy_capped<R, W>(mut r: R, mut w: W, cap: u64) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, r.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        total = total.saturating_add(n as u64);
        if total > cap {
            let _ = w.shutdown().await;
            return true;
        }
        let Some(chunk) = buf.get(..n) else { break };
        if w.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
    false
}

/// Why a request head is refused (answered `400 Bad Request` and recorded). Values quoted from
/// the request are escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The head ended before its request line did.
    #[error("no request line")]
    NoRequestLine,
    /// The request line or headers are not UTF-8.
    #[error("the {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Not `METHOD TARGET VERSION`.
    #[error("malformed request line `{0}`")]
    RequestLine(String),
    /// Not HTTP/1.x.
    #[error("unsupported protocol `{0}`")]
    Protocol(String),
    /// Neither CONNECT nor an absolute `http://` target.
    #[error("`{0}`: only CONNECT and absolute http:// requests go through the egress proxy")]
    Target(String),
    /// A method that is not upper-case letters.
    #[error("bad method `{0}`")]
    Method(String),
    /// `user:password@` in the authority.
    #[error("credentials in the authority are refused")]
    Credentials,
    /// `[` with no `]`.
    #[error("`{0}`: unclosed [")]
    Bracket(String),
    /// Between brackets, something else than an IPv6 address.
    #[error("`{0}` is not an IPv6 address")]
    Ipv6(String),
    /// A port that is not 1 to 65535.
    #[error("`{0}` is not a port")]
    Port(String),
    /// A CONNECT target without a port.
    #[error("`{0}` has no port")]
    NoPort(String),
    /// A host that is neither a host name nor an IP address.
    #[error("`{0}` is not a host name")]
    Host(String),
    /// A header line without `:`.
    #[error("malformed header `{0}`")]
    Header(String),
    /// A `Host` header naming another host than the target (or a second one).
    #[error("the Host header `{value}` does not name `{target}`")]
    HostHeader {
        /// The header's value.
        value: String,
        /// The target's host.
        target: String,
    },
    /// The head is shorter than its request line said.
    #[error("truncated request head")]
    Truncated,
    /// Reading failed.
    #[error("reading the request: {0}")]
    Read(String),
    /// The client closed first.
    #[error("the client closed before a full request head")]
    Closed,
    /// Longer than [`MAX_HEAD`].
    #[error("request head over {MAX_HEAD} bytes")]
    TooLong,
}

/// `s`, escaped for a message.
fn esc(s: &str) -> String {
    s.escape_debug().to_string()
}

/// The head of an absolute-form request as it goes to the origin: origin-form request line,
/// the client's headers without hop-by-hop connection headers, `Connection: close`, and any
/// body bytes that came with the head.
fn origin_form(t: &Target, head: &[u8]) -> Result<Vec<u8>, HeadError> {
    let headers = head
        .get(t.line_len..t.head_len.saturating_sub(2))
        .ok_or(HeadError::Truncated)?;
    let headers = std::str::from_utf8(headers).map_err(|_| HeadError::NotUtf8("headers"))?;
    let mut out = format!("{} {} {}\r\n", t.method, t.path, t.version);
    let mut host_seen = false;
    for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HeadError::Header(esc(line)))?;
        let name_l = name.trim().to_ascii_lowercase();
        if name_l == "host" {
            let v = value.trim().to_ascii_lowercase();
            let bare = v
                .strip_prefix('[')
                .and_then(|r| r.split_once(']').map(|(h, _)| h.to_owned()))
                .unwrap_or_else(|| v.rsplit_once(':').map_or(v.clone(), |(h, _)| h.to_owned()));
            if bare != t.host || host_seen {
                return Err(HeadError::HostHeader {
                    value: esc(value.trim()),
                    target: t.host.clone(),
                });
            }
            host_seen = true;
        }
        if matches!(
            name_l.as_str(),
            "connection" | "proxy-connection" | "keep-alive" | "proxy-authorization"
        ) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !host_seen {
        out.push_str(&format!("Host: {}\r\n", t.host));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(head.get(t.head_len..).unwrap_or_default());
    Ok(bytes)
}

async fn refuse(client: &mut UnixStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("warden egress: {why}\n");
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(msg.as_bytes()).await?;
    client.shutdown().await
}

/// Reads up to the end of the request head (`\r\n\r\n`).
async fn read_head(c: &mut UnixStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = c
            .read(&mut chunk)
            .await
            .map_err(|e| HeadError::Read(e.to_string()))?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLong);
        }
    }
}

/// Where a request wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    connect: bool,
    host: String,
    port: u16,
    method: String,
    path: String,
    version: String,
    /// Bytes of the request line, CRLF included.
    line_len: usize,
    /// Bytes of the whole head.
    head_len: usize,
}

/// Parses the request line of `head`.
fn parse_target(head: &[u8]) -> Result<Target, HeadError> {
    let end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(HeadError::NoRequestLine)?;
    let head_len = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    let line = std::str::from_utf8(head.get(..end).unwrap_or_default())
        .map_err(|_| HeadError::NotUtf8("request line"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::RequestLine(esc(line)));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Protocol(esc(version)));
    }
    let (connect, authority, path) = if method == "CONNECT" {
        (true, uri, "")
    } else if let Some(rest) = uri.strip_prefix("http://") {
        let slash = rest.find('/').unwrap_or(rest.len());
        let (auth, p) = rest.split_at(slash);
        (false, auth, if p.is_empty() { "/" } else { p })
    } else {
        return Err(HeadError::Target(esc(uri)));
    };
    let default_port = if connect { None } else { Some(80) };
    let (host, port) = split_authority(authority, default_port)?;
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
        return Err(HeadError::Method(esc(method)));
    }
    Ok(Target {
        connect,
        host,
        port,
        method: method.to_owned(),
        path: path.to_owned(),
        version: version.to_owned(),
        line_len: end + 2,
        head_len,
    })
}

fn split_authority(a: &str, default_port: Option<u16>) -> Result<(String, u16), HeadError> {
    if a.contains('@') {
        return Err(HeadError::Credentials);
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| HeadError::Bracket(esc(a)))?;
        h.parse::<Ipv6Addr>().map_err(|_| HeadError::Ipv6(esc(h)))?;
        (h, tail.strip_prefix(':'))
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| HeadError::Port(esc(p)))?,
        None => default_port.ok_or_else(|| HeadError::NoPort(esc(a)))?,
    };
    let host = host.to_ascii_lowercase();
    if !(valid_host(&host) || host.parse::<IpAddr>().is_ok()) {
        return Err(HeadError::Host(esc(&host)));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_goes_on_for_its_own_host_and_closes() {
        let head = b"GET http://h.test/a HTTP/1.1\r\nHost: H.test:80\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\nbody";
        let t = parse_target(head).unwrap();
        let out = String::from_utf8(origin_form(&t, head).unwrap()).unwrap();
        assert_eq!(
            out,
            "GET /a HTTP/1.1\r\nHost: H.test:80\r\nAccept: */*\r\nConnection: close\r\n\r\nbody"
        );
        let other = b"GET http://h.test/a HTTP/1.1\r\nHost: internal.test\r\n\r\n";
        let t = parse_target(other).unwrap();
        let err = origin_form(&t, other).unwrap_err().to_string();
        assert!(err.contains("does not name `h.test`"), "{err}");
        let twice = b"GET http://h.test/ HTTP/1.1\r\nHost: h.test\r\nHost: h.test\r\n\r\n";
        assert!(origin_form(&parse_target(twice).unwrap(), twice).is_err());
        let none = b"GET http://h.test/ HTTP/1.1\r\n\r\n";
        let out = origin_form(&parse_target(none).unwrap(), none).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("Host: h.test\r\n"));
    }

    #[test]
    fn request_lines_are_parsed_or_refused_with_the_reason() {
        let t = parse_target(b"CONNECT API.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(t.connect);
        assert_eq!((t.host.as_str(), t.port), ("api.example.com", 443));
        let g = parse_target(b"GET http://h.test/a?b HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            (g.host.as_str(), g.port, g.path.as_str()),
            ("h.test", 80, "/a?b")
        );
        let v6 = parse_target(b"CONNECT [2606:4700::1]:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(v6.host, "2606:4700::1");
        for (bad, says) in [
            (&b"GET /local HTTP/1.1\r\n\r\n"[..], "only CONNECT"),
            (b"CONNECT host HTTP/1.1\r\n\r\n", "no port"),
            (b"CONNECT u:p@host:443 HTTP/1.1\r\n\r\n", "credentials"),
            (b"CONNECT host:443 SPDY/3\r\n\r\n", "unsupported protocol"),
            (b"CONNECT ho$t:443 HTTP/1.1\r\n\r\n", "not a host name"),
            (b"\xff\xfe\r\n\r\n", "not UTF-8"),
        ] {
            let err = parse_target(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}
