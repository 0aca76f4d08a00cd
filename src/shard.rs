//! Splitting one run over several processes (`busbench run --shard I/N`), usually on several
//! load hosts: each shard's share of the load, the run id the shards share, and the time at
//! which their measured phases begin.
//!
//! Shards are numbered from 0, as Kubernetes numbers the pods of an Indexed Job
//! (`JOB_COMPLETION_INDEX`). Each shard publishes and subscribes on its own topics (named
//! after the run id and its index), so shards never take each other's messages and every
//! latency is measured on one host's clock; `busbench merge` adds their results up.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::scenario::{Mode, Scenario, Workload};

/// The environment variable Kubernetes sets to a pod's index in an Indexed Job; read by
/// `--shards N`.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

/// The longest run id (it becomes part of topic and stream names).
pub const MAX_RUN_ID_LEN: usize = 40;

/// Which shard of how many, as written on the command line: `I/N`, with I from 0 to N-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// This shard's index, from 0.
    pub index: u32,
    /// How many shards the run has.
    pub count: u32,
}

impl ShardSpec {
    /// Shard `index` of `count`, when it exists.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("the shard count must be at least 1, such as 0/3".into());
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist: shards are numbered from 0 to {}",
                count - 1
            ));
        }
        Ok(ShardSpec { index, count })
    }
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((index, count)) = text.trim().split_once('/') else {
            return Err(format!(
                "{text:?} is not I/N (shard I of N, numbered from 0), such as 0/3"
            ));
        };
        let number = |part: &str, what: &str| {
            part.trim()
                .parse::<u32>()
                .map_err(|_| format!("{text:?}: {what} {part:?} is not a whole number"))
        };
        ShardSpec::new(number(index, "the index")?, number(count, "the count")?)
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The share of `total` that shard `index` of `count` takes: an even share, the first shards
/// taking one more each until the remainder is used up, so that the shares add up to `total`.
pub fn share(total: u64, index: u32, count: u32) -> u64 {
    let count = u64::from(count.max(1));
    total / count + u64::from(u64::from(index) < total % count)
}

/// The scenario one shard runs: its share of the messages (or of the rate, for a run of fixed
/// duration), of the publishers, of the in-flight window, of the aggregates and of the
/// warm-up, so that the shards add up to the scenario exactly. Client ceilings are not
/// measured in a shard (each would be one process's figure, not the run's).
pub fn scenario_share(scenario: &Scenario, spec: ShardSpec) -> Result<Scenario, String> {
    let ShardSpec { index, count } = spec;
    if scenario.search.is_some() {
        return Err(
            "a rate search cannot be split over shards (each shard would search a rate of its \
             own); run the search in one process"
                .into(),
        );
    }
    let share_of = |key: &str, total: u64| -> Result<u64, String> {
        if total > 0 && total < u64::from(count) {
            return Err(format!(
                "`{key}` = {total} cannot be split over {count} shards: each shard needs at \
                 least one"
            ));
        }
        Ok(share(total, index, count))
    };
    let mut shard = scenario.clone();
    match scenario.workload() {
        Workload::Messages(messages) => shard.messages = Some(share_of("messages", messages)?),
        Workload::Duration(_) => {}
    }
    shard.rate = share_of("rate", scenario.rate)?;
    if let Some(rate) = scenario.kafka.rate {
        shard.kafka.rate = Some(share_of("kafka.rate", rate)?);
    }
    if let Some(rate) = scenario.nats.rate {
        shard.nats.rate = Some(share_of("nats.rate", rate)?);
    }
    let publishers = share_of("publishers", u64::from(scenario.publishers.get()))?;
    shard.publishers = std::num::NonZeroU32::new(publishers as u32)
        .ok_or_else(|| "`publishers` cannot be split".to_owned())?;
    // The window per publisher stays as the scenario has it.
    let window = (scenario.max_in_flight.get() as u64 * publishers)
        .div_ceil(u64::from(scenario.publishers.get()));
    shard.max_in_flight =
        std::num::NonZeroUsize::new(window.max(1) as usize).expect("at least one");
    if scenario.modes.contains(&Mode::Envelope) {
        shard.aggregates = share_of("aggregates", scenario.aggregates)?;
    } else {
        shard.aggregates = share(scenario.aggregates, index, count).max(1);
    }
    shard.warmup = share(scenario.warmup, index, count).max(u64::from(scenario.warmup > 0));
    shard.ceiling = false;
    Ok(shard)
}

