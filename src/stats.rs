//! This instance's own live counters, read by `GET /metrics/summary`.
//!
//! The Prometheus recorder is process-global and write-only (the `metrics`
//! facade has no way to read a value back), and parsing our own text
//! exposition would be fragile. So the few numbers the JSON summary needs
//! beyond what the store knows (in-flight sagas, dead letters, recent
//! rates) are kept here as well, per [`crate::orchestrator::Orchestrator`]:
//! several services in one process (the tests) each see only their own.
//!
//! Rates come from a ring of one-second buckets covering the last minute:
//! recording is O(1) under a short lock, reading sums at most 60 buckets,
//! and memory stays fixed however many events arrive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Length of the rate window, in seconds (one bucket per second).
pub const RATE_WINDOW_SECS: u64 = 60;

/// What the rate window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A saga recorded (a new one: duplicates of an event are not counted).
    Started,
    /// A saga reached `completed`.
    Completed,
    /// A saga reached `compensated`.
    Compensated,
    /// A saga reached `failed`.
    Failed,
    /// A message went to a dead-letter queue.
    DeadLettered,
}

impl Event {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        match self {
            Self::Started => 0,
            Self::Completed => 1,
            Self::Compensated => 2,
            Self::Failed => 3,
            Self::DeadLettered => 4,
        }
    }
}

/// Events per second, averaged over the last [`RATE_WINDOW_SECS`] seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    pub started: f64,
    pub completed: f64,
    pub compensated: f64,
    pub failed: f64,
    pub dead_letters: f64,
}

/// A consistent-enough read of the counters (each value is exact; they are
/// not read under one lock, which a dashboard cannot tell apart).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub instance_id: String,
    pub uptime: Duration,
    pub in_flight: u64,
    pub max_in_flight: usize,
    /// Dead-lettered messages since start, by the channel they came from.
    pub dead_letters: BTreeMap<String, u64>,
    pub rates: Rates,
}

/// One second's counts; `second` says which second (since start) they are
/// for, so a bucket left over from a minute ago is recognised and reset.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    counts: [u64; Event::COUNT],
}

/// The last minute of events, one bucket per second, reused in a ring.
#[derive(Debug)]
struct Window {
    buckets: [Bucket; RATE_WINDOW_SECS as usize],
}

impl Window {
    fn new() -> Self {
        Self {
            buckets: [Bucket::default(); RATE_WINDOW_SECS as usize],
        }
    }

    fn record(&mut self, event: Event, now_secs: u64) {
        let bucket = &mut self.buckets[(now_secs % RATE_WINDOW_SECS) as usize];
        if bucket.second != now_secs {
            *bucket = Bucket {
                second: now_secs,
                counts: [0; Event::COUNT],
            };
        }
        bucket.counts[event.index()] += 1;
    }

    /// Counts in the window ending at `now_secs` (its current, partial
    /// second included), divided by the window's length. Dividing by the
    /// full minute even just after start under-reports for that minute
    /// rather than turning one event in the first second into "1/s".
    fn rates(&self, now_secs: u64) -> Rates {
        let mut sums = [0u64; Event::COUNT];
        for bucket in &self.buckets {
            let age = now_secs.checked_sub(bucket.second);
            if age.is_some_and(|age| age < RATE_WINDOW_SECS) {
                for (sum, n) in sums.iter_mut().zip(bucket.counts) {
                    *sum += n;
                }
            }
        }
        let per_sec = |e: Event| sums[e.index()] as f64 / RATE_WINDOW_SECS as f64;
        Rates {
            started: per_sec(Event::Started),
            completed: per_sec(Event::Completed),
            compensated: per_sec(Event::Compensated),
            failed: per_sec(Event::Failed),
            dead_letters: per_sec(Event::DeadLettered),
        }
    }
}

/// This instance's counters; shared by the orchestrator (which records)
/// and the API (which reads).
#[derive(Debug)]
pub struct Stats {
    instance_id: String,
    max_in_flight: usize,
    started_at: Instant,
    in_flight: AtomicU64,
    dead_letters: Mutex<BTreeMap<String, u64>>,
    window: Mutex<Window>,
}

