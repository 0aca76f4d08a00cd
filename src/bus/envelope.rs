//! Envelopes: a payload with the identifying fields of a domain event.
//!
//! On the wire an envelope is its payload plus headers (`X-Event-ID`, `X-Aggregate-ID`, ...), on
//! every backend; on Kafka the record key is the aggregate id as well, so one aggregate's events
//! share a partition.

use std::cell::Cell;

use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike as _, NaiveDate, NaiveTime, Timelike as _, Utc};

use super::Message;
use super::headers::Headers;
use super::shared_str::SharedStr;

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

/// Longest accepted aggregate id, in characters.
pub const MAX_AGGREGATE_ID_LEN: usize = 256;

/// A domain event with its identifying fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id of this event; [`Envelope::new`] fills it with a UUIDv7.
    pub event_id: SharedStr,
    /// The aggregate the event belongs to; events of one aggregate are handled in order.
    pub aggregate_id: SharedStr,
    /// The event's type name.
    pub event_type: SharedStr,
    /// The aggregate's version after this event; greater than zero.
    pub event_version: i64,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// Distributed-tracing id, if any.
    pub trace_id: Option<SharedStr>,
    /// Correlation id, if any.
    pub correlation_id: Option<SharedStr>,
    /// Tenant id, if any.
    pub tenant_id: Option<SharedStr>,
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
    /// A new envelope with a fresh UUIDv7 event id and the current time. Text fields are
    /// [`SharedStr`]s: pass a clone of one (or [`SharedStr::from_static`]) to share it rather
    /// than copy it into each envelope.
    pub fn new(
        aggregate_id: impl Into<SharedStr>,
        event_type: impl Into<SharedStr>,
        event_version: i64,
        payload: impl Into<Bytes>,
    ) -> Self {
        let (timestamp, since_epoch) = now();
        Envelope {
            event_id: new_event_id(since_epoch),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            event_version,
            timestamp,
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

    /// The headers that carry this envelope's fields (one text buffer for all of them).
    pub fn headers(&self) -> Headers {
        let optional = [
            (HEADER_TRACE_ID, &self.trace_id),
            (HEADER_CORRELATION_ID, &self.correlation_id),
            (HEADER_TENANT_ID, &self.tenant_id),
        ];
        let names: usize = [
            HEADER_EVENT_ID,
            HEADER_AGGREGATE_ID,
            HEADER_EVENT_TYPE,
            HEADER_EVENT_VERSION,
            HEADER_TIMESTAMP,
        ]
        .iter()
        .map(|name| name.len())
        .sum();
        let text_bytes = names
            + self.event_id.len()
            + self.aggregate_id.len()
            + self.event_type.len()
            + 20 // the version
            + TIMESTAMP_LEN
            + optional
                .iter()
                .map(|(name, value)| value.as_ref().map_or(0, |v| name.len() + v.len()))
                .sum::<usize>();
        let mut headers = Headers::builder(text_bytes);
        headers
            .push(HEADER_EVENT_ID, &self.event_id)
            .push(HEADER_AGGREGATE_ID, &self.aggregate_id)
            .push(HEADER_EVENT_TYPE, &self.event_type)
            .push_with(HEADER_EVENT_VERSION, |text| {
                text.push_str(itoa::Buffer::new().format(self.event_version));
            })
            .push_with(HEADER_TIMESTAMP, |text| {
                write_timestamp(text, &self.timestamp)
            });
        for (name, value) in optional {
            if let Some(value) = value {
                headers.push(name, value);
            }
        }
        headers.build()
    }

    /// Rebuilds an envelope from a received message's headers and payload.
    pub fn from_message(message: &Message) -> Result<Self, EnvelopeError> {
        // One pass over the headers (the first of each name counts), not one search per field;
        // the text fields point into the headers' text rather than copying it.
        let mut fields: [Option<&str>; 8] = [None; 8];
        for (name, value) in message.headers.iter() {
            let slot = match name {
                HEADER_EVENT_ID => 0,
                HEADER_AGGREGATE_ID => 1,
                HEADER_EVENT_TYPE => 2,
                HEADER_EVENT_VERSION => 3,
                HEADER_TIMESTAMP => 4,
                HEADER_TRACE_ID => 5,
                HEADER_CORRELATION_ID => 6,
                HEADER_TENANT_ID => 7,
                _ => continue,
            };
            fields[slot].get_or_insert(value);
        }
        let [
            event_id,
            aggregate_id,
            event_type,
            version,
            timestamp,
            trace_id,
            correlation_id,
            tenant_id,
        ] = fields;
        let version_text = version.ok_or(EnvelopeError::MissingHeader(HEADER_EVENT_VERSION))?;
        let event_version = version_text.parse().map_err(|_| EnvelopeError::BadHeader {
            header: HEADER_EVENT_VERSION,
            value: version_text.to_owned(),
        })?;
        let timestamp_text = timestamp.ok_or(EnvelopeError::MissingHeader(HEADER_TIMESTAMP))?;
        let timestamp =
            parse_timestamp(timestamp_text).ok_or_else(|| EnvelopeError::BadHeader {
                header: HEADER_TIMESTAMP,
                value: timestamp_text.to_owned(),
            })?;
        let shared = |value: &str| SharedStr::in_headers(&message.headers, value);
        Ok(Envelope {
            event_id: shared(event_id.ok_or(EnvelopeError::MissingHeader(HEADER_EVENT_ID))?),
            aggregate_id: shared(
                aggregate_id.ok_or(EnvelopeError::MissingHeader(HEADER_AGGREGATE_ID))?,
            ),
            event_type: shared(event_type.ok_or(EnvelopeError::MissingHeader(HEADER_EVENT_TYPE))?),
            event_version,
            timestamp,
            trace_id: trace_id.map(shared),
            correlation_id: correlation_id.map(shared),
            tenant_id: tenant_id.map(shared),
            payload: message.payload.clone(),
        })
    }
}

/// Length of a timestamp as the envelope writes it: `2026-11-23T11:19:24.123456789Z`.
const TIMESTAMP_LEN: usize = 30;

thread_local! {
    /// Each thread's own UUIDv7 counter: ids stay unique and, within a thread, ascending,
    /// without every publisher taking one process-wide lock.
    static UUID_CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
}

/// A UUIDv7 for an event that happened `since_epoch` after the Unix epoch, in its hyphenated
/// lower-case form.
fn new_event_id(since_epoch: Duration) -> SharedStr {
    let id = UUID_CONTEXT.with(|context| {
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            context,
            since_epoch.as_secs(),
            since_epoch.subsec_nanos(),
        ))
    });
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    SharedStr::from(&*id.hyphenated().encode_lower(&mut text))
}

