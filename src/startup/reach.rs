//! Reaching the store and the broker at start-up.
//!
//! A dependency that is not there yet (a compose file starts everything at
//! once) is tried again for `STARTUP_TIMEOUT_SECS`. The first failure is
//! said at once, naming the setting, the address and how long it will be
//! tried; the last one ends start-up. A failure that trying again cannot
//! fix (a wrong password, a database that does not exist) ends it at once.
//! Brokers are first knocked on with a plain TCP connection, so that the
//! client libraries' own reconnection loops (which log every retry) only
//! start against a broker that listens.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{BrokerUrl, Settings};
use crate::store::{SagaStore, StoreError};
use crate::transport::{self, Transport, TransportError};

/// The setting that bounds how long start-up tries.
pub const TIMEOUT_SETTING: &str = "STARTUP_TIMEOUT_SECS";

/// The first pause between tries; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// One knock on a broker's port at most; a silent host is tried again.
const KNOCK_TIMEOUT: Duration = Duration::from_secs(3);

/// Something start-up needs, as the operator names it.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// What it is, e.g. "the broker".
    pub what: &'static str,
    /// The setting that names its address.
    pub setting: &'static str,
    /// Its address, without secrets.
    pub address: String,
}

/// How hard start-up tried before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried {
    /// Trying again could not help (the error says why).
    Pointless,
    /// Once: the timeout is 0.
    Once,
    /// Again and again for this long.
    For(Duration),
}

/// A dependency start-up could not reach; says what, where, why, and for
/// how long it was tried.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {} at {}={}: {reason}{}", dependency.what, dependency.setting, dependency.address, how_long(*tried))]
pub struct Unreachable {
    pub dependency: Dependency,
    pub reason: String,
    pub tried: Tried,
}

fn how_long(tried: Tried) -> String {
    match tried {
        Tried::Pointless => String::new(),
        Tried::Once => format!(" (tried once: {TIMEOUT_SETTING}=0)"),
        Tried::For(spent) => format!(
            " (tried for {} s; {TIMEOUT_SETTING} sets how long)",
            spent.as_secs_f64().round()
        ),
    }
}

/// One try cut short, or how it failed.
#[derive(Debug)]
enum Failure<E> {
    Failed(E),
    Silent(Duration),
}

impl<E: Display> Display for Failure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(e) => e.fmt(f),
            Self::Silent(waited) => write!(f, "no answer within {:.1} s", waited.as_secs_f64()),
        }
    }
}

/// One try gets at least this, whatever is left of the timeout: what a
/// slow but healthy first connection (DNS, TLS, a cold cloud database) may
/// need, and the store's own connect bound.
const MIN_TRY: Duration = Duration::from_secs(10);

