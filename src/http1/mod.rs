//! The server's HTTP/1 connections. Every request goes through the same router; what differs
//! is who speaks HTTP on the connection.
//!
//! A connection whose first request asks for an event stream (`GET` with `Accept:
//! text/event-stream`, no body) is answered by the [`lean`] writer: a client following a log
//! holds its connection for hours, and hyper keeps about 24 KiB of buffers per connection,
//! more than everything else a follower costs. The head is parsed here, the request goes
//! through the router, and the connection closes at the end of the answer (`Connection:
//! close`; SSE clients reconnect anyway). Every other connection goes to hyper, with the bytes
//! already read put back in front of the socket ([`rewind`]).

mod lean;
mod rewind;

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::http::{self, HeaderName, HeaderValue, Request, Version, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::api::follow::EVENT_STREAM;

/// A head that does not fit is left to hyper, which has its own (larger) limit.
const HEAD_LIMIT: usize = 8 * 1024;
/// Headers a lean request may have; one with more is left to hyper.
const MAX_HEADERS: usize = 48;
/// A client that sends no complete head in this time is disconnected.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// At shutdown, how long answers in progress may take; a client that stopped reading must not
/// hold the server up forever.
const DRAIN: Duration = Duration::from_secs(10);

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
        connections.spawn(connection(stream, router.clone(), closing.clone()));
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

async fn connection(mut stream: TcpStream, router: axum::Router, closing: CancellationToken) {
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
        Some((request, version)) => {
            drop(head);
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            let _ = lean::respond(stream, response, version).await;
        }
        None => {
            let io = TokioIo::new(rewind::Rewind::new(head, stream));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, TowerToHyperService::new(router));
            // Boxed, so that a lean connection's task is not sized for hyper's state.
            let mut served = Box::pin(served);
            tokio::select! {
                _ = served.as_mut() => return,
                () = closing.cancelled() => served.as_mut().graceful_shutdown(),
            }
            let _ = served.await;
        }
    }
}

/// Reads until the first request's head is complete. Answers the request when it is one for
/// the lean writer, `None` when the connection is hyper's (the bytes read are in `buf`), and
/// an error when the client left before sending a head.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(Request<Body>, Version)>> {
    loop {
        if buf.len() >= HEAD_LIMIT {
            return Ok(None);
        }
        buf.reserve(1024.min(HEAD_LIMIT - buf.len()));
        if stream.read_buf(buf).await? == 0 {
            return match buf.is_empty() {
                true => Err(io::ErrorKind::UnexpectedEof.into()),
                // hyper answers a cut head as it should.
                false => Ok(None),
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                // Bytes after the head (a body or a pipelined request) are hyper's business.
                return Ok((len == buf.len()).then(|| lean_request(&parsed)).flatten());
            }
            Ok(httparse::Status::Partial) => continue,
            // Malformed, or too many headers: hyper answers with the right status.
            Err(_) => return Ok(None),
        }
    }
}

/// The request as the router takes it, when it is one the lean writer serves: a bodiless
/// `GET` that accepts an event stream.
fn lean_request(parsed: &httparse::Request<'_, '_>) -> Option<(Request<Body>, Version)> {
    if parsed.method != Some("GET") {
        return None;
    }
    let version = match parsed.version? {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return None,
    };
    let mut request = Request::builder()
        .method(http::Method::GET)
        .uri(parsed.path?)
        .version(version)
        .body(Body::empty())
        .ok()?;
    let headers = request.headers_mut();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body, an upgrade or an expectation needs hyper.
        if name == header::CONTENT_LENGTH && h.value != b"0"
            || [header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT].contains(&name)
        {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let wants_events = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains(EVENT_STREAM)));
    wants_events.then_some((request, version))
}