/// Length of a timestamp's date and time of day, to the second: `2026-11-23T11:19:24`.
const SECOND_LEN: usize = 19;

thread_local! {
    /// The second (Unix time) a thread last wrote a timestamp in, and its text: consecutive
    /// events mostly share their second, so the calendar arithmetic runs once a second.
    static WRITTEN_SECOND: Cell<(i64, [u8; SECOND_LEN])> =
        const { Cell::new((i64::MIN, [0; SECOND_LEN])) };
    /// The text of the second a thread last read a timestamp in, and that second.
    static READ_SECOND: Cell<([u8; SECOND_LEN], i64)> =
        const { Cell::new(([0; SECOND_LEN], i64::MIN)) };
}

thread_local! {
    /// The day (since the Unix epoch) a thread last read the clock in, and its date.
    static TODAY: Cell<(i64, NaiveDate)> = const { Cell::new((i64::MIN, NaiveDate::MIN)) };
}

/// The current time, as `Utc::now` gives it, and as a duration since the Unix epoch (what the
/// event id is made from), with the calendar date worked out once a day per thread rather than
/// for every event (that was half of `Utc::now`'s cost).
fn now() -> (DateTime<Utc>, Duration) {
    let chrono_now = || {
        let at = Utc::now();
        let since_epoch = Duration::new(
            u64::try_from(at.timestamp()).unwrap_or(0),
            at.timestamp_subsec_nanos().min(999_999_999),
        );
        (at, since_epoch)
    };
    let Ok(since_epoch) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return chrono_now();
    };
    let seconds = since_epoch.as_secs() as i64;
    let (day, second_of_day) = (
        seconds.div_euclid(86_400),
        seconds.rem_euclid(86_400) as u32,
    );
    let (cached_day, mut date) = TODAY.get();
    if cached_day != day {
        match DateTime::from_timestamp(day * 86_400, 0) {
            Some(midnight) => date = midnight.date_naive(),
            None => return chrono_now(),
        }
        TODAY.set((day, date));
    }
    match NaiveTime::from_num_seconds_from_midnight_opt(second_of_day, since_epoch.subsec_nanos()) {
        Some(time) => (date.and_time(time).and_utc(), since_epoch),
        None => chrono_now(),
    }
}

