//! The accept loop both HTTP servers use (`[http]` and `helmetd cloud --sedna-http`): a cap on
//! open connections and a deadline on every phase a client controls, so no client, slow or
//! hostile, holds a descriptor or a request slot for longer than the deadlines allow.
//!
//! - At most `max_connections` connections are open; one more is answered 503 without waiting
//!   and closed at once, counted.
//! - A request's head must arrive within `header_timeout` of the server starting to wait for it
//!   (the connection opened, or the previous answer was sent): hyper's `header_read_timeout`, so
//!   the same deadline closes idle keep-alive connections.
//! - Its body must arrive within `body_timeout` of the head; a handler reading it past that gets
//!   an error that [`is_body_timeout`] recognises.
//! - A write that makes no progress for `body_timeout` (a client that sends requests but never
//!   reads the answers) fails the connection.
//!
//! Every deadline that closes a connection is counted in [`ConnectionStats`] and logged once per
//! kind; later ones only at debug level.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// What a refused connection is told, written only if the socket takes it at once.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
    content-length: 0\r\nretry-after: 1\r\n\r\n";
/// After an accept error (e.g. EMFILE: every descriptor in use), the pause before the next try,
/// so the loop does not spin while nothing can be accepted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One server's cap and deadlines (`[http]` or `[sedna]`: `max_connections`,
/// `header_timeout_s`, `body_timeout_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl ConnectionLimits {
    pub fn from_http(cfg: &crate::config::HttpConfig) -> Self {
        Self::new(
            cfg.max_connections,
            cfg.header_timeout_s,
            cfg.body_timeout_s,
        )
    }

    pub fn from_sedna(cfg: &crate::config::SednaConfig) -> Self {
        Self::new(
            cfg.max_connections,
            cfg.header_timeout_s,
            cfg.body_timeout_s,
        )
    }

    fn new(max_connections: usize, header_timeout_s: u64, body_timeout_s: u64) -> Self {
        Self {
            max_connections,
            header_timeout: Duration::from_secs(header_timeout_s),
            body_timeout: Duration::from_secs(body_timeout_s),
        }
    }
}

/// Why a connection was closed by a deadline.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    Header,
    Body,
    Write,
}

impl Deadline {
    const COUNT: usize = 3;

    fn describe(self, limits: &ConnectionLimits) -> String {
        match self {
            Deadline::Header => format!(
                "no complete request head within {:?} (slow or idle client)",
                limits.header_timeout
            ),
            Deadline::Body => format!("request body not complete within {:?}", limits.body_timeout),
            Deadline::Write => format!(
                "the client read nothing of an answer for {:?}",
                limits.body_timeout
            ),
        }
    }
}

/// A server's connection counters, shared with whoever reports them (`/metrics`, logs).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    warned_refused: AtomicBool,
    warned_deadline: [AtomicBool; Deadline::COUNT],
    warned_accept: AtomicBool,
}

/// A copy of [`ConnectionStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: u64,
    /// Connections closed by a deadline (head, body or a stalled answer).
    pub timed_out: u64,
}

impl ConnectionStats {
    pub fn counts(&self) -> ConnectionCounts {
        ConnectionCounts {
            open: self.open.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }

    fn refused(&self, server: &str, limits: &ConnectionLimits, peer: std::net::SocketAddr) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warned_refused.swap(true, Ordering::Relaxed) {
            tracing::debug!(server, %peer, total, "refused a connection");
        } else {
            tracing::warn!(
                server,
                %peer,
                max_connections = limits.max_connections,
                "refused a connection: max_connections are open (further refusals are counted, \
                 logged at debug level)"
            );
        }
    }

    fn timed_out(&self, server: &str, limits: &ConnectionLimits, deadline: Deadline) {
        let total = self.timed_out.fetch_add(1, Ordering::Relaxed) + 1;
        let why = deadline.describe(limits);
        if self.warned_deadline[deadline as usize].swap(true, Ordering::Relaxed) {
            tracing::debug!(server, total, "closed a connection: {why}");
        } else {
            tracing::warn!(
                server,
                "closed a connection: {why} (further ones are counted, logged at debug level)"
            );
        }
    }

    fn accept_failed(&self, server: &str, error: &io::Error) {
        if self.warned_accept.swap(true, Ordering::Relaxed) {
            tracing::debug!(server, %error, "cannot accept a connection");
        } else {
            tracing::warn!(
                server,
                %error,
                "cannot accept a connection (further failures are logged at debug level)"
            );
        }
    }
}

/// The error a request body reports once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("request body not complete within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether `error`, or anything it was caused by, is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<BodyTimeout>())
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes; then stops
/// accepting and waits for the open connections, which the deadlines bound. `server` names the
/// server in logs.
pub async fn serve(
    server: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    // Owned here, so a server task that is aborted takes its connections with it.
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                stats.accept_failed(server, &error);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused(server, &limits, peer);
            // Best effort and never waiting; dropping the stream closes it.
            let _ = stream.try_write(REFUSAL);
            continue;
        };
        let open = Open::new(stats.clone(), slot);
        let connection = Connection {
            server,
            router: router.clone(),
            limits,
            stats: stats.clone(),
        };
        connections.spawn(connection.run(stream, closing_rx.clone(), open));
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