/// Calls `attempt` until it succeeds, fails in a way `retryable` says
/// trying again cannot fix, or `timeout` has passed.
pub async fn reach<T, E, Fut>(
    dependency: &Dependency,
    timeout: Duration,
    mut attempt: impl FnMut() -> Fut,
    retryable: impl Fn(&E) -> bool,
) -> Result<T, Unreachable>
where
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut pause = FIRST_PAUSE;
    let mut said = false;
    loop {
        // One try never runs much past the deadline (but gets MIN_TRY even
        // when the timeout is 0 or nearly spent).
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_TRY);
        let tried =
            tokio::time::timeout(budget, async { attempt().await.map_err(Failure::Failed) }).await;
        let error = match tried.unwrap_or_else(|_| Err(Failure::Silent(budget))) {
            Ok(reached) => {
                if said {
                    tracing::info!(
                        "reached {} after {:.1} s",
                        dependency.what,
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(reached);
            }
            Err(e) => e,
        };
        let now = Instant::now();
        let may_mend = match &error {
            Failure::Failed(e) => retryable(e),
            Failure::Silent(_) => true,
        };
        // Libraries' errors may quote the URL they were given.
        let reason = crate::redact::in_text(&error.to_string());
        if let Some(tried) = stop_trying(may_mend, timeout, now - started, now >= deadline) {
            return Err(Unreachable {
                dependency: dependency.clone(),
                reason,
                tried,
            });
        }
        if !said {
            said = true;
            tracing::warn!(
                "cannot reach {} at {}={} yet: {reason}; trying again for up to {} s ({TIMEOUT_SETTING})",
                dependency.what,
                dependency.setting,
                dependency.address,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// After a failed try: whether to give up, and how hard it was tried.
fn stop_trying(may_mend: bool, timeout: Duration, spent: Duration, past: bool) -> Option<Tried> {
    if !may_mend {
        Some(Tried::Pointless)
    } else if timeout.is_zero() {
        Some(Tried::Once)
    } else if past {
        Some(Tried::For(spent))
    } else {
        None
    }
}

/// Opens the saga store named by `DATABASE_URL`, tried as [`reach`] says.
pub async fn open_store(
    settings: &Settings,
    max_connections: u32,
) -> Result<Arc<dyn SagaStore>, Unreachable> {
    let dependency = Dependency {
        what: "the saga store",
        setting: "DATABASE_URL",
        address: settings.database.redacted_url(),
    };
    reach(
        &dependency,
        settings.instance.startup_timeout,
        || crate::store::connect(&settings.database.url, max_connections),
        store_may_come,
    )
    .await
}

/// Whether the store may answer if asked again: it was not there, or said
/// it is starting; a refused password or a missing database will not mend.
fn store_may_come(error: &StoreError) -> bool {
    match error {
        StoreError::Unreachable(_) => true,
        StoreError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
        // 57P03 cannot_connect_now ("the database system is starting up"),
        // 53300 too_many_connections.
        StoreError::Database(sqlx::Error::Database(e)) => {
            matches!(e.code().as_deref(), Some("57P03" | "53300"))
        }
        _ => false,
    }
}

/// Why one try at the broker failed.
#[derive(Debug, thiserror::Error)]
enum BrokerAttempt {
    /// Nothing listens at the address (or it does not answer).
    #[error("{0}")]
    NotListening(std::io::Error),
    /// Something listens but gave no broker's handshake.
    #[error("{0}")]
    NotAnswering(TransportError),
    #[error("{0}")]
    Refused(TransportError),
}

/// Connects to the broker named by `BROKER_URL`, tried as [`reach`] says.
pub async fn connect_broker(settings: &Settings) -> Result<Arc<dyn Transport>, Unreachable> {
    let dependency = Dependency {
        what: "the broker",
        setting: "BROKER_URL",
        address: settings.broker.url.redacted(),
    };
    let attempt = || async {
        knock(&settings.broker.url)
            .await
            .map_err(BrokerAttempt::NotListening)?;
        if let BrokerUrl::Pulsar(url) = &settings.broker.url {
            // A port that accepts is not yet a broker that answers (a
            // proxy in front of one still starting, a wrong service).
            transport::probe_pulsar(url.as_str())
                .await
                .map_err(BrokerAttempt::NotAnswering)?;
        }
        transport::from_settings(settings)
            .await
            .map_err(BrokerAttempt::Refused)
    };
    reach(
        &dependency,
        settings.instance.startup_timeout,
        attempt,
        |e: &BrokerAttempt| match e {
            BrokerAttempt::NotListening(_) => true,
            BrokerAttempt::NotAnswering(TransportError::Pulsar(e)) => !matches!(
                **e,
                pulsar::Error::Connection(pulsar::error::ConnectionError::Authentication(_))
            ),
            BrokerAttempt::NotAnswering(_) => true,
            BrokerAttempt::Refused(TransportError::Redis(e)) => {
                e.is_io_error() || e.is_timeout() || e.code() == Some("LOADING")
            }
            BrokerAttempt::Refused(_) => false,
        },
    )
    .await
}

/// A TCP connection to the broker's port, closed at once.
async fn knock(url: &BrokerUrl) -> std::io::Result<()> {
    let Some((host, port)) = url.host_and_port() else {
        return Ok(());
    };
    match tokio::time::timeout(
        KNOCK_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(stream) => stream.map(drop),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", KNOCK_TIMEOUT.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn dependency() -> Dependency {
        Dependency {
            what: "the thing",
            setting: "THING_URL",
            address: "thing://here:1".into(),
        }
    }

    /// Fails `failures` times with `error`, then succeeds; counts the calls.
    async fn run(failures: u32, timeout: Duration, retryable: bool) -> (Result<(), String>, u32) {
        let calls = AtomicU32::new(0);
        let result = reach(
            &dependency(),
            timeout,
            || async {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                if call < failures {
                    Err("connection refused")
                } else {
                    Ok(())
                }
            },
            |_| retryable,
        )
        .await;
        (
            result.map_err(|e| e.to_string()),
            calls.load(Ordering::SeqCst),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependency_that_comes_in_time_is_reached() {
        assert_eq!(run(3, Duration::from_secs(30), true).await, (Ok(()), 4));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_bounds_the_tries_and_the_error_says_so() {
        let (result, calls) = run(u32::MAX, Duration::from_secs(10), true).await;
        assert_eq!(
            result.unwrap_err(),
            "cannot reach the thing at THING_URL=thing://here:1: connection refused \
             (tried for 10 s; STARTUP_TIMEOUT_SECS sets how long)"
        );
        // 0.25 + 0.5 + 1 + 2 + 2 + 2 + 2 + 0.25: backoff, not a tight loop.
        assert_eq!(calls, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_tries_once() {
        let (result, calls) = run(u32::MAX, Duration::ZERO, true).await;
        assert_eq!(calls, 1);
        assert!(
            result
                .unwrap_err()
                .ends_with("(tried once: STARTUP_TIMEOUT_SECS=0)"),
            "says why it did not try again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_trying_again_cannot_fix_ends_at_once() {
        let (result, calls) = run(u32::MAX, Duration::from_secs(30), false).await;
        assert_eq!(calls, 1);
        assert_eq!(
            result.unwrap_err(),
            "cannot reach the thing at THING_URL=thing://here:1: connection refused"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_not_listening() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("bound").port()
        };
        let url: BrokerUrl = format!("redis://127.0.0.1:{port}")
            .parse()
            .expect("a broker URL");
        assert!(knock(&url).await.is_err());
        assert!(
            knock(&BrokerUrl::Memory).await.is_ok(),
            "nothing to knock on"
        );
    }
}
