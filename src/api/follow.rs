//! Following a feed over Server-Sent Events without gap or duplicate: subscribe to the live
//! feed first, replay from the database after `Last-Event-ID`, then pass live items on,
//! dropping those already replayed; a client that lags behind the live feed re-reads from the
//! database. Used by step logs and pipeline events alike: both are numbered from 1 without
//! gaps, in commit order, so a gap in the live feed means items to fetch first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast;

use crate::hub::Subscription;
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// Items fetched from the database per query while replaying.
pub const PAGE: i64 = 1000;

/// What the live feed delivered, in the followed stream's terms.
pub enum Live {
    /// Items with their sequence numbers, in order.
    Items(Vec<(i64, Event)>),
    /// The followed thing finished: replay what is left, then end.
    End,
}

/// A followed stream: its stored items and its end.
#[async_trait::async_trait]
pub trait Feed: Send + Sync + 'static {
    type Item: Clone + Send + 'static;

    /// Stored items after sequence number `after`, at most [`PAGE`].
    async fn page(&self, after: i64) -> Result<Vec<(i64, Event)>, StoreError>;

    /// The final event, when the followed thing has finished.
    async fn end(&self) -> Result<Option<Event>, StoreError>;

    fn live(&self, item: Self::Item) -> Live;
}

enum Phase {
    Replay,
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
    out: VecDeque<Event>,
    shutdown: CancellationToken,
    _gauge: FollowerGauge,
}

/// Counts open streams for `/metrics`.
struct FollowerGauge;

impl FollowerGauge {
    fn new() -> Self {
        metrics::gauge!("piculet_sse_clients").increment(1.0);
        FollowerGauge
    }
}

impl Drop for FollowerGauge {
    fn drop(&mut self) {
        metrics::gauge!("piculet_sse_clients").decrement(1.0);
    }
}

impl<F: Feed> State<F> {
    /// Appends stored items after `last`; returns how many.
    async fn replay_page(&mut self) -> Result<usize, StoreError> {
        let items = self.feed.page(self.last).await?;
        let n = items.len();
        for (seq, event) in items {
            self.last = seq;
            self.out.push_back(event);
        }
        Ok(n)
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
                Phase::Ending => {
                    if self.replay_page().await? == 0 {
                        if let Some(end) = self.feed.end().await? {
                            self.out.push_back(end);
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
                            Live::Items(items) => {
                                for (seq, event) in items {
                                    if seq > self.last {
                                        // A gap means lines were stored before we subscribed
                                        // and after our replay read: fetch them first.
                                        if seq > self.last + 1 {
                                            self.phase = Phase::Replay;
                                            break;
                                        }
                                        self.last = seq;
                                        self.out.push_back(event);
                                    }
                                }
                            }
                            Live::End => self.phase = Phase::Ending,
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
/// feed's end or at shutdown.
pub fn sse<F: Feed>(
    feed: F,
    rx: Subscription<F::Item>,
    after: i64,
    shutdown: CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let state = State {
        feed,
        rx,
        last: after,
        phase: Phase::Replay,
        out: VecDeque::new(),
        shutdown,
        _gauge: FollowerGauge::new(),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        if let Err(e) = state.advance().await {
            tracing::warn!(error = %e, "following a stream failed; ending it");
            return None;
        }
        let event = state.out.pop_front()?;
        Some((Ok(event), state))
    });
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    )
}
