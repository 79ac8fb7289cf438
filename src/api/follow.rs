//! Following a feed over Server-Sent Events without gap or duplicate: subscribe to the live
//! feed first, replay from the database after `Last-Event-ID`, then pass live items on,
//! dropping those already replayed; a client that lags behind the live feed re-reads from the
//! database. Used by step logs and pipeline events alike: both are numbered from 1 without
//! gaps, in commit order, so a gap in the live feed means items to fetch first.
//!
//! What another replica stores arrives as a wake-up, "stored up to N", with no data: the
//! stream reads from the database what comes after its last item, or ignores the wake-up when
//! it has sent N already (this replica published the data itself, first).
//!
//! The stream is axum's [`Sse`]: an event per record, keep-alive comments when quiet. The
//! events of a batch of records are ready at once, so the connection's writer (the lean
//! writer's gathering, hyper's vectored writes) sends them together.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use futures::StreamExt as _;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::hub::Subscription;
use crate::store::StoreError;

/// The media type of an SSE stream.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Items fetched from the database per query while replaying.
pub const PAGE: i64 = 1000;

/// A quiet stream sends a comment this often, so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One numbered item of a followed stream and how it reads as an SSE event.
pub trait Record: Serialize + Send + Sync + 'static {
    /// The event's name; `None` for a plain message.
    const EVENT: Option<&'static str>;

    /// Its sequence number: the event's `id`.
    fn seq(&self) -> i64;

    /// It as one SSE event, its data the record as JSON.
    fn event(&self) -> Event {
        event(Some(self.seq()), Self::EVENT, self)
    }
}

/// One SSE event: its `id`, its name unless it is a plain message, and its data as one line of
/// compact JSON (which never holds a raw line break).
fn event<T: Serialize + ?Sized>(id: Option<i64>, name: Option<&str>, data: &T) -> Event {
    let head = || {
        let mut event = Event::default();
        if let Some(id) = id {
            event = event.id(itoa::Buffer::new().format(id));
        }
        if let Some(name) = name {
            event = event.event(name);
        }
        event
    };
    // Serializing our own types cannot fail; an empty object keeps the event whole.
    head().json_data(data).unwrap_or_else(|_| head().data("{}"))
}

/// What the live feed delivered, in the followed stream's terms.
pub enum Live<R> {
    /// Records in order.
    Items(Arc<[R]>),
    /// One record.
    One(Arc<R>),
    /// The followed thing finished: replay what is left, then end.
    End,
    /// Records up to this number are stored: read those after the last one sent.
    Stored(i64),
    /// Records may have been announced and missed: read what is stored, the end included.
    Resync,
}

/// A followed stream: its stored items and its end.
#[async_trait::async_trait]
pub trait Feed: Send + Sync + 'static {
    /// What the hub delivers.
    type Item: Clone + Send + 'static;
    type Record: Record;
    /// The data of the `end` event.
    type End: Serialize + Send;

    /// Stored records after sequence number `after`, at most [`PAGE`].
    async fn page(&self, after: i64) -> Result<Vec<Self::Record>, StoreError>;

    /// The final event, written as SSE, once the followed thing has finished.
    async fn end(&self) -> Result<Option<Self::End>, StoreError>;

    fn live(&self, item: Self::Item) -> Live<Self::Record>;
}

enum Phase {
    /// Read what is stored, then see whether the followed thing has finished.
    Replay,
    /// Read what is stored after a wake-up, then wait again: the end, if any, is announced.
    CatchUp,
    Live,
    /// Finished: replay the rest, then the end event.
    Ending,
    Done,
}

struct State<F: Feed> {
    feed: F,
    rx: Subscription<F::Item>,
    last: i64,
    phase: Phase,
    /// Events not sent yet, taken whole once ready, so that an idle stream holds nothing.
    out: Vec<Event>,
    shutdown: CancellationToken,
    _gauge: FollowerGauge,
}

/// Counts open streams for `/metrics`.
struct FollowerGauge(metrics::Gauge);

impl FollowerGauge {
    fn new(clients: metrics::Gauge) -> Self {
        clients.increment(1.0);
        FollowerGauge(clients)
    }
}

impl Drop for FollowerGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl<F: Feed> State<F> {
    /// Appends stored records after `last`; returns how many.
    async fn replay_page(&mut self) -> Result<usize, StoreError> {
        let records = self.feed.page(self.last).await?;
        for record in &records {
            self.last = record.seq();
            self.out.push(record.event());
        }
        Ok(records.len())
    }

    /// Appends live records after `last`; false at a gap, which means records were stored
    /// before we subscribed and after our replay read them: those are fetched first.
    fn take_live(&mut self, records: &[F::Record]) -> bool {
        for record in records {
            let seq = record.seq();
            if seq > self.last {
                if seq > self.last + 1 {
                    return false;
                }
                self.last = seq;
                self.out.push(record.event());
            }
        }
        true
    }

