//! Publishing to JetStream with one reply subscription per connection.
//!
//! The client's JetStream publish makes, for every message, a new inbox name, a permit, a
//! timer for its acknowledgement and a full decode of the acknowledgement's JSON, and routes
//! the reply through a map keyed by that name. Here each message's reply subject is a number
//! under one prefix the connection subscribed to once; the pending acknowledgements wait in
//! a queue indexed by that number, one task routes the replies, and one timer sweeps the
//! queue's front for acknowledgements past their deadline. What JetStream answers is the same:
//! the message is stored when the acknowledgement says so, an error when it says so.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::BusError;

const BACKEND: &str = "nats";

/// What a pending acknowledgement resolves to.
type Answer = Result<(), BusError>;

/// Publishes to JetStream streams and hands back each message's acknowledgement. Clones
/// share the reply subscription and its pending acknowledgements.
#[derive(Clone)]
pub(crate) struct JetStreamPublisher {
    client: async_nats::Client,
    /// The reply subjects' prefix, ending in a dot.
    prefix: Arc<str>,
    pending: Arc<Mutex<Pending>>,
    router: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Bounds the hand-over to the connection as well as the acknowledgement.
    ack_timeout: Duration,
}

/// The acknowledgements waited for, by reply number: `slots[0]` is number `first`.
struct Pending {
    first: u64,
    slots: VecDeque<Option<Slot>>,
    ack_timeout: Duration,
}

struct Slot {
    deadline: Instant,
    answer: oneshot::Sender<Answer>,
}

impl Pending {
    /// Takes the slot of reply number `number`, if it is still waiting.
    fn take(&mut self, number: u64) -> Option<Slot> {
        let index = usize::try_from(number.checked_sub(self.first)?).ok()?;
        let slot = self.slots.get_mut(index)?.take();
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        slot
    }

    /// Fails the acknowledgements past their deadline (they are queued in deadline order).
    fn expire(&mut self, now: Instant) {
        while let Some(front) = self.slots.front() {
            match front {
                Some(slot) if slot.deadline > now => break,
                _ => {}
            }
            if let Some(Some(slot)) = self.slots.pop_front() {
                let _ = slot
                    .answer
                    .send(Err(BusError::ack_timed_out(self.ack_timeout)));
            }
            self.first += 1;
        }
    }

    /// Fails every pending acknowledgement with `reason`.
    /// Numbers are never given twice: a late reply to a failed one matches nothing.
    fn fail_all(&mut self, reason: &str) {
        let next = self.next();
        for slot in self.slots.drain(..).flatten() {
            let _ = slot.answer.send(Err(BusError::broker(BACKEND, reason)));
        }
        self.first = next;
    }

    fn next(&self) -> u64 {
        self.first + self.slots.len() as u64
    }
}

impl JetStreamPublisher {
    /// Subscribes to the connection's reply subjects and starts the task that routes the
    /// replies. `disconnections` changes when the connection is lost: the replies still
    /// pending then went to the lost connection, so they fail at once.
    pub async fn start(
        client: async_nats::Client,
        ack_timeout: Duration,
        mut disconnections: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Self, BusError> {
        let prefix = format!("{}.", client.new_inbox());
        let mut replies = client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(|e| BusError::broker(BACKEND, e))?;
        let pending = Arc::new(Mutex::new(Pending {
            first: 0,
            slots: VecDeque::new(),
            ack_timeout,
        }));
        let routed = pending.clone();
        let sweep_every =
            (ack_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let router = tokio::spawn(async move {
            let mut sweep = tokio::time::interval(sweep_every);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    reply = replies.next() => {
                        let Some(reply) = reply else { break };
                        let Some(number) = reply_number(&reply.subject) else { continue };
                        let slot = routed.lock().unwrap().take(number);
                        if let Some(slot) = slot {
                            let _ = slot.answer.send(read_answer(&reply));
                        }
                    }
                    _ = sweep.tick() => routed.lock().unwrap().expire(Instant::now()),
                    changed = disconnections.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        routed.lock().unwrap().fail_all(
                            "the connection was lost before the acknowledgement arrived; the \
                             message may or may not have been stored",
                        );
                    }
                }
            }
            routed
                .lock()
                .unwrap()
                .fail_all("the connection closed before the acknowledgement arrived");
        });
        Ok(JetStreamPublisher {
            client,
            prefix: prefix.into(),
            pending,
            router: Arc::new(Mutex::new(Some(router))),
            ack_timeout,
        })
    }

    /// Hands the message to the connection (waiting, up to the acknowledgement timeout, for room
    /// in the client's queue); resolves to its acknowledgement, bounded by the same timeout.
    pub async fn publish(
        &self,
        subject: async_nats::Subject,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
    ) -> Result<AckAnswer, BusError> {
        let (answer, answered) = oneshot::channel();
        let number = {
            let mut pending = self.pending.lock().unwrap();
            let number = pending.next();
            let deadline = Instant::now() + pending.ack_timeout;
            pending.slots.push_back(Some(Slot { deadline, answer }));
            number
        };
        let mut reply = String::with_capacity(self.prefix.len() + 20);
        reply.push_str(&self.prefix);
        reply.push_str(itoa::Buffer::new().format(number));
        let reply = async_nats::Subject::from(reply);
        let sent = match headers {
            Some(headers) => {
                let handed = self
                    .client
                    .publish_with_reply_and_headers(subject, reply, headers, payload);
                tokio::time::timeout(self.ack_timeout, handed).await
            }
            None => {
                let handed = self.client.publish_with_reply(subject, reply, payload);
                tokio::time::timeout(self.ack_timeout, handed).await
            }
        };
        let failed = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(BusError::broker(BACKEND, e)),
            Err(_) => Some(BusError::Timeout {
                operation: "handing a message to the NATS connection",
                waited: self.ack_timeout,
            }),
        };
        if let Some(error) = failed {
            self.pending.lock().unwrap().take(number);
            return Err(error);
        }
        Ok(AckAnswer(answered))
    }

    /// Ends the task that routes replies (after the connection was drained or flushed).
    pub async fn stop(&self) {
        let router = self.router.lock().unwrap().take();
        if let Some(router) = router {
            router.abort();
            let _ = router.await;
        }
    }
}

