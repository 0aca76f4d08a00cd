//! The topics a backend has already created. Every publish asks, so the question is a shared
//! read lock and a set lookup; creating a new topic happens once, one at a time.

use std::collections::HashSet;
use std::future::Future;
use std::sync::RwLock;

use super::BusError;

#[derive(Default)]
pub(crate) struct KnownTopics {
    seen: RwLock<HashSet<String>>,
    creating: tokio::sync::Mutex<()>,
}

impl KnownTopics {
    /// Runs `create` for `topic` unless it is known already (or another caller created it
    /// meanwhile); remembers it once created.
    pub async fn ensure<F, Fut>(&self, topic: &str, create: F) -> Result<(), BusError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), BusError>>,
    {
        if self.is_known(topic) {
            return Ok(());
        }
        let _one_at_a_time = self.creating.lock().await;
        if self.is_known(topic) {
            return Ok(());
        }
        create().await?;
        self.seen.write().unwrap().insert(topic.to_owned());
        Ok(())
    }

    /// Whether `topic` was created already (then `ensure` has nothing to do).
    pub fn is_known(&self, topic: &str) -> bool {
        self.seen.read().unwrap().contains(topic)
    }

    /// Forgets a deleted topic, so that it is created again when used.
    pub fn forget(&self, topic: &str) {
        self.seen.write().unwrap().remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::KnownTopics;
    use crate::bus::BusError;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_each_topic_once_and_again_after_forget() {
        let known = Arc::new(KnownTopics::default());
        let created = Arc::new(AtomicU32::new(0));
        let mut callers = Vec::new();
        for _ in 0..8 {
            let (known, created) = (known.clone(), created.clone());
            callers.push(tokio::spawn(async move {
                known
                    .ensure("t", || async {
                        created.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(())
                    })
                    .await
            }));
        }
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        assert_eq!(created.load(Ordering::SeqCst), 1);
        known.forget("t");
        let failed = known.ensure("t", || async { Err(BusError::Closed) }).await;
        assert!(failed.is_err(), "a failed creation is not remembered");
        known
            .ensure("t", || async {
                created.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(created.load(Ordering::SeqCst), 2);
    }
}
