//! Which writer answers a connection, from its first request head: the lean writer takes a
//! bodiless `GET` that accepts an event stream, and nothing else. This is the seam where
//! request smuggling would live, so it errs towards hyper: anything that is not plainly such a
//! request (a body, an upgrade, an expectation, bytes after the head, a head hyper might read
//! otherwise) is hyper's. `fuzz/fuzz_targets/lean_head.rs` holds it to that.

use axum::body::Body;
use axum::http::{self, HeaderName, HeaderValue, Request, Version, header};

use crate::api::follow::EVENT_STREAM;

/// A head that does not fit is left to hyper, which has its own (larger) limit.
pub const HEAD_LIMIT: usize = 8 * 1024;
/// Headers a lean request may have; one with more is left to hyper.
const MAX_HEADERS: usize = 48;

/// What the bytes read so far from a new connection call for.
#[derive(Debug)]
pub enum Head {
    /// No whole head yet: read on.
    Partial,
    /// The request, for the lean writer, in the HTTP version to answer in.
    Lean(Box<Request<Body>>, Version),
    /// hyper's, with the bytes read put back in front of the socket.
    Hyper,
}

/// Classifies the first bytes of a connection.
pub fn classify(buf: &[u8]) -> Head {
    if buf.len() > HEAD_LIMIT {
        return Head::Hyper;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        // Bytes after the head (a body or a pipelined request) are hyper's business.
        Ok(httparse::Status::Complete(len)) if len == buf.len() => match lean_request(&parsed) {
            Some((request, version)) => Head::Lean(Box::new(request), version),
            None => Head::Hyper,
        },
        Ok(httparse::Status::Complete(_)) => Head::Hyper,
        Ok(httparse::Status::Partial) if buf.len() < HEAD_LIMIT => Head::Partial,
        // Too big, malformed, or too many headers: hyper answers with the right status.
        Ok(httparse::Status::Partial) | Err(_) => Head::Hyper,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lean(head: &str) -> bool {
        matches!(classify(head.as_bytes()), Head::Lean(..))
    }

    #[test]
    fn only_a_plain_event_stream_request_is_lean() {
        let get = "GET /api/v1/steps/x/logs HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n";
        assert!(lean(&format!("{get}\r\n")));
        assert!(lean(&format!("{get}Content-Length: 0\r\n\r\n")));
        assert!(matches!(classify(get.as_bytes()), Head::Partial));
        for smuggled in [
            // A body, in any framing, or a second request behind the head.
            format!("{get}Content-Length: 5\r\n\r\n"),
            format!("{get}Content-Length: 0\r\nContent-Length: 5\r\n\r\n"),
            format!("{get}Transfer-Encoding: chunked\r\n\r\n"),
            format!("{get}Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            format!("{get}\r\nGET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!("{get}Upgrade: h2c\r\n\r\n"),
            format!("{get}Expect: 100-continue\r\n\r\n"),
            // Not a GET, not HTTP/1, or not an event stream.
            "POST /x HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n".into(),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(),
            "GET /x HTTP/1.1\r\nAccept: text/plain\r\n\r\n".into(),
            // Malformed: hyper answers 400.
            "GET /x HTTP/1.1\r\nAccept : text/event-stream\r\n\r\n".into(),
            format!("{get}X-Padding: {}\r\n\r\n", "p".repeat(HEAD_LIMIT)),
        ] {
            assert!(
                matches!(classify(smuggled.as_bytes()), Head::Hyper),
                "{smuggled:?}"
            );
        }
    }
}
