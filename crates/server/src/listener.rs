//! The public listener's defences against slow and numerous clients, and the client
//! address the throttles key on:
//! - a cap on open connections (past it, new connections wait in the kernel's backlog
//!   until one closes), and beneath it a cap per client address, so one address cannot
//!   take every slot;
//! - a deadline for a request's whole head (a client dripping header bytes is cut off
//!   however often it sends one), and one for its whole body;
//! - an inactivity timeout on every connection (no byte read or written for `idle`
//!   closes it: a client that stops reading its response is let go).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::config::IpNet;

/// The connection rules of [`serve`], from the settings.
#[derive(Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub per_address: usize,
    pub idle: Duration,
    pub head: Duration,
    pub body: Duration,
    pub trusted_proxies: Arc<[IpNet]>,
    /// HTTPS: every connection starts with a TLS handshake (within `head`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

async fn serve_connection<I, S>(io: I, service: S, head: Duration, watcher: hyper_util::server::graceful::Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head)
        // A connection's read buffer keeps the largest size it ever grew to (by default
        // up to 400 KiB, reached by every large upload): 64 KiB still holds any request
        // head and reads a body in few enough calls.
        .max_buf_size(64 << 10)
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Accepts connections and serves `app` on each until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let addresses = Addresses::default();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Waiting for a permit before accepting leaves further clients in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let trusted = is_trusted(&limits.trusted_proxies, peer.ip());
        let Some(slot) = addresses.take(peer.ip(), if trusted { usize::MAX } else { limits.per_address }) else {
            tracing::debug!(%peer, "connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(GuardedStream::new(stream, permit, slot, limits.idle));
        let connection = Peer {
            addr: peer,
            trusted_proxies: limits.trusted_proxies.clone(),
        };
        let body_deadline = limits.body;
        let service = tower::ServiceExt::map_request(app.clone(), move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(|b| Body::new(DeadlineBody::new(b, body_deadline)));
            req.extensions_mut().insert(connection.clone());
            req
        });
        let head = limits.head;
        let watcher = graceful.watcher();
        let Some(tls) = limits.tls.clone() else {
            tokio::spawn(serve_connection(io, service, head, watcher));
            continue;
        };
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(head, tls.accept(io.into_inner())).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            // A TLS-ALPN-01 validation ends with the handshake (RFC 8737 §3).
            if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                return;
            }
            serve_connection(TokioIo::new(stream), service, head, watcher).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn is_trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    proxies.iter().any(|p| p.contains(ip))
}

/// Open connections per client address.
#[derive(Clone, Default)]
struct Addresses(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in its address's count, given back when the connection ends.
struct AddressSlot {
    addresses: Addresses,
    ip: IpAddr,
}

impl Addresses {
    fn take(&self, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock().expect("address count lock");
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            addresses: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.addresses.0.lock().expect("address count lock");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A request body that must arrive whole within its deadline, counted from the first
/// time the handler reads it: a client trickling a byte now and then cannot hold a
/// request (and its buffers) open.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(Duration);

impl DeadlineBody {
    fn new(inner: hyper::body::Incoming, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            limit,
            deadline: None,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = this.limit;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection that holds one of the listener's permits and its address's slot, and
/// times out when inactive.
struct GuardedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl GuardedStream {
    fn new(inner: TcpStream, permit: OwnedSemaphorePermit, slot: AddressSlot, idle: Duration) -> Self {
        GuardedStream {
            inner,
            _permit: permit,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Passes a socket result through: progress pushes the deadline back; no progress
    /// past the deadline ends the connection.
    fn guard<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.deadline.as_mut().reset(Instant::now() + self.idle);
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection inactive"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.guard(cx, r)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.guard(cx, r)
    }

    // Without these hyper sees a stream that cannot write vectors and copies every
    // response body into the connection's write buffer, which keeps its size: with pages
    // of up to 1 MiB that was most of the server's memory under load (35 of 67 MiB of
    // heap at 32 clients, heaptrack). With them the body goes to the socket as it is.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection a request came over: its peer, and whose forwarding headers to believe.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    trusted_proxies: Arc<[IpNet]>,
}

/// The address a request comes from, for throttling. A peer named in `trusted_proxies`
/// (by default the loopback addresses, where a local reverse proxy connects from) is
/// believed about `X-Forwarded-For`: walking it from the right, each trusted proxy names
/// the hop before it, and the first address that is not a trusted proxy is the client.
/// The entries left of that were written by the client and are never used, so nobody
/// can choose their own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

pub fn client_addr(peer: Option<SocketAddr>, trusted: &[IpNet], headers: &http::HeaderMap) -> Option<IpAddr> {
    let mut client = peer?.ip();
    if !is_trusted(trusted, client) {
        return Some(client);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        // A hop our own proxy wrote that does not parse: stop at the proxy rather than
        // read further left, where the client writes.
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    Some(client)
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(peer) = parts.extensions.get::<Peer>() {
            return Ok(ClientAddr(client_addr(
                Some(peer.addr),
                &peer.trusted_proxies,
                &parts.headers,
            )));
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        Ok(ClientAddr(client_addr(peer, &[], &parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_read_from_the_right_past_trusted_proxies() {
        let trusted = [IpNet::parse("127.0.0.1").unwrap(), IpNet::parse("10.0.0.0/8").unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3".parse().unwrap());
        let local: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        assert_eq!(
            client_addr(Some(local), &trusted, &h),
            Some("203.0.113.9".parse().unwrap()),
            "the right-most address that is not a trusted proxy; the client-written 6.6.6.6 is ignored"
        );
        assert_eq!(
            client_addr(Some(remote), &trusted, &h),
            Some(remote.ip()),
            "untrusted peers are not believed"
        );
        assert_eq!(
            client_addr(Some(local), &trusted, &http::HeaderMap::new()),
            Some(local.ip())
        );
        h.insert("x-forwarded-for", "203.0.113.9, garbage".parse().unwrap());
        assert_eq!(client_addr(Some(local), &trusted, &h), Some(local.ip()));
        h.insert("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
        assert_eq!(
            client_addr(Some(local), &trusted, &h),
            Some("10.0.0.1".parse().unwrap()),
            "all trusted: the left-most hop"
        );
        assert_eq!(client_addr(None, &trusted, &h), None);
        let not_loopback: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(
            client_addr(Some(not_loopback), &trusted, &h),
            Some(not_loopback.ip()),
            "only the configured proxies are trusted, not all of 127/8"
        );
    }

    #[test]
    fn address_slots_are_counted_and_given_back() {
        let a = Addresses::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = a.take(ip, 2).unwrap();
        let two = a.take(ip, 2).unwrap();
        assert!(a.take(ip, 2).is_none());
        assert!(
            a.take("192.0.2.2".parse().unwrap(), 2).is_some(),
            "other addresses are not affected"
        );
        drop(one);
        assert!(a.take(ip, 2).is_some());
        drop(two);
    }
}
