//! The live feed between replicas, on Postgres: what the write paths notify, and the one
//! listener per replica that turns those notifications into wake-ups of its [`Hub`].
//!
//! Every transaction that stores log lines or events also runs `pg_notify` on the channel
//! [`CHANNEL`]; Postgres delivers a notification only once its transaction has committed, so a
//! wake-up never comes before its data. A payload says where to read, never what: no line text,
//! no secret, at most about 100 bytes (the limit is 8000):
//!
//! - `l <step id> <last line number> <origin>`: lines of a step were stored; `origin` names
//!   the replica that wrote them ([`Hub::origin`]), whose own listener skips them since that
//!   replica published them directly.
//! - `e <pipeline id> <event number> -|p|s:<step id>`: an event of a pipeline was stored; `p`
//!   when it is the pipeline's final event, `s:` when it is a step's final event, so that the
//!   followers of that step's log get their end.
//! - `h <origin>`: a listener's heartbeat, which proves its connection still delivers.
//!
//! The listener owns one connection outside the pools. It reconnects with backoff after losing
//! it (a terminated backend, a restarted Postgres, or silence past twice the heartbeat) and then
//! tells every follower to re-read ([`Hub::resync`]), since what was notified meanwhile is lost.
//! A burst is coalesced: notifications already received are drained in one go, and only the
//! highest number per step and pipeline is passed on. SQLite has no listener: one replica.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{DatabaseUrl, Pool, Store, StoreError, redact_url};
use crate::hub::Hub;
use crate::model::{Status, Subject};

/// The one channel every replica notifies and listens on.
pub const CHANNEL: &str = "piculet_feed";

/// The `application_name` of every listener's connection.
pub const APPLICATION_NAME: &str = "piculet-feed-listener";

/// Notifications handled per wake-up of the listener: a burst larger than this is coalesced in
/// several rounds, never held whole.
const DRAIN: usize = 4096;

/// The longest wait between two attempts to reconnect; the first waits 100 ms.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// The payload announcing stored lines of a step, up to line `number`.
pub(crate) fn lines_payload(step_id: Uuid, number: i64, origin: &str) -> String {
    format!("l {step_id} {number} {origin}")
}

/// What goes before and after the event's number in the payload announcing an event; the
/// number is taken inside the statement that stores it.
pub(crate) fn event_payload_parts(
    pipeline_id: Uuid,
    subject: Subject,
    id: Uuid,
    status: Status,
) -> (String, String) {
    let flag = match subject {
        _ if !status.is_finished() => "-".to_string(),
        Subject::Pipeline => "p".to_string(),
        Subject::Step => format!("s:{id}"),
        Subject::Workflow => "-".to_string(),
    };
    (format!("e {pipeline_id} "), format!(" {flag}"))
}

/// A notification, read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Notice {
    Lines {
        step_id: Uuid,
        number: i64,
        origin: String,
    },
    Event {
        pipeline_id: Uuid,
        seq: i64,
        pipeline_finished: bool,
        step_finished: Option<Uuid>,
    },
    Heartbeat,
}

/// Reads a payload; `None` for anything else on the channel (a hand-sent `NOTIFY`, a newer
/// format), which is ignored.
fn parse(payload: &str) -> Option<Notice> {
    let mut words = payload.split(' ');
    let notice = match words.next()? {
        "l" => Notice::Lines {
            step_id: words.next()?.parse().ok()?,
            number: words.next()?.parse().ok()?,
            origin: words.next()?.to_string(),
        },
        "e" => {
            let pipeline_id = words.next()?.parse().ok()?;
            let seq = words.next()?.parse().ok()?;
            let flag = words.next()?;
            let (pipeline_finished, step_finished) = match flag {
                "-" => (false, None),
                "p" => (true, None),
                _ => (false, Some(flag.strip_prefix("s:")?.parse().ok()?)),
            };
            Notice::Event {
                pipeline_id,
                seq,
                pipeline_finished,
                step_finished,
            }
        }
        "h" => {
            words.next()?;
            Notice::Heartbeat
        }
        _ => return None,
    };
    words.next().is_none().then_some(notice)
}

/// Wake-ups gathered from a burst of notifications: the highest number per step and pipeline.
#[derive(Default)]
struct Coalesced {
    lines: HashMap<Uuid, i64>,
    events: HashMap<Uuid, (i64, bool)>,
    ended: Vec<Uuid>,
}

impl Coalesced {
    /// Adds a notification; skips lines written by `own` origin, which its hub has had already.
    fn add(&mut self, notice: Notice, own: &str) {
        match notice {
            Notice::Lines {
                step_id,
                number,
                origin,
            } => {
                if origin != own {
                    let last = self.lines.entry(step_id).or_insert(number);
                    *last = (*last).max(number);
                }
            }
            Notice::Event {
                pipeline_id,
                seq,
                pipeline_finished,
                step_finished,
            } => {
                let last = self.events.entry(pipeline_id).or_insert((seq, false));
                last.0 = last.0.max(seq);
                last.1 |= pipeline_finished;
                self.ended.extend(step_finished);
            }
            Notice::Heartbeat => {}
        }
    }

