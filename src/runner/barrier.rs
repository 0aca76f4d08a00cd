//! The shards' barrier (`--barrier HOST:PORT`): before every cell's measured phase, each
//! shard of a split run waits until every shard is ready for that cell, so that the shards
//! load the brokers together cell after cell, not only in the first one.
//!
//! Shard 0 listens at the address; the others connect to it. The protocol is one line per
//! message over TCP: a shard says `hello RUN_ID INDEX COUNT` once, then `ready K` when its
//! cell K finished set-up and warm-up, and `done K` when cell K ended (so a cell that failed
//! before its barrier does not hold the others); shard 0 answers `go K` to everyone once every
//! shard is ready for, or past, cell K. A shard that disconnects counts as past every cell; a
//! shard that loses shard 0 goes on without the barrier and its cells say so. Every wait is
//! bounded by the cell's own deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A shard past every cell (disconnected).
const GONE: i64 = i64::MAX;

/// Why a barrier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// Shard 0 could not listen at the address.
    #[error("listening at {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Shard 0 was not reached in time.
    #[error("shard 0 did not answer at {address} within {waited:?}: {last_error}")]
    Connect {
        /// The address.
        address: String,
        /// How long connecting was tried.
        waited: Duration,
        /// The last error seen.
        last_error: String,
    },
    /// The other shards did not all connect in time.
    #[error("{connected} of {expected} other shards connected to {address} within {waited:?}")]
    Gather {
        /// The address.
        address: String,
        /// Shards that connected.
        connected: u32,
        /// Shards expected.
        expected: u32,
        /// How long shard 0 waited.
        waited: Duration,
    },
}

/// One shard's end of the barrier.
pub struct Barrier {
    /// The highest cell every shard is ready for (`go K` seen).
    released: Arc<AtomicI64>,
    /// Shard 0's state, or the connection to it.
    role: Role,
    /// Set when the barrier stopped working (shard 0 gone); cells then begin unaligned.
    broken: Arc<AtomicBool>,
}

enum Role {
    Coordinator(Arc<Coordinator>),
    Member(Mutex<TcpStream>),
}

/// Shard 0's view: how far each shard has come, and the connections to tell them.
struct Coordinator {
    state: Mutex<CoordinatorState>,
    released: Arc<AtomicI64>,
}

struct CoordinatorState {
    /// Per shard, the highest cell it is ready for or past (-1: none yet).
    arrived: Vec<i64>,
    /// The connections to shards 1 to N-1.
    streams: Vec<TcpStream>,
}

impl Coordinator {
    /// Records that `shard` reached `cell`, and releases every cell all shards reached.
    fn arrive(&self, shard: usize, cell: i64) {
        let mut state = self.state.lock().expect("barrier state");
        if let Some(slot) = state.arrived.get_mut(shard) {
            *slot = (*slot).max(cell);
        }
        let all = state.arrived.iter().copied().min().unwrap_or(GONE);
        let released = self.released.load(Ordering::Acquire);
        if all > released {
            let line = format!("go {all}\n");
            for stream in &mut state.streams {
                let _ = stream.write_all(line.as_bytes());
            }
            self.released.store(all, Ordering::Release);
        }
    }
}

