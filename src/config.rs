//! Settings (docs/contract.md §6): defaults, then an optional config file, then the
//! environment (a `.env` file is loaded into the environment by `main`).
//!
//! Every value is parsed and checked once, here, so that a bad setting stops
//! start-up with one line naming the variable instead of failing later deep
//! inside a connection pool or a retry loop.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::redact;
use crate::saga::{RetryKind, RetryPolicy};

/// A setting that could not be used; its `Display` is the one line shown to
/// the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A named setting has a value we cannot use.
    #[error("invalid setting {name}: {problem}")]
    Invalid {
        /// The environment variable (or file key, upper-cased).
        name: &'static str,
        /// What is wrong and what was given.
        problem: String,
    },
    /// The config file could not be read or parsed.
    #[error("invalid config file: {0}")]
    File(#[from] config::ConfigError),
    /// The config file has a key that names no setting: most likely a typo,
    /// which ignored would leave the setting at its default unnoticed.
    #[error("unknown setting {key} in {}{}", .file.display(), did_you_mean(*.closest))]
    UnknownKey {
        /// The key as the file spells it.
        key: String,
        /// The file it is in.
        file: PathBuf,
        /// The known name nearest to it, if any is near.
        closest: Option<&'static str>,
    },
}

fn did_you_mean(closest: Option<&str>) -> String {
    closest
        .map(|name| format!(" (did you mean {name}?)"))
        .unwrap_or_default()
}

/// Which broker adapter to build, from `BROKER_URL`. Its `Debug` is
/// redacted like [`BrokerUrl::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `pulsar://` or `pulsar+ssl://`.
    Pulsar(Url),
    /// `redis://` or `rediss://`.
    Redis(Url),
    /// `memory://`: in-process, for the embedded demo and tests.
    Memory,
}

impl BrokerUrl {
    /// The URL without any password, for logs and output.
    pub fn redacted(&self) -> String {
        match self {
            Self::Pulsar(url) | Self::Redis(url) => redact::url(url),
            Self::Memory => "memory://".to_string(),
        }
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Pulsar(_) => "Pulsar",
            Self::Redis(_) => "Redis",
            Self::Memory => "Memory",
        };
        f.debug_tuple(kind).field(&self.redacted()).finish()
    }
}

/// How the orchestrator talks to a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantMode {
    /// Synchronous HTTP calls (docs/contract.md §4).
    Http,
    /// Commands and replies over the broker (docs/contract.md §2–3).
    Broker,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Channel (topic / stream) names; configurable so several deployments, or
/// several tests, can share one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// `PartnerCreated` events from integrations.
    pub partner_events: String,
    /// `CreateAlliance` commands to alliances (broker mode).
    pub alliance_commands: String,
    /// `DeletePartner` commands to integrations (broker mode).
    pub integration_commands: String,
    /// Participants' replies (broker mode).
    pub saga_replies: String,
    /// The orchestrator's own saga lifecycle events.
    pub saga_events: String,
}

impl Channels {
    /// Every channel name prefixed, e.g. to isolate one test's traffic.
    pub fn prefixed(prefix: &str) -> Self {
        let d = Self::default();
        Self {
            partner_events: format!("{prefix}{}", d.partner_events),
            alliance_commands: format!("{prefix}{}", d.alliance_commands),
            integration_commands: format!("{prefix}{}", d.integration_commands),
            saga_replies: format!("{prefix}{}", d.saga_replies),
            saga_events: format!("{prefix}{}", d.saga_events),
        }
    }
}

impl Default for Channels {
    fn default() -> Self {
        Self {
            partner_events: "partner-events".into(),
            alliance_commands: "alliance-commands".into(),
            integration_commands: "integration-commands".into(),
            saga_replies: "saga-replies".into(),
            saga_events: "saga-events".into(),
        }
    }
}

