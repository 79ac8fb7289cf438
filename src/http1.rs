//! The server's HTTP/1 connections. Every request goes through the same router; what differs
//! is who speaks HTTP on the connection.
//!
//! A connection whose first request asks for an event stream (`GET` with `Accept:
//! text/event-stream`, no body) is answered by a lean writer here: a client following a log
//! holds its connection for hours, and hyper keeps about 24 KiB of buffers per connection,
//! more than everything else a follower costs. The lean writer parses the head once, hands the
//! request to the router, writes the response head and each body frame straight to the socket
//! (chunked, or with its length), and closes the connection at the end (`Connection: close`;
//! SSE clients reconnect anyway). Every other connection goes to hyper, with the bytes already
//! read put back in front of the socket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{self, HeaderName, HeaderValue, Request, Response, Version, header};
use bytes::Buf as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// A head that does not fit is left to hyper, which has its own (larger) limit.
const HEAD_LIMIT: usize = 8 * 1024;
/// Headers a lean request may have; one with more is left to hyper.
const MAX_HEADERS: usize = 48;
/// A client that sends no complete head in this time is disconnected.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets
/// requests in progress finish, and returns once every connection has closed. Event streams
/// end by themselves at shutdown (their handlers watch the server's shutdown token).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
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
    connections.wait().await;
    Ok(())
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
            let _ = write_response(stream, response, version).await;
        }
        None => {
            let io = TokioIo::new(Rewind {
                read: Some(Bytes::from(head)),
                stream,
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, TowerToHyperService::new(router));
            let mut served = std::pin::pin!(served);
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
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/event-stream")));
    wants_events.then_some((request, version))
}

/// Writes the response and closes the connection. The body's frames go out as they come,
/// each in one write; a client that hangs up ends the body at once.
async fn write_response(
    mut stream: TcpStream,
    response: Response<Body>,
    version: Version,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let length = http_body::Body::size_hint(&body).exact();
    // HTTP/1.0 has no chunks: its body ends when the connection closes.
    let chunked = length.is_none() && version == Version::HTTP_11;
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(match version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if [
            header::CONNECTION,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::DATE,
        ]
        .contains(name)
        {
            continue;
        }
        put_header(&mut head, name.as_str(), value.as_bytes());
    }
    put_header(
        &mut head,
        "date",
        httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
    );
    put_header(&mut head, "connection", b"close");
    match length {
        Some(n) => put_header(
            &mut head,
            "content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        None if chunked => put_header(&mut head, "transfer-encoding", b"chunked"),
        None => {}
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await?;
    drop(head);

    let (mut reader, mut writer) = stream.split();
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = hung_up(&mut reader) => return Ok(()),
        };
        let data = match frame {
            None => break,
            // The body broke: close without the last chunk, so the client sees it cut.
            Some(Err(_)) => return Ok(()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if chunked {
            let mut size = [0u8; 18];
            let size = chunk_size(data.len(), &mut size);
            let mut chunk = bytes::Buf::chain(size, data).chain(&b"\r\n"[..]);
            writer.write_all_buf(&mut chunk).await?;
        } else {
            writer.write_all(&data).await?;
        }
    }
    if chunked {
        writer.write_all(b"0\r\n\r\n").await?;
    }
    writer.shutdown().await
}

fn put_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// `{len:x}\r\n`, the line before a chunk.
fn chunk_size(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[i..]
}

/// Completes when the client closes its side (or the connection breaks); what it sends
/// meanwhile is dropped, since a lean connection takes no further requests.
async fn hung_up(reader: &mut tokio::net::tcp::ReadHalf<'_>) {
    let mut scratch = [0u8; 64];
    while let Ok(n) = reader.read(&mut scratch).await {
        if n == 0 {
            return;
        }
    }
}

/// The socket with the bytes already read from it put back in front, for hyper.
struct Rewind {
    read: Option<Bytes>,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(read) = self.read.as_mut() {
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read[..n]);
            read.advance(n);
            if read.is_empty() {
                self.read = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn chunk_sizes_are_hex_lines() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_size(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_size(255, &mut buf), b"ff\r\n");
        assert_eq!(chunk_size(0x1_0000, &mut buf), b"10000\r\n");
        assert_eq!(chunk_size(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
    }
}