/// A run id usable in topic and stream names: letters, digits, `-` and `_`, at most
/// [`MAX_RUN_ID_LEN`] characters.
pub fn check_run_id(run_id: &str) -> Result<(), String> {
    if run_id.is_empty() || run_id.len() > MAX_RUN_ID_LEN {
        return Err(format!(
            "{run_id:?} must have 1 to {MAX_RUN_ID_LEN} characters"
        ));
    }
    if let Some(bad) = run_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{run_id:?} contains {bad:?}: use letters, digits, '-' and '_' (it names topics \
             and streams)"
        ));
    }
    Ok(())
}

/// The run id derived from a start time: its UTC digits, down to the second (every shard
/// given the same `--start-at` time derives the same id).
pub fn run_id_from_time(time: DateTime<Utc>) -> String {
    time.format("%Y%m%dT%H%M%SZ").to_string()
}

/// When the measured phase begins, as given to `--start-at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// A time of day, RFC 3339 (`2026-11-23T05:00:00Z`): the same for every shard.
    Time(DateTime<Utc>),
    /// A duration from the process's start (`90s`): for one host, or for trying things out.
    After(std::time::Duration),
}

impl StartAt {
    /// The moment, for a process started at `now`.
    pub fn moment(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            StartAt::Time(time) => *time,
            StartAt::After(duration) => {
                now + chrono::Duration::from_std(*duration).unwrap_or(chrono::Duration::MAX)
            }
        }
    }
}

impl FromStr for StartAt {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(time) = DateTime::parse_from_rfc3339(text) {
            return Ok(StartAt::Time(time.with_timezone(&Utc)));
        }
        match humantime::parse_duration(text) {
            Ok(duration) if duration <= crate::scenario::MAX_TIMEOUT => {
                Ok(StartAt::After(duration))
            }
            Ok(_) => Err(format!("{text:?} is more than a week away")),
            Err(_) => Err(format!(
                "{text:?} is neither an RFC 3339 time (such as 2026-11-23T05:00:00Z) nor a \
                 duration from now (such as 90s)"
            )),
        }
    }
}

/// This host's name (`unknown` when the system does not say).
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return "unknown".into();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if !name.is_empty() => name.to_owned(),
        _ => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_whole() {
        for total in [0u64, 1, 2, 3, 10, 100_000, 100_001, 7_777_777] {
            for count in 1..=7u32 {
                let parts: Vec<u64> = (0..count).map(|i| share(total, i, count)).collect();
                assert_eq!(parts.iter().sum::<u64>(), total, "{total} over {count}");
                let (min, max) = (parts.iter().min().unwrap(), parts.iter().max().unwrap());
                assert!(max - min <= 1, "{parts:?} is not even");
            }
        }
    }

    #[test]
    fn shard_specs_parse_and_refuse() {
        assert_eq!(
            "2/3".parse::<ShardSpec>(),
            Ok(ShardSpec { index: 2, count: 3 })
        );
        assert_eq!(
            "0/1".parse::<ShardSpec>(),
            Ok(ShardSpec { index: 0, count: 1 })
        );
        for bad in ["0/0", "5/3", "3/3", "1", "a/3", "1/b", "-1/3", ""] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad} was accepted");
        }
        assert!(
            "5/3"
                .parse::<ShardSpec>()
                .unwrap_err()
                .contains("numbered from 0 to 2")
        );
    }

    #[test]
    fn start_times_parse() {
        let time = "2026-11-23T05:00:00Z".parse::<StartAt>().unwrap();
        let expected = DateTime::parse_from_rfc3339("2026-11-23T05:00:00Z").unwrap();
        assert_eq!(time, StartAt::Time(expected.with_timezone(&Utc)));
        assert_eq!(
            "90s".parse::<StartAt>(),
            Ok(StartAt::After(std::time::Duration::from_secs(90)))
        );
        assert!("soon".parse::<StartAt>().is_err());
        assert!("2026-13-40T05:00:00Z".parse::<StartAt>().is_err());
        assert_eq!(
            run_id_from_time(expected.with_timezone(&Utc)),
            "20261123T050000Z"
        );
    }

    #[test]
    fn run_ids_must_fit_topic_names() {
        assert!(check_run_id("nightly-42_a").is_ok());
        for bad in ["", "a.b", "a b", "a/b", "a*", &"x".repeat(41)] {
            assert!(check_run_id(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
