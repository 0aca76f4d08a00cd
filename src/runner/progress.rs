//! Live progress and resource sampling while a cell runs. The sampler is one OS thread (not a
//! tokio task, so it never counts among the bus's tasks) that reads the counters every 50 ms.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::recorder::Recorder;
use crate::metrics::resources;
use crate::scenario::{BackendKind, Mode};

/// A progress bar for one cell; hidden when not drawing.
#[derive(Clone)]
pub struct CellProgress {
    bar: Option<ProgressBar>,
}

impl CellProgress {
    /// A bar for `total` messages; `draw` false (or stderr not a terminal) hides it.
    pub fn new(draw: bool, backend: BackendKind, mode: Mode, total: u64) -> Self {
        if !draw {
            return CellProgress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} received  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{backend}/{mode}"));
        CellProgress { bar: Some(bar) }
    }

    fn update(&self, sent: u64, received: u64, rate: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(received);
            bar.set_message(format!("sent {sent}  {rate:.0} msg/s"));
        }
    }

    /// Leaves the bar at its final state.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Peaks seen by the sampler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Samples {
    /// Highest RSS sampled.
    pub rss_peak: u64,
    /// Most live tokio tasks sampled.
    pub tasks_peak: u64,
    /// Most OS threads sampled.
    pub threads_peak: u64,
}

type Watched = (Arc<Recorder>, Arc<AtomicU64>, CellProgress);

/// Samples resources, and updates the progress bar, until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    watched: Arc<Mutex<Option<Watched>>>,
    thread: Option<JoinHandle<Samples>>,
}

impl Sampler {
    /// Starts sampling the runtime behind `handle`.
    pub fn start(handle: tokio::runtime::Handle) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let watched: Arc<Mutex<Option<Watched>>> = Arc::new(Mutex::new(None));
        let (thread_stop, thread_watched) = (stop.clone(), watched.clone());
        let thread = std::thread::Builder::new()
            .name("busbench-sampler".into())
            .spawn(move || {
                let mut samples = Samples::default();
                let mut last = (Instant::now(), 0u64);
                let mut rate = 0.0;
                while !thread_stop.load(Ordering::Acquire) {
                    samples.rss_peak = samples.rss_peak.max(resources::rss_bytes());
                    samples.tasks_peak = samples.tasks_peak.max(resources::alive_tasks(&handle));
                    samples.threads_peak = samples.threads_peak.max(resources::thread_count());
                    if let Some((recorder, sent, bar)) = thread_watched.lock().unwrap().as_ref() {
                        let received = recorder.distinct();
                        let elapsed = last.0.elapsed().as_secs_f64();
                        if elapsed >= 0.5 {
                            rate = received.saturating_sub(last.1) as f64 / elapsed;
                            last = (Instant::now(), received);
                        }
                        bar.update(sent.load(Ordering::Relaxed), received, rate);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                samples
            })
            .expect("spawning the sampler thread");
        Sampler {
            stop,
            watched,
            thread: Some(thread),
        }
    }

    /// Shows these counters on the progress bar.
    pub fn watch(&self, recorder: Arc<Recorder>, sent: Arc<AtomicU64>, bar: CellProgress) {
        *self.watched.lock().unwrap() = Some((recorder, sent, bar));
    }

    /// Stops sampling and returns the peaks.
    pub fn stop(mut self) -> Samples {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}
