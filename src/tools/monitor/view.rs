//! A message as the monitor sees it: every field read leniently, so a
//! message the orchestrator would refuse is still shown (and marked), never
//! skipped and never a crash.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::Tapped;
use crate::config::Channels;
use crate::envelope::{EventType, PartnerCreated};
use crate::transport::RawMessage;

/// How much of a malformed message's raw text is kept for display.
const RAW_KEEP: usize = 512;

/// What a channel carries; decides its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// `partner-events`: integrations' announcements.
    Events,
    /// `alliance-commands`, `integration-commands`.
    Commands,
    /// `saga-replies`.
    Replies,
    /// `saga-events`: the orchestrator's lifecycle events.
    SagaEvents,
    /// Any `<channel>-dlq`.
    Dlq,
    /// A channel named with `--channel` that is none of the configured ones.
    Other,
}

impl ChannelKind {
    /// The kind of `channel` under the configured names.
    pub fn of(channel: &str, channels: &Channels) -> Self {
        if channel == channels.partner_events {
            Self::Events
        } else if channel == channels.alliance_commands || channel == channels.integration_commands
        {
            Self::Commands
        } else if channel == channels.saga_replies {
            Self::Replies
        } else if channel == channels.saga_events {
            Self::SagaEvents
        } else if channel.ends_with("-dlq") {
            Self::Dlq
        } else {
            Self::Other
        }
    }

    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Commands => "commands",
            Self::Replies => "replies",
            Self::SagaEvents => "saga-events",
            Self::Dlq => "dlq",
            Self::Other => "other",
        }
    }
}

/// One message, read leniently. Text fields are as sent (not cleaned for
/// a terminal: [`super::render`] does that).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The message's own time: `failed_at` of a dead letter, else its
    /// `timestamp`, else when the monitor read it.
    pub time: DateTime<Utc>,
    pub channel: String,
    pub kind: ChannelKind,
    /// The broker's id (Redis entry id, Pulsar ledger:entry).
    pub id: String,
    pub event_id: Option<String>,
    pub correlation_id: Option<String>,
    pub saga_id: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<String>,
    /// The payload: an object when it parses, else its text.
    pub payload: Option<Value>,
    /// A dead letter's reason and origin.
    pub dlq_reason: Option<String>,
    pub source_channel: Option<String>,
    /// Why the orchestrator would refuse it, if it would.
    pub malformed: Option<String>,
    /// The raw text (shortened) of a malformed message, or the `raw` body a
    /// dead letter keeps of an unparseable original.
    pub raw: Option<String>,
}

impl Observed {
    /// Reads `tapped`; `max_bytes` is `MAX_MESSAGE_BYTES`, so an oversized
    /// message is marked as the orchestrator would judge it.
    pub fn parse(tapped: &Tapped, kind: ChannelKind, max_bytes: usize) -> Self {
        let loose = Loose::read(&tapped.raw);
        let malformed = judge(&tapped.raw, kind, max_bytes);
        let time = match kind {
            ChannelKind::Dlq => loose.time("failed_at").or_else(|| loose.time("timestamp")),
            _ => loose.time("timestamp"),
        }
        .unwrap_or(tapped.received_at);
        let raw = loose.text("raw").or_else(|| {
            (malformed.is_some() || loose.unparsed)
                .then(|| shorten(raw_text(&tapped.raw), RAW_KEEP))
        });
        Self {
            time,
            channel: tapped.channel.clone(),
            kind,
            id: tapped.id.clone(),
            event_id: loose.text("event_id"),
            correlation_id: loose.text("correlation_id"),
            saga_id: loose.text("saga_id"),
            event_type: loose.text("event_type"),
            status: loose.text("status"),
            payload: loose
                .fields
                .get("payload")
                .filter(|v| !v.is_null())
                .cloned(),
            dlq_reason: loose.text("dlq_reason"),
            source_channel: loose.text("source_channel"),
            malformed,
            raw,
        }
    }

