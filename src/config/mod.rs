//! Settings (docs/contract.md §6): defaults, then an optional config file, then the
//! environment (a `.env` file is loaded into the environment by `main`).
//!
//! Every value is parsed and checked once, here, so that a bad setting stops
//! start-up with one line naming the variable instead of failing later deep
//! inside a connection pool or a retry loop. The settings come in sections,
//! one module each with its typed defaults and its parser; the names stay
//! the environment variables' names of the contract, in the file too.

mod api;
mod broker;
mod database;
mod instance;
mod limits;
mod participants;
mod retry;
mod telemetry;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use api::{ApiSettings, NamedToken, ADMIN_TOKEN_NAME, DEVELOPMENT_TOKEN};
pub use broker::{BrokerSettings, BrokerUrl, Channels};
pub use database::{parse_database_url, DatabaseSettings};
pub use instance::InstanceSettings;
pub use limits::LimitsSettings;
pub use participants::{ParticipantMode, ParticipantsSettings};
pub use telemetry::{LogFormat, TelemetrySettings};

use crate::saga::RetryPolicy;
use values::{invalid, Values};

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

/// Everything the service needs to start, validated, by section. Its
/// `Debug` shows no password: each section's takes care of its own.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker, the names used on it, the Redis consumer's upkeep.
    pub broker: BrokerSettings,
    /// The saga store.
    pub database: DatabaseSettings,
    /// Alliances and integrations: where, how asked, how long to wait.
    pub participants: ParticipantsSettings,
    /// How a failed step is retried, and how long compensation may take
    /// (`RETRY_*`, `COMPENSATION_DEADLINE_SECS`).
    pub retry: RetryPolicy,
    /// Load this instance takes on, and a saga's lifetime.
    pub limits: LimitsSettings,
    /// The HTTP API.
    pub api: ApiSettings,
    /// Log lines.
    pub telemetry: TelemetrySettings,
    /// This process among the others.
    pub instance: InstanceSettings,
}

/// The contract's defaults, with a fresh instance id.
impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: BrokerSettings::default(),
            database: DatabaseSettings::default(),
            participants: ParticipantsSettings::default(),
            retry: retry::default_policy(),
            limits: LimitsSettings::default(),
            api: ApiSettings::default(),
            telemetry: TelemetrySettings::default(),
            instance: InstanceSettings::default(),
        }
    }
}

/// Every section's names, as the environment spells them.
const NAMES: [&[&str]; 8] = [
    BrokerSettings::NAMES,
    DatabaseSettings::NAMES,
    ParticipantsSettings::NAMES,
    retry::NAMES,
    LimitsSettings::NAMES,
    ApiSettings::NAMES,
    TelemetrySettings::NAMES,
    InstanceSettings::NAMES,
];

fn names() -> impl Iterator<Item = &'static str> {
    NAMES.into_iter().flatten().copied()
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
        Ok(Self {
            retry: retry::parse(v)?,
            broker: BrokerSettings::parse(v)?,
            database: DatabaseSettings::parse(v)?,
            participants: ParticipantsSettings::parse(v)?,
            api: ApiSettings::parse(v)?,
            telemetry: TelemetrySettings::parse(v)?,
            limits: LimitsSettings::parse(v)?,
            instance: InstanceSettings::parse(v)?,
        })
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
    names().find(|name| name.eq_ignore_ascii_case(key))
}

/// The known name a few edits from `key`, for a typo's "did you mean".
fn closest_name(key: &str) -> Option<&'static str> {
    /// Far enough for a dropped letter or two, or `ALLIANCES` for `ALIANZAS`.
    const MAX_EDITS: usize = 3;
    let key = key.to_ascii_uppercase();
    names()
        .map(|name| (strsim::damerau_levenshtein(&key, name), name))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use url::Url;

    use super::*;
    use crate::saga::RetryKind;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        Settings::from_values(&map)
    }

    #[test]
    fn nothing_given_is_the_defaults_of_every_section() {
        // Each section's own test checks its defaults against the contract.
        let parsed = load(&[]).expect("defaults are valid");
        let defaults = Settings::default();
        assert_eq!(parsed.broker, defaults.broker);
        assert_eq!(parsed.participants, defaults.participants);
        assert_eq!(parsed.retry, defaults.retry);
        assert_eq!(parsed.limits, defaults.limits);
        assert_eq!(parsed.telemetry, defaults.telemetry);
        assert_eq!(parsed.api.addr, defaults.api.addr);
        assert_eq!(
            parsed.database.max_connections,
            defaults.database.max_connections
        );
        assert_eq!(
            parsed.instance.sweep_interval,
            defaults.instance.sweep_interval
        );
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
        assert!(matches!(s.broker.url, BrokerUrl::Redis(_)));
        assert_eq!(s.retry.kind, RetryKind::Linear);
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(s.participants.alliances_mode, ParticipantMode::Broker);
        assert_eq!(s.broker.channels.partner_events, "t1-partner-events");
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
            ("PULSAR_BATCHING", "sometimes"),
        ];
        for (name, value) in cases {
            let err = load(&[(name, value)]).expect_err(name);
            let line = err.to_string();
            assert!(line.contains(name), "{line}");
            assert!(!line.contains('\n'), "one line: {line}");
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
        assert_eq!(s.participants.step_timeout, Duration::from_millis(1500));
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
    fn the_english_spelling_of_a_participant_suggests_the_contract_name() {
        assert_eq!(closest_name("ALLIANCES_API_URL"), Some("ALIANZAS_API_URL"));
        assert_eq!(
            closest_name("integrations_mode"),
            Some("INTEGRACIONES_MODE")
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
        let mut known: Vec<&str> = names().collect();
        known.sort_unstable();
        assert_eq!(v.names_read(), known, "no name in two sections either");
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