/// A connection's slot, counted as open until the connection ends (or its task is aborted).
struct Open {
    stats: Arc<ConnectionStats>,
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(stats: Arc<ConnectionStats>, slot: OwnedSemaphorePermit) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self { stats, _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Connection {
    server: &'static str,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
}

impl Connection {
    async fn run(self, stream: TcpStream, mut closing: watch::Receiver<bool>, _open: Open) {
        let _ = stream.set_nodelay(true);
        let Self {
            server,
            router,
            limits,
            stats,
        } = self;
        let io = TokioIo::new(WriteDeadline {
            stream,
            timeout: limits.body_timeout,
            stall: None,
        });
        let router = TowerToHyperService::new(router);
        let body_stats = stats.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let deadline = Instant::now() + limits.body_timeout;
            let stats = body_stats.clone();
            router.call(request.map(|body| DeadlineBody {
                inner: body,
                timeout: limits.body_timeout,
                deadline,
                sleep: None,
                on_expiry: Some(Box::new(move || {
                    stats.timed_out(server, &limits, Deadline::Body)
                })),
            }))
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let mut conn = pin!(builder.serve_connection(io, service));
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            // An error means the server is gone: closing as well. (The `Ref` it returns is not
            // `Send`, so it is dropped inside.)
            () = async { drop(closing.wait_for(|closing| *closing).await) } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        let Err(error) = ended else { return };
        if error.is_timeout() {
            stats.timed_out(server, &limits, Deadline::Header);
        } else if write_stalled(&error) {
            stats.timed_out(server, &limits, Deadline::Write);
        } else {
            tracing::debug!(server, %error, "connection ended");
        }
    }
}

fn write_stalled(error: &hyper::Error) -> bool {
    std::iter::successors(Some(error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .filter_map(|e| e.downcast_ref::<io::Error>())
    .any(|e| e.get_ref().is_some_and(|inner| inner.is::<WriteStalled>()))
}

/// A request body that fails once its deadline has passed; `on_expiry` runs once, then.
struct DeadlineBody<B> {
    inner: B,
    timeout: Duration,
    deadline: Instant,
    /// Made on the first wait: bodies that arrive with their head never need a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    on_expiry: Option<Box<dyn FnOnce() + Send>>,
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        if let Some(on_expiry) = this.on_expiry.take() {
            on_expiry();
        }
        Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a write that made no progress for the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing for {0:?}")]
struct WriteStalled(Duration);

/// A TCP stream whose writes fail after making no progress for `timeout`.
struct WriteDeadline<S> {
    stream: S,
    timeout: Duration,
    /// Running while a write waits; dropped as soon as one makes progress.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if write.is_ready() {
            self.stall = None;
            return write;
        }
        let timeout = self.timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            WriteStalled(timeout),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.progress(cx, write)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.progress(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn limits_come_from_their_tables_and_are_validated() {
        let cfg = crate::config::Config::embedded_default().unwrap();
        let http = ConnectionLimits::from_http(&cfg.http);
        assert_eq!(http.max_connections, 64);
        assert_eq!(http.header_timeout, Duration::from_secs(5));
        let sedna = ConnectionLimits::from_sedna(&cfg.sedna);
        assert_eq!(sedna.max_connections, 256);
        assert_eq!(sedna.body_timeout, Duration::from_secs(60));
        let overrides = [
            "http.max_connections=0",
            "http.header_timeout_s=0",
            "sedna.max_connections=5000",
            "sedna.body_timeout_s=0",
        ]
        .map(String::from);
        let error = crate::config::load(crate::config::ConfigSource::Default, &overrides)
            .expect_err("out of range")
            .to_string();
        for key in &overrides {
            let (key, _) = key.split_once('=').unwrap();
            assert!(error.contains(key), "{key} not named in:\n{error}");
        }
    }

    /// A body whose client sent its head and then nothing.
    struct Silent;

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_past_its_deadline_fails_and_is_counted_once() {
        let expired = Arc::new(AtomicU64::new(0));
        let counter = expired.clone();
        let body = DeadlineBody {
            inner: Silent,
            timeout: Duration::from_secs(10),
            deadline: Instant::now() + Duration::from_secs(10),
            sleep: None,
            on_expiry: Some(Box::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            })),
        };
        // Seen as a handler sees it: through axum's body and error types.
        let mut body = axum::body::Body::new(body);
        let started = Instant::now();
        let error = body.frame().await.expect("a frame").expect_err("an error");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(is_body_timeout(&error), "{error}");
        assert_eq!(error.to_string(), "request body not complete within 10s");
        assert!(body.frame().await.expect("a frame").is_err());
        assert_eq!(expired.load(Ordering::Relaxed), 1);
        assert!(!is_body_timeout(&io::Error::other("reset")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = WriteDeadline {
            stream: server,
            timeout: Duration::from_secs(3),
            stall: None,
        };
        // Progress keeps it going: the client reads, and writes go on past the deadline.
        let (mut client_read, _client_write) = tokio::io::split(client);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                tokio::io::AsyncReadExt::read_exact(&mut client_read, &mut buf)
                    .await
                    .unwrap();
            }
            client_read
        });
        for _ in 0..8 {
            server.write_all(&[7; 64]).await.expect("the client reads");
        }
        let _client_read = reader.await.unwrap();
        // Then it stops reading: the write that cannot make progress fails.
        server.write_all(&[7; 64]).await.expect("fits the buffer");
        let started = Instant::now();
        let error = server.write_all(&[7; 64]).await.expect_err("stalled");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.get_ref().is_some_and(|e| e.is::<WriteStalled>()));
    }
}
