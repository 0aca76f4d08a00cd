//! The topics a backend has already created, each with what the backend keeps for it (the
//! NATS subject, ready to publish to). Every publish asks, so the question is a shared read
//! lock and a map lookup; creating a new topic happens once, one at a time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::RwLock;

use super::BusError;

pub(crate) struct KnownTopics<V = ()> {
    seen: RwLock<HashMap<Box<str>, V>>,
    creating: tokio::sync::Mutex<()>,
}

impl<V> Default for KnownTopics<V> {
    fn default() -> Self {
        KnownTopics {
            seen: RwLock::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
        }
    }
}

impl<V: Clone> KnownTopics<V> {
    /// What was kept for `topic`, running `create` first unless it is known already (or
    /// another caller created it meanwhile); remembers what `create` gave once it succeeded.
    pub async fn ensure<F, Fut>(&self, topic: &str, create: F) -> Result<V, BusError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, BusError>>,
    {
        if let Some(kept) = self.get(topic) {
            return Ok(kept);
        }
        let _one_at_a_time = self.creating.lock().await;
        if let Some(kept) = self.get(topic) {
            return Ok(kept);
        }
        let kept = create().await?;
        self.seen
            .write()
            .unwrap()
            .insert(Box::from(topic), kept.clone());
        Ok(kept)
    }

    /// What was kept for `topic` if it was created already (then `ensure` has nothing to do).
    pub fn get(&self, topic: &str) -> Option<V> {
        self.seen.read().unwrap().get(topic).cloned()
    }

    /// Whether `topic` was created already.
    pub fn is_known(&self, topic: &str) -> bool {
        self.seen.read().unwrap().contains_key(topic)
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
        let known: Arc<KnownTopics> = Arc::new(KnownTopics::default());
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
