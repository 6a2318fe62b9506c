//! The embedded demo: the real orchestrator on a SQLite file and the
//! in-memory broker, the simulated participants in-process on loopback
//! ports, a batch of `PartnerCreated` events, and a report whose numbers
//! are checked against the simulators' own counts.

mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use report::render;

use crate::config::{BrokerUrl, Settings};
use crate::envelope::{Envelope, EventType};
use crate::saga::{HistoryEntry, Saga, SagaState};
use crate::startup::{Application, StartupError};
use crate::store::{ListQuery, SagaStore, StoreError};
use crate::tools::simulator::{self, Simulator, SimulatorConfig, Stats};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub count: usize,
    pub simulator: SimulatorConfig,
    /// Where the SQLite file goes (recreated on each run).
    pub data_dir: PathBuf,
    /// The orchestrator's API address.
    pub api_addr: SocketAddr,
    /// Give up waiting for terminal states after this long.
    pub timeout: Duration,
}

/// Counts while the batch runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub completed: usize,
    pub compensated: usize,
    pub failed: usize,
}

impl Progress {
    /// Sagas in a terminal state.
    pub fn done(&self) -> usize {
        self.completed + self.compensated + self.failed
    }
}

/// Latency from the event to the saga's terminal state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// What the demo found.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub progress: Progress,
    /// From the first event published to the last saga settled.
    pub elapsed: Duration,
    pub latency: Latency,
    /// One saga per outcome that occurred, with its history.
    pub examples: Vec<(Saga, Vec<HistoryEntry>)>,
    pub simulator: Stats,
    /// Where the store and the simulators disagree; empty when they agree.
    pub problems: Vec<String>,
    /// Dead letters waiting: the one malformed event the demo sends, set
    /// aside with its reason for an operator to discard or redrive.
    pub dead_letters: i64,
    /// The orchestrator's API base URL.
    pub api: String,
    /// Where the store is.
    pub database: PathBuf,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for the simulated participants: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot publish the demo events: {0}")]
    Publish(#[from] crate::transport::TransportError),
}

/// A running demo: the orchestrator keeps serving until [`RunningDemo::stop`].
pub struct RunningDemo {
    pub report: DemoReport,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl RunningDemo {
    /// Stops the orchestrator and the simulators.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

/// Runs the batch and reports; the service stays up until the caller stops it.
pub async fn run(
    options: &DemoOptions,
    mut on_progress: impl FnMut(Progress),
) -> Result<RunningDemo, DemoError> {
    let database = prepare_data_dir(&options.data_dir)?;
    let sim = Simulator::new(options.simulator.clone());
    let alliances = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Listen)?;
    let integrations = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Listen)?;
    let settings = settings(
        options,
        &database,
        local_port(&alliances)?,
        local_port(&integrations)?,
    );
    let stop = CancellationToken::new();
    tokio::spawn(simulator::http::serve(
        sim.clone(),
        alliances,
        integrations,
        stop.clone(),
    ));

    let app = Application::build(&settings).await?;
    let api = format!("http://127.0.0.1:{}", app.port());
    let store = app.orchestrator().store().clone();
    let transport = app.orchestrator().transport().clone();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            if let Err(e) = app.run_until_stopped(stop.cancelled_owned()).await {
                tracing::error!(error = %e, "demo orchestrator stopped");
            }
        }
    });

    let started = Instant::now();
    for chunk in events(options.count).chunks(100) {
        transport
            .publish(&settings.broker.channels.partner_events, chunk)
            .await?;
    }
    transport
        .publish(&settings.broker.channels.partner_events, &[malformed()])
        .await?;
    let progress = wait_until_settled(store.as_ref(), options, &mut on_progress).await?;
    let elapsed = started.elapsed();
    let dead_letters = wait_for_dead_letters(store.as_ref(), options.timeout).await?;

    let sagas = all_sagas(store.as_ref()).await?;
    let report = DemoReport {
        progress,
        elapsed,
        latency: latency(&sagas),
        examples: examples(store.as_ref(), &sagas).await?,
        simulator: sim.stats(),
        problems: check(&sagas, &sim, options.count),
        dead_letters,
        api,
        database,
    };
    Ok(RunningDemo {
        report,
        stop,
        server,
    })
}

fn prepare_data_dir(dir: &std::path::Path) -> Result<PathBuf, DemoError> {
    let io = |source| DemoError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let database = dir.join("sagas.db");
    // A fresh store per run, so the report speaks of this batch only.
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", database.display()));
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    Ok(database)
}

fn local_port(listener: &TcpListener) -> Result<u16, DemoError> {
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(DemoError::Listen)
}

/// Demo settings: independent of the environment, so the run is the same
/// on every machine; retries are quicker than production's defaults.
fn settings(
    options: &DemoOptions,
    database: &std::path::Path,
    alliances: u16,
    integrations: u16,
) -> Settings {
    let loopback = |port: u16| {
        url::Url::parse(&format!("http://127.0.0.1:{port}"))
            .expect("a loopback URL with a port is a URL")
    };
    let mut s = Settings::default();
    s.broker.url = BrokerUrl::Memory;
    s.database.url = format!("sqlite://{}", database.display()).into();
    s.api.addr = options.api_addr;
    s.api.admin_token = Some("demo".into());
    s.participants.alliances_url = loopback(alliances);
    s.participants.integrations_url = loopback(integrations);
    s.participants.step_timeout = Duration::from_secs(2);
    s.retry.max_attempts = 4;
    s.retry.base_delay = Duration::from_millis(50);
    s.retry.max_delay = Duration::from_millis(400);
    s.limits.saga_deadline = Duration::from_secs(60);
    s.instance.sweep_interval = Duration::from_millis(250);
    s.instance.shutdown_grace = Duration::from_secs(5);
    s
}