/// Everything the service needs to start, validated. Its `Debug` shows
/// no password (see the impl).
#[derive(Clone)]
pub struct Settings {
    pub broker_url: BrokerUrl,
    /// Holds a password: never logged.
    pub database_url: SecretString,
    /// Pool size; concurrent transitions beyond this queue for a connection.
    pub database_max_connections: u32,
    pub integrations_api_url: Url,
    pub alliances_api_url: Url,
    pub alliances_mode: ParticipantMode,
    pub integrations_mode: ParticipantMode,
    pub api_addr: SocketAddr,
    /// How long a client may take to send a request's headers.
    pub api_header_timeout: Duration,
    /// Bearer token for admin routes; `None` refuses them all (never open).
    pub admin_token: Option<SecretString>,
    pub log_format: LogFormat,
    /// `RUST_LOG` filter directives.
    pub log_filter: String,
    pub retry: RetryPolicy,
    /// Bound on one participant call or one broker reply wait.
    pub step_timeout: Duration,
    /// After this, a saga still moving forward is compensated.
    pub saga_deadline: Duration,
    /// Sagas driven at once by this instance; beyond it, load queues in the broker.
    pub max_in_flight: usize,
    /// Redis pending entries idle this long are reclaimed from dead consumers.
    pub redis_claim_idle: Duration,
    /// How often the Redis streams this instance consumes are trimmed of
    /// what every consumer group has acknowledged, and dead consumers
    /// removed from our group; `None` (`REDIS_TRIM_INTERVAL_MS=0`): never.
    pub redis_trim_interval: Option<Duration>,
    /// Entries younger than this are never trimmed, acknowledged or not,
    /// so readers without a group (the monitor, replays) see recent traffic.
    pub redis_trim_min_age: Duration,
    pub max_message_bytes: usize,
    pub channels: Channels,
    /// Pulsar subscription / Redis consumer group shared by all instances.
    pub subscription: String,
    /// How long shutdown waits for in-flight sagas before leaving them to recovery.
    pub shutdown_grace: Duration,
    /// Apply migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// Names this process as lease owner and consumer; unique per process by default.
    pub instance_id: String,
    /// How often the recovery sweeper looks for due or orphaned sagas.
    pub sweep_interval: Duration,
}

