//! A dead letter read off its channel: what the index stores of it, what
//! the API shows of it, and the original message a redrive sends back.
//!
//! `Transport::dead_letter` wrote it as the original message plus
//! `dlq_reason`, `source_channel` and `failed_at` (and on a body, a
//! `dlq_reason` property; a body that was not a JSON object under `raw`).
//! Taking those away again gives the original as it was received.
//!
//! On Redis the three are appended after the producer's fields, and a
//! stream entry may repeat a name: a producer's own `source_channel` is
//! still there, first. So the added ones are the trailing three, read
//! from the end, and only those are taken away; a producer never chooses
//! where a redrive publishes (and [`redrive_target`] checks it anyway).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::id;
use crate::store::operator::DeadLetterRecord;
use crate::transport::{OutboundMessage, RawMessage};

/// The fields `Transport::dead_letter` adds to the original, in the
/// order it appends them.
const ADDED: [&str; 3] = ["dlq_reason", "source_channel", "failed_at"];

/// One Redis field: its name and value.
type Field<T> = (String, T);

/// A Redis letter's fields split into the producer's own and the three
/// dead-lettering appended (`None` when the entry does not end with them:
/// it was not written by `dead_letter_message`).
fn split_added<T>(fields: &[Field<T>]) -> (&[Field<T>], Option<&[Field<T>]>) {
    let Some(at) = fields.len().checked_sub(ADDED.len()) else {
        return (fields, None);
    };
    let (own, tail) = fields.split_at(at);
    if tail.iter().map(|(k, _)| k.as_str()).eq(ADDED) {
        (own, Some(tail))
    } else {
        (fields, None)
    }
}

/// An added field's value, as dead-lettering wrote it: on Redis from the
/// appended tail only, on a body from the JSON object it overwrote.
fn added(raw: &RawMessage, name: &str) -> Option<String> {
    match raw {
        RawMessage::Fields(fields) => split_added(fields).1.and_then(|tail| {
            tail.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        }),
        RawMessage::Body { .. } => raw.field(name),
    }
}

/// The channel a letter of `dlq_channel` came from: its name without `-dlq`.
pub fn source_of(dlq_channel: &str) -> &str {
    dlq_channel.strip_suffix("-dlq").unwrap_or(dlq_channel)
}

/// Why a letter is not sent where its record says it came from.
#[derive(Debug, thiserror::Error)]
#[error("dead letter {id} names {source_channel} as its source, which is not {expected}, a channel this service consumes; it is not redriven")]
pub struct ForeignSource {
    pub id: String,
    pub source_channel: String,
    pub expected: String,
}

/// Where a redrive of `record` may publish: only back to the channel its
/// dead-letter channel belongs to, and only one this service consumes, so
/// neither a producer nor anyone who can write to a `-dlq` stream makes
/// the service publish, with its credentials, anywhere else.
pub fn redrive_target<'a>(
    record: &'a DeadLetterRecord,
    consumed: &[String],
) -> Result<&'a str, ForeignSource> {
    let expected = source_of(&record.channel);
    if record.source_channel == expected && consumed.iter().any(|c| c == expected) {
        Ok(&record.source_channel)
    } else {
        Err(ForeignSource {
            id: record.id.clone(),
            source_channel: record.source_channel.clone(),
            expected: expected.to_string(),
        })
    }
}

/// The wire form as stored in the index, as JSON: text values (a Redis
/// value or a body that is not UTF-8 is kept lossily, as a dead letter of
/// an unparseable body already is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
enum Stored {
    Fields {
        fields: Vec<(String, String)>,
    },
    Body {
        data: String,
        properties: Vec<(String, String)>,
    },
}

impl Stored {
    fn of(raw: &RawMessage) -> Self {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        match raw {
            RawMessage::Fields(fields) => Self::Fields {
                fields: fields.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
            },
            RawMessage::Body { data, properties } => Self::Body {
                data: text(data),
                properties: properties.clone(),
            },
        }
    }
}