    /// A payload field as text, if the payload is an object that has it.
    pub fn payload_text(&self, key: &str) -> Option<String> {
        match self.payload.as_ref()?.get(key)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// Why the orchestrator would refuse this message (the same checks as its
/// consumer: the envelope, and a `PartnerCreated` payload on `partner-events`).
fn judge(raw: &RawMessage, kind: ChannelKind, max_bytes: usize) -> Option<String> {
    match raw.decode(max_bytes) {
        Err(e) => Some(e.to_string()),
        Ok(env) if kind == ChannelKind::Events && env.kind() == Some(EventType::PartnerCreated) => {
            PartnerCreated::from_payload(&env.payload)
                .err()
                .map(|e| e.to_string())
        }
        Ok(_) => None,
    }
}

/// Top-level fields without judging them; Pulsar properties fill in the
/// routing fields a body lacks (a dead letter of an unparseable body).
struct Loose {
    fields: Map<String, Value>,
    properties: Vec<(String, String)>,
    /// The body is not a JSON object.
    unparsed: bool,
}

impl Loose {
    fn read(raw: &RawMessage) -> Self {
        match raw {
            RawMessage::Fields(fields) => Self {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        let text = String::from_utf8_lossy(v).into_owned();
                        let value = match k.as_str() {
                            // Kept as text when it is not JSON: shown raw.
                            "payload" => serde_json::from_str(&text).unwrap_or(Value::String(text)),
                            _ => Value::String(text),
                        };
                        (k.clone(), value)
                    })
                    .collect(),
                properties: Vec::new(),
                unparsed: false,
            },
            RawMessage::Body { data, properties } => {
                let (fields, unparsed) = match serde_json::from_slice::<Value>(data) {
                    Ok(Value::Object(obj)) => (obj, false),
                    _ => (Map::new(), true),
                };
                Self {
                    fields,
                    properties: properties.clone(),
                    unparsed,
                }
            }
        }
    }

