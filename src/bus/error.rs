//! Typed errors returned at the bus's boundaries.

use std::time::Duration;

use super::envelope::EnvelopeError;

/// What went wrong, in a form callers can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusErrorKind {
    /// The envelope failed validation.
    InvalidEnvelope,
    /// A bounded queue or window stayed full for longer than its timeout.
    Backpressure,
    /// An operation (an acknowledgement, a drain) did not finish within its bound.
    Timeout,
    /// The broker rejected a request or could not be reached.
    Broker,
    /// The bus or subscription is closed.
    Closed,
    /// A setting is invalid.
    Config,
}

/// An error raised by the event bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The envelope failed validation.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(#[from] EnvelopeError),
    /// A bounded queue or window stayed full for longer than its timeout. Nothing was dropped:
    /// the message was not accepted.
    #[error("{what} stayed full for {waited:?}; the message was not accepted")]
    Backpressure {
        /// Which queue or window was full.
        what: &'static str,
        /// How long the caller waited.
        waited: Duration,
    },
    /// An operation did not finish within its bound.
    #[error("{operation} did not finish within {waited:?}")]
    Timeout {
        /// The operation that timed out.
        operation: &'static str,
        /// The bound that expired.
        waited: Duration,
    },
    /// The broker rejected a request or could not be reached.
    #[error("{backend}: {message}")]
    Broker {
        /// The backend that raised the error (`kafka`, `nats`, `memory`).
        backend: &'static str,
        /// The broker's or client's message.
        message: String,
    },
    /// The bus or subscription is closed.
    #[error("the bus is closed")]
    Closed,
    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl BusError {
    /// The kind of error, for matching without the details.
    pub fn kind(&self) -> BusErrorKind {
        match self {
            BusError::InvalidEnvelope(_) => BusErrorKind::InvalidEnvelope,
            BusError::Backpressure { .. } => BusErrorKind::Backpressure,
            BusError::Timeout { .. } => BusErrorKind::Timeout,
            BusError::Broker { .. } => BusErrorKind::Broker,
            BusError::Closed => BusErrorKind::Closed,
            BusError::Config(_) => BusErrorKind::Config,
        }
    }

    pub(crate) fn broker(backend: &'static str, error: impl std::fmt::Display) -> Self {
        BusError::Broker {
            backend,
            message: error.to_string(),
        }
    }

    /// A broker acknowledgement that did not come within `waited` (the bus's `ack_timeout`).
    pub(crate) fn ack_timed_out(waited: std::time::Duration) -> Self {
        BusError::Timeout {
            operation: "broker acknowledgement",
            waited,
        }
    }
}

/// The error a message handler returns; any error type converts into it.
#[derive(Debug)]
pub struct HandlerError(pub String);

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError(error.to_string())
    }
}

impl HandlerError {
    /// A handler error with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        HandlerError(message.into())
    }
}
