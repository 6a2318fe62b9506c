//! The envelope every message on every channel travels in (docs/contract.md §3), and
//! its two wire forms: a JSON body (Pulsar, in-memory) and flat stream
//! fields (Redis, so RedisInsight shows them as columns).
//!
//! Decoding never panics and never guesses: anything malformed comes back as
//! a [`DecodeError`] whose text becomes the dead letter's `dlq_reason`.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The `status` of replies and saga events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    Started,
    Progress,
    Completed,
    Failed,
}

impl MessageStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Progress => "progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "started" => Self::Started,
            "progress" => Self::Progress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// The `event_type` values this service produces or understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    PartnerCreated,
    CreateAlliance,
    DeletePartner,
    CreateAllianceReply,
    DeletePartnerReply,
    SagaStarted,
    SagaStepSucceeded,
    SagaStepFailed,
    SagaCompleted,
    SagaCompensating,
    SagaCompensated,
    SagaFailed,
}

impl EventType {
    /// Every event type, for metrics labels and docs.
    pub const ALL: [EventType; 12] = [
        Self::PartnerCreated,
        Self::CreateAlliance,
        Self::DeletePartner,
        Self::CreateAllianceReply,
        Self::DeletePartnerReply,
        Self::SagaStarted,
        Self::SagaStepSucceeded,
        Self::SagaStepFailed,
        Self::SagaCompleted,
        Self::SagaCompensating,
        Self::SagaCompensated,
        Self::SagaFailed,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartnerCreated => "PartnerCreated",
            Self::CreateAlliance => "CreateAlliance",
            Self::DeletePartner => "DeletePartner",
            Self::CreateAllianceReply => "CreateAllianceReply",
            Self::DeletePartnerReply => "DeletePartnerReply",
            Self::SagaStarted => "SagaStarted",
            Self::SagaStepSucceeded => "SagaStepSucceeded",
            Self::SagaStepFailed => "SagaStepFailed",
            Self::SagaCompleted => "SagaCompleted",
            Self::SagaCompensating => "SagaCompensating",
            Self::SagaCompensated => "SagaCompensated",
            Self::SagaFailed => "SagaFailed",
        }
    }

    /// Parses a wire spelling; `None` for types we do not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message could not be accepted; the text is the dead letter's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds MAX_MESSAGE_BYTES ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("message is not a JSON object")]
    NotAnObject,
    #[error("missing required field {0}")]
    MissingField(&'static str),
    #[error("invalid field {field}: {problem}")]
    InvalidField {
        field: &'static str,
        problem: String,
    },
}

/// How strictly a JSON object is read as an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// What comes in (broker, HTTP): the contract's id rule (docs/contract.md §5)
    /// and no NUL anywhere.
    Inbound,
    /// What this service stored itself: only what a message needs.
    Stored,
}

/// One message, as it travels on every channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique per message: the dedup key.
    pub event_id: String,
    /// Propagated unchanged end to end.
    pub correlation_id: String,
    /// `None` only on `PartnerCreated`.
    pub saga_id: Option<Uuid>,
    /// Kept as text so unknown types can be acknowledged and ignored.
    pub event_type: String,
    pub status: Option<MessageStatus>,
    pub payload: Map<String, Value>,
    pub timestamp: DateTime<Utc>,
    /// W3C trace context; travels beside the body (property / stream field).
    pub traceparent: Option<String>,
}