/// What the index records of a dead letter read as `message_id` on
/// `channel` (a `<source>-dlq` channel).
pub fn record(channel: &str, message_id: &str, raw: &RawMessage) -> DeadLetterRecord {
    let failed_at = added(raw, "failed_at")
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let source = added(raw, "source_channel").unwrap_or_else(|| source_of(channel).to_string());
    DeadLetterRecord {
        id: id::encode(channel, message_id),
        channel: channel.to_string(),
        message_id: message_id.to_string(),
        source_channel: source,
        dlq_reason: added(raw, "dlq_reason").unwrap_or_default(),
        failed_at,
        raw: serde_json::to_string(&Stored::of(raw)).unwrap_or_default(),
    }
}

/// Why a stored letter cannot be read back (a hand edit, another version).
#[derive(Debug, thiserror::Error)]
#[error("the stored dead letter is unreadable: {0}")]
pub struct Unreadable(String);

fn stored(raw: &str) -> Result<Stored, Unreadable> {
    serde_json::from_str(raw).map_err(|e| Unreadable(e.to_string()))
}

/// The original fields as received, for the API: Redis fields one by one
/// (`payload` as the text it was), a body's JSON object (or `raw`).
pub fn message_view(raw: &str) -> Result<Value, Unreadable> {
    let mut view = Map::new();
    match stored(raw)? {
        Stored::Fields { fields } => {
            for (k, v) in split_added(&fields).0 {
                view.insert(k.clone(), Value::String(v.clone()));
            }
        }
        Stored::Body { data, .. } => match serde_json::from_str::<Value>(&data) {
            Ok(Value::Object(obj)) => {
                view = obj;
                for k in ADDED {
                    view.remove(k);
                }
            }
            _ => {
                view.insert("raw".into(), Value::String(data));
            }
        },
    }
    Ok(Value::Object(view))
}

/// The original message, to send back to its source channel: the added
/// fields taken away, keyed by its partner as the producer's was.
pub fn original(raw: &str) -> Result<OutboundMessage, Unreadable> {
    let raw = match stored(raw)? {
        Stored::Fields { fields } => RawMessage::Fields(
            split_added(&fields)
                .0
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
        ),
        Stored::Body {
            data,
            mut properties,
        } => {
            // Dead-lettering appended one `dlq_reason` property: the last.
            if let Some(at) = properties.iter().rposition(|(k, _)| k == "dlq_reason") {
                properties.remove(at);
            }
            RawMessage::Body {
                data: original_body(&data),
                properties,
            }
        }
    };
    let key = raw
        .field("payload")
        .and_then(|p| serde_json::from_str::<Value>(&p).ok())
        .and_then(|p| p.get("partner_id")?.as_str().map(str::to_string));
    Ok(OutboundMessage { key, raw })
}