impl Settings {
    /// Loads defaults → optional file → environment and validates them.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        // Each layer on its own, keys case-folded, then the environment over
        // the file: merged in one builder, an upper-case file key and its
        // environment twin would be two keys in no particular order.
        let mut values = match file {
            Some(path) => read_file(path)?,
            None => HashMap::new(),
        };
        values.extend(environment()?);
        Self::from_values(&values)
    }

    /// Builds settings from lower-cased `name → value` pairs; unknown names are ignored.
    pub fn from_values(values: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::parse(&Values::new(values))
    }

    fn parse(v: &Values) -> Result<Self, ConfigError> {
        let retry = RetryPolicy {
            kind: v.parse("RETRY_POLICY", RetryKind::Exponential, parse_retry_kind)?,
            max_attempts: v.bounded("RETRY_MAX_ATTEMPTS", 5, 100)?,
            base_delay: v.millis("RETRY_BASE_DELAY_MS", 200)?,
            max_delay: v.millis("RETRY_MAX_DELAY_MS", 5000)?,
            compensation_deadline: Duration::from_secs(v.bounded(
                "COMPENSATION_DEADLINE_SECS",
                300,
                30 * 24 * 3600,
            )?),
        };
        if retry.base_delay > retry.max_delay {
            return Err(invalid(
                "RETRY_BASE_DELAY_MS",
                format!(
                    "must not exceed RETRY_MAX_DELAY_MS ({} > {})",
                    retry.base_delay.as_millis(),
                    retry.max_delay.as_millis()
                ),
            ));
        }
        let defaults = Channels::default();
        let settings = Self {
            broker_url: v.parse(
                "BROKER_URL",
                BrokerUrl::Pulsar(fixed_url("pulsar://localhost:6650")),
                parse_broker_url,
            )?,
            database_url: SecretString::from(v.text(
                "DATABASE_URL",
                "postgresql://postgres:postgres@localhost:5432/saga_db",
                parse_database_url,
            )?),
            database_max_connections: v.bounded("DATABASE_MAX_CONNECTIONS", 20, 1000)?,
            integrations_api_url: v.parse(
                "INTEGRACIONES_API_URL",
                fixed_url("http://localhost:8001"),
                parse_http_url,
            )?,
            alliances_api_url: v.parse(
                "ALIANZAS_API_URL",
                fixed_url("http://localhost:8002"),
                parse_http_url,
            )?,
            alliances_mode: v.parse("ALIANZAS_MODE", ParticipantMode::Http, parse_mode)?,
            integrations_mode: v.parse("INTEGRACIONES_MODE", ParticipantMode::Http, parse_mode)?,
            api_addr: v.parse("API_ADDR", SocketAddr::from(([0, 0, 0, 0], 8000)), |s| {
                s.parse()
                    .map_err(|_| format!("expected host:port, got {s:?}"))
            })?,
            api_header_timeout: Duration::from_millis(v.bounded(
                "API_HEADER_TIMEOUT_MS",
                10_000,
                HOUR_MS,
            )?),
            admin_token: v
                .get("ADMIN_TOKEN")
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
            log_format: v.parse("LOG_FORMAT", LogFormat::Json, parse_log_format)?,
            // sqlx logs every server notice at info; keep those out by default.
            log_filter: v.get("RUST_LOG").unwrap_or_else(|| "info,sqlx=warn".into()),
            retry,
            step_timeout: Duration::from_millis(v.bounded("STEP_TIMEOUT_MS", 10_000, HOUR_MS)?),
            saga_deadline: Duration::from_secs(v.bounded(
                "SAGA_DEADLINE_SECS",
                300,
                30 * 24 * 3600,
            )?),
            max_in_flight: v.bounded("MAX_IN_FLIGHT", 256, 100_000)?,
            redis_claim_idle: Duration::from_millis(v.bounded(
                "REDIS_CLAIM_IDLE_MS",
                30_000,
                24 * HOUR_MS,
            )?),
            // Once a minute: a round costs a few small commands per stream,
            // the stream holds about a minute of traffic beyond what is still
            // unacknowledged, and operators' XRANGE still sees recent events.
            redis_trim_interval: Some(v.millis("REDIS_TRIM_INTERVAL_MS", 60_000)?)
                .filter(|every| !every.is_zero()),
            redis_trim_min_age: Duration::from_secs(v.parse(
                "REDIS_TRIM_MIN_AGE_SECS",
                3600,
                |s| match s.parse::<u64>() {
                    Ok(n) if n <= 30 * 24 * 3600 => Ok(n),
                    _ => Err(format!(
                        "expected whole seconds from 0 to 2592000, got {s:?}"
                    )),
                },
            )?),
            max_message_bytes: v.bounded("MAX_MESSAGE_BYTES", 1_048_576, 64 * 1_048_576)?,
            channels: Channels {
                partner_events: v.name("CHANNEL_PARTNER_EVENTS", &defaults.partner_events)?,
                alliance_commands: v
                    .name("CHANNEL_ALLIANCE_COMMANDS", &defaults.alliance_commands)?,
                integration_commands: v.name(
                    "CHANNEL_INTEGRATION_COMMANDS",
                    &defaults.integration_commands,
                )?,
                saga_replies: v.name("CHANNEL_SAGA_REPLIES", &defaults.saga_replies)?,
                saga_events: v.name("CHANNEL_SAGA_EVENTS", &defaults.saga_events)?,
            },
            subscription: v.name("SUBSCRIPTION_NAME", "saga-orchestrator")?,
            shutdown_grace: Duration::from_secs(v.parse("SHUTDOWN_GRACE_SECS", 30, |s| {
                match s.parse::<u64>() {
                    Ok(n) if n <= 3600 => Ok(n),
                    _ => Err(format!("expected whole seconds from 0 to 3600, got {s:?}")),
                }
            })?),
            migrate_on_start: v.parse("MIGRATE_ON_START", true, parse_bool)?,
            instance_id: match v.get("INSTANCE_ID").filter(|s| !s.is_empty()) {
                Some(id) => id,
                None => default_instance_id(),
            },
            sweep_interval: Duration::from_millis(v.bounded("SWEEP_INTERVAL_MS", 1000, HOUR_MS)?),
        };
        use secrecy::ExposeSecret;
        let token = settings.admin_token.as_ref().map(|t| t.expose_secret());
        check_admin_token(token, &settings.api_addr)?;
        Ok(settings)
    }
}