impl Barrier {
    /// Joins the barrier of run `run_id` as shard `index` of `count`: shard 0 listens at
    /// `address` and waits (up to `bound`) for the others to connect; the others connect to
    /// it, retrying up to `bound`.
    pub fn join(
        address: &str,
        run_id: &str,
        index: u32,
        count: u32,
        bound: Duration,
    ) -> Result<Barrier, BarrierError> {
        let released = Arc::new(AtomicI64::new(-1));
        let broken = Arc::new(AtomicBool::new(false));
        if index == 0 {
            let coordinator = Arc::new(Coordinator {
                state: Mutex::new(CoordinatorState {
                    arrived: vec![-1; count as usize],
                    streams: Vec::new(),
                }),
                released: released.clone(),
            });
            gather(&coordinator, address, run_id, count, bound)?;
            return Ok(Barrier {
                released,
                role: Role::Coordinator(coordinator),
                broken,
            });
        }
        let started = Instant::now();
        let stream = loop {
            let last_error = match connect(address) {
                Ok(stream) => break stream,
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= bound {
                return Err(BarrierError::Connect {
                    address: address.to_owned(),
                    waited: bound,
                    last_error,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut writer = stream.try_clone().map_err(|e| BarrierError::Connect {
            address: address.to_owned(),
            waited: started.elapsed(),
            last_error: e.to_string(),
        })?;
        let _ = writer.write_all(format!("hello {run_id} {index} {count}\n").as_bytes());
        let reader_released = released.clone();
        let reader_broken = broken.clone();
        std::thread::Builder::new()
            .name("busbench-barrier".into())
            .spawn(move || {
                let lines = BufReader::new(stream).lines();
                for line in lines {
                    let Ok(line) = line else { break };
                    if let Some(cell) = line.strip_prefix("go ").and_then(|k| k.parse().ok()) {
                        reader_released.fetch_max(cell, Ordering::AcqRel);
                    }
                }
                // Shard 0 is gone: nothing holds this shard any more.
                reader_broken.store(true, Ordering::Release);
                reader_released.store(GONE, Ordering::Release);
            })
            .map_err(|e| BarrierError::Connect {
                address: address.to_owned(),
                waited: started.elapsed(),
                last_error: e.to_string(),
            })?;
        Ok(Barrier {
            released,
            role: Role::Member(Mutex::new(writer)),
            broken,
        })
    }

    /// Says that this shard's cell `cell` is ready to measure.
    pub fn ready(&self, cell: i64) {
        self.tell("ready", cell);
    }

    /// Says that this shard's cell `cell` ended (whether or not it reached its barrier).
    pub fn done(&self, cell: i64) {
        self.tell("done", cell);
    }

    fn tell(&self, what: &str, cell: i64) {
        match &self.role {
            Role::Coordinator(coordinator) => coordinator.arrive(0, cell),
            Role::Member(stream) => {
                let mut stream = stream.lock().expect("barrier stream");
                let _ = stream.write_all(format!("{what} {cell}\n").as_bytes());
            }
        }
    }

    /// Whether every shard is ready for (or past) `cell`.
    pub fn released(&self, cell: i64) -> bool {
        self.released.load(Ordering::Acquire) >= cell
    }

    /// Whether the barrier stopped working (shard 0 went away).
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

impl Drop for Barrier {
    /// Closes the connections, so that the other end stops counting on this shard.
    fn drop(&mut self) {
        match &self.role {
            Role::Member(stream) => {
                if let Ok(stream) = stream.lock() {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
            Role::Coordinator(coordinator) => {
                if let Ok(state) = coordinator.state.lock() {
                    for stream in &state.streams {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
    }
}

fn connect(address: &str) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("the address resolves to nothing");
    for resolved in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&resolved, Duration::from_secs(2)) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// Shard 0: listens, takes one connection from each other shard of this run (up to `bound`),
/// and starts a reader per connection.
fn gather(
    coordinator: &Arc<Coordinator>,
    address: &str,
    run_id: &str,
    count: u32,
    bound: Duration,
) -> Result<(), BarrierError> {
    if count == 1 {
        return Ok(());
    }
    // Shard 0 listens on every interface when the address names a host (its own DNS name
    // may not resolve yet when it starts), on the address itself when it is an IP.
    let bind = match address.rsplit_once(':') {
        Some((host, port))
            if host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_err() =>
        {
            format!("0.0.0.0:{port}")
        }
        _ => address.to_owned(),
    };
    let listener = TcpListener::bind(&bind).map_err(|source| BarrierError::Listen {
        address: bind.clone(),
        source,
    })?;
    let _ = listener.set_nonblocking(true);
    let started = Instant::now();
    let mut seen = vec![false; count as usize];
    seen[0] = true;
    let mut connected = 0;
    while connected < count - 1 {
        if started.elapsed() >= bound {
            return Err(BarrierError::Gather {
                address: address.to_owned(),
                connected,
                expected: count - 1,
                waited: bound,
            });
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(clone) => clone,
            Err(_) => continue,
        });
        let mut hello = String::new();
        if reader.read_line(&mut hello).is_err() {
            continue;
        }
        let words: Vec<&str> = hello.split_whitespace().collect();
        let shard = match words.as_slice() {
            ["hello", id, index, total] if *id == run_id && *total == count.to_string() => {
                match index.parse::<usize>() {
                    Ok(index) if index > 0 && index < count as usize && !seen[index] => index,
                    _ => {
                        eprintln!(
                            "busbench: barrier: refused {hello:?} (a shard index already taken or out of range)"
                        );
                        continue;
                    }
                }
            }
            _ => {
                eprintln!(
                    "busbench: barrier: refused {:?}: not a shard of run {run_id} with {count} shards",
                    hello.trim()
                );
                continue;
            }
        };
        let _ = stream.set_read_timeout(None);
        seen[shard] = true;
        connected += 1;
        coordinator
            .state
            .lock()
            .expect("barrier state")
            .streams
            .push(stream);
        let coordinator = coordinator.clone();
        let _ = std::thread::Builder::new()
            .name("busbench-barrier".into())
            .spawn(move || {
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    let cell = line
                        .strip_prefix("ready ")
                        .or_else(|| line.strip_prefix("done "))
                        .and_then(|k| k.parse::<i64>().ok());
                    if let Some(cell) = cell {
                        coordinator.arrive(shard, cell);
                    }
                }
                // The shard is gone: it holds no cell any more.
                coordinator.arrive(shard, GONE);
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[test]
    fn a_cell_is_released_only_when_every_shard_is_ready_and_a_gone_shard_holds_nothing() {
        let address = free_address();
        let members: Vec<_> = (1..3)
            .map(|index| {
                let address = address.clone();
                std::thread::spawn(move || {
                    Barrier::join(&address, "run", index, 3, Duration::from_secs(10)).unwrap()
                })
            })
            .collect();
        let coordinator = Barrier::join(&address, "run", 0, 3, Duration::from_secs(10)).unwrap();
        let members: Vec<Barrier> = members.into_iter().map(|m| m.join().unwrap()).collect();
        let eventually = |check: &dyn Fn() -> bool| {
            let started = Instant::now();
            while !check() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "never released"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        coordinator.ready(0);
        members[0].ready(0);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!coordinator.released(0), "shard 2 is not ready yet");
        assert!(!members[0].released(0));
        members[1].ready(0);
        eventually(&|| coordinator.released(0) && members.iter().all(|m| m.released(0)));
        // A shard whose cell failed before its barrier says it is done: it holds no one.
        coordinator.ready(1);
        members[0].done(1);
        members[1].ready(1);
        eventually(&|| members.iter().all(|m| m.released(1)));
        // A shard that goes away holds no later cell either.
        let mut members = members;
        drop(members.pop());
        coordinator.ready(2);
        members[0].ready(2);
        eventually(&|| coordinator.released(2) && members[0].released(2));
        assert!(!members[0].broken());
    }

    #[test]
    fn shards_of_another_run_are_refused_and_a_missing_shard_0_is_a_bounded_error() {
        let address = free_address();
        let error = Barrier::join(&address, "run", 1, 2, Duration::from_millis(300))
            .err()
            .expect("no shard 0 listens");
        assert!(matches!(error, BarrierError::Connect { .. }), "{error}");
        let stranger = {
            let address = address.clone();
            std::thread::spawn(move || {
                Barrier::join(&address, "other-run", 1, 2, Duration::from_secs(5)).unwrap()
            })
        };
        let error = Barrier::join(&address, "run", 0, 2, Duration::from_millis(1500))
            .err()
            .expect("the stranger is refused");
        assert!(
            matches!(error, BarrierError::Gather { connected: 0, .. }),
            "{error}"
        );
        let _ = stranger.join();
    }
}
