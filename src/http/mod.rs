//! The server's connections. Every request goes through one shared router; what differs is
//! who speaks HTTP on the connection.
//!
//! hyper serves every connection, HTTP/1.1 or HTTP/2 with prior knowledge (h2c, for clients
//! that multiplex many event streams over one connection), tuned for many small idle ones:
//! HTTP/1 buffers bounded (a head over 64 KiB is refused), body frames written from where they
//! lie, HTTP/2 windows sized for small requests. One case is not hyper's: a connection whose first request
//! is an HTTP/1 event stream (`GET` with `Accept: text/event-stream`, no body) is answered by
//! the [`lean`] writer. A client following a log holds its connection for hours, and hyper
//! allocates 16 KiB of HTTP/1 buffers per connection whatever it is told (its minimum: 8 KiB to
//! read, 8 KiB for response heads), three times what everything else a follower costs (the
//! README's "SSE memory" has the figures). The head is classified here ([`head`]), the
//! request goes through the router, and the connection closes at the end of the answer
//! (`Connection: close`; SSE clients reconnect anyway). Every other connection goes to hyper,
//! with the bytes already read put back in front of the socket ([`rewind`]).

mod activity;
mod head;
mod lean;
mod rewind;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use activity::{Activity, Tracked};
pub use head::{Head, classify};

/// A client that sends no complete head in this time is disconnected; so is a connection on
/// which no request has been in progress for this long (an HTTP/2 client that sent its
/// preface and nothing else, or stays silent between requests).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// At shutdown, how long answers in progress may take; a client that stopped reading must not
/// hold the server up forever.
const DRAIN: Duration = Duration::from_secs(10);
/// hyper's HTTP/1 read buffer grows up to this; a request head must fit in it (else `431
/// Request Header Fields Too Large`). Bodies are streamed through it.
const MAX_BUF: usize = 64 * 1024;
/// HTTP/2 streams one connection may carry at once: a follower each, for a multiplexing
/// client.
const MAX_STREAMS: u32 = 1024;
/// What one HTTP/2 stream may have queued for a client that does not read: events wait in
/// their feed, not in hyper's buffers (hyper's default, 400 KiB, times [`MAX_STREAMS`] would
/// let one connection hold 400 MiB).
const STREAM_SEND_BUF: usize = 16 * 1024;
/// HTTP/2 flow-control windows: how much a client may send before the server reads it.
/// Requests are small and read as they come.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// An HTTP/2 peer that answers no ping in this time is gone.
const PING_INTERVAL: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

type Builder = auto::Builder<TokioExecutor>;

/// How hyper speaks on every connection, set once.
fn builder() -> Builder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_BUF)
        // Body frames (events) go out as they are, in one vectored write, not copied first.
        .writev(true)
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buf_size(STREAM_SEND_BUF)
        // The same bound on a request's headers as HTTP/1's (hyper's HTTP/2 default is 16 KiB).
        .max_header_list_size(MAX_BUF as u32)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT);
    builder
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets
/// requests in progress finish (for up to [`DRAIN`]), and returns once every connection has
/// closed. Event streams end by themselves at shutdown (their handlers watch the server's
/// shutdown token).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    // Every route in its final form once, not once per connection.
    let router = router.with_state(());
    let builder = Arc::new(builder());
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(connection(
            stream,
            router.clone(),
            builder.clone(),
            closing.clone(),
        ));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after {DRAIN:?} of shutdown are dropped"
        );
    }
}

/// Out of file descriptors or memory: wait a moment instead of spinning; a connection that
/// failed before it was accepted is just gone.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::warn!(error = %e, "accepting a connection failed");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn connection(
    mut stream: TcpStream,
    router: axum::Router,
    builder: Arc<Builder>,
    closing: CancellationToken,
) {
    // Events are small and should leave at once.
    let _ = stream.set_nodelay(true);
    let mut head = Vec::new();
    let lean = tokio::select! {
        // A request already here is answered, even when shutdown has begun.
        biased;
        read = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut head)) => match read {
            Ok(Ok(lean)) => lean,
            // Silent, gone or broken before a whole head: there is no one to answer.
            Ok(Err(_)) | Err(_) => return,
        },
        () = closing.cancelled() => return,
    };
    match lean {
        Head::Lean(request, version) => {
            drop((head, builder));
            let response = match router.oneshot(*request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            let _ = lean::respond(stream, response, version).await;
        }
        Head::Partial | Head::Hyper => {
            let activity = Arc::new(Activity::default());
            let service = TowerToHyperService::new(Tracked::new(router, activity.clone()));
            let io = TokioIo::new(rewind::Rewind::new(head, stream));
            let served = builder.serve_connection(io, service);
            // Boxed, so that a lean connection's task is not sized for hyper's state.
            let mut served = Box::pin(served);
            let mut idle = activity.idle_checks(HEAD_TIMEOUT);
            tokio::select! {
                _ = served.as_mut() => return,
                () = closing.cancelled() => served.as_mut().graceful_shutdown(),
                () = idle.idle() => {
                    served.as_mut().graceful_shutdown();
                    // An HTTP/2 peer that stopped answering never acknowledges the goodbye.
                    let _ = tokio::time::timeout(DRAIN, served).await;
                    return;
                }
            }
            let _ = served.await;
        }
    }
}

/// Reads until the first request's head is complete, or hyper's business. Answers
/// [`Head::Lean`] or [`Head::Hyper`] (the bytes read are in `buf`), or an error when the
/// client left before sending anything.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    loop {
        buf.reserve(1024.min(head::HEAD_LIMIT - buf.len()));
        if stream.read_buf(buf).await? == 0 {
            return match buf.is_empty() {
                true => Err(io::ErrorKind::UnexpectedEof.into()),
                // hyper answers a cut head as it should.
                false => Ok(Head::Hyper),
            };
        }
        match classify(buf) {
            Head::Partial => continue,
            decided => return Ok(decided),
        }
    }
}
