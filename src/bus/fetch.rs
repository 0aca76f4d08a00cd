//! The task that takes a subscription's messages from its backend and hands them to the pool.
//!
//! Every backend consumes the same way: one task receives, turns what it received into
//! deliveries and dispatches them in order, until the subscription stops, the backend's stream
//! ends or the pool refuses a delivery (that error is kept for the subscription to report). A
//! backend supplies only how to receive, as a [`Source`]; the stop, the task and the error are
//! here once.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BusError, Delivery, DeliverySink};

/// How a backend receives: the one part of consuming that differs between backends.
pub(crate) trait Source: Send + 'static {
    /// Waits for the next messages and appends them to `batch`, in the order they must be
    /// handed over (possibly none, after a transient error); `false`, with nothing appended,
    /// when the backend's stream has ended.
    ///
    /// The future is dropped when the subscription stops: what it had taken but not yet
    /// appended is not acknowledged, so the broker delivers it again.
    fn receive(&mut self, batch: &mut Vec<Delivery>) -> impl Future<Output = bool> + Send;
}

/// A subscription's fetch task, with the tasks that run beside it until it stops.
pub(crate) struct FetchTask {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    error: Arc<Mutex<Option<BusError>>>,
}

impl FetchTask {
    /// Spawns the task that receives from `source` and dispatches to `sink`.
    pub fn spawn(source: impl Source, sink: DeliverySink) -> Self {
        let stop = CancellationToken::new();
        let error = Arc::new(Mutex::new(None));
        let fetch = tokio::spawn(fetch(source, sink, stop.clone(), error.clone()));
        FetchTask {
            stop,
            tasks: vec![fetch],
            error,
        }
    }

    /// Spawns a task that runs until the subscription stops (Kafka's periodic commits); it is
    /// given the stop signal to watch.
    pub fn spawn_beside<F>(&mut self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(task(self.stop.clone())));
    }

    /// Stops receiving; resolves when the fetch task and those beside it have ended.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// The error that ended the fetch task early, if any.
    pub fn take_error(&self) -> Option<BusError> {
        self.error.lock().unwrap().take()
    }
}

async fn fetch(
    mut source: impl Source,
    sink: DeliverySink,
    stop: CancellationToken,
    error: Arc<Mutex<Option<BusError>>>,
) {
    let mut batch = Vec::new();
    loop {
        let more = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            more = source.receive(&mut batch) => more,
        };
        if !more {
            return;
        }
        for delivery in batch.drain(..) {
            if let Err(e) = sink.dispatch(delivery).await {
                *error.lock().unwrap() = Some(e);
                return;
            }
        }
    }
}