/// Every field, listed by destructuring so that a new one cannot be
/// forgotten here; URLs that may carry credentials are shown redacted.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Settings {
            broker_url,
            database_url,
            database_max_connections,
            integrations_api_url,
            alliances_api_url,
            alliances_mode,
            integrations_mode,
            api_addr,
            api_header_timeout,
            admin_token,
            log_format,
            log_filter,
            retry,
            step_timeout,
            saga_deadline,
            max_in_flight,
            redis_claim_idle,
            redis_trim_interval,
            redis_trim_min_age,
            max_message_bytes,
            channels,
            subscription,
            shutdown_grace,
            migrate_on_start,
            instance_id,
            sweep_interval,
        } = self;
        f.debug_struct("Settings")
            .field("broker_url", broker_url)
            .field("database_url", database_url)
            .field("database_max_connections", database_max_connections)
            .field("integraciones_api_url", &redact::url(integrations_api_url))
            .field("alianzas_api_url", &redact::url(alliances_api_url))
            .field("alianzas_mode", alliances_mode)
            .field("integraciones_mode", integrations_mode)
            .field("api_addr", api_addr)
            .field("api_header_timeout", api_header_timeout)
            .field("admin_token", admin_token)
            .field("log_format", log_format)
            .field("log_filter", log_filter)
            .field("retry", retry)
            .field("step_timeout", step_timeout)
            .field("saga_deadline", saga_deadline)
            .field("max_in_flight", max_in_flight)
            .field("redis_claim_idle", redis_claim_idle)
            .field("redis_trim_interval", redis_trim_interval)
            .field("redis_trim_min_age", redis_trim_min_age)
            .field("max_message_bytes", max_message_bytes)
            .field("channels", channels)
            .field("subscription", subscription)
            .field("shutdown_grace", shutdown_grace)
            .field("migrate_on_start", migrate_on_start)
            .field("instance_id", instance_id)
            .field("sweep_interval", sweep_interval)
            .finish()
    }
}

/// The config file's settings, keys case-folded. Unlike the environment,
/// which is full of other programs' variables, everything in the file is
/// meant for us: a key that names no setting is refused.
fn read_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let raw: BTreeMap<String, config::Value> = config::Config::builder()
        .add_source(config::File::from(path).required(true))
        .build()?
        .try_deserialize()?;
    let mut values = HashMap::new();
    // Sorted, so that of several bad keys the same one is named every time.
    for (key, value) in raw {
        let Some(name) = known_name(&key) else {
            return Err(ConfigError::UnknownKey {
                closest: closest_name(&key),
                file: path.to_path_buf(),
                key,
            });
        };
        let text = value.into_string().map_err(|_| {
            invalid(
                name,
                "expected a single value, got a table or a list".into(),
            )
        })?;
        if values.insert(name.to_ascii_lowercase(), text).is_some() {
            // Which of the two would win is arbitrary: refuse both.
            return Err(invalid(
                name,
                format!("given twice in {}, in different cases", path.display()),
            ));
        }
    }
    Ok(values)
}

/// The setting `key` names, in any case.
fn known_name(key: &str) -> Option<&'static str> {
    NAMES
        .iter()
        .copied()
        .find(|name| name.eq_ignore_ascii_case(key))
}

/// The known name a few edits from `key`, for a typo's "did you mean".
fn closest_name(key: &str) -> Option<&'static str> {
    /// Far enough for a dropped letter or two, or `ALLIANCES` for `ALIANZAS`.
    const MAX_EDITS: usize = 3;
    let key = key.to_ascii_uppercase();
    NAMES
        .iter()
        .map(|name| (strsim::damerau_levenshtein(&key, name), *name))
        .filter(|(edits, _)| *edits <= MAX_EDITS)
        .min()
        .map(|(_, name)| name)
}

/// The environment's variables, names case-folded; those that are not
/// settings of ours are kept and never looked at.
fn environment() -> Result<HashMap<String, String>, ConfigError> {
    let raw: HashMap<String, config::Value> = config::Config::builder()
        .add_source(config::Environment::default())
        .build()?
        .try_deserialize()?;
    Ok(raw
        .into_iter()
        .filter_map(|(key, value)| {
            value
                .into_string()
                .ok()
                .map(|text| (key.to_ascii_lowercase(), text))
        })
        .collect())
}

/// Checks a database URL names a store we can open: PostgreSQL, or a
/// SQLite file (`sqlite://path`, `sqlite:path`, `sqlite::memory:`).
pub fn parse_database_url(s: &str) -> Result<(), String> {
    if let Some(path) = s.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        return if path.is_empty() {
            Err("sqlite URL without a path".into())
        } else {
            Ok(())
        };
    }
    let url = Url::parse(s).map_err(|e| not_a_url(&e, s))?;
    match url.scheme() {
        "postgres" | "postgresql" => Ok(()),
        other => Err(format!(
            "unsupported scheme {other:?}: expected postgres://, postgresql:// or sqlite://"
        )),
    }
}