    fn text(&self, name: &str) -> Option<String> {
        let from_fields = match self.fields.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        from_fields
            .or_else(|| {
                self.properties
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
            .filter(|s| !s.is_empty())
    }

    fn time(&self, name: &str) -> Option<DateTime<Utc>> {
        let text = self.text(name)?;
        DateTime::parse_from_rfc3339(&text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The message as one line of text: stream fields as `k=v`, a body as is.
fn raw_text(raw: &RawMessage) -> String {
    match raw {
        RawMessage::Fields(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
            .join(" "),
        RawMessage::Body { data, .. } => String::from_utf8_lossy(data).into_owned(),
    }
}

/// At most `max` characters, with `…` when cut.
pub(crate) fn shorten(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, MessageStatus};
    use crate::transport::{dead_letter_message, OutboundMessage, WireFormat};
    use serde_json::json;
    use uuid::Uuid;

    const MAX: usize = 1 << 20;

    fn tapped(channel: &str, raw: RawMessage) -> Tapped {
        let at = DateTime::parse_from_rfc3339("2026-11-22T14:00:09.999Z").unwrap();
        Tapped::new(channel, "1-0", raw, at.with_timezone(&Utc))
    }

    fn saga_event(format: WireFormat) -> RawMessage {
        let payload = json!({"partner_id": "p-1", "state": "completed", "step": "create_alliance", "alliance_id": "a-9"});
        let mut env = Envelope::new(
            EventType::SagaCompleted,
            "corr-1",
            Some(Uuid::nil()),
            Some(MessageStatus::Completed),
            payload.as_object().cloned().unwrap(),
        );
        env.timestamp = DateTime::parse_from_rfc3339("2026-11-22T14:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        OutboundMessage::encode(&env, format).raw
    }

    #[test]
    fn well_formed_messages_read_the_same_on_both_wire_forms() {
        let channels = Channels::default();
        for format in [WireFormat::Fields, WireFormat::Body] {
            let t = tapped("saga-events", saga_event(format));
            let o = Observed::parse(&t, ChannelKind::of(&t.channel, &channels), MAX);
            assert_eq!(o.kind, ChannelKind::SagaEvents);
            assert_eq!(o.event_type.as_deref(), Some("SagaCompleted"));
            assert_eq!(o.status.as_deref(), Some("completed"));
            assert_eq!(o.correlation_id.as_deref(), Some("corr-1"));
            assert_eq!(o.saga_id, Some(Uuid::nil().to_string()));
            assert_eq!(o.payload_text("alliance_id").as_deref(), Some("a-9"));
            assert_eq!(o.time.to_rfc3339(), "2026-11-22T14:00:00.123+00:00");
            assert_eq!(o.malformed, None, "{format:?}");
            assert_eq!(o.raw, None);
        }
    }

    #[test]
    fn malformed_messages_are_read_as_far_as_they_go_and_marked() {
        let t = tapped(
            "partner-events",
            RawMessage::Fields(vec![
                ("correlation_id".into(), b"c-7".to_vec()),
                ("payload".into(), b"{not json".to_vec()),
            ]),
        );
        let o = Observed::parse(&t, ChannelKind::Events, MAX);
        assert_eq!(o.correlation_id.as_deref(), Some("c-7"));
        assert!(o.malformed.as_deref().unwrap().contains("invalid JSON"));
        assert_eq!(o.payload, Some(Value::String("{not json".into())));
        assert!(o.raw.as_deref().unwrap().contains("payload={not json"));
        // No timestamp: the time it was read.
        assert_eq!(o.time, t.received_at);

        let garbage = tapped(
            "saga-replies",
            RawMessage::Body {
                data: vec![0xff, b'x', 0x1b],
                properties: vec![("correlation_id".into(), "c-8".into())],
            },
        );
        let o = Observed::parse(&garbage, ChannelKind::Replies, MAX);
        assert!(o.malformed.is_some());
        assert_eq!(o.correlation_id.as_deref(), Some("c-8"), "from properties");
        assert!(o.raw.is_some());
    }

    #[test]
    fn a_partner_created_the_orchestrator_would_refuse_is_marked() {
        let mut env = Envelope::new(
            EventType::PartnerCreated,
            "c-1",
            None,
            None,
            json!({"partner_id": "p-1"}).as_object().cloned().unwrap(),
        );
        env.traceparent = None;
        let t = tapped(
            "partner-events",
            OutboundMessage::encode(&env, WireFormat::Fields).raw,
        );
        let o = Observed::parse(&t, ChannelKind::Events, MAX);
        assert_eq!(
            o.malformed.as_deref(),
            Some("missing required field payload.name")
        );
        // The same message elsewhere is not the consumer's business.
        assert_eq!(Observed::parse(&t, ChannelKind::Other, MAX).malformed, None);
        // Too large for MAX_MESSAGE_BYTES.
        assert!(Observed::parse(&t, ChannelKind::Other, 10)
            .malformed
            .unwrap()
            .contains("exceeds"));
    }

    #[test]
    fn dead_letters_show_their_reason_time_and_original() {
        let original = RawMessage::Body {
            data: b"not json at all".to_vec(),
            properties: vec![("correlation_id".into(), "c-9".into())],
        };
        let dl = dead_letter_message(&original, "invalid JSON: x", "partner-events");
        let t = tapped("partner-events-dlq", dl);
        let o = Observed::parse(&t, ChannelKind::Dlq, MAX);
        assert_eq!(o.dlq_reason.as_deref(), Some("invalid JSON: x"));
        assert_eq!(o.source_channel.as_deref(), Some("partner-events"));
        assert_eq!(o.raw.as_deref(), Some("not json at all"));
        assert_eq!(o.correlation_id.as_deref(), Some("c-9"));
        assert_ne!(o.time, t.received_at, "failed_at is the time");
    }

    #[test]
    fn kinds_follow_the_configured_names() {
        let c = Channels::prefixed("t1-");
        assert_eq!(
            ChannelKind::of("t1-partner-events", &c),
            ChannelKind::Events
        );
        assert_eq!(
            ChannelKind::of("t1-alliance-commands", &c),
            ChannelKind::Commands
        );
        assert_eq!(
            ChannelKind::of("t1-integration-commands", &c),
            ChannelKind::Commands
        );
        assert_eq!(ChannelKind::of("t1-saga-replies", &c), ChannelKind::Replies);
        assert_eq!(
            ChannelKind::of("t1-saga-events", &c),
            ChannelKind::SagaEvents
        );
        assert_eq!(ChannelKind::of("t1-saga-events-dlq", &c), ChannelKind::Dlq);
        assert_eq!(ChannelKind::of("partner-events", &c), ChannelKind::Other);
    }

    #[test]
    fn shorten_counts_characters_not_bytes() {
        assert_eq!(shorten("ñandú".into(), 5), "ñandú");
        assert_eq!(shorten("ñandúes".into(), 5), "ñand…");
    }
}
