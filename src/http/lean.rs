//! The lean writer: answers one request and closes the connection. It writes the response
//! head, then the body frames straight to the socket, those ready at once together in one
//! (vectored) write, chunked, with its length, or (HTTP/1.0) delimited by the close; it holds
//! no buffer between writes.
//!
//! It watches the socket meanwhile: a client that closes its side is taken to have gone, and
//! its stream ends at once rather than at the next keep-alive. (A client that only half-closes
//! after its request is treated the same; HTTP clients and EventSource do not do that.)

use std::io;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{Response, StatusCode, Version, header};
use bytes::{Buf, BytesMut};
use futures::FutureExt as _;
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

/// Ready events are gathered into one write up to about this many bytes.
const BATCH: usize = 64 * 1024;
/// How long what a client still sends is read after our end, so that closing with unread
/// input does not reset the connection and destroy the end of the answer on its way.
const LINGER: Duration = Duration::from_secs(1);

/// Writes the response and closes the connection.
pub async fn respond(
    mut stream: TcpStream,
    response: Response<Body>,
    version: Version,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    // These never have a body, whatever the body says.
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let length = axum::body::HttpBody::size_hint(&body).exact();
    // HTTP/1.0 has no chunks: its body ends when the connection closes.
    let chunked = !bodiless && length.is_none() && version == Version::HTTP_11;
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(match version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    let reason = parts.status.canonical_reason().unwrap_or_default();
    head.extend_from_slice(reason.as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let framing = [
            header::CONNECTION,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::DATE,
        ];
        if !framing.contains(name) {
            put_header(&mut head, name.as_str(), value.as_bytes());
        }
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    put_header(&mut head, "date", date.as_bytes());
    put_header(&mut head, "connection", b"close");
    match length {
        _ if bodiless => {}
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
    if !bodiless {
        let mut body = std::pin::pin!(body);
        loop {
            let frame = tokio::select! {
                biased;
                frame = body.frame() => frame,
                () = hung_up(&mut reader) => return Ok(()),
            };
            let first = match Next::of(frame) {
                Next::Data(data) => data,
                Next::Skip => continue,
                Next::End => break,
                Next::Broken => return Ok(()),
            };
            // Events that are ready too go out in the same write: a batch of log lines costs
            // one write, not one per line.
            let mut batch: Option<BytesMut> = None;
            let mut then = Next::Skip;
            while batch.as_ref().map_or(first.len(), BytesMut::len) < BATCH {
                match body.frame().now_or_never().map(Next::of) {
                    None => break,
                    Some(Next::Skip) => {}
                    Some(Next::Data(more)) => batch
                        .get_or_insert_with(|| BytesMut::from(&first[..]))
                        .extend_from_slice(&more),
                    Some(end) => {
                        then = end;
                        break;
                    }
                }
            }
            let data = batch.map_or(first, BytesMut::freeze);
            if chunked {
                let mut size = [0u8; 18];
                let size = chunk_size(data.len(), &mut size);
                let mut chunk = Buf::chain(Buf::chain(size, data), &b"\r\n"[..]);
                writer.write_all_buf(&mut chunk).await?;
            } else {
                writer.write_all(&data).await?;
            }
            match then {
                Next::End => break,
                Next::Broken => return Ok(()),
                Next::Data(_) | Next::Skip => {}
            }
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n").await?;
        }
    }
    writer.shutdown().await?;
    let _ = tokio::time::timeout(LINGER, hung_up(&mut reader)).await;
    Ok(())
}

/// What a body frame means for the writer.
enum Next {
    Data(Bytes),
    /// Empty, or trailers: nothing to write.
    Skip,
    End,
    /// The body broke: close without the last chunk, so the client sees it cut.
    Broken,
}

impl Next {
    fn of(frame: Option<Result<Frame<Bytes>, axum::Error>>) -> Next {
        match frame {
            None => Next::End,
            Some(Err(_)) => Next::Broken,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => Next::Data(data),
                _ => Next::Skip,
            },
        }
    }
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
async fn hung_up(reader: &mut ReadHalf<'_>) {
    let mut scratch = [0u8; 64];
    while let Ok(n) = reader.read(&mut scratch).await {
        if n == 0 {
            return;
        }
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
