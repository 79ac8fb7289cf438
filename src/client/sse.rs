//! A Server-Sent Events parser (the WHATWG event-stream format): bytes in, events out. Used by
//! the CLI to follow logs and events, and by the tests as any client would.

use futures::{Stream, StreamExt as _};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `id:` field, when the event had one.
    pub id: Option<String>,
    /// The `event:` field; `message` when absent.
    pub event: String,
    pub data: String,
}

/// Incremental parser: feed it chunks as they arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        // Lines are read where they lie; what was read is dropped once, at the end, so a chunk
        // of many lines is not shifted once per line.
        let buffer = std::mem::take(&mut self.buffer);
        let mut start = 0;
        while let Some(at) = memchr::memchr2(b'\n', b'\r', &buffer[start..]) {
            let end = start + at;
            // A CR LF pair ends one line; a lone CR waits for the next chunk if it is last.
            let skip = if buffer[end] == b'\r' {
                match buffer.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => break,
                }
            } else {
                1
            };
            let bytes = &buffer[start..end];
            // Validating first is several times faster than a lossy decode of valid text.
            let line = match std::str::from_utf8(bytes) {
                Ok(line) => std::borrow::Cow::Borrowed(line),
                Err(_) => String::from_utf8_lossy(bytes),
            };
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            start = end + skip;
        }
        self.buffer = buffer;
        self.buffer.drain(..start);
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take()?;
            return Some(SseEvent {
                id: self.id.clone(),
                event: self.event.take().unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None; // a comment: keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// The events of a streaming response, in order.
pub fn events(response: reqwest::Response) -> impl Stream<Item = Result<SseEvent, reqwest::Error>> {
    let mut parser = SseParser::default();
    response
        .bytes_stream()
        .map(move |chunk| chunk.map(|bytes| parser.feed(&bytes)))
        .flat_map(|result| {
            let items: Vec<Result<SseEvent, reqwest::Error>> = match result {
                Ok(events) => events.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunk_boundaries() {
        let mut p = SseParser::default();
        let mut got = p.feed(b"id: 1\ndata: {\"a\"");
        assert!(got.is_empty());
        got.extend(p.feed(b":1}\n\n: keep-alive\n\nevent: end\r\ndata: x\r\ndata: y\r\n\r\n"));
        assert_eq!(
            got,
            vec![
                SseEvent {
                    id: Some("1".into()),
                    event: "message".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: Some("1".into()),
                    event: "end".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn a_blank_line_without_data_dispatches_nothing() {
        let mut p = SseParser::default();
        assert!(p.feed(b"id: 4\n\n").is_empty());
    }
}