/// Every setting's name, as the environment spells it.
const NAMES: &[&str] = &[
    "BROKER_URL",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "INTEGRACIONES_API_URL",
    "ALIANZAS_API_URL",
    "ALIANZAS_MODE",
    "INTEGRACIONES_MODE",
    "API_ADDR",
    "API_HEADER_TIMEOUT_MS",
    "ADMIN_TOKEN",
    "LOG_FORMAT",
    "RUST_LOG",
    "RETRY_POLICY",
    "RETRY_MAX_ATTEMPTS",
    "RETRY_BASE_DELAY_MS",
    "RETRY_MAX_DELAY_MS",
    "COMPENSATION_DEADLINE_SECS",
    "STEP_TIMEOUT_MS",
    "SAGA_DEADLINE_SECS",
    "MAX_IN_FLIGHT",
    "REDIS_CLAIM_IDLE_MS",
    "REDIS_TRIM_INTERVAL_MS",
    "REDIS_TRIM_MIN_AGE_SECS",
    "MAX_MESSAGE_BYTES",
    "CHANNEL_PARTNER_EVENTS",
    "CHANNEL_ALLIANCE_COMMANDS",
    "CHANNEL_INTEGRATION_COMMANDS",
    "CHANNEL_SAGA_REPLIES",
    "CHANNEL_SAGA_EVENTS",
    "SUBSCRIPTION_NAME",
    "SHUTDOWN_GRACE_SECS",
    "MIGRATE_ON_START",
    "INSTANCE_ID",
    "SWEEP_INTERVAL_MS",
];

/// Raw values by lower-cased name, and the names asked for (which a unit
/// test holds equal to [`NAMES`]).
struct Values<'a> {
    values: &'a HashMap<String, String>,
    read: std::cell::RefCell<std::collections::BTreeSet<&'static str>>,
}

impl<'a> Values<'a> {
    fn new(values: &'a HashMap<String, String>) -> Self {
        Self {
            values,
            read: Default::default(),
        }
    }

    fn get(&self, name: &'static str) -> Option<String> {
        self.read.borrow_mut().insert(name);
        self.values
            .get(&name.to_ascii_lowercase())
            .map(|s| s.trim().to_string())
    }

    fn parse<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse(&raw).map_err(|problem| invalid(name, problem)),
        }
    }

    /// A string setting validated by `check` and returned as given.
    fn text(
        &self,
        name: &'static str,
        default: &str,
        check: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<String, ConfigError> {
        let value = self.get(name).unwrap_or_else(|| default.to_string());
        check(&value).map_err(|problem| invalid(name, problem))?;
        Ok(value)
    }

    fn millis(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse(name, default, |s| match s.parse::<u64>() {
            Ok(n) if n <= HOUR_MS => Ok(n),
            _ => Err(format!(
                "expected whole milliseconds from 0 to {HOUR_MS}, got {s:?}"
            )),
        })
        .map(Duration::from_millis)
    }

    /// A whole number from 1 to `max`: the upper bounds keep time
    /// arithmetic and allocations sane, and catch a misplaced digit.
    fn bounded<T>(&self, name: &'static str, default: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Default + std::fmt::Display + Copy,
    {
        self.parse(name, default, |s| match s.parse::<T>() {
            Ok(n) if n > T::default() && n <= max => Ok(n),
            _ => Err(format!(
                "expected a whole number from 1 to {max}, got {s:?}"
            )),
        })
    }

    /// A channel or subscription name: non-empty, no whitespace or slashes
    /// (a slash would change the Pulsar topic's namespace).
    fn name(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        self.text(name, default, |s| {
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '/') {
                Err(format!("expected a name without spaces or '/', got {s:?}"))
            } else {
                Ok(())
            }
        })
    }
}

/// The development token `.env.example` ships: public, so never accepted
/// on an address other machines can reach.
pub const DEVELOPMENT_TOKEN: &str = "dev-admin-token";

/// Refuses the public development token unless only this machine can use it.
fn check_admin_token(token: Option<&str>, api_addr: &SocketAddr) -> Result<(), ConfigError> {
    if token == Some(DEVELOPMENT_TOKEN) && !api_addr.ip().is_loopback() {
        return Err(invalid(
            "ADMIN_TOKEN",
            format!(
                "the development token of .env.example is public; set a secret of your own to serve on {api_addr}"
            ),
        ));
    }
    Ok(())
}

/// One hour in milliseconds: the ceiling of timeouts and delays.
const HOUR_MS: u64 = 3_600_000;

fn invalid(name: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { name, problem }
}