impl Envelope {
    /// A new message with a fresh `event_id` and the current time.
    pub fn new(
        event_type: EventType,
        correlation_id: impl Into<String>,
        saga_id: Option<Uuid>,
        status: Option<MessageStatus>,
        payload: Map<String, Value>,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4().to_string(),
            correlation_id: correlation_id.into(),
            saga_id,
            event_type: event_type.as_str().to_string(),
            status,
            payload,
            timestamp: Utc::now(),
            traceparent: None,
        }
    }

    /// The known event type, if it is one.
    pub fn kind(&self) -> Option<EventType> {
        EventType::parse(&self.event_type)
    }

    /// The partition / message key: the partner, so one partner's messages
    /// tend to go to one consumer (correctness does not depend on it).
    pub fn partner_id(&self) -> Option<&str> {
        self.payload.get("partner_id").and_then(Value::as_str)
    }

    /// The JSON body (Pulsar payload, in-memory message).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::with_capacity(7);
        obj.insert("event_id".into(), self.event_id.clone().into());
        obj.insert("correlation_id".into(), self.correlation_id.clone().into());
        obj.insert(
            "saga_id".into(),
            self.saga_id.map_or(Value::Null, |id| id.to_string().into()),
        );
        obj.insert("event_type".into(), self.event_type.clone().into());
        obj.insert(
            "status".into(),
            self.status.map_or(Value::Null, |s| s.as_str().into()),
        );
        obj.insert("payload".into(), Value::Object(self.payload.clone()));
        obj.insert("timestamp".into(), format_time(self.timestamp).into());
        Value::Object(obj)
    }

    /// The JSON body as bytes.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serializing a `Value` built from strings and maps cannot fail.
        serde_json::to_vec(&self.to_json()).unwrap_or_default()
    }

    /// Redis stream fields: top-level fields flat, `payload` as a JSON
    /// string, null fields left out.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::with_capacity(8);
        fields.push(("event_id", self.event_id.clone()));
        fields.push(("correlation_id", self.correlation_id.clone()));
        if let Some(id) = self.saga_id {
            fields.push(("saga_id", id.to_string()));
        }
        fields.push(("event_type", self.event_type.clone()));
        if let Some(status) = self.status {
            fields.push(("status", status.as_str().to_string()));
        }
        fields.push((
            "payload",
            serde_json::to_string(&self.payload).unwrap_or_default(),
        ));
        fields.push(("timestamp", format_time(self.timestamp)));
        if let Some(tp) = &self.traceparent {
            fields.push(("traceparent", tp.clone()));
        }
        fields
    }

    /// Decodes a JSON body of at most `max_bytes`.
    pub fn from_json_bytes(bytes: &[u8], max_bytes: usize) -> Result<Self, DecodeError> {
        if bytes.len() > max_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: max_bytes,
            });
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
        match value {
            Value::Object(obj) => Self::from_object(obj, Rules::Inbound),
            _ => Err(DecodeError::NotAnObject),
        }
    }

    /// Reads back a message this service stored itself (the outbox, as
    /// [`Envelope::to_json`] wrote it). Only what a message needs is
    /// checked: text ids, a UUID `saga_id`, a known `status`, an object
    /// `payload`, an RFC 3339 `timestamp`. The inbound id rule is not: a
    /// stored message is published as it was stored, whatever rule held
    /// when it was written, and readers apply their own rules on arrival.
    pub fn from_stored(value: Value) -> Result<Self, DecodeError> {
        match value {
            Value::Object(obj) => Self::from_object(obj, Rules::Stored),
            _ => Err(DecodeError::NotAnObject),
        }
    }

    /// Decodes Redis stream fields whose sizes add up to at most `max_bytes`.
    pub fn from_fields<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        fields: &[(K, V)],
        max_bytes: usize,
    ) -> Result<Self, DecodeError> {
        let size: usize = fields
            .iter()
            .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
            .sum();
        if size > max_bytes {
            return Err(DecodeError::TooLarge {
                size,
                max: max_bytes,
            });
        }
        let mut obj = Map::with_capacity(fields.len());
        let mut traceparent = None;
        for (key, value) in fields {
            let Ok(key) = std::str::from_utf8(key.as_ref()) else {
                return Err(DecodeError::InvalidJson("field name is not UTF-8".into()));
            };
            let text =
                std::str::from_utf8(value.as_ref()).map_err(|_| DecodeError::InvalidField {
                    field: "fields",
                    problem: format!("value of {key} is not UTF-8"),
                })?;
            let value = match key {
                "payload" => serde_json::from_str(text)
                    .map_err(|e| DecodeError::InvalidJson(format!("payload: {e}")))?,
                "traceparent" => {
                    traceparent = Some(text.to_string());
                    continue;
                }
                _ => Value::String(text.to_string()),
            };
            obj.insert(key.to_string(), value);
        }
        let mut envelope = Self::from_object(obj, Rules::Inbound)?;
        envelope.traceparent = traceparent;
        Ok(envelope)
    }

    fn from_object(mut obj: Map<String, Value>, rules: Rules) -> Result<Self, DecodeError> {
        // Stores (PostgreSQL text and jsonb) refuse NUL; refusing it here
        // dead-letters the one message instead of failing its whole batch.
        if rules == Rules::Inbound && obj.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)) {
            return Err(invalid("message", "contains a NUL character"));
        }
        let event_id = required_text(&mut obj, "event_id", rules)?;
        let correlation_id = required_text(&mut obj, "correlation_id", rules)?;
        let event_type = required_text(&mut obj, "event_type", rules)?;
        let saga_id = match obj.remove("saga_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                Some(Uuid::parse_str(&s).map_err(|_| DecodeError::InvalidField {
                    field: "saga_id",
                    problem: format!("not a UUID: {s:?}"),
                })?)
            }
            Some(_) => return Err(invalid("saga_id", "expected a UUID string or null")),
        };
        let status = match obj.remove("status") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(
                    MessageStatus::parse(&s).ok_or_else(|| DecodeError::InvalidField {
                        field: "status",
                        problem: format!(
                            "expected started, progress, completed or failed, got {s:?}"
                        ),
                    })?,
                )
            }
            Some(_) => return Err(invalid("status", "expected a string or null")),
        };
        let payload = match obj.remove("payload") {
            Some(Value::Object(p)) => p,
            None | Some(Value::Null) => return Err(DecodeError::MissingField("payload")),
            Some(_) => return Err(invalid("payload", "expected a JSON object")),
        };
        // Producers that leave the time out are not worth a dead letter:
        // the receive time is the best estimate we have.
        let timestamp = match obj.remove("timestamp") {
            None | Some(Value::Null) => Utc::now(),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
                .map_err(|_| DecodeError::InvalidField {
                    field: "timestamp",
                    problem: format!("not RFC 3339: {s:?}"),
                })?
                .with_timezone(&Utc),
            Some(_) => return Err(invalid("timestamp", "expected an RFC 3339 string")),
        };
        let traceparent = match obj.remove("traceparent") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(Self {
            event_id,
            correlation_id,
            saga_id,
            event_type,
            status,
            payload,
            timestamp,
            traceparent,
        })
    }
}