/// Appends `at` in RFC 3339 with nanoseconds and `Z`, the way chrono writes it with
/// `SecondsFormat::Nanos`, without the formatting machinery (it is per message).
fn write_timestamp(text: &mut String, at: &DateTime<Utc>) {
    let second = at.timestamp();
    let nanos = at.timestamp_subsec_nanos();
    let chrono_form = |text: &mut String| {
        text.push_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    };
    if nanos >= 1_000_000_000 {
        // A leap second: chrono's own form.
        return chrono_form(text);
    }
    let (cached, mut prefix) = WRITTEN_SECOND.get();
    if cached != second {
        let date = at.date_naive();
        let time = at.time();
        if !(0..=9999).contains(&date.year()) {
            // Years of other than four digits: chrono's own form.
            return chrono_form(text);
        }
        prefix = *b"0000-00-00T00:00:00";
        let fields = [
            (0..4, date.year() as u32),
            (5..7, date.month()),
            (8..10, date.day()),
            (11..13, time.hour()),
            (14..16, time.minute()),
            (17..19, time.second()),
        ];
        for (range, value) in fields {
            write_digits(&mut prefix[range], value);
        }
        WRITTEN_SECOND.set((second, prefix));
    }
    let mut out = [0u8; TIMESTAMP_LEN];
    out[..SECOND_LEN].copy_from_slice(&prefix);
    out[SECOND_LEN] = b'.';
    write_digits(&mut out[SECOND_LEN + 1..TIMESTAMP_LEN - 1], nanos);
    out[TIMESTAMP_LEN - 1] = b'Z';
    text.push_str(std::str::from_utf8(&out).expect("ASCII digits and separators"));
}