fn fixed_url(s: &str) -> Url {
    Url::parse(s).expect("built-in default URLs are valid")
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn parse_retry_kind(s: &str) -> Result<RetryKind, String> {
    match s.to_ascii_lowercase().as_str() {
        "exponential" => Ok(RetryKind::Exponential),
        "linear" => Ok(RetryKind::Linear),
        "none" => Ok(RetryKind::None),
        _ => Err(format!("expected exponential, linear or none, got {s:?}")),
    }
}

fn parse_mode(s: &str) -> Result<ParticipantMode, String> {
    match s.to_ascii_lowercase().as_str() {
        "http" => Ok(ParticipantMode::Http),
        "broker" => Ok(ParticipantMode::Broker),
        _ => Err(format!("expected http or broker, got {s:?}")),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "pretty" | "text" => Ok(LogFormat::Pretty),
        _ => Err(format!("expected json or pretty, got {s:?}")),
    }
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| not_a_url(&e, s))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("expected an http(s) URL, got scheme {other:?}")),
    }
}

fn parse_broker_url(s: &str) -> Result<BrokerUrl, String> {
    let url = Url::parse(s).map_err(|e| not_a_url(&e, s))?;
    match url.scheme() {
        "pulsar" | "pulsar+ssl" => Ok(BrokerUrl::Pulsar(url)),
        "redis" | "rediss" => Ok(BrokerUrl::Redis(url)),
        "memory" => Ok(BrokerUrl::Memory),
        other => Err(format!(
            "unsupported scheme {other:?}: expected pulsar://, pulsar+ssl://, redis://, rediss:// or memory://"
        )),
    }
}