/// The fields of a `PartnerCreated` payload the saga needs; everything else
/// in the payload is kept as given.
#[derive(Debug, Clone, PartialEq)]
pub struct PartnerCreated {
    pub partner_id: String,
    pub name: String,
    pub email: Option<String>,
    /// The whole payload, extra fields included, passed on to alliances.
    pub payload: Map<String, Value>,
}

impl PartnerCreated {
    /// Validates a `PartnerCreated` payload.
    pub fn from_payload(payload: &Map<String, Value>) -> Result<Self, DecodeError> {
        let partner_id = id_text(payload.get("partner_id"), "payload.partner_id")?;
        check_partner_id("payload.partner_id", &partner_id)?;
        if payload
            .iter()
            .any(|(k, v)| k.contains('\0') || contains_nul(v))
        {
            return Err(invalid("payload", "contains a NUL character"));
        }
        let name = payload_text(payload, "name", "payload.name")?;
        let email = match payload.get("email") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("payload.email", "expected a string")),
        };
        Ok(Self {
            partner_id,
            name,
            email,
            payload: payload.clone(),
        })
    }
}

/// A required, non-empty string in a payload; errors name it with its
/// `payload.` prefix so the dead letter says exactly where to look.
fn payload_text(
    payload: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<String, DecodeError> {
    text_value(payload.get(key), field)
}

fn text_value(value: Option<&Value>, field: &'static str) -> Result<String, DecodeError> {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(DecodeError::MissingField(field)),
        Some(Value::String(_)) => Err(invalid(field, "must not be empty")),
        Some(_) => Err(invalid(field, "expected a string")),
    }
}