/// `count` partners as integrations would announce them.
fn events(count: usize) -> Vec<Envelope> {
    let run = &Uuid::new_v4().simple().to_string()[..6];
    (1..=count)
        .map(|i| {
            let partner_id = format!("demo-{run}-{i:05}");
            let payload = json!({
                "partner_id": partner_id,
                "name": format!("Partner {i}"),
                "email": format!("partner{i}@example.test"),
                "country": "CO",
            });
            let payload = payload.as_object().cloned().unwrap_or_default();
            Envelope::new(
                EventType::PartnerCreated,
                format!("demo-{run}-{i:05}"),
                None,
                None,
                payload,
            )
        })
        .collect()
}

/// An announcement integrations got wrong (no `name`): the orchestrator
/// sets it aside as a dead letter with the reason, and starts no saga.
fn malformed() -> Envelope {
    let payload = json!({ "partner_id": "demo-malformed", "email": "nameless@example.test" });
    Envelope::new(
        EventType::PartnerCreated,
        "demo-malformed".to_string(),
        None,
        None,
        payload.as_object().cloned().unwrap_or_default(),
    )
}

/// The dead letters once the malformed event is indexed (or the timeout).
async fn wait_for_dead_letters(
    store: &dyn SagaStore,
    timeout: Duration,
) -> Result<i64, StoreError> {
    let deadline = Instant::now() + timeout;
    loop {
        let waiting: i64 = store
            .dead_letter_depths()
            .await?
            .iter()
            .map(|(_, n)| n)
            .sum();
        if waiting > 0 || Instant::now() >= deadline {
            return Ok(waiting);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_settled(
    store: &dyn SagaStore,
    options: &DemoOptions,
    on_progress: &mut impl FnMut(Progress),
) -> Result<Progress, DemoError> {
    let deadline = Instant::now() + options.timeout;
    loop {
        let counts = store.count_by_state().await?;
        let n = |s: SagaState| {
            counts
                .iter()
                .find(|(state, _)| *state == s)
                .map_or(0, |(_, n)| *n as usize)
        };
        let progress = Progress {
            total: options.count,
            completed: n(SagaState::Completed),
            compensated: n(SagaState::Compensated),
            failed: n(SagaState::Failed),
        };
        on_progress(progress);
        if progress.done() >= options.count || Instant::now() >= deadline {
            return Ok(progress);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_sagas(store: &dyn SagaStore) -> Result<Vec<Saga>, StoreError> {
    let mut sagas = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list(&ListQuery {
                before,
                limit: 500,
                ..Default::default()
            })
            .await?;
        before = page.last().map(|s| s.saga_id);
        let last_page = page.len() < 500;
        sagas.extend(page);
        if last_page {
            return Ok(sagas);
        }
    }
}

fn latency(sagas: &[Saga]) -> Latency {
    let mut times: Vec<Duration> = sagas
        .iter()
        .filter(|s| s.state.is_terminal())
        .map(|s| (s.updated_at - s.created_at).to_std().unwrap_or_default())
        .collect();
    if times.is_empty() {
        return Latency::default();
    }
    times.sort();
    let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Latency {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: times[times.len() - 1],
    }
}

async fn examples(
    store: &dyn SagaStore,
    sagas: &[Saga],
) -> Result<Vec<(Saga, Vec<HistoryEntry>)>, StoreError> {
    let mut out = Vec::new();
    for state in [
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
    ] {
        // The longest story of each kind (most transitions): retries show.
        if let Some(saga) = sagas
            .iter()
            .filter(|s| s.state == state)
            .max_by_key(|s| s.version)
        {
            out.push((saga.clone(), store.history(saga.saga_id).await?));
        }
    }
    Ok(out)
}

/// The store's outcomes against the simulators' records: every completed
/// saga has exactly one alliance, every compensated one exactly one
/// deletion, no failed one was deleted, and nothing was done twice.
fn check(sagas: &[Saga], sim: &Simulator, expected: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if sagas.len() != expected {
        problems.push(format!(
            "{} sagas recorded for {expected} events",
            sagas.len()
        ));
    }
    for saga in sagas {
        let id = saga.saga_id;
        match saga.state {
            SagaState::Completed => {
                let alliance = sim.alliance_of(id);
                if alliance.is_none() || alliance != saga.alliance_id {
                    problems.push(format!(
                        "completed saga {id}: store says {:?}, alliances says {alliance:?}",
                        saga.alliance_id
                    ));
                }
            }
            SagaState::Compensated if !sim.deleted_for(id) => {
                problems.push(format!(
                    "compensated saga {id}: integrations never deleted {}",
                    saga.partner_id
                ));
            }
            SagaState::Failed if sim.deleted_for(id) => {
                problems.push(format!(
                    "failed saga {id}: but integrations deleted {}",
                    saga.partner_id
                ));
            }
            state if !state.is_terminal() => problems.push(format!("saga {id} still {state}")),
            _ => {}
        }
    }
    let stats = sim.stats();
    let count = |s: SagaState| sagas.iter().filter(|x| x.state == s).count() as u64;
    if stats.alliances.created != count(SagaState::Completed) {
        problems.push(format!(
            "alliances created {} times for {} completed sagas",
            stats.alliances.created,
            count(SagaState::Completed)
        ));
    }
    if stats.integrations.deleted != count(SagaState::Compensated) {
        problems.push(format!(
            "partners deleted {} times for {} compensated sagas",
            stats.integrations.deleted,
            count(SagaState::Compensated)
        ));
    }
    problems
}
