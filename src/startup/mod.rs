//! Builds the whole service from settings and runs it until told to stop.
//! Tests build it the same way, on port 0, with their own database and
//! channel names.

pub mod reach;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{ParticipantMode, Settings};
use crate::operator::{JobLimits, Operator};
use crate::orchestrator::{Orchestrator, OrchestratorConfig};
use crate::participants::HttpParticipants;
use crate::redact;
use crate::store::{SagaStore, StoreError};
use crate::telemetry;
use crate::transport::Transport;
pub use reach::Unreachable;

/// Why the service could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the saga store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("cannot build the participants' HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(
        "this machine's clock is {skew_ms} ms off the database's; leases need it within {max_ms} ms: fix the time sync (NTP)",
        max_ms = crate::orchestrator::clock::MAX_CLOCK_SKEW.as_millis()
    )]
    ClockSkew { skew_ms: i64 },
    #[error("cannot listen on API_ADDR {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The service, built and bound, not yet running.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    orchestrator: Orchestrator,
    operator: Operator,
    header_timeout: std::time::Duration,
    connected: Connected,
}

/// What the service connected to, without secrets: said once it is ready.
#[derive(Debug, Clone)]
struct Connected {
    store: String,
    broker: String,
    alliances: String,
    integrations: String,
}

impl Connected {
    fn of(settings: &Settings) -> Self {
        let participant = |mode: ParticipantMode, url: &url::Url, channel: &str| match mode {
            ParticipantMode::Http => format!("http {}", redact::url(url)),
            ParticipantMode::Broker => format!("broker, commands on {channel}"),
        };
        Self {
            store: settings.database.redacted_url(),
            broker: settings.broker.url.redacted(),
            alliances: participant(
                settings.participants.alliances_mode,
                &settings.participants.alliances_url,
                &settings.broker.channels.alliance_commands,
            ),
            integrations: participant(
                settings.participants.integrations_mode,
                &settings.participants.integrations_url,
                &settings.broker.channels.integration_commands,
            ),
        }
    }
}

/// Where a person reaches the API bound at `addr`: a wildcard address is
/// not one to browse to.
fn browsable(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

impl Application {
    /// Connects the store (migrating it unless `MIGRATE_ON_START=false`)
    /// and the broker, each tried for `STARTUP_TIMEOUT_SECS`, then builds
    /// the rest.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let store = reach::open_store(settings, settings.database.max_connections).await?;
        if settings.database.migrate_on_start {
            store.migrate().await?;
        }
        let transport = reach::connect_broker(settings).await?;
        Self::build_with(settings, store, transport).await
    }

    /// Builds around an existing store and transport.
    pub async fn build_with(
        settings: &Settings,
        store: Arc<dyn SagaStore>,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, StartupError> {
        let skew = crate::orchestrator::clock::skew(store.as_ref()).await?;
        if !crate::orchestrator::clock::acceptable(skew) {
            return Err(StartupError::ClockSkew {
                skew_ms: skew.num_milliseconds(),
            });
        }
        let participants = HttpParticipants::new(
            settings.participants.alliances_url.clone(),
            settings.participants.integrations_url.clone(),
            settings.participants.step_timeout,
        )?;
        let orchestrator = Orchestrator::new(
            store,
            transport,
            Arc::new(participants),
            OrchestratorConfig::from(settings),
            CancellationToken::new(),
        );
        let operator = Operator::new(
            orchestrator.clone(),
            JobLimits {
                rate_per_sec: settings.api.job_rate_per_sec,
                max_items: settings.api.job_max_items,
            },
        );
        let listener = TcpListener::bind(settings.api.addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: settings.api.addr,
                source,
            })?;
        let state = AppState {
            orchestrator: orchestrator.clone(),
            metrics: telemetry::metrics_handle(),
            admins: Arc::new(settings.api.admins()),
            operator: operator.clone(),
            counts: Arc::default(),
            console: Arc::default(),
        };
        let router = api::router(state, settings.limits.max_message_bytes);
        Ok(Self {
            listener,
            router,
            orchestrator,
            operator,
            header_timeout: settings.api.header_timeout,
            connected: Connected::of(settings),
        })
    }

    /// The bound API port (useful with `API_ADDR=…:0`).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The orchestrator inside.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// Serves the API and runs the consumer, relay and sweeper until
    /// `shutdown` resolves; then stops taking work and waits (up to the
    /// grace period) for sagas in flight.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.orchestrator.spawn_background();
        self.operator.spawn_background();
        let addr = self.listener.local_addr()?;
        let api = browsable(addr);
        let c = &self.connected;
        tracing::info!(
            %addr,
            docs = %format!("{api}/docs"),
            store = %c.store,
            broker = %c.broker,
            alliances = %c.alliances,
            integrations = %c.integrations,
            "ready: API listening"
        );
        // The orchestrator stops taking work when the signal comes, while
        // the API drains its open requests, so both fit in the grace.
        let orchestrator = self.orchestrator.clone();
        let signalled = async move {
            shutdown.await;
            tracing::info!("shutting down");
            orchestrator.stop_taking_work();
        };
        api::serve(self.listener, self.router, self.header_timeout, signalled).await;
        self.orchestrator.shutdown().await;
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM (what container runtimes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn the_ready_line_shows_no_password_wherever_the_url_carries_it() {
        let mut settings = Settings::default();
        settings.database.url =
            SecretString::from("postgres://app:pw-in-userinfo@db:5432/saga?password=pw-in-query");
        let shown = format!("{:?}", Connected::of(&settings));
        assert!(shown.contains("db:5432/saga"), "{shown}");
        for secret in ["pw-in-userinfo", "pw-in-query"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
