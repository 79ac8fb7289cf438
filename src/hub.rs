//! The live feed: log lines and events, published once they are stored, to every SSE client of
//! this replica.
//!
//! Only what is already in the database is published, so a client may always fall back on the
//! database: it subscribes first, replays from the database, then drops live items it has
//! already replayed; a client that lags re-reads from the database. Carrying the feed between
//! replicas (Postgres `LISTEN/NOTIFY` of "new lines for step X up to N") plugs in here: a
//! listener would publish into the same channels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::model::{Event, LogLine, Subject};

/// Items a channel holds for a slow client before it lags and re-reads from the database.
const CAPACITY: usize = 256;

/// What a step's log stream receives.
#[derive(Debug, Clone)]
pub enum StepFeed {
    /// A batch of lines, just stored, in order.
    Lines(Arc<[LogLine]>),
    /// The step finished (its final event).
    End(Arc<Event>),
}

#[derive(Default)]
struct Channels {
    steps: HashMap<Uuid, broadcast::Sender<StepFeed>>,
    pipelines: HashMap<Uuid, broadcast::Sender<Arc<Event>>>,
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
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Cheap to clone; one per process.
#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<Mutex<Channels>>,
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
        self.subscribe(step_id, |c| &mut c.steps)
    }

    pub fn subscribe_pipeline(&self, pipeline_id: Uuid) -> Subscription<Arc<Event>> {
        self.subscribe(pipeline_id, |c| &mut c.pipelines)
    }

    /// Joins (or opens) the channel of `id` in the map `channel` picks.
    fn subscribe<T: Clone + Send + 'static>(
        &self,
        id: Uuid,
        channel: fn(&mut Channels) -> &mut HashMap<Uuid, broadcast::Sender<T>>,
    ) -> Subscription<T> {
        let rx = channel(&mut self.lock())
            .entry(id)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
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
        let event = Arc::new(event);
        let finished = event.status.is_finished();
        let mut channels = self.lock();
        if let Some(sender) = channels.pipelines.get(&event.pipeline_id) {
            let delivered = sender.send(event.clone()).is_ok();
            if !delivered || (finished && event.subject == Subject::Pipeline) {
                channels.pipelines.remove(&event.pipeline_id);
            }
        }
        if finished
            && event.subject == Subject::Step
            && let Some(sender) = channels.steps.remove(&event.id)
        {
            let _ = sender.send(StepFeed::End(event));
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
        assert!(
            matches!(rx.recv().await.unwrap(), StepFeed::End(e) if e.status == Status::Success)
        );
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