/// The longest id accepted (`event_id`, `correlation_id`, `event_type`,
/// `partner_id`): ids are indexed, and an index entry has a size limit.
pub const MAX_ID_CHARS: usize = 256;

fn required_text(
    obj: &mut Map<String, Value>,
    field: &'static str,
    rules: Rules,
) -> Result<String, DecodeError> {
    let value = obj.remove(field);
    match (rules, value) {
        (Rules::Inbound, value) => id_text(value.as_ref(), field),
        (Rules::Stored, Some(Value::String(s))) => Ok(s),
        (Rules::Stored, None | Some(Value::Null)) => Err(DecodeError::MissingField(field)),
        (Rules::Stored, Some(_)) => Err(invalid(field, "expected a string")),
    }
}

/// A required id that obeys [`check_id`].
fn id_text(value: Option<&Value>, field: &'static str) -> Result<String, DecodeError> {
    let text = text_value(value, field)?;
    check_id(field, &text)?;
    Ok(text)
}

/// The one rule for ids on every input path — broker, HTTP body, query,
/// replies (docs/contract.md §5): a non-empty string of at most [`MAX_ID_CHARS`]
/// characters without NUL. Applied at the edge so that nothing stored can
/// later fail to be read back, indexed or published.
pub fn check_id(field: &'static str, id: &str) -> Result<(), DecodeError> {
    let problem = if id.trim().is_empty() {
        "must not be empty".to_string()
    } else if id.chars().count() > MAX_ID_CHARS {
        format!("longer than {MAX_ID_CHARS} characters")
    } else if id.contains('\0') {
        "contains a NUL character".to_string()
    } else {
        return Ok(());
    };
    Err(DecodeError::InvalidField { field, problem })
}

