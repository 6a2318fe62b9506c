//! The fault suite: the service run as separate processes (the test
//! build's binary; the release one under `make faults`) against a durable
//! PostgreSQL and a broker of the scenario's own, killed, restarted, cut
//! off and paused under load. Each scenario's verdict is one line of
//! figures (see [`verdict::Figures`]): nothing lost, nothing doubled, no
//! saga step under two idempotency keys, no saga driven twice at once.
//!
//! `FAULTS_SCALE=full` (what `make faults` sets) runs the sizes the issue
//! asks for; the default, short, is what `make test` runs within CI's time.
//! `FAULTS_SEED` fixes the random moments of the kills (the seed is
//! printed either way). Participants are wiremock, answering after a few
//! milliseconds and recording every call.

mod instance;
mod load;
mod participants;
mod scenarios;
mod servers;
mod soak;
mod verdict;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::broker::BrokerKind;
use instance::Instance;
use load::{progress, store_pool, Load, Pace, Progress};
use participants::Participants;
use servers::{Broker, Store};
use verdict::Figures;

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// The figure the issue names for a scenario, or a short one for CI.
    full: bool,
}

impl Scale {
    fn from_env() -> Self {
        Self {
            full: std::env::var("FAULTS_SCALE").as_deref() == Ok("full"),
        }
    }

    /// `full` events under `make faults`, `short` otherwise.
    fn events(self, full: usize, short: usize) -> usize {
        if self.full {
            full
        } else {
            short
        }
    }

    fn secs(self, full: u64, short: u64) -> Duration {
        Duration::from_secs(if self.full { full } else { short })
    }
}

/// Sagas kept unfinished by the load: the 64 and more.
const IN_FLIGHT: usize = 80;
/// A scenario's wait for its load to reach a step: a guard against a
/// hang, far longer than any step takes.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(300);
/// How long a participant takes to answer: two drivers of one saga at once
/// would overlap in it.
const ANSWER_AFTER: Duration = Duration::from_millis(10);

/// One scenario's world: its store, broker, participants and instances.
/// Fields drop in this order: the instances are killed first, the servers
/// stopped next, and the directory holding their state removed last.
pub struct Rig {
    pub instances: Vec<Instance>,
    pub participants: Participants,
    pub store: Store,
    pub broker: Broker,
    pub kind: BrokerKind,
    pub scenario: &'static str,
    prefix: String,
    settings: Vec<(String, String)>,
    started: usize,
    pub faults: usize,
    last_fault: chrono::DateTime<chrono::Utc>,
    dir: ScenarioDir,
}

/// Where a scenario keeps its servers' state and its instances' logs:
/// removed when the scenario passes, kept (and named) when it fails or
/// `FAULTS_KEEP` is set. It names the test process that owns it
/// (`owner.pid`), so that `cargo xtask test|faults` can stop the servers
/// of a run that was killed before it could.
struct ScenarioDir(PathBuf);

impl ScenarioDir {
    fn new(scenario: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "saga-faults-{scenario}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("the scenario's directory");
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .expect("the scenario's owner");
        Self(dir)
    }
}

impl Drop for ScenarioDir {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("FAULTS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("fault scenario left its logs in {}", self.0.display());
        }
    }
}

impl Rig {
    /// Starts the servers and participants (no instance yet) with the
    /// service settings `settings` over the suite's fault defaults.
    pub async fn new(scenario: &'static str, settings: &[(&str, &str)]) -> Self {
        let kind = BrokerKind::from_env();
        let dir = ScenarioDir::new(scenario);
        let (store, broker) = tokio::join!(Store::start(&dir.0), Broker::start(kind, &dir.0));
        let participants = Participants::start(ANSWER_AFTER).await;
        let prefix = format!("f{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut rig = Self {
            kind,
            scenario,
            dir,
            store,
            broker,
            participants,
            prefix,
            settings: Vec::new(),
            instances: Vec::new(),
            started: 0,
            faults: 0,
            last_fault: chrono::Utc::now(),
        };
        // Leases of a killed instance lapse after STEP_TIMEOUT_MS + 5 s;
        // its unacked Redis entries are taken over after the claim idle.
        let defaults = [
            ("STEP_TIMEOUT_MS", "2000"),
            ("REDIS_CLAIM_IDLE_MS", "3000"),
            ("RETRY_BASE_DELAY_MS", "100"),
            ("RETRY_MAX_DELAY_MS", "1000"),
            ("SHUTDOWN_GRACE_SECS", "10"),
            ("RUST_LOG", "info"),
        ];
        for (k, v) in defaults.iter().chain(settings) {
            rig.set(k, v);
        }
        rig
    }