    /// Passes the wake-ups on: lines first, then events, then the ends of steps, whose lines
    /// are all stored by then.
    fn publish(self, hub: &Hub) {
        for (step_id, number) in self.lines {
            hub.stored_lines(step_id, number);
        }
        for (pipeline_id, (seq, finished)) in self.events {
            hub.stored_events(pipeline_id, seq, finished);
        }
        for step_id in self.ended {
            hub.end_step(step_id);
        }
    }
}

/// Why a listening connection ended.
enum Ended {
    Shutdown,
    Lost(String),
}

impl Store {
    /// Starts this replica's feed listener on Postgres, until `shutdown`; `None` on SQLite,
    /// which serves one replica. `heartbeat`: how long the listener may hear nothing before it
    /// proves its connection by notifying itself (and reconnects if even that does not come
    /// back within as long again). `reconnects` counts the connections made again.
    pub fn listen_to_feed(
        &self,
        url: &DatabaseUrl,
        heartbeat: Duration,
        reconnects: metrics::Counter,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let DatabaseUrl::Postgres(url) = url else {
            return None;
        };
        let (store, url) = (self.clone(), url.clone());
        Some(tokio::spawn(async move {
            store
                .listen_loop(&url, heartbeat, &reconnects, shutdown)
                .await;
        }))
    }

