//! The NATS JetStream backend (async-nats).
//!
//! One stream per topic (named prefix + topic, capturing the topic as its only subject), with
//! file or memory storage. Publishing returns JetStream's acknowledgement, received on the
//! connection's reply subscription (`nats_publish`); the bus's window bounds how many are in
//! flight. Consuming: a durable pull consumer per topic and group, explicit acks
//! sent only after the handler succeeded; `max_ack_pending` bounds what the server hands out.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use futures::future::BoxFuture;

use super::fetch::{FetchTask, Source};
use super::known_topics::KnownTopics;
use super::nats_publish::JetStreamPublisher;
use super::{
    Ack, Acker, BusConfig, BusError, ConnectionState, Consumer, Delivery, DeliverySink, Headers,
    Message, NatsConfig, NatsStorage, Record, SharedStr, Transport,
};

const BACKEND: &str = "nats";

pub(crate) struct NatsTransport {
    config: NatsConfig,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    publisher: JetStreamPublisher,
    /// Each topic whose stream exists, with its subject (publishing clones it, no copy).
    known_topics: KnownTopics<async_nats::Subject>,
    close_timeout: Duration,
}

/// Connection options with the configuration's authentication (credentials file, user and
/// password, or token) and TLS (demanded, trusted authorities, client certificate) applied:
/// what every NATS connection of busbench starts from.
pub async fn connect_options(config: &NatsConfig) -> Result<async_nats::ConnectOptions, BusError> {
    let mut options = async_nats::ConnectOptions::new().require_tls(
        config.tls_required || config.tls_ca_file.is_some() || config.tls_client_cert.is_some(),
    );
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| BusError::Config(format!("NATS credentials file {path}: {e}")))?;
    }
    if let Some((user, password)) = &config.user_password {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.tls_ca_file {
        options = options.add_root_certificates(path.into());
    }
    if let Some((cert, key)) = &config.tls_client_cert {
        options = options.add_client_certificate(cert.into(), key.into());
    }
    Ok(options)
}

/// The client's header map of `headers`. An envelope's header names are the same on every
/// message: they go in as static names, without a copy each; any other name is copied.
pub(crate) fn header_map<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> async_nats::HeaderMap {
    use super::envelope::{
        HEADER_AGGREGATE_ID, HEADER_CORRELATION_ID, HEADER_EVENT_ID, HEADER_EVENT_TYPE,
        HEADER_EVENT_VERSION, HEADER_TENANT_ID, HEADER_TIMESTAMP, HEADER_TRACE_ID,
    };
    use async_nats::HeaderName;
    let mut map = async_nats::HeaderMap::new();
    for (key, value) in headers {
        let name = match key {
            HEADER_EVENT_ID => HeaderName::from_static(HEADER_EVENT_ID),
            HEADER_AGGREGATE_ID => HeaderName::from_static(HEADER_AGGREGATE_ID),
            HEADER_EVENT_TYPE => HeaderName::from_static(HEADER_EVENT_TYPE),
            HEADER_EVENT_VERSION => HeaderName::from_static(HEADER_EVENT_VERSION),
            HEADER_TIMESTAMP => HeaderName::from_static(HEADER_TIMESTAMP),
            HEADER_TRACE_ID => HeaderName::from_static(HEADER_TRACE_ID),
            HEADER_CORRELATION_ID => HeaderName::from_static(HEADER_CORRELATION_ID),
            HEADER_TENANT_ID => HeaderName::from_static(HEADER_TENANT_ID),
            _ => {
                map.append(key, value);
                continue;
            }
        };
        map.append(name, value);
    }
    map
}

