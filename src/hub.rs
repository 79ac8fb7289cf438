//! The live feed: what followers of a step's log or a pipeline's events are told, on this
//! replica.
//!
//! Two kinds of items travel on the same bounded channels. *Data*: log lines and events this
//! replica has just committed, published by its store after the commit. *Wake-ups*: "records up
//! to N are stored", which the feed listener (`store::notify`) turns Postgres notifications from
//! other replicas into; they carry no data, so a follower reads what they announce from the
//! database. Either way only what is already committed is announced, so a follower may always
//! fall back on the database: it subscribes first, replays from the database, then drops live
//! items and wake-ups at or below what it has sent; a follower that lags re-reads from the
//! database, and after the listener has been disconnected every follower is told to re-read
//! ([`Hub::resync`]), since notifications sent meanwhile are lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::model::{Event, LogLine, Subject};

/// Items a step's channel holds for a slow client before it lags and re-reads from the
/// database. Its items are batches of lines, as many as a step printing fast fills in a moment.
const STEP_CAPACITY: usize = 256;

/// The same for a pipeline's channel, whose items are single events: a few per step. A
/// broadcast channel allocates all its slots up front, and every followed pipeline has one,
/// so it holds what a burst of step ends brings rather than a step log's worth.
const PIPELINE_CAPACITY: usize = 64;

/// What a step's log stream receives.
#[derive(Debug, Clone)]
pub enum StepFeed {
    /// A batch of lines, just stored by this replica, in order.
    Lines(Arc<[LogLine]>),
    /// Another replica stored lines up to this number: read them from the database.
    Stored(i64),
    /// The step finished (its final event is stored).
    End,
    /// Something may have been missed: re-read from the database, the end included.
    Resync,
}

/// What a pipeline's event stream receives.
#[derive(Debug, Clone)]
pub enum PipelineFeed {
    /// An event just stored by this replica.
    Event(Arc<Event>),
    /// Another replica stored events up to this number; `finished` when the last one is the
    /// pipeline's final event.
    Stored { seq: i64, finished: bool },
    /// Something may have been missed: re-read from the database, the end included.
    Resync,
}

#[derive(Default)]
struct Channels {
    steps: HashMap<Uuid, broadcast::Sender<StepFeed>>,
    pipelines: HashMap<Uuid, broadcast::Sender<PipelineFeed>>,
}

/// A follower's receiver; the last one to go removes its channel, so that following a finished
/// or unknown step leaves nothing behind.
pub struct Subscription<T> {
    rx: broadcast::Receiver<T>,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<T: Clone> Subscription<T> {
    pub async fn recv(&mut self) -> Result<T, broadcast::error::RecvError> {
        self.rx.recv().await
    }

    #[cfg(test)]
    pub fn try_recv(&mut self) -> Result<T, broadcast::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Cheap to clone; one per replica (the API's and the engine's stores share it).
#[derive(Clone)]
pub struct Hub {
    channels: Arc<Mutex<Channels>>,
    /// Names this replica in the notifications of the lines it stores, so that its own
    /// listener skips them: those lines have been published here directly. (Events carry no
    /// origin; a follower drops a wake-up for an event it has sent already.)
    origin: Arc<str>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            channels: Arc::default(),
            origin: Uuid::new_v4().simple().to_string()[..16].into(),
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        // A panic while holding this lock cannot leave the maps inconsistent.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe_step(&self, step_id: Uuid) -> Subscription<StepFeed> {
        self.subscribe(step_id, STEP_CAPACITY, |c| &mut c.steps)
    }

    /// This replica's name in notifications: 16 hex digits.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn subscribe_pipeline(&self, pipeline_id: Uuid) -> Subscription<PipelineFeed> {
        self.subscribe(pipeline_id, PIPELINE_CAPACITY, |c| &mut c.pipelines)
    }

