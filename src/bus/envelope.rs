//! Envelopes: a payload with the identifying fields of a domain event.
//!
//! On the wire an envelope is its payload plus headers (`X-Event-ID`, `X-Aggregate-ID`, ...), on
//! every backend; on Kafka the record key is the aggregate id as well, so one aggregate's events
//! share a partition.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use std::borrow::Cow;

use super::Message;
use super::headers::Headers;

/// Header carrying [`Envelope::event_id`].
pub const HEADER_EVENT_ID: &str = "X-Event-ID";
/// Header carrying [`Envelope::aggregate_id`].
pub const HEADER_AGGREGATE_ID: &str = "X-Aggregate-ID";
/// Header carrying [`Envelope::event_type`].
pub const HEADER_EVENT_TYPE: &str = "X-Event-Type";
/// Header carrying [`Envelope::event_version`].
pub const HEADER_EVENT_VERSION: &str = "X-Event-Version";
/// Header carrying [`Envelope::timestamp`] (RFC 3339, nanoseconds).
pub const HEADER_TIMESTAMP: &str = "X-Timestamp";
/// Header carrying [`Envelope::trace_id`].
pub const HEADER_TRACE_ID: &str = "X-Trace-ID";
/// Header carrying [`Envelope::correlation_id`].
pub const HEADER_CORRELATION_ID: &str = "X-Correlation-ID";
/// Header carrying [`Envelope::tenant_id`].
pub const HEADER_TENANT_ID: &str = "X-Tenant-ID";

/// Every envelope header name, so that received headers can share the static names.
pub(crate) const KNOWN_HEADERS: [&str; 8] = [
    HEADER_EVENT_ID,
    HEADER_AGGREGATE_ID,
    HEADER_EVENT_TYPE,
    HEADER_EVENT_VERSION,
    HEADER_TIMESTAMP,
    HEADER_TRACE_ID,
    HEADER_CORRELATION_ID,
    HEADER_TENANT_ID,
];

/// Longest accepted aggregate id, in characters.
pub const MAX_AGGREGATE_ID_LEN: usize = 256;

/// A domain event with its identifying fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id of this event; [`Envelope::new`] fills it with a UUIDv7.
    pub event_id: String,
    /// The aggregate the event belongs to; events of one aggregate are handled in order.
    pub aggregate_id: String,
    /// The event's type name.
    pub event_type: String,
    /// The aggregate's version after this event; greater than zero.
    pub event_version: i64,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// Distributed-tracing id, if any.
    pub trace_id: Option<String>,
    /// Correlation id, if any.
    pub correlation_id: Option<String>,
    /// Tenant id, if any.
    pub tenant_id: Option<String>,
    /// The event's body.
    pub payload: Bytes,
}

/// Why an envelope is invalid; each variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// `event_id` is empty.
    #[error("event_id is empty")]
    EmptyEventId,
    /// `aggregate_id` is empty.
    #[error("aggregate_id is empty")]
    EmptyAggregateId,
    /// `aggregate_id` is longer than [`MAX_AGGREGATE_ID_LEN`].
    #[error("aggregate_id is {0} characters long; at most {MAX_AGGREGATE_ID_LEN} are allowed")]
    AggregateIdTooLong(usize),
    /// `aggregate_id` holds a character outside `[A-Za-z0-9:_-./]`.
    #[error("aggregate_id contains {0:?}; only [A-Za-z0-9:_-./] is allowed")]
    AggregateIdCharacter(char),
    /// `event_type` is empty.
    #[error("event_type is empty")]
    EmptyEventType,
    /// `event_version` is zero or negative.
    #[error("event_version is {0}; it must be greater than 0")]
    NonPositiveVersion(i64),
    /// A received message lacks a required envelope header.
    #[error("the message has no {0} header")]
    MissingHeader(&'static str),
    /// A received header could not be parsed.
    #[error("header {header} has an invalid value {value:?}")]
    BadHeader {
        /// The header's name.
        header: &'static str,
        /// Its value.
        value: String,
    },
}

impl EnvelopeError {
    /// The envelope field this error is about.
    pub fn field(&self) -> &'static str {
        match self {
            EnvelopeError::EmptyEventId => "event_id",
            EnvelopeError::EmptyAggregateId
            | EnvelopeError::AggregateIdTooLong(_)
            | EnvelopeError::AggregateIdCharacter(_) => "aggregate_id",
            EnvelopeError::EmptyEventType => "event_type",
            EnvelopeError::NonPositiveVersion(_) => "event_version",
            EnvelopeError::MissingHeader(header) | EnvelopeError::BadHeader { header, .. } => {
                header
            }
        }
    }
}

impl Envelope {
    /// A new envelope with a fresh UUIDv7 event id and the current time.
    pub fn new(
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        event_version: i64,
        payload: impl Into<Bytes>,
    ) -> Self {
        Envelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            event_version,
            timestamp: Utc::now(),
            trace_id: None,
            correlation_id: None,
            tenant_id: None,
            payload: payload.into(),
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.event_id.is_empty() {
            return Err(EnvelopeError::EmptyEventId);
        }
        validate_aggregate_id(&self.aggregate_id)?;
        if self.event_type.is_empty() {
            return Err(EnvelopeError::EmptyEventType);
        }
        if self.event_version <= 0 {
            return Err(EnvelopeError::NonPositiveVersion(self.event_version));
        }
        Ok(())
    }