/// A partner id is one path segment of the participants' URLs (docs/contract.md
/// §4); `.` and `..` cannot be one safely — servers resolve them, encoded
/// or not, into the parent path, which for `DELETE /partners/..` is the
/// whole collection — so they are refused like any other invalid id.
pub fn check_partner_id(field: &'static str, id: &str) -> Result<(), DecodeError> {
    check_id(field, id)?;
    if id == "." || id == ".." {
        return Err(invalid(
            field,
            "`.` and `..` are not partner ids (they cannot be one URL path segment)",
        ));
    }
    Ok(())
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(obj) => obj.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn invalid(field: &'static str, problem: &str) -> DecodeError {
    DecodeError::InvalidField {
        field,
        problem: problem.to_string(),
    }
}

/// RFC 3339, UTC, milliseconds: the contract's timestamp form.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 1024 * 1024;

    fn partner_created() -> Envelope {
        let payload =
            json!({"partner_id": "p-1", "name": "Acme", "email": "a@acme.test", "tier": "gold"});
        let mut env = Envelope::new(
            EventType::PartnerCreated,
            "corr-1",
            None,
            None,
            payload.as_object().cloned().unwrap(),
        );
        env.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        env
    }

    #[test]
    fn json_round_trip_keeps_every_field_but_traceparent() {
        let env = partner_created();
        let back = Envelope::from_json_bytes(&env.to_json_bytes(), MAX).unwrap();
        // Millisecond precision on the wire.
        assert_eq!(format_time(back.timestamp), format_time(env.timestamp));
        assert_eq!(back.event_id, env.event_id);
        assert_eq!(back.payload, env.payload);
        assert_eq!(back.saga_id, None);
        // On Pulsar traceparent travels as a message property, not in the body.
        assert_eq!(back.traceparent, None);
    }

    #[test]
    fn json_body_has_contract_shape_with_nulls() {
        let v = partner_created().to_json();
        for key in [
            "event_id",
            "correlation_id",
            "saga_id",
            "event_type",
            "status",
            "payload",
            "timestamp",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(v["saga_id"].is_null());
        assert!(v["status"].is_null());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn fields_round_trip_with_payload_as_json_string() {
        let mut env = partner_created();
        env.saga_id = Some(Uuid::new_v4());
        env.status = Some(MessageStatus::Progress);
        let fields = env.to_fields();
        let payload = fields.iter().find(|(k, _)| *k == "payload").unwrap();
        assert!(payload.1.starts_with('{'));
        let back = Envelope::from_fields(&fields, MAX).unwrap();
        assert_eq!(back.saga_id, env.saga_id);
        assert_eq!(back.status, Some(MessageStatus::Progress));
        assert_eq!(back.payload, env.payload);
        assert_eq!(back.traceparent, env.traceparent);
    }

    #[test]
    fn null_fields_are_left_out_of_stream_entries() {
        let fields = partner_created().to_fields();
        assert!(!fields
            .iter()
            .any(|(k, _)| *k == "saga_id" || *k == "status"));
    }

    #[test]
    fn missing_required_fields_are_named() {
        for field in ["event_id", "correlation_id", "event_type", "payload"] {
            let mut v = partner_created().to_json();
            v.as_object_mut().unwrap().remove(field);
            let err = Envelope::from_json_bytes(&serde_json::to_vec(&v).unwrap(), MAX).unwrap_err();
            assert_eq!(err, DecodeError::MissingField(field));
        }
    }

    #[test]
    fn malformed_values_are_rejected_with_reasons() {
        let cases = [
            (json!({"saga_id": "nope"}), "saga_id"),
            (json!({"status": "done"}), "status"),
            (json!({"payload": [1, 2]}), "payload"),
            (json!({"timestamp": "yesterday"}), "timestamp"),
            (json!({"event_id": ""}), "event_id"),
            (json!({"correlation_id": 7}), "correlation_id"),
        ];
        for (patch, field) in cases {
            let mut v = partner_created().to_json();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let err = Envelope::from_json_bytes(&serde_json::to_vec(&v).unwrap(), MAX).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn nul_characters_and_overlong_ids_are_refused() {
        let mut env = partner_created();
        env.payload.insert("name".into(), json!("Acme\u{0}"));
        let err = Envelope::from_json_bytes(&env.to_json_bytes(), MAX).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        let mut nested = partner_created();
        nested.payload.insert("tags".into(), json!([{"k\u{0}": 1}]));
        assert!(Envelope::from_fields(&nested.to_fields(), MAX).is_err());
        assert!(
            PartnerCreated::from_payload(&nested.payload).is_err(),
            "the API path checks too"
        );

        let mut long = partner_created();
        long.event_id = "e".repeat(MAX_ID_CHARS + 1);
        let err = Envelope::from_json_bytes(&long.to_json_bytes(), MAX).unwrap_err();
        assert!(err.to_string().contains("event_id"), "{err}");
        let mut p = partner_created().payload;
        p.insert("partner_id".into(), json!("p".repeat(MAX_ID_CHARS + 1)));
        assert!(PartnerCreated::from_payload(&p)
            .unwrap_err()
            .to_string()
            .contains("payload.partner_id"));
        let mut ok = partner_created();
        ok.event_id = "e".repeat(MAX_ID_CHARS);
        assert!(Envelope::from_json_bytes(&ok.to_json_bytes(), MAX).is_ok());
    }

    #[test]
    fn stored_messages_are_read_back_without_the_inbound_id_rule() {
        let mut env = partner_created();
        env.saga_id = Some(Uuid::new_v4());
        env.correlation_id = "c".repeat(MAX_ID_CHARS + 44);
        env.payload
            .insert("note".into(), json!("kept\u{0}as stored"));
        let back = Envelope::from_stored(env.to_json()).unwrap();
        assert_eq!(back.correlation_id, env.correlation_id);
        assert_eq!(back.saga_id, env.saga_id);
        assert_eq!(back.payload, env.payload);
        assert!(
            Envelope::from_json_bytes(&env.to_json_bytes(), MAX).is_err(),
            "inbound, the same message is refused"
        );
    }

    #[test]
    fn stored_rows_that_are_no_message_are_refused_with_reasons() {
        assert_eq!(
            Envelope::from_stored(json!(["a", "list"])),
            Err(DecodeError::NotAnObject)
        );
        assert_eq!(
            Envelope::from_stored(json!({"hello": "world"})),
            Err(DecodeError::MissingField("event_id"))
        );
        for (patch, field) in [
            (json!({"saga_id": "nope"}), "saga_id"),
            (json!({"status": "done"}), "status"),
            (json!({"payload": "text"}), "payload"),
            (json!({"correlation_id": 7}), "correlation_id"),
        ] {
            let mut v = partner_created().to_json();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let err = Envelope::from_stored(v).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn missing_timestamp_defaults_to_receive_time() {
        let mut v = partner_created().to_json();
        v.as_object_mut().unwrap().remove("timestamp");
        let env = Envelope::from_json_bytes(&serde_json::to_vec(&v).unwrap(), MAX).unwrap();
        assert!((Utc::now() - env.timestamp).num_seconds() < 5);
    }

    #[test]
    fn invalid_json_and_non_objects_are_rejected() {
        assert!(matches!(
            Envelope::from_json_bytes(b"{nope", MAX),
            Err(DecodeError::InvalidJson(_))
        ));
        assert_eq!(
            Envelope::from_json_bytes(b"[1]", MAX),
            Err(DecodeError::NotAnObject)
        );
        let fields = [("event_id", "e"), ("payload", "{broken")];
        assert!(matches!(
            Envelope::from_fields(&fields, MAX),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    #[test]
    fn oversize_messages_are_rejected_before_parsing() {
        let body = partner_created().to_json_bytes();
        let err = Envelope::from_json_bytes(&body, body.len() - 1).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }));
        let fields = partner_created().to_fields();
        assert!(matches!(
            Envelope::from_fields(&fields, 10),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn partner_created_requires_partner_id_and_name() {
        let ok = PartnerCreated::from_payload(&partner_created().payload).unwrap();
        assert_eq!(ok.partner_id, "p-1");
        assert_eq!(ok.email.as_deref(), Some("a@acme.test"));
        assert_eq!(ok.payload["tier"], "gold");

        let mut p = partner_created().payload;
        p.remove("partner_id");
        assert_eq!(
            PartnerCreated::from_payload(&p).unwrap_err(),
            DecodeError::MissingField("payload.partner_id")
        );
        let mut p = partner_created().payload;
        p.insert("name".into(), json!(""));
        assert!(PartnerCreated::from_payload(&p)
            .unwrap_err()
            .to_string()
            .contains("payload.name"));
        let mut p = partner_created().payload;
        p.insert("email".into(), json!(42));
        assert!(PartnerCreated::from_payload(&p).is_err());
        let mut p = partner_created().payload;
        p.remove("email");
        assert_eq!(PartnerCreated::from_payload(&p).unwrap().email, None);
    }

    #[test]
    fn event_types_round_trip_and_unknown_is_none() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("PartnerUpdated"), None);
    }

    #[test]
    fn the_id_rule_is_one_rule() {
        assert!(check_id("event_id", "e").is_ok());
        assert!(check_id("event_id", &"e".repeat(MAX_ID_CHARS)).is_ok());
        assert!(check_id("event_id", "ü/ñ ?#%2e").is_ok());
        for bad in ["", "  ", "a\u{0}b"] {
            assert!(check_id("event_id", bad).is_err(), "{bad:?}");
        }
        let long = "é".repeat(MAX_ID_CHARS + 1);
        assert!(check_id("event_id", &long)
            .unwrap_err()
            .to_string()
            .contains("256"));
        for dots in [".", ".."] {
            let err = check_partner_id("payload.partner_id", dots).unwrap_err();
            assert!(err.to_string().contains("payload.partner_id"), "{err}");
        }
        for fine in ["...", ". .", "%2e%2e", "a/..", "./a"] {
            assert!(
                check_partner_id("payload.partner_id", fine).is_ok(),
                "{fine}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, nested a few levels, strings of any characters.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// An id a hostile but valid producer might send: any characters but
        /// NUL, 1 to 256 of them, not blank.
        fn hostile_id() -> impl Strategy<Value = String> {
            "[^\u{0}]{1,256}".prop_filter("not blank", |s| !s.trim().is_empty())
        }

        /// A valid envelope with hostile ids and payload values.
        fn envelope() -> impl Strategy<Value = Envelope> {
            (
                hostile_id(),
                hostile_id(),
                hostile_id(),
                any::<String>(),
                json_value(),
            )
                .prop_map(|(event_id, correlation_id, partner_id, name, extra)| {
                    let mut payload = Map::new();
                    payload.insert("partner_id".into(), partner_id.into());
                    payload.insert("name".into(), name.replace('\0', "").into());
                    payload.insert("extra".into(), strip_nul(extra));
                    let mut env = Envelope::new(
                        EventType::PartnerCreated,
                        correlation_id,
                        None,
                        None,
                        payload,
                    );
                    env.event_id = event_id;
                    env
                })
        }

        fn strip_nul(v: Value) -> Value {
            match v {
                Value::String(s) => Value::String(s.replace('\0', "")),
                Value::Array(items) => Value::Array(items.into_iter().map(strip_nul).collect()),
                Value::Object(obj) => Value::Object(
                    obj.into_iter()
                        .map(|(k, v)| (k.replace('\0', ""), strip_nul(v)))
                        .collect(),
                ),
                other => other,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
                let _ = Envelope::from_json_bytes(&bytes, MAX);
            }

            #[test]
            fn arbitrary_json_never_panics_and_is_judged_once(value in json_value()) {
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                let first = Envelope::from_json_bytes(&bytes, MAX);
                prop_assert_eq!(first.is_ok(), Envelope::from_json_bytes(&bytes, MAX).is_ok());
                if let Ok(env) = first {
                    let _ = PartnerCreated::from_payload(&env.payload);
                }
            }

            #[test]
            fn arbitrary_stream_fields_never_panic(
                fields in prop::collection::vec((any::<String>(), prop::collection::vec(any::<u8>(), 0..64)), 0..10)
            ) {
                let _ = Envelope::from_fields(&fields, MAX);
            }

            #[test]
            fn what_is_accepted_round_trips_on_both_wire_forms(env in envelope()) {
                let body = Envelope::from_json_bytes(&env.to_json_bytes(), MAX);
                let body = body.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&body.event_id, &env.event_id);
                prop_assert_eq!(&body.correlation_id, &env.correlation_id);
                prop_assert_eq!(&body.payload, &env.payload);
                let fields = Envelope::from_fields(&env.to_fields(), MAX);
                let fields = fields.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&fields.payload, &env.payload);
                prop_assert_eq!(&fields.event_id, &env.event_id);
                let partner = PartnerCreated::from_payload(&body.payload);
                let valid_partner = !matches!(env.partner_id(), Some(".") | Some(".."));
                prop_assert_eq!(partner.is_ok(), valid_partner && !env.payload["name"].as_str().unwrap_or_default().trim().is_empty());
            }
        }
    }
}