/// Writes `value`'s last `slots.len()` decimal digits into `slots`, zero-padded.
fn write_digits(slots: &mut [u8], value: u32) {
    let mut rest = value;
    for slot in slots.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// Reads a timestamp header: the envelope's own form quickly, any other RFC 3339 form through
/// chrono.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| {
        bytes[range].iter().try_fold(0u32, |value, byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    let own_form = bytes.len() == TIMESTAMP_LEN
        && bytes[SECOND_LEN] == b'.'
        && bytes[TIMESTAMP_LEN - 1] == b'Z';
    let fast = own_form
        .then(|| {
            let nanos = number(SECOND_LEN + 1..TIMESTAMP_LEN - 1)?;
            let (cached, second) = READ_SECOND.get();
            if bytes[..SECOND_LEN] == cached {
                return DateTime::from_timestamp(second, nanos);
            }
            if !(bytes[4] == b'-'
                && bytes[7] == b'-'
                && bytes[10] == b'T'
                && bytes[13] == b':'
                && bytes[16] == b':')
            {
                return None;
            }
            let at = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?
                .and_hms_opt(number(11..13)?, number(14..16)?, number(17..19)?)?
                .and_utc();
            let mut prefix = [0u8; SECOND_LEN];
            prefix.copy_from_slice(&bytes[..SECOND_LEN]);
            READ_SECOND.set((prefix, at.timestamp()));
            DateTime::from_timestamp(at.timestamp(), nanos)
        })
        .flatten();
    match fast {
        Some(at) => Some(at),
        None => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.with_timezone(&Utc)),
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
    fn the_clock_reads_as_chrono_reads_it() {
        for _ in 0..3 {
            let before = Utc::now();
            let (at, since_epoch) = now();
            let after = Utc::now();
            assert_eq!(at.timestamp(), since_epoch.as_secs() as i64);
            assert_eq!(at.timestamp_subsec_nanos(), since_epoch.subsec_nanos());
            assert!(before <= at && at <= after, "{before} {at} {after}");
        }
    }

    #[test]
    fn timestamps_are_written_and_read_as_chrono_does() {
        let mut moments: Vec<DateTime<Utc>> = [
            "2026-11-23T11:19:24.123456789Z",
            "1970-01-01T00:00:00.000000000Z",
            "0001-02-03T04:05:06.000000007Z",
            "9999-12-31T23:59:59.999999999Z",
        ]
        .iter()
        .map(|text| DateTime::parse_from_rfc3339(text).unwrap().to_utc())
        .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let seconds = (seed % 253_402_300_799) as i64; // up to the end of year 9999
            moments.push(
                DateTime::from_timestamp(seconds, (seed >> 34) as u32 % 1_000_000_000).unwrap(),
            );
        }
        // Runs of moments in one second, as events mostly come (each thread keeps the text of
        // the last second it wrote and read).
        for second in [1_700_000_000i64, 1_700_000_001, 1_700_000_000] {
            for nanos in [0, 999_999_999, 5, 123_456_789] {
                moments.push(DateTime::from_timestamp(second, nanos).unwrap());
            }
        }
        for at in moments {
            let mut text = String::new();
            write_timestamp(&mut text, &at);
            assert_eq!(text, at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
            assert_eq!(text.len(), TIMESTAMP_LEN);
            assert_eq!(parse_timestamp(&text), Some(at), "{text}");
        }
        // Other RFC 3339 forms are read through chrono; nonsense is refused.
        let offset = parse_timestamp("2026-11-23T12:19:24.5+01:00").unwrap();
        assert_eq!(
            offset,
            parse_timestamp("2026-11-23T11:19:24.500000000Z").unwrap()
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-23T11:19:24.123456789Z",
            "2026-11-23T11:19:24.12345678xZ",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        // Years past 9999 take chrono's own form.
        let far = DateTime::from_timestamp(300_000_000_000, 5).unwrap();
        let mut text = String::new();
        write_timestamp(&mut text, &far);
        assert_eq!(
            text,
            far.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        );
    }

    #[test]
    fn envelopes_survive_their_headers() {
        let mut envelope = valid();
        envelope.trace_id = Some("trace-1".into());
        envelope.tenant_id = Some("tenant-9".into());
        let message = Message {
            topic: "orders".into(),
            key: Some(envelope.aggregate_id.clone()),
            headers: envelope.headers(),
            payload: envelope.payload.clone(),
            attempt: 1,
        };
        assert_eq!(message.headers.len(), 7);
        assert_eq!(Envelope::from_message(&message).unwrap(), envelope);
        let ids: std::collections::HashSet<SharedStr> =
            (0..1000).map(|_| valid().event_id).collect();
        assert_eq!(ids.len(), 1000, "event ids are unique");
    }

    #[test]
    fn each_invalid_field_has_its_own_error() {
        type Breaker = fn(&mut Envelope);
        let cases: Vec<(Breaker, EnvelopeError)> = vec![
            (|e| e.event_id = "".into(), EnvelopeError::EmptyEventId),
            (
                |e| e.aggregate_id = "".into(),
                EnvelopeError::EmptyAggregateId,
            ),
            (
                |e| e.aggregate_id = "a".repeat(257).into(),
                EnvelopeError::AggregateIdTooLong(257),
            ),
            (
                |e| e.aggregate_id = "order 42".into(),
                EnvelopeError::AggregateIdCharacter(' '),
            ),
            (|e| e.event_type = "".into(), EnvelopeError::EmptyEventType),
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
        longest.aggregate_id = "a:b_c-d.e/F9".repeat(21).into();
        assert!(longest.aggregate_id.len() <= 256);
        longest.validate().unwrap();
    }
}