    /// The headers that carry this envelope's fields.
    pub fn headers(&self) -> Headers {
        let required = [
            (Cow::Borrowed(HEADER_EVENT_ID), self.event_id.clone()),
            (
                Cow::Borrowed(HEADER_AGGREGATE_ID),
                self.aggregate_id.clone(),
            ),
            (Cow::Borrowed(HEADER_EVENT_TYPE), self.event_type.clone()),
            (
                Cow::Borrowed(HEADER_EVENT_VERSION),
                self.event_version.to_string(),
            ),
            (
                Cow::Borrowed(HEADER_TIMESTAMP),
                self.timestamp
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            ),
        ];
        let optional = [
            (HEADER_TRACE_ID, &self.trace_id),
            (HEADER_CORRELATION_ID, &self.correlation_id),
            (HEADER_TENANT_ID, &self.tenant_id),
        ];
        if optional.iter().all(|(_, value)| value.is_none()) {
            return Headers::from(required);
        }
        let mut headers = Vec::with_capacity(required.len() + optional.len());
        headers.extend(required);
        for (name, value) in optional {
            if let Some(value) = value {
                headers.push((Cow::Borrowed(name), value.clone()));
            }
        }
        Headers::from(headers)
    }

    /// Rebuilds an envelope from a received message's headers and payload.
    pub fn from_message(message: &Message) -> Result<Self, EnvelopeError> {
        let required = |name: &'static str| {
            message
                .header(name)
                .ok_or(EnvelopeError::MissingHeader(name))
        };
        let version_text = required(HEADER_EVENT_VERSION)?;
        let event_version = version_text.parse().map_err(|_| EnvelopeError::BadHeader {
            header: HEADER_EVENT_VERSION,
            value: version_text.to_owned(),
        })?;
        let timestamp_text = required(HEADER_TIMESTAMP)?;
        let timestamp = DateTime::parse_from_rfc3339(timestamp_text)
            .map_err(|_| EnvelopeError::BadHeader {
                header: HEADER_TIMESTAMP,
                value: timestamp_text.to_owned(),
            })?
            .with_timezone(&Utc);
        let optional = |name| message.header(name).map(str::to_owned);
        Ok(Envelope {
            event_id: required(HEADER_EVENT_ID)?.to_owned(),
            aggregate_id: required(HEADER_AGGREGATE_ID)?.to_owned(),
            event_type: required(HEADER_EVENT_TYPE)?.to_owned(),
            event_version,
            timestamp,
            trace_id: optional(HEADER_TRACE_ID),
            correlation_id: optional(HEADER_CORRELATION_ID),
            tenant_id: optional(HEADER_TENANT_ID),
            payload: message.payload.clone(),
        })
    }
}

/// Checks an aggregate id: non-empty, at most 256 characters of `[A-Za-z0-9:_-./]`.
pub fn validate_aggregate_id(aggregate_id: &str) -> Result<(), EnvelopeError> {
    if aggregate_id.is_empty() {
        return Err(EnvelopeError::EmptyAggregateId);
    }
    let length = aggregate_id.chars().count();
    if length > MAX_AGGREGATE_ID_LEN {
        return Err(EnvelopeError::AggregateIdTooLong(length));
    }
    if let Some(bad) = aggregate_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.' | '/')))
    {
        return Err(EnvelopeError::AggregateIdCharacter(bad));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Envelope {
        Envelope::new("order:42", "OrderPlaced", 1, Bytes::from_static(b"{}"))
    }

    #[test]
    fn new_envelope_is_valid_and_has_a_uuid_v7() {
        let envelope = valid();
        envelope.validate().unwrap();
        let id = uuid::Uuid::parse_str(&envelope.event_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn each_invalid_field_has_its_own_error() {
        type Breaker = fn(&mut Envelope);
        let cases: Vec<(Breaker, EnvelopeError)> = vec![
            (|e| e.event_id.clear(), EnvelopeError::EmptyEventId),
            (|e| e.aggregate_id.clear(), EnvelopeError::EmptyAggregateId),
            (
                |e| e.aggregate_id = "a".repeat(257),
                EnvelopeError::AggregateIdTooLong(257),
            ),
            (
                |e| e.aggregate_id = "order 42".into(),
                EnvelopeError::AggregateIdCharacter(' '),
            ),
            (|e| e.event_type.clear(), EnvelopeError::EmptyEventType),
            (
                |e| e.event_version = 0,
                EnvelopeError::NonPositiveVersion(0),
            ),
            (
                |e| e.event_version = -3,
                EnvelopeError::NonPositiveVersion(-3),
            ),
        ];
        for (break_it, expected) in cases {
            let mut envelope = valid();
            break_it(&mut envelope);
            let error = envelope.validate().unwrap_err();
            assert_eq!(error, expected);
            assert!(!error.field().is_empty());
        }
        let mut longest = valid();
        longest.aggregate_id = "a:b_c-d.e/F9".repeat(21);
        assert!(longest.aggregate_id.len() <= 256);
        longest.validate().unwrap();
    }
}