/// One message's acknowledgement, resolved by the task that routes replies (or by its sweep,
/// past the acknowledgement timeout).
pub(crate) struct AckAnswer(oneshot::Receiver<Answer>);

impl Future for AckAnswer {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        Pin::new(&mut self.0).poll(cx).map(|answered| {
            answered.unwrap_or_else(|_| {
                Err(BusError::broker(
                    BACKEND,
                    "the connection closed before the acknowledgement arrived",
                ))
            })
        })
    }
}

/// The number a reply subject ends with.
fn reply_number(subject: &str) -> Option<u64> {
    subject.rsplit('.').next()?.parse().ok()
}

/// What a JetStream reply says: stored, or why not.
fn read_answer(reply: &async_nats::Message) -> Answer {
    if let Some(status) = reply.status {
        if status == async_nats::StatusCode::NO_RESPONDERS {
            return Err(BusError::broker(
                BACKEND,
                format!("no stream holds subject {}", reply.subject),
            ));
        }
        if !status.is_success() {
            return Err(BusError::broker(
                BACKEND,
                format!(
                    "the server answered {status}{}",
                    reply
                        .description
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    acknowledgement(&reply.payload)
}

/// Reads a JetStream publish acknowledgement: `{"stream":..,"seq":..}` when the message was
/// stored, `{"error":{..}}` when not. Only an error is decoded in full.
fn acknowledgement(payload: &[u8]) -> Answer {
    let looks_stored = payload.starts_with(b"{\"stream\"")
        && memchr_error(payload).is_none()
        && payload.ends_with(b"}");
    if looks_stored {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(value) => match value.get("error") {
            Some(error) => Err(BusError::broker(
                BACKEND,
                format!(
                    "JetStream refused the message: {}",
                    error
                        .get("description")
                        .and_then(|d| d.as_str())
                        .unwrap_or("no description")
                ),
            )),
            None if value.get("stream").is_some() && value.get("seq").is_some() => Ok(()),
            None => Err(BusError::broker(
                BACKEND,
                format!(
                    "an acknowledgement JetStream does not send: {}",
                    String::from_utf8_lossy(payload)
                ),
            )),
        },
        Err(e) => Err(BusError::broker(
            BACKEND,
            format!("an acknowledgement that is not JSON ({e})"),
        )),
    }
}

/// Where `"error"` appears in `payload`, if it does.
fn memchr_error(payload: &[u8]) -> Option<usize> {
    payload.windows(7).position(|window| window == b"\"error\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_acknowledgement_is_ok_and_an_error_names_its_description() {
        assert!(acknowledgement(br#"{"stream":"BUS_orders","seq":42}"#).is_ok());
        assert!(acknowledgement(br#"{"stream":"BUS_orders","seq":42,"duplicate":true}"#).is_ok());
        assert!(acknowledgement(br#"{"seq":7,"stream":"S"}"#).is_ok());
        let refused = acknowledgement(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        )
        .unwrap_err();
        assert!(
            refused.to_string().contains("maximum messages exceeded"),
            "{refused}"
        );
        assert!(acknowledgement(br#"{"stream":"S","seq":1,"error":{"description":"x"}}"#).is_err());
        assert!(acknowledgement(b"not json").is_err());
        assert!(acknowledgement(br#"{"other":1}"#).is_err());
    }

    #[test]
    fn replies_are_matched_by_number_and_late_ones_time_out_in_order() {
        let now = Instant::now();
        let mut pending = Pending {
            first: 0,
            slots: VecDeque::new(),
            ack_timeout: Duration::from_secs(1),
        };
        let mut receivers = Vec::new();
        for offset in 0..4u64 {
            let (answer, answered) = oneshot::channel();
            pending.slots.push_back(Some(Slot {
                deadline: now + Duration::from_millis(10 * offset),
                answer,
            }));
            receivers.push(answered);
        }
        // Number 1 answered first: the queue keeps number 0 at its front.
        pending.take(1).unwrap().answer.send(Ok(())).unwrap();
        assert_eq!((pending.first, pending.slots.len()), (0, 4));
        assert!(pending.take(1).is_none(), "a reply is taken once");
        // Number 0 answered: the front moves past both.
        pending.take(0).unwrap().answer.send(Ok(())).unwrap();
        assert_eq!((pending.first, pending.slots.len()), (2, 2));
        // Past number 2's deadline, not number 3's.
        pending.expire(now + Duration::from_millis(25));
        assert_eq!((pending.first, pending.slots.len()), (3, 1));
        let mut receivers = receivers.into_iter();
        assert!(receivers.next().unwrap().try_recv().unwrap().is_ok());
        assert!(receivers.next().unwrap().try_recv().unwrap().is_ok());
        let expired = receivers.next().unwrap().try_recv().unwrap().unwrap_err();
        assert!(expired.to_string().contains("acknowledg"), "{expired}");
        pending.fail_all("lost");
        assert!(receivers.next().unwrap().try_recv().unwrap().is_err());
        assert_eq!(
            (pending.first, pending.slots.len(), pending.next()),
            (4, 0, 4)
        );
        assert!(pending.take(99).is_none() && reply_number("_INBOX.a.b.17") == Some(17));
    }
}