impl Stats {
    /// `channels`: the consumed channels, listed in the dead-letter counts
    /// from the start (at 0) so readers always find their keys.
    pub fn new(
        instance_id: impl Into<String>,
        max_in_flight: usize,
        channels: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            instance_id: instance_id.into(),
            max_in_flight,
            started_at: Instant::now(),
            in_flight: AtomicU64::new(0),
            dead_letters: Mutex::new(channels.into_iter().map(|c| (c, 0)).collect()),
            window: Mutex::new(Window::new()),
        }
    }

    /// Counts `event` in the rate window.
    pub fn record(&self, event: Event) {
        // The clock is read under the lock so buckets only ever move forward.
        let mut window = lock(&self.window);
        window.record(event, self.now_secs());
    }

    /// Counts a dead-lettered message from `channel`.
    pub fn record_dead_letter(&self, channel: &str) {
        {
            let mut counts = lock(&self.dead_letters);
            match counts.get_mut(channel) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(channel.to_string(), 1);
                }
            }
        }
        self.record(Event::DeadLettered);
    }

    /// Marks one saga as being driven until the guard is dropped; a guard
    /// rather than two calls so a panicking or cancelled driver still
    /// gives its count back.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let rates = {
            let window = lock(&self.window);
            window.rates(self.now_secs())
        };
        Snapshot {
            instance_id: self.instance_id.clone(),
            uptime: self.started_at.elapsed(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight,
            dead_letters: lock(&self.dead_letters).clone(),
            rates,
        }
    }

    /// Whole seconds since start, from a monotonic clock (wall-clock jumps
    /// must not empty or double the window).
    fn now_secs(&self) -> u64 {
        self.started_at.elapsed().as_secs()
    }
}

/// Held while a saga is being driven; see [`Stats::in_flight`].
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A panic while holding one of these locks cannot leave the counters
/// half-updated in a way that matters, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rates_average_the_last_minute() {
        let mut w = Window::new();
        for _ in 0..30 {
            w.record(Event::Started, 10);
        }
        for _ in 0..6 {
            w.record(Event::Completed, 40);
        }
        w.record(Event::Failed, 69);
        let r = w.rates(69);
        assert!(approx(r.started, 0.5), "{r:?}");
        assert!(approx(r.completed, 0.1), "{r:?}");
        assert!(approx(r.failed, 1.0 / 60.0), "{r:?}");
        assert!(approx(r.compensated, 0.0));
        assert!(approx(r.dead_letters, 0.0));
    }

    #[test]
    fn events_older_than_the_window_drop_out() {
        let mut w = Window::new();
        w.record(Event::Started, 10);
        // At 69 the event of second 10 is 59 s old: still in.
        assert!(approx(w.rates(69).started, 1.0 / 60.0));
        // At 70 it is 60 s old: out.
        assert!(approx(w.rates(70).started, 0.0));
        // Second 70 reuses its bucket.
        w.record(Event::Started, 70);
        assert!(approx(w.rates(70).started, 1.0 / 60.0));
        assert!(approx(w.rates(129).started, 1.0 / 60.0));
        assert!(approx(w.rates(130).started, 0.0));
        // Long idle periods leave nothing behind.
        assert!(approx(w.rates(10_000).started, 0.0));
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let mut w = Window::new();
        for _ in 0..5 {
            w.record(Event::Compensated, 3);
        }
        w.record(Event::Compensated, 63); // same slot, a minute later
        assert!(approx(w.rates(63).compensated, 1.0 / 60.0));
    }

    #[test]
    fn the_first_second_counts() {
        let mut w = Window::new();
        w.record(Event::DeadLettered, 0);
        w.record(Event::DeadLettered, 0);
        assert!(approx(w.rates(0).dead_letters, 2.0 / 60.0));
    }

    #[test]
    fn counters_and_guards() {
        let stats = Stats::new("i-1", 8, ["events".to_string()]);
        assert_eq!(stats.snapshot().dead_letters["events"], 0);
        stats.record_dead_letter("events");
        stats.record_dead_letter("other");
        {
            let _a = stats.in_flight();
            let _b = stats.in_flight();
            assert_eq!(stats.snapshot().in_flight, 2);
        }
        let s = stats.snapshot();
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.max_in_flight, 8);
        assert_eq!(s.instance_id, "i-1");
        assert_eq!(s.dead_letters["events"], 1);
        assert_eq!(s.dead_letters["other"], 1);
        assert!(approx(s.rates.dead_letters, 2.0 / 60.0));
    }
}