/// The problem with a value that does not parse as a URL, quoting the
/// value without what may be its password: a malformed URL cannot be
/// trusted to parse far enough to find it, so it is masked as text.
fn not_a_url(e: &url::ParseError, value: &str) -> String {
    format!("not a URL ({e}): {:?}", redact::url_text(value))
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{suffix}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_shown_without_passwords() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            BrokerUrl::Redis(url("redis://:s3cret@cache:6379/0")).redacted(),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            BrokerUrl::Pulsar(url("pulsar://localhost:6650")).redacted(),
            "pulsar://localhost:6650"
        );
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        Settings::from_values(&map)
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = load(&[]).expect("defaults are valid");
        assert!(
            matches!(s.broker_url, BrokerUrl::Pulsar(ref u) if u.as_str() == "pulsar://localhost:6650")
        );
        assert_eq!(s.api_addr.to_string(), "0.0.0.0:8000");
        assert_eq!(s.alliances_mode, ParticipantMode::Http);
        assert_eq!(s.retry.max_attempts, 5);
        assert_eq!(s.retry.kind, RetryKind::Exponential);
        assert_eq!(s.retry.base_delay, Duration::from_millis(200));
        assert_eq!(s.retry.max_delay, Duration::from_millis(5000));
        assert_eq!(s.step_timeout, Duration::from_secs(10));
        assert_eq!(s.saga_deadline, Duration::from_secs(300));
        assert_eq!(s.retry.compensation_deadline, Duration::from_secs(300));
        assert_eq!(s.max_in_flight, 256);
        assert_eq!(s.redis_claim_idle, Duration::from_secs(30));
        assert_eq!(s.redis_trim_interval, Some(Duration::from_secs(60)));
        assert_eq!(s.max_message_bytes, 1_048_576);
        assert_eq!(s.channels, Channels::default());
        assert_eq!(s.subscription, "saga-orchestrator");
        assert!(s.admin_token.is_none());
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn environment_values_override_defaults() {
        let s = load(&[
            ("BROKER_URL", "redis://127.0.0.1:6390/2"),
            ("RETRY_POLICY", "linear"),
            ("RETRY_MAX_ATTEMPTS", "3"),
            ("ALIANZAS_MODE", "broker"),
            ("CHANNEL_PARTNER_EVENTS", "t1-partner-events"),
        ])
        .unwrap();
        assert!(matches!(s.broker_url, BrokerUrl::Redis(_)));
        assert_eq!(s.retry.kind, RetryKind::Linear);
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(s.alliances_mode, ParticipantMode::Broker);
        assert_eq!(s.channels.partner_events, "t1-partner-events");
    }

    #[test]
    fn each_bad_value_names_its_setting() {
        let cases = [
            ("BROKER_URL", "kafka://x:9092"),
            ("BROKER_URL", "not a url"),
            ("DATABASE_URL", "mysql://x/db"),
            ("ALIANZAS_API_URL", "ftp://x"),
            ("ALIANZAS_MODE", "grpc"),
            ("API_ADDR", "eight-thousand"),
            ("LOG_FORMAT", "xml"),
            ("API_HEADER_TIMEOUT_MS", "0"),
            ("RETRY_POLICY", "fibonacci"),
            ("RETRY_MAX_ATTEMPTS", "0"),
            ("RETRY_MAX_ATTEMPTS", "abc"),
            ("STEP_TIMEOUT_MS", "-5"),
            ("SAGA_DEADLINE_SECS", "0"),
            ("COMPENSATION_DEADLINE_SECS", "0"),
            ("COMPENSATION_DEADLINE_SECS", "forever"),
            ("MAX_IN_FLIGHT", "0"),
            ("MAX_MESSAGE_BYTES", "1MB"),
            ("CHANNEL_SAGA_EVENTS", "a/b"),
            ("MIGRATE_ON_START", "maybe"),
            ("SAGA_DEADLINE_SECS", "10000000000000"),
            ("STEP_TIMEOUT_MS", "99999999999"),
            ("RETRY_MAX_DELAY_MS", "99999999999"),
            ("MAX_IN_FLIGHT", "99999999999"),
            ("SHUTDOWN_GRACE_SECS", "86400"),
            ("REDIS_TRIM_INTERVAL_MS", "-1"),
            ("REDIS_TRIM_INTERVAL_MS", "99999999999"),
            ("REDIS_TRIM_INTERVAL_MS", "1m"),
            ("REDIS_TRIM_MIN_AGE_SECS", "an hour"),
        ];
        for (name, value) in cases {
            let err = load(&[(name, value)]).expect_err(name);
            let line = err.to_string();
            assert!(line.contains(name), "{line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn a_zero_trim_interval_turns_redis_upkeep_off() {
        let s = load(&[("REDIS_TRIM_INTERVAL_MS", "0")]).unwrap();
        assert_eq!(s.redis_trim_interval, None);
        let s = load(&[("REDIS_TRIM_INTERVAL_MS", "250")]).unwrap();
        assert_eq!(s.redis_trim_interval, Some(Duration::from_millis(250)));
    }

    #[test]
    fn database_urls_name_postgres_or_sqlite() {
        for ok in [
            "postgres://u@h/db",
            "postgresql://h/db",
            "sqlite://.dev/demo/sagas.db",
            "sqlite::memory:",
        ] {
            assert!(parse_database_url(ok).is_ok(), "{ok}");
        }
        for bad in ["mysql://h/db", "sqlite://", "nonsense"] {
            assert!(parse_database_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_config_file_is_read_with_keys_in_any_case() {
        let file = TempFile::with(
            "RETRY_MAX_ATTEMPTS = 7\nretry_policy = \"linear\"\nStep_Timeout_Ms = 1500\n",
        );
        let values = read_file(&file.0).unwrap();
        assert_eq!(
            values.get("retry_max_attempts").map(String::as_str),
            Some("7")
        );
        let s = Settings::from_values(&values).unwrap();
        assert_eq!((s.retry.max_attempts, s.retry.kind), (7, RetryKind::Linear));
        assert_eq!(s.step_timeout, Duration::from_millis(1500));
    }

    /// A config file holding `text`, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn with(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "saga-config-{}.toml",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn an_unknown_file_key_is_an_error_naming_it_and_the_file() {
        let file = TempFile::with("BROKR_URL = \"redis://cache:6379\"\n");
        let line = read_file(&file.0).unwrap_err().to_string();
        let expected = format!(
            "unknown setting BROKR_URL in {} (did you mean BROKER_URL?)",
            file.0.display()
        );
        assert_eq!(line, expected);
    }

    #[test]
    fn an_unknown_file_key_far_from_every_name_gets_no_suggestion() {
        let file = TempFile::with("colour = \"blue\"\n");
        let line = read_file(&file.0).unwrap_err().to_string();
        assert_eq!(
            line,
            format!("unknown setting colour in {}", file.0.display())
        );
    }

    #[test]
    fn a_table_in_the_file_is_an_unknown_setting_too() {
        let file = TempFile::with("RETRY_MAX_ATTEMPTS = 7\n[nested]\nignored = 1\n");
        let line = read_file(&file.0).unwrap_err().to_string();
        assert!(line.starts_with("unknown setting nested in "), "{line}");
    }

    #[test]
    fn a_known_file_key_holding_a_table_is_refused() {
        let file = TempFile::with("[BROKER_URL]\nhost = \"cache\"\n");
        let line = read_file(&file.0).unwrap_err().to_string();
        assert!(line.starts_with("invalid setting BROKER_URL: "), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }

    #[test]
    fn a_file_key_given_twice_in_two_cases_is_refused() {
        let file = TempFile::with("RETRY_MAX_ATTEMPTS = 7\nretry_max_attempts = 8\n");
        let line = read_file(&file.0).unwrap_err().to_string();
        assert!(
            line.starts_with("invalid setting RETRY_MAX_ATTEMPTS: "),
            "{line}"
        );
        assert!(line.contains("twice"), "{line}");
    }

    #[test]
    fn every_known_name_is_read_and_every_name_read_is_known() {
        let values = HashMap::new();
        let v = Values::new(&values);
        Settings::parse(&v).expect("defaults are valid");
        let read: Vec<&str> = v.read.into_inner().into_iter().collect();
        let mut known = NAMES.to_vec();
        known.sort_unstable();
        assert_eq!(read, known);
    }

    #[test]
    fn base_delay_above_max_delay_is_refused() {
        let err = load(&[("RETRY_BASE_DELAY_MS", "6000")]).unwrap_err();
        assert!(err.to_string().contains("RETRY_BASE_DELAY_MS"));
    }

    #[test]
    fn empty_admin_token_means_admin_routes_refused() {
        assert!(load(&[("ADMIN_TOKEN", "")]).unwrap().admin_token.is_none());
        assert!(load(&[("ADMIN_TOKEN", "s3cret")])
            .unwrap()
            .admin_token
            .is_some());
    }

    #[test]
    fn the_public_development_token_serves_loopback_only() {
        let dev = ("ADMIN_TOKEN", DEVELOPMENT_TOKEN);
        assert!(load(&[dev, ("API_ADDR", "127.0.0.1:8000")]).is_ok());
        assert!(load(&[dev, ("API_ADDR", "[::1]:8000")]).is_ok());
        for open in ["0.0.0.0:8000", "192.0.2.7:8000"] {
            let line = load(&[dev, ("API_ADDR", open)]).unwrap_err().to_string();
            assert!(line.contains("ADMIN_TOKEN"), "{line}");
            assert!(!line.contains(DEVELOPMENT_TOKEN), "{line}");
        }
        assert!(load(&[
            ("ADMIN_TOKEN", "a-real-secret"),
            ("API_ADDR", "0.0.0.0:8000")
        ])
        .is_ok());
    }

    #[test]
    fn no_password_is_shown_by_debug() {
        let s = load(&[
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
            ("BROKER_URL", "redis://:br0ker-pw@cache:6379/0"),
            ("ALIANZAS_API_URL", "http://svc:al1ances-pw@alianzas:8002"),
            ("INTEGRACIONES_API_URL", "https://t0ken@integraciones"),
            ("ADMIN_TOKEN", "adm1n-token"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        for secret in [
            "hunter2",
            "br0ker-pw",
            "al1ances-pw",
            "t0ken",
            "adm1n-token",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("alianzas:8002"), "still useful: {shown}");
        let pulsar = BrokerUrl::Pulsar(Url::parse("pulsar://u:pu1sar-pw@p:6650").unwrap());
        assert!(!format!("{pulsar:?}").contains("pu1sar-pw"));
    }

    #[test]
    fn a_malformed_url_is_reported_without_its_password() {
        let cases = [
            (
                "DATABASE_URL",
                "postgres://u:hunter2@h:notaport/db",
                "hunter2",
            ),
            ("DATABASE_URL", "//u:hunter3@h:5432/db", "hunter3"),
            ("BROKER_URL", "redis://:s3cret@host:xx", "s3cret"),
            ("BROKER_URL", "pulsar://u:pa/ss@host:6650x", "pa/ss"),
            ("ALIANZAS_API_URL", "http://u:al1@h:port", "al1"),
            (
                "INTEGRACIONES_API_URL",
                "http://u:p@ss w0rd@h:bad",
                "ss w0rd",
            ),
        ];
        for (name, value, password) in cases {
            let line = load(&[(name, value)]).expect_err(value).to_string();
            assert!(line.contains(name), "{line}");
            assert!(line.contains("***"), "{line}");
            assert!(!line.contains(password), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }
}