/// A dead letter's body back as the producer sent it.
fn original_body(data: &str) -> Vec<u8> {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(data) else {
        return data.as_bytes().to_vec();
    };
    for k in ADDED {
        obj.remove(k);
    }
    // A body that was not a JSON object was kept whole under `raw`.
    if obj.len() == 1 {
        if let Some(Value::String(text)) = obj.get("raw") {
            return text.clone().into_bytes();
        }
    }
    serde_json::to_vec(&obj).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::dead_letter_message;

    fn fields(pairs: &[(&str, &str)]) -> RawMessage {
        RawMessage::Fields(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn a_redis_letter_gives_back_its_original_fields() {
        let payload = r#"{"partner_id":"p-1","name":"Acme"}"#;
        let original_fields = fields(&[("event_id", "e-1"), ("payload", payload)]);
        let letter = dead_letter_message(&original_fields, "too big", "partner-events");
        let rec = record("partner-events-dlq", "17-0", &letter);
        assert_eq!(rec.id, "partner-events-dlq.17-0");
        assert_eq!(rec.source_channel, "partner-events");
        assert_eq!(rec.dlq_reason, "too big");
        let view = message_view(&rec.raw).unwrap();
        assert_eq!(
            view,
            serde_json::json!({"event_id": "e-1", "payload": payload})
        );
        let back = original(&rec.raw).unwrap();
        assert_eq!(back.raw, original_fields);
        assert_eq!(back.key.as_deref(), Some("p-1"));
    }

    #[test]
    fn a_body_letter_gives_back_its_body_json_or_not() {
        let body = br#"{"event_id":"e-2","payload":{"partner_id":"p-2"}}"#.to_vec();
        let raw = RawMessage::Body {
            data: body.clone(),
            properties: vec![("event_type".into(), "X".into())],
        };
        let rec = record("c-dlq", "1:2:-1", &dead_letter_message(&raw, "why", "c"));
        let back = original(&rec.raw).unwrap();
        let RawMessage::Body { data, properties } = back.raw else {
            panic!()
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&data).unwrap(),
            serde_json::from_slice::<Value>(&body).unwrap()
        );
        assert_eq!(
            properties,
            vec![("event_type".to_string(), "X".to_string())]
        );
        assert_eq!(back.key.as_deref(), Some("p-2"));

        let garbage = RawMessage::Body {
            data: b"not json".to_vec(),
            properties: vec![],
        };
        let rec = record(
            "c-dlq",
            "1:3:-1",
            &dead_letter_message(&garbage, "invalid JSON", "c"),
        );
        assert_eq!(
            message_view(&rec.raw).unwrap(),
            serde_json::json!({"raw": "not json"})
        );
        let RawMessage::Body { data, .. } = original(&rec.raw).unwrap().raw else {
            panic!()
        };
        assert_eq!(data, b"not json");
    }

    proptest::proptest! {
        /// Whatever fields a producer sent (text, some named like the
        /// added ones), the redrive sends them back as they were, and the
        /// record keeps what dead-lettering added, not the producer's.
        #[test]
        fn any_fields_come_back_as_sent(
            pairs in proptest::collection::vec(
                (proptest::prop_oneof!["[a-z_]{1,12}", proptest::sample::select(ADDED.map(String::from).to_vec())],
                 "\\PC{0,40}"),
                0..8,
            ),
            reason in "\\PC{0,40}",
        ) {
            let raw = RawMessage::Fields(
                pairs.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect(),
            );
            let rec = record("c-dlq", "1-0", &dead_letter_message(&raw, &reason, "c"));
            proptest::prop_assert_eq!(&rec.dlq_reason, &reason);
            proptest::prop_assert_eq!(&rec.source_channel, "c");
            proptest::prop_assert_eq!(original(&rec.raw).unwrap().raw, raw);
        }
    }

    #[test]
    fn a_producers_own_source_channel_is_kept_but_never_used() {
        let own = fields(&[("event_id", "e-1"), ("source_channel", "other-stream")]);
        let rec = record("c-dlq", "1-0", &dead_letter_message(&own, "why", "c"));
        assert_eq!(rec.source_channel, "c");
        assert_eq!(original(&rec.raw).unwrap().raw, own);
        assert_eq!(
            message_view(&rec.raw).unwrap(),
            serde_json::json!({"event_id": "e-1", "source_channel": "other-stream"})
        );
        let consumed = vec!["c".to_string()];
        assert_eq!(redrive_target(&rec, &consumed).unwrap(), "c");
        assert!(redrive_target(&rec, &[]).is_err(), "c is not consumed");
        // Forged straight onto the dead-letter channel, trailing and all.
        let forged = fields(&[
            ("event_id", "e-2"),
            ("dlq_reason", "x"),
            ("source_channel", "other-stream"),
            ("failed_at", "2026-12-02T06:00:00Z"),
        ]);
        let rec = record("c-dlq", "2-0", &forged);
        assert_eq!(rec.source_channel, "other-stream");
        assert!(redrive_target(&rec, &consumed).is_err());
    }

    #[test]
    fn a_letter_without_the_added_fields_still_indexes() {
        let rec = record("x-dlq", "5-0", &fields(&[("a", "b")]));
        assert_eq!(rec.source_channel, "x");
        assert_eq!(rec.dlq_reason, "");
        assert!(original("not json").is_err());
    }
}