    /// Moves the state machine until there is something to send or nothing more will come.
    async fn advance(&mut self) -> Result<(), StoreError> {
        while self.out.is_empty() {
            match self.phase {
                Phase::Done => return Ok(()),
                Phase::Replay => {
                    if self.replay_page().await? == 0 {
                        self.phase = match self.feed.end().await? {
                            Some(_) => Phase::Ending,
                            None => Phase::Live,
                        };
                    }
                }
                Phase::CatchUp => {
                    if self.replay_page().await? == 0 {
                        self.phase = Phase::Live;
                    }
                }
                Phase::Ending => {
                    if self.replay_page().await? == 0 {
                        if let Some(end) = self.feed.end().await? {
                            self.out.push(event(None, Some("end"), &end));
                        }
                        self.phase = Phase::Done;
                    }
                }
                Phase::Live => {
                    let received = tokio::select! {
                        r = self.rx.recv() => r,
                        () = self.shutdown.cancelled() => {
                            self.phase = Phase::Done;
                            continue;
                        }
                    };
                    match received {
                        Ok(item) => match self.feed.live(item) {
                            Live::Items(records) => {
                                if !self.take_live(&records) {
                                    self.phase = Phase::Replay;
                                }
                            }
                            Live::One(record) => {
                                if !self.take_live(std::slice::from_ref(&*record)) {
                                    self.phase = Phase::Replay;
                                }
                            }
                            Live::End => self.phase = Phase::Ending,
                            Live::Stored(up_to) => {
                                if up_to > self.last {
                                    self.phase = Phase::CatchUp;
                                }
                            }
                            Live::Resync => self.phase = Phase::Replay,
                        },
                        Err(broadcast::error::RecvError::Lagged(_)) => self.phase = Phase::Replay,
                        Err(broadcast::error::RecvError::Closed) => self.phase = Phase::Ending,
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `Last-Event-ID` a reconnecting client sends; 0 without one.
pub fn last_event_id(
    headers: &axum::http::HeaderMap,
) -> Result<Option<i64>, super::error::ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| {
            super::error::ApiError::InvalidHeader(format!(
                "Last-Event-ID {:?} is not a number; send back the id of the last event received",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

/// The SSE response following `feed` from after `after`, with keep-alives, ending at the
/// feed's end or at shutdown. `clients` counts the streams open.
pub fn sse<F: Feed>(
    feed: F,
    rx: Subscription<F::Item>,
    after: i64,
    shutdown: CancellationToken,
    clients: metrics::Gauge,
) -> Response {
    let state = State {
        feed,
        rx,
        last: after,
        phase: Phase::Replay,
        out: Vec::new(),
        shutdown,
        _gauge: FollowerGauge::new(clients),
    };
    let batches = futures::stream::unfold(state, |mut state| async move {
        if let Err(e) = state.advance().await {
            tracing::warn!(error = %e, "following a stream failed; ending it");
            return None;
        }
        if state.out.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut state.out);
        Some((futures::stream::iter(batch), state))
    });
    let events = batches.flatten().map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::header;
    use futures::StreamExt as _;
    use uuid::Uuid;

    use super::*;
    use crate::hub::{Hub, StepFeed};
    use crate::model::LogLine;

    /// A feed over lines kept in memory, standing in for the database.
    struct Lines {
        stored: Arc<Mutex<Vec<LogLine>>>,
        finished: Arc<Mutex<bool>>,
    }

    #[async_trait::async_trait]
    impl Feed for Lines {
        type Item = StepFeed;
        type Record = LogLine;
        type End = &'static str;

        async fn page(&self, after: i64) -> Result<Vec<LogLine>, StoreError> {
            let stored = self.stored.lock().unwrap();
            Ok(stored
                .iter()
                .filter(|l| l.number > after)
                .cloned()
                .collect())
        }

        async fn end(&self) -> Result<Option<&'static str>, StoreError> {
            Ok(self.finished.lock().unwrap().then_some("done"))
        }

        fn live(&self, item: StepFeed) -> Live<LogLine> {
            match item {
                StepFeed::Lines(lines) => Live::Items(lines),
                StepFeed::Stored(number) => Live::Stored(number),
                StepFeed::End => Live::End,
                StepFeed::Resync => Live::Resync,
            }
        }
    }

    fn line(number: i64) -> LogLine {
        LogLine {
            number,
            at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            text: format!("line {number}\n"),
        }
    }

    type Frames = axum::body::BodyDataStream;

    /// The ids of the next `n` frames, each one event.
    async fn ids(body: &mut Frames, n: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let frame = body.next().await.unwrap().unwrap();
            let frame = std::str::from_utf8(&frame).unwrap();
            let id: Vec<i64> = frame
                .lines()
                .filter_map(|l| l.strip_prefix("id: "))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(id.len(), 1, "one event per frame: {frame:?}");
            ids.extend(id);
        }
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn replay_live_gap_and_end_come_without_gap_or_duplicate() {
        let hub = Hub::default();
        let step = Uuid::now_v7();
        let stored = Arc::new(Mutex::new((1..=3).map(line).collect::<Vec<_>>()));
        let finished = Arc::new(Mutex::new(false));
        let feed = Lines {
            stored: stored.clone(),
            finished: finished.clone(),
        };
        let response = sse(
            feed,
            hub.subscribe_step(step),
            1,
            CancellationToken::new(),
            metrics::Gauge::noop(),
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], EVENT_STREAM);
        let mut body = response.into_body().into_data_stream();

        // The replay after line 1, an event per line.
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            "id: 2\ndata: {\"number\":2,\"at\":\"2023-11-14T22:13:20Z\",\"text\":\"line 2\\n\"}\n\n"
        );
        assert_eq!(ids(&mut body, 1).await, [3]);

        // A live batch overlapping the replay: only the new lines.
        stored.lock().unwrap().extend([line(4), line(5)]);
        hub.publish_lines(step, Arc::from(vec![line(3), line(4), line(5)]));
        assert_eq!(ids(&mut body, 2).await, [4, 5]);

        // Line 6 was stored but never reached the live feed: line 7 shows the gap, and the
        // stream reads 6 and 7 from the store.
        stored.lock().unwrap().extend([line(6), line(7)]);
        hub.publish_lines(step, Arc::from(vec![line(7)]));
        assert_eq!(ids(&mut body, 2).await, [6, 7]);

        // Quiet for the keep-alive interval: a comment.
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(&frame[..], b": keep-alive\n\n");

        // The end: what is left, then the end event, then nothing.
        stored.lock().unwrap().push(line(8));
        *finished.lock().unwrap() = true;
        hub.publish_event(crate::model::Event {
            seq: 9,
            pipeline_id: Uuid::now_v7(),
            subject: crate::model::Subject::Step,
            id: step,
            name: "step".into(),
            status: crate::model::Status::Success,
            exit_code: Some(0),
            reason: None,
            at: chrono::Utc::now(),
        });
        assert_eq!(ids(&mut body, 1).await, [8]);
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(&frame[..], b"event: end\ndata: \"done\"\n\n");
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn wake_ups_from_other_replicas_read_the_database() {
        let hub = Hub::default();
        let step = Uuid::now_v7();
        let stored = Arc::new(Mutex::new(vec![line(1)]));
        let finished = Arc::new(Mutex::new(false));
        let feed = Lines {
            stored: stored.clone(),
            finished: finished.clone(),
        };
        let response = sse(
            feed,
            hub.subscribe_step(step),
            0,
            CancellationToken::new(),
            metrics::Gauge::noop(),
        );
        let mut body = response.into_body().into_data_stream();
        assert_eq!(ids(&mut body, 1).await, [1]);

        // Another replica stored 2 and 3: the wake-up carries no line, the store has them.
        stored.lock().unwrap().extend([line(2), line(3)]);
        hub.stored_lines(step, 3);
        assert_eq!(ids(&mut body, 2).await, [2, 3]);

        // Caught up, the stream waits.
        assert_eq!(
            &body.next().await.unwrap().unwrap()[..],
            b": keep-alive\n\n"
        );
        // A wake-up at or below what was sent reads nothing (this replica's own publication
        // got there first): line 4, stored but not announced yet, stays unsent, and the
        // stream stays quiet until its next keep-alive.
        stored.lock().unwrap().push(line(4));
        hub.stored_lines(step, 3);
        hub.stored_lines(step, 2);
        assert_eq!(
            &body.next().await.unwrap().unwrap()[..],
            b": keep-alive\n\n"
        );
        hub.stored_lines(step, 4);
        assert_eq!(ids(&mut body, 1).await, [4]);

        // The listener reconnected: a re-read, which finds line 5 and that the step finished
        // while nobody was told.
        stored.lock().unwrap().push(line(5));
        *finished.lock().unwrap() = true;
        hub.resync();
        assert_eq!(ids(&mut body, 1).await, [5]);
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(&frame[..], b"event: end\ndata: \"done\"\n\n");
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn another_replica_ending_the_step_ends_the_stream() {
        let hub = Hub::default();
        let step = Uuid::now_v7();
        let stored = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(Mutex::new(false));
        let feed = Lines {
            stored: stored.clone(),
            finished: finished.clone(),
        };
        let response = sse(
            feed,
            hub.subscribe_step(step),
            0,
            CancellationToken::new(),
            metrics::Gauge::noop(),
        );
        let mut body = response.into_body().into_data_stream();
        // Lines and the end stored elsewhere, announced by the end alone.
        stored.lock().unwrap().extend([line(1), line(2)]);
        *finished.lock().unwrap() = true;
        hub.end_step(step);
        assert_eq!(ids(&mut body, 2).await, [1, 2]);
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(&frame[..], b"event: end\ndata: \"done\"\n\n");
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn shutdown_ends_a_live_stream() {
        let hub = Hub::default();
        let feed = Lines {
            stored: Arc::default(),
            finished: Arc::default(),
        };
        let shutdown = CancellationToken::new();
        let response = sse(
            feed,
            hub.subscribe_step(Uuid::now_v7()),
            0,
            shutdown.clone(),
            metrics::Gauge::noop(),
        );
        shutdown.cancel();
        let mut body = response.into_body().into_data_stream();
        assert!(body.next().await.is_none());
    }
}