impl NatsTransport {
    pub async fn connect(config: NatsConfig, bus: &BusConfig) -> Result<Self, BusError> {
        // Bumped each time the connection is lost: an acknowledgement still pending then will
        // never come (its reply went to the lost connection), so it fails at once.
        let disconnections = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let on_event = disconnections.clone();
        let options = connect_options(&config)
            .await?
            .name("busbench")
            .event_callback(move |event| {
                let disconnections = on_event.clone();
                async move {
                    if matches!(event, async_nats::Event::Disconnected) {
                        disconnections.send_modify(|count| *count += 1);
                    }
                }
            })
            .connection_timeout(Duration::from_secs(10))
            .client_capacity(bus.publish_window.max(2048));
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(|e| BusError::Broker {
                backend: BACKEND,
                message: format!("could not connect to {}: {e}", config.url),
            })?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(bus.ack_timeout);
        // Fail early, with a clear error, when JetStream is not enabled.
        jetstream
            .query_account()
            .await
            .map_err(|e| BusError::Broker {
                backend: BACKEND,
                message: format!("JetStream is not available at {}: {e}", config.url),
            })?;
        let publisher =
            JetStreamPublisher::start(client.clone(), bus.ack_timeout, disconnections.subscribe())
                .await?;
        Ok(NatsTransport {
            config,
            client,
            jetstream,
            publisher,
            known_topics: KnownTopics::default(),
            close_timeout: bus.close_timeout,
        })
    }

    /// The stream holding `topic`: the prefix, then the topic with characters that stream
    /// names may not hold replaced by `_`.
    pub fn stream_name(&self, topic: &str) -> String {
        super::NatsConfig::stream_name(&self.config.stream_prefix, topic)
    }

    /// Makes sure the stream of `topic` exists; the subject to publish `topic`'s messages to.
    async fn ensure_stream(&self, topic: &str) -> Result<async_nats::Subject, BusError> {
        self.known_topics
            .ensure(topic, || async {
                let name = self.stream_name(topic);
                self.jetstream
                    .get_or_create_stream(stream::Config {
                        name: name.clone(),
                        subjects: vec![topic.to_owned()],
                        storage: match self.config.storage {
                            NatsStorage::File => stream::StorageType::File,
                            NatsStorage::Memory => stream::StorageType::Memory,
                        },
                        num_replicas: self.config.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        BusError::broker(BACKEND, format!("creating stream {name}: {e}"))
                    })?;
                Ok(async_nats::Subject::from(topic))
            })
            .await
    }
}

impl Transport for NatsTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn send<'a>(&'a self, topic: &'a str, record: Record) -> BoxFuture<'a, Result<Ack, BusError>> {
        Box::pin(async move {
            let subject = self.ensure_stream(topic).await?;
            let headers = (!record.headers.is_empty()).then(|| header_map(record.headers.iter()));
            let answer = self
                .publisher
                .publish(subject, headers, record.payload)
                .await?;
            Ok(Ack::pending(answer))
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        sink: DeliverySink,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>, BusError>> {
        Box::pin(async move {
            self.ensure_stream(topic).await?;
            let stream_name = self.stream_name(topic);
            let durable: String = group
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let stream = self
                .jetstream
                .get_stream(&stream_name)
                .await
                .map_err(|e| BusError::broker(BACKEND, e))?;
            let pull: consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &durable,
                    consumer::pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: topic.to_owned(),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: self.config.ack_wait,
                        max_deliver: self.config.max_deliver,
                        max_ack_pending: self.config.max_ack_pending,
                        deliver_policy: consumer::DeliverPolicy::All,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    BusError::broker(BACKEND, format!("creating consumer {durable}: {e}"))
                })?;
            let messages = pull
                .stream()
                .max_messages_per_batch(self.config.fetch_batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| BusError::broker(BACKEND, e))?;
            let source = NatsSource {
                messages,
                topic: Arc::from(topic),
            };
            let handle: Box<dyn Consumer> = Box::new(NatsConsumer {
                fetch: FetchTask::spawn(source, sink),
                client: self.client.clone(),
                close_timeout: self.close_timeout,
            });
            Ok(handle)
        })
    }