    /// Joins (or opens, with room for `capacity` items) the channel of `id` in the map
    /// `channel` picks.
    fn subscribe<T: Clone + Send + 'static>(
        &self,
        id: Uuid,
        capacity: usize,
        channel: fn(&mut Channels) -> &mut HashMap<Uuid, broadcast::Sender<T>>,
    ) -> Subscription<T> {
        let rx = channel(&mut self.lock())
            .entry(id)
            .or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe();
        let hub = self.clone();
        Subscription {
            rx,
            release: Some(Box::new(move || {
                let mut channels = hub.lock();
                let map = channel(&mut channels);
                if map.get(&id).is_some_and(|s| s.receiver_count() <= 1) {
                    map.remove(&id);
                }
            })),
        }
    }

    /// Publishes stored lines; costs nothing when nobody follows the step.
    pub fn publish_lines(&self, step_id: Uuid, lines: Arc<[LogLine]>) {
        let mut channels = self.lock();
        if let Some(sender) = channels.steps.get(&step_id)
            && sender.send(StepFeed::Lines(lines)).is_err()
        {
            channels.steps.remove(&step_id);
        }
    }

    /// Publishes a stored event to the pipeline's followers, and a step's final event to the
    /// followers of its log.
    pub fn publish_event(&self, event: Event) {
        let finished = event.status.is_finished();
        let (pipeline_id, subject, id) = (event.pipeline_id, event.subject, event.id);
        self.to_pipeline(
            pipeline_id,
            PipelineFeed::Event(Arc::new(event)),
            finished && subject == Subject::Pipeline,
        );
        if finished && subject == Subject::Step {
            self.end_step(id);
        }
    }

    /// Tells the followers of a step's log that another replica stored its lines up to
    /// `number`.
    pub fn stored_lines(&self, step_id: Uuid, number: i64) {
        let mut channels = self.lock();
        if let Some(sender) = channels.steps.get(&step_id)
            && sender.send(StepFeed::Stored(number)).is_err()
        {
            channels.steps.remove(&step_id);
        }
    }

    /// Tells the followers of a pipeline's events that another replica stored its events up
    /// to `seq`, the last of them its final one when `finished`.
    pub fn stored_events(&self, pipeline_id: Uuid, seq: i64, finished: bool) {
        self.to_pipeline(
            pipeline_id,
            PipelineFeed::Stored { seq, finished },
            finished,
        );
    }

    /// Tells the followers of a step's log that it finished, and closes its channel.
    pub fn end_step(&self, step_id: Uuid) {
        let sender = self.lock().steps.remove(&step_id);
        if let Some(sender) = sender {
            let _ = sender.send(StepFeed::End);
        }
    }

    /// Tells every follower to re-read from the database: notifications may have been lost.
    pub fn resync(&self) {
        let channels = self.lock();
        for sender in channels.steps.values() {
            let _ = sender.send(StepFeed::Resync);
        }
        for sender in channels.pipelines.values() {
            let _ = sender.send(PipelineFeed::Resync);
        }
    }

    /// Sends to a pipeline's followers; its last item closes the channel.
    fn to_pipeline(&self, pipeline_id: Uuid, item: PipelineFeed, last: bool) {
        let mut channels = self.lock();
        if let Some(sender) = channels.pipelines.get(&pipeline_id) {
            let delivered = sender.send(item).is_ok();
            if !delivered || last {
                channels.pipelines.remove(&pipeline_id);
            }
        }
    }

    /// Followers of step logs and pipeline events right now.
    #[cfg(test)]
    fn followers(&self) -> usize {
        let channels = self.lock();
        channels
            .steps
            .values()
            .map(broadcast::Sender::receiver_count)
            .chain(
                channels
                    .pipelines
                    .values()
                    .map(broadcast::Sender::receiver_count),
            )
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    fn event(subject: Subject, id: Uuid, pipeline_id: Uuid, status: Status) -> Event {
        Event {
            seq: 1,
            pipeline_id,
            subject,
            id,
            name: "x".into(),
            status,
            exit_code: None,
            reason: None,
            at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn lines_then_end_reach_a_follower_and_the_channel_goes_away() {
        let hub = Hub::default();
        let (step, pipeline) = (Uuid::now_v7(), Uuid::now_v7());
        let mut rx = hub.subscribe_step(step);
        let line = LogLine {
            number: 1,
            at: chrono::Utc::now(),
            text: "hi\n".into(),
        };
        hub.publish_lines(step, Arc::from(vec![line.clone()]));
        hub.publish_event(event(Subject::Step, step, pipeline, Status::Success));
        assert!(matches!(rx.recv().await.unwrap(), StepFeed::Lines(l) if l[0] == line));
        assert!(matches!(rx.recv().await.unwrap(), StepFeed::End));
        assert!(rx.recv().await.is_err(), "closed after the end");
        drop(rx);
        assert_eq!(hub.followers(), 0);
    }

    #[test]
    fn a_follower_that_leaves_removes_its_channel() {
        let hub = Hub::default();
        let step = Uuid::now_v7();
        let first = hub.subscribe_step(step);
        let second = hub.subscribe_step(step);
        drop(first);
        assert_eq!(hub.lock().steps.len(), 1, "the other follower keeps it");
        drop(second);
        assert!(hub.lock().steps.is_empty());
        drop(hub.subscribe_pipeline(step));
        assert!(hub.lock().pipelines.is_empty());
    }

    #[test]
    fn publishing_without_followers_keeps_nothing() {
        let hub = Hub::default();
        let step = Uuid::now_v7();
        hub.publish_lines(step, Arc::from(Vec::new()));
        assert!(hub.lock().steps.is_empty());
    }
}