    /// A service setting for the instances started from now on.
    pub fn set(&mut self, name: &str, value: &str) {
        self.settings.retain(|(k, _)| k != name);
        self.settings.push((name.to_string(), value.to_string()));
    }

    fn channel(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".to_string(), self.store.url.clone()),
            ("BROKER_URL".to_string(), self.broker.url().to_string()),
        ];
        env.extend(crate::helpers::channel_settings(&self.prefix));
        env.extend(
            self.participants
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        env.extend(self.settings.iter().cloned());
        env
    }

    /// Starts one more instance, with a name never used before (a process
    /// restarted is a new instance, as INSTANCE_ID requires); its index.
    pub async fn start_instance(&mut self) -> usize {
        self.started += 1;
        let id = format!("i{}", self.started);
        let mut instance = Instance::start(&self.dir.0, &id, &self.env()).await;
        // Ready is not yet subscribed: a scenario's next step may count on
        // the broker handing this instance a share.
        let events = self.channel("partner-events");
        instance
            .wait_consuming(&events, Duration::from_secs(60))
            .await;
        self.instances.push(instance);
        self.instances.len() - 1
    }

    /// Publishes `events` events in the background, `IN_FLIGHT` at a time.
    pub async fn load(&self, events: usize) -> Load {
        self.load_at(events, None).await
    }

    /// The same, no faster than `per_second` when given.
    pub async fn load_at(&self, events: usize, per_second: Option<f64>) -> Load {
        self.load_paced(events, per_second, None).await
    }

    /// The same as [`Rig::load`], stopping before the event of index
    /// `hold_at` until [`Load::release`].
    pub async fn load_held(&self, events: usize, hold_at: usize) -> Load {
        self.load_paced(events, None, Some(hold_at)).await
    }

    async fn load_paced(
        &self,
        events: usize,
        per_second: Option<f64>,
        hold_at: Option<usize>,
    ) -> Load {
        let pace = Pace {
            in_flight: IN_FLIGHT,
            per_second,
            hold_at,
        };
        Load::start(
            self.kind,
            self.broker.url(),
            &self.channel("partner-events"),
            &self.store.url,
            &self.prefix,
            events,
            pace,
        )
        .await
    }

    /// Waits until `load` has published `count` events; a load held
    /// before `count` and never released fails here, not by hanging.
    pub async fn when_published(&self, load: &Load, count: usize) {
        let until = Instant::now() + PUBLISHED_WITHIN;
        while load.published() < count {
            assert!(
                Instant::now() < until,
                "only {} of {count} events published in {PUBLISHED_WITHIN:?}: a load held before them?",
                load.published()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A fault has just ended: a saga's wait is counted from here (or from
    /// its event, if later).
    pub fn fault_done(&mut self) {
        self.faults += 1;
        self.last_fault = chrono::Utc::now();
    }

    /// Waits for every event to be published and every saga terminal (or
    /// `within` to pass), then judges the run and prints its line.
    pub async fn verdict(&self, load: Load, events: usize, within: Duration) -> Figures {
        let offered = load.offered.clone();
        let published = tokio::time::timeout(within, load.finish()).await;
        let resent = published.expect("the load was all published in time");
        let pool = store_pool(&self.store.url).await;
        let until = Instant::now() + within;
        let mut last = Progress::default();
        while Instant::now() < until {
            if let Some(now) = progress(&pool).await {
                last = now;
                if now.sagas >= events as i64 && now.terminal == now.sagas {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let partners: Vec<String> = (0..events)
            .map(|n| load::partner(&self.prefix, n))
            .collect();
        let mut figures = Figures {
            scenario: self.scenario.to_string(),
            broker: format!("{:?}", self.kind).to_lowercase(),
            faults: self.faults,
            resent,
            ..Figures::default()
        };
        let tally = self.participants.tally();
        let load = (partners.as_slice(), &offered);
        verdict::judge(&mut figures, &pool, load, self.last_fault, &tally).await;
        figures.report();
        if figures.terminal != events as i64 {
            eprintln!("last progress {last:?}; logs in {}", self.dir.0.display());
            for instance in &self.instances {
                eprintln!("--- {} ---\n{}", instance.id, instance.tail());
            }
        }
        figures
    }
}