    fn ensure_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move { self.ensure_stream(topic).await.map(drop) })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let name = self.stream_name(topic);
            self.known_topics.forget(topic);
            match self.jetstream.delete_stream(&name).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(BusError::broker(
                    BACKEND,
                    format!("deleting stream {name}: {e}"),
                )),
            }
        })
    }

    fn state(&self) -> ConnectionState {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => ConnectionState::Connected,
            _ => ConnectionState::Reconnecting,
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let timeout = self.close_timeout;
            match tokio::time::timeout(timeout, self.client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BusError::broker(BACKEND, e)),
                Err(_) => {
                    return Err(BusError::Timeout {
                        operation: "flushing the NATS connection",
                        waited: timeout,
                    });
                }
            }
            let drained = tokio::time::timeout(timeout, self.client.drain()).await;
            self.publisher.stop().await;
            match drained {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BusError::broker(BACKEND, e)),
                Err(_) => Err(BusError::Timeout {
                    operation: "draining the NATS connection",
                    waited: timeout,
                }),
            }
        })
    }
}

/// Acknowledges one JetStream message.
pub(crate) struct NatsAcker(jetstream::message::Acker);

impl NatsAcker {
    /// Acknowledges the message. A lost ack only means a redelivery after `ack_wait`:
    /// at-least-once either way.
    pub async fn ack(self) {
        let _ = self.0.ack().await;
    }

    /// Asks the server to redeliver the message.
    pub async fn nak(self) {
        let _ = self.0.ack_with(jetstream::AckKind::Nak(None)).await;
    }
}

/// Takes a pull consumer's messages, one at a time.
struct NatsSource {
    messages: consumer::pull::Stream,
    topic: Arc<str>,
}

impl Source for NatsSource {
    async fn receive(&mut self, batch: &mut Vec<Delivery>) -> bool {
        let message = match self.messages.next().await {
            Some(Ok(message)) => message,
            // Missed heartbeats and reconnects are transient: the stream pulls again.
            Some(Err(_)) => return true,
            None => return false,
        };
        let (message, acker) = message.split();
        let headers = match &message.headers {
            Some(received) => {
                let mut headers = Headers::builder_for(received.len());
                for (name, values) in received.iter() {
                    for value in values {
                        headers.push(name.as_ref(), value.as_str());
                    }
                }
                headers.build()
            }
            None => Headers::new(),
        };
        let key = headers
            .get(super::envelope::HEADER_AGGREGATE_ID)
            .map(|value| SharedStr::in_headers(&headers, value));
        batch.push(Delivery {
            message: Message {
                topic: self.topic.clone(),
                key,
                headers,
                payload: message.payload,
                attempt: 1,
            },
            acker: Acker::Nats(Box::new(NatsAcker(acker))),
        });
        true
    }
}

struct NatsConsumer {
    fetch: FetchTask,
    client: async_nats::Client,
    close_timeout: Duration,
}

impl Consumer for NatsConsumer {
    fn fetch_task(&mut self) -> &mut FetchTask {
        &mut self.fetch
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async move {
            // Acks are published on the connection; flushing makes sure they left.
            match tokio::time::timeout(self.close_timeout, self.client.flush()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BusError::broker(BACKEND, e)),
                Err(_) => Err(BusError::Timeout {
                    operation: "flushing acknowledgements",
                    waited: self.close_timeout,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::header_map;
    use crate::bus::envelope::{HEADER_AGGREGATE_ID, HEADER_EVENT_ID};

    #[test]
    fn header_map_keeps_envelope_and_other_names_and_repeated_values() {
        let map = header_map(
            [
                (HEADER_EVENT_ID, "e-1"),
                (HEADER_AGGREGATE_ID, "a-1"),
                ("X-Custom", "one"),
                ("X-Custom", "two"),
            ]
            .into_iter(),
        );
        assert_eq!(map.get(HEADER_EVENT_ID).map(|v| v.as_str()), Some("e-1"));
        assert_eq!(
            map.get(HEADER_AGGREGATE_ID).map(|v| v.as_str()),
            Some("a-1")
        );
        let custom: Vec<&str> = map.get_all("X-Custom").map(|v| v.as_str()).collect();
        assert_eq!(custom, ["one", "two"]);
        assert_eq!(map.len(), 3);
    }
}