    /// Connects, listens, reconnects; returns at shutdown.
    async fn listen_loop(
        &self,
        url: &str,
        heartbeat: Duration,
        reconnects: &metrics::Counter,
        shutdown: CancellationToken,
    ) {
        let backoff = || {
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(RECONNECT_MAX_DELAY)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        let mut first = true;
        loop {
            let connected = tokio::select! {
                c = self.connect_listener(url) => c,
                () = shutdown.cancelled() => return,
            };
            match connected {
                Ok(listener) => {
                    delays = backoff();
                    if first {
                        first = false;
                    } else {
                        reconnects.increment(1);
                        tracing::info!("feed listener reconnected; followers re-read");
                    }
                    // Whatever was notified while not listening is lost (followers may have
                    // come before the first connection too): every follower re-reads from the
                    // database, now that new notifications reach us.
                    self.hub.resync();
                    match self.listen_on(listener, heartbeat, &shutdown).await {
                        Ended::Shutdown => return,
                        Ended::Lost(why) => {
                            tracing::warn!(error = %why, "feed listener lost its connection; reconnecting");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "feed listener cannot connect; retrying");
                }
            }
            let delay = delays.next().unwrap_or(RECONNECT_MAX_DELAY);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One connection of its own, listening on [`CHANNEL`], within the write time limit.
    async fn connect_listener(&self, url: &str) -> Result<PgListener, StoreError> {
        let limit = self.timeouts.longest();
        let connect = async {
            // A pool of one that never replaces its connection on its own: the listener's
            // connection is replaced here, with a re-read of every follower.
            // Named, so that an operator sees it in pg_stat_activity (and tests can end it).
            let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(limit)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with(options);
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(limit, connect).await {
            Ok(Ok(listener)) => Ok(listener),
            Ok(Err(source)) => Err(StoreError::Connect {
                url: redact_url(url),
                source,
            }),
            Err(_) => Err(StoreError::TimedOut {
                class: super::QueryClass::Write,
                limit,
            }),
        }
    }

    /// Receives and passes on notifications until the connection is lost or shutdown.
    async fn listen_on(
        &self,
        mut listener: PgListener,
        heartbeat: Duration,
        shutdown: &CancellationToken,
    ) -> Ended {
        let own = self.hub.origin().to_string();
        let mut heard = Instant::now();
        let mut asked = false;
        loop {
            // Dropping a waiting `try_recv` (at a heartbeat) loses nothing: the connection
            // buffers what arrives. Were it ever to garble the stream, the next read fails and
            // the connection is replaced, followers re-reading.
            let received = tokio::select! {
                r = listener.try_recv() => r,
                () = tokio::time::sleep_until(heard + heartbeat) => {
                    if asked {
                        return Ended::Lost(format!("no notification, not even its own heartbeat, for {heartbeat:?}"));
                    }
                    // A silent connection may be a dead one (a network that dropped it
                    // without a word): notify ourselves through the pool and wait for it.
                    if let Err(e) = self.notify_heartbeat().await {
                        tracing::debug!(error = %e, "cannot send the feed heartbeat");
                    }
                    asked = true;
                    heard = Instant::now();
                    continue;
                }
                () = shutdown.cancelled() => return Ended::Shutdown,
            };
            let first = match received {
                Ok(Some(n)) => n,
                Ok(None) => return Ended::Lost("connection closed".into()),
                Err(e) => return Ended::Lost(e.to_string()),
            };
            heard = Instant::now();
            asked = false;
            let mut wakeups = Coalesced::default();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(notification) = next {
                match parse(notification.payload()) {
                    Some(notice) => wakeups.add(notice, &own),
                    None => tracing::debug!(
                        payload = notification.payload(),
                        "ignoring a notification of another form on the feed channel"
                    ),
                }
                taken += 1;
                next = (taken < DRAIN).then(|| listener.next_buffered()).flatten();
            }
            wakeups.publish(&self.hub);
        }
    }

    /// Notifies this replica's own heartbeat.
    async fn notify_heartbeat(&self) -> Result<(), StoreError> {
        let payload = format!("h {}", self.hub.origin());
        self.write(async {
            if let Pool::Postgres(pool) = &self.pool {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(payload)
                    .execute(pool)
                    .await?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back_and_stay_small() {
        let (step, pipeline) = (Uuid::now_v7(), Uuid::now_v7());
        let lines = lines_payload(step, i64::MAX, "0123456789abcdef");
        assert_eq!(
            parse(&lines),
            Some(Notice::Lines {
                step_id: step,
                number: i64::MAX,
                origin: "0123456789abcdef".into()
            })
        );
        let (before, after) = event_payload_parts(pipeline, Subject::Step, step, Status::Failure);
        let event = format!("{before}{}{after}", i64::MAX);
        assert_eq!(
            parse(&event),
            Some(Notice::Event {
                pipeline_id: pipeline,
                seq: i64::MAX,
                pipeline_finished: false,
                step_finished: Some(step),
            })
        );
        assert!(lines.len() < 100 && event.len() < 100, "{lines} {event}");
        let (before, after) =
            event_payload_parts(pipeline, Subject::Pipeline, pipeline, Status::Success);
        assert!(matches!(
            parse(&format!("{before}7{after}")),
            Some(Notice::Event {
                seq: 7,
                pipeline_finished: true,
                step_finished: None,
                ..
            })
        ));
        let (before, after) = event_payload_parts(pipeline, Subject::Step, step, Status::Running);
        assert!(matches!(
            parse(&format!("{before}3{after}")),
            Some(Notice::Event {
                pipeline_finished: false,
                step_finished: None,
                ..
            })
        ));
        assert_eq!(parse("h 0123456789abcdef"), Some(Notice::Heartbeat));
    }

    #[test]
    fn anything_else_on_the_channel_is_ignored() {
        let step = Uuid::now_v7();
        for payload in [
            "",
            "x",
            "l",
            &format!("l {step}"),
            &format!("l {step} 5"),
            &format!("l {step} five origin"),
            &format!("l {step} 5 origin extra"),
            "l not-a-uuid 5 origin",
            &format!("e {step} 5"),
            &format!("e {step} 5 s:nope"),
            &format!("e {step} 5 q"),
            "h",
            "\u{0}",
        ] {
            assert_eq!(parse(payload), None, "{payload:?}");
        }
    }

    #[tokio::test]
    async fn a_burst_is_coalesced_and_own_lines_are_skipped() {
        let hub = Hub::default();
        let (step, mine, pipeline) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut lines = hub.subscribe_step(step);
        let mut own = hub.subscribe_step(mine);
        let mut events = hub.subscribe_pipeline(pipeline);
        let mut wakeups = Coalesced::default();
        for n in [3, 9, 5] {
            wakeups.add(
                parse(&lines_payload(step, n, "other")).unwrap(),
                hub.origin(),
            );
            wakeups.add(
                parse(&lines_payload(mine, n, hub.origin())).unwrap(),
                hub.origin(),
            );
        }
        for seq in [4, 2] {
            let (before, after) =
                event_payload_parts(pipeline, Subject::Workflow, step, Status::Running);
            wakeups.add(
                parse(&format!("{before}{seq}{after}")).unwrap(),
                hub.origin(),
            );
        }
        let (before, after) = event_payload_parts(pipeline, Subject::Step, step, Status::Success);
        wakeups.add(parse(&format!("{before}5{after}")).unwrap(), hub.origin());
        wakeups.publish(&hub);

        use crate::hub::{PipelineFeed, StepFeed};
        assert!(matches!(lines.recv().await, Ok(StepFeed::Stored(9))));
        assert!(matches!(lines.recv().await, Ok(StepFeed::End)));
        assert!(lines.recv().await.is_err(), "closed after the end");
        assert!(matches!(
            events.recv().await,
            Ok(PipelineFeed::Stored {
                seq: 5,
                finished: false
            })
        ));
        assert!(
            matches!(
                own.try_recv(),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty)
            ),
            "a replica's own lines reached its followers directly"
        );
    }
}
