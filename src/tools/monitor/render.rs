//! Output: one text line per message (ANSI colours optional, a header when
//! the group changes) or one JSON object per line for machines.
//!
//! Everything taken from a message is cleaned of control characters before
//! it reaches a terminal: a message must not be able to move the cursor or
//! change colours.

use serde_json::{json, Value};

use super::filter::GroupBy;
use super::view::{shorten, ChannelKind, Observed};
use crate::envelope::format_time;

/// Payload fields shown in a text line's summary, in this order.
const SUMMARY_KEYS: [&str; 11] = [
    "partner_id",
    "state",
    "step",
    "alliance_id",
    "attempt",
    "progress",
    "error",
    "reason",
    "retryable",
    "will_retry",
    "detail",
];
/// Longest summary value, in characters.
const VALUE_CHARS: usize = 60;
/// Longest raw text of a malformed message in a text line.
const RAW_CHARS: usize = 160;
/// Widths of the fixed text columns.
const TYPE_WIDTH: usize = 19;
const STATUS_WIDTH: usize = 9;
/// Characters of a saga id shown in a text line.
const SHORT_ID_CHARS: usize = 8;
/// Colours a group can get; bright and normal, never red (dead letters).
const GROUP_PALETTE: [&str; 10] = ["32", "33", "34", "35", "36", "92", "93", "94", "95", "96"];

/// How messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Text lines for people; `colour` adds ANSI colours.
    Text { colour: bool },
    /// One JSON object per line.
    Json,
}

/// Turns messages into output lines, remembering the current group.
#[derive(Debug)]
pub struct Printer {
    style: Style,
    group_by: GroupBy,
    channel_width: usize,
    group: Option<String>,
}

impl Printer {
    /// A printer for messages of `channels` (their longest name sets the
    /// channel column's width).
    pub fn new(style: Style, group_by: GroupBy, channels: &[String]) -> Self {
        let channel_width = channels
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0)
            .min(40);
        Self {
            style,
            group_by,
            channel_width,
            group: None,
        }
    }

    /// The lines to write for `o`: in the grouped text view a header first
    /// when its group differs from the previous message's.
    pub fn lines(&mut self, o: &Observed) -> Vec<String> {
        let key = self.group_by.key(o);
        let colour = match self.style {
            Style::Json => return vec![json_line(o, key.as_deref())],
            Style::Text { colour } => colour,
        };
        let line = self.text_line(o, colour);
        let Some(key) = key else {
            return vec![line];
        };
        let paint_group = |text: &str| paint(colour, group_colour(&key), text);
        let mut lines = Vec::with_capacity(2);
        if self.group.as_deref() != Some(key.as_str()) {
            let header = format!("── {} {} ──", self.group_by.label(), clean(&key));
            lines.push(paint_group(&header));
            self.group = Some(key.clone());
        }
        lines.push(format!("{} {line}", paint_group("│")));
        lines
    }

    fn text_line(&self, o: &Observed, colour: bool) -> String {
        let time = paint(colour, "2", &o.time.format("%H:%M:%S%.3f").to_string());
        let channel = paint(
            colour,
            kind_colour(o.kind),
            &pad(&clean(&o.channel), self.channel_width),
        );
        // A dead letter is expected to be broken: it is shown as a dead
        // letter (with its reason), not flagged again.
        if let (Some(problem), false) = (&o.malformed, o.kind == ChannelKind::Dlq) {
            let raw = o.raw.as_deref().unwrap_or_default();
            return format!(
                "{time} {channel} {} {}  {} {}",
                paint(colour, "1;7;31", "MALFORMED"),
                paint(colour, "31", &clean(problem)),
                paint(colour, "2", "raw:"),
                clean(&shorten(raw.to_string(), RAW_CHARS)),
            );
        }
        let event_type = o.event_type.as_deref().unwrap_or("-");
        let status = o.status.as_deref().unwrap_or("-");
        let saga = o
            .saga_id
            .as_deref()
            .map_or_else(|| "-".to_string(), short_id);
        let mut line = format!(
            "{time} {channel} {} {} {} {}",
            paint(colour, "1", &pad(&clean(event_type), TYPE_WIDTH)),
            paint(
                colour,
                status_colour(status),
                &pad(&clean(status), STATUS_WIDTH)
            ),
            paint(colour, "2", &pad(&clean(&saga), SHORT_ID_CHARS + 1)),
            clean(o.correlation_id.as_deref().unwrap_or("-")),
        );
        let summary = summary(o);
        if !summary.is_empty() {
            line.push(' ');
            for (key, value) in summary {
                line.push(' ');
                line.push_str(&paint(colour, "2", &format!("{key}=")));
                line.push_str(&paint(colour, value_colour(key), &clean(&value)));
            }
        }
        line
    }
}

/// A saga id's last characters, marked as such. Not the first ones: saga
/// ids are UUIDv7, whose first 8 hex digits are a timestamp that all sagas
/// of the same minute share; the tail is random.
pub fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= SHORT_ID_CHARS {
        return id.to_string();
    }
    let tail: String = chars[chars.len() - SHORT_ID_CHARS..].iter().collect();
    format!("…{tail}")
}

/// The payload fields worth a glance, then a dead letter's reason, origin
/// and raw original; values shortened.
pub fn summary(o: &Observed) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = SUMMARY_KEYS
        .iter()
        .filter_map(|&key| Some((key, shorten(o.payload_text(key)?, VALUE_CHARS))))
        .collect();
    if let Some(reason) = &o.dlq_reason {
        out.push(("dlq_reason", shorten(reason.clone(), 2 * VALUE_CHARS)));
    }
    if let Some(source) = &o.source_channel {
        out.push(("source", source.clone()));
    }
    // What made a dead letter unreadable: its payload text (stream
    // fields), or the whole original body it keeps under `raw`.
    if o.kind == ChannelKind::Dlq {
        match (&o.payload, &o.raw) {
            (Some(Value::String(text)), _) => {
                out.push(("payload", shorten(text.clone(), VALUE_CHARS)));
            }
            (None, Some(raw)) => out.push(("raw", shorten(raw.clone(), VALUE_CHARS))),
            _ => {}
        }
    }
    out
}

/// The machine form: every field, the payload whole, `null` for absent.
fn json_line(o: &Observed, group: Option<&str>) -> String {
    json!({
        "time": format_time(o.time),
        "channel": o.channel,
        "kind": o.kind.as_str(),
        "id": o.id,
        "event_id": o.event_id,
        "correlation_id": o.correlation_id,
        "saga_id": o.saga_id,
        "event_type": o.event_type,
        "status": o.status,
        "payload": o.payload.clone().unwrap_or(Value::Null),
        "dlq_reason": o.dlq_reason,
        "source_channel": o.source_channel,
        "malformed": o.malformed,
        "raw": o.raw,
        "group": group,
    })
    .to_string()
}

fn kind_colour(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Events => "36",
        ChannelKind::Commands => "34",
        ChannelKind::Replies => "35",
        ChannelKind::SagaEvents => "32",
        ChannelKind::Dlq => "1;31",
        ChannelKind::Other => "",
    }
}

fn status_colour(status: &str) -> &'static str {
    match status {
        "started" => "36",
        "progress" => "33",
        "completed" => "32",
        "failed" => "31",
        _ => "",
    }
}

fn value_colour(key: &str) -> &'static str {
    match key {
        "error" | "dlq_reason" => "31",
        _ => "",
    }
}

/// A stable colour per group key (FNV-1a, so the same key gets the same
/// colour in every run).
fn group_colour(key: &str) -> &'static str {
    if key == super::filter::NO_KEY {
        return "2";
    }
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    GROUP_PALETTE[(hash % GROUP_PALETTE.len() as u64) as usize]
}

/// `text` in an SGR colour (`code` like `"1;31"`), or as is.
fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour && !code.is_empty() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Left-aligned to `width` characters (longer text is kept whole).
fn pad(text: &str, width: usize) -> String {
    format!("{text:<width$}")
}

/// Control characters (escape sequences, newlines) made harmless.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Channels;
    use crate::envelope::{Envelope, EventType, MessageStatus};
    use crate::transport::tap::Tapped;
    use crate::transport::{dead_letter_message, OutboundMessage, RawMessage, WireFormat};
    use chrono::{DateTime, Utc};

    const SAGA: &str = "0194f0a2-1111-7000-8000-00003f2a9c1d";

    fn observe(channel: &str, raw: RawMessage) -> Observed {
        let at = DateTime::parse_from_rfc3339("2026-11-22T14:00:09.999Z").unwrap();
        let t = Tapped::new(channel, "1-0", raw, at.with_timezone(&Utc));
        Observed::parse(&t, ChannelKind::of(channel, &Channels::default()), 1 << 20)
    }

    fn envelope(
        event_type: EventType,
        corr: &str,
        status: Option<MessageStatus>,
        payload: Value,
    ) -> RawMessage {
        let saga = (event_type != EventType::PartnerCreated).then(|| SAGA.parse().unwrap());
        let mut env = Envelope::new(
            event_type,
            corr,
            saga,
            status,
            payload.as_object().cloned().unwrap(),
        );
        env.timestamp = DateTime::parse_from_rfc3339("2026-11-22T14:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        OutboundMessage::encode(&env, WireFormat::Fields).raw
    }

    fn printer(style: Style, group_by: GroupBy) -> Printer {
        let channels = crate::tools::monitor::all_channels(&Channels::default());
        Printer::new(style, group_by, &channels)
    }

    fn plain() -> Printer {
        printer(Style::Text { colour: false }, GroupBy::None)
    }

    #[test]
    fn a_plain_line_has_time_channel_type_status_saga_correlation_and_summary() {
        let o = observe(
            "saga-events",
            envelope(
                EventType::SagaCompleted,
                "order-42",
                Some(MessageStatus::Completed),
                json!({"partner_id": "p-1", "state": "completed", "step": "create_alliance", "alliance_id": "a-9", "name": "not shown"}),
            ),
        );
        let lines = plain().lines(&o);
        assert_eq!(
            lines,
            ["14:00:00.123 saga-events              SagaCompleted       completed …3f2a9c1d order-42  partner_id=p-1 state=completed step=create_alliance alliance_id=a-9"]
        );
        assert!(!lines[0].contains('\x1b'));
    }

    #[test]
    fn each_channel_kind_has_its_colour() {
        let cases = [
            ("partner-events", "\x1b[36m"),
            ("alliance-commands", "\x1b[34m"),
            ("integration-commands", "\x1b[34m"),
            ("saga-replies", "\x1b[35m"),
            ("saga-events", "\x1b[32m"),
            ("saga-events-dlq", "\x1b[1;31m"),
        ];
        for (channel, code) in cases {
            let o = observe(
                channel,
                envelope(
                    EventType::CreateAllianceReply,
                    "c-1",
                    Some(MessageStatus::Failed),
                    json!({"partner_id": "p-1", "error": "refused"}),
                ),
            );
            let line = printer(Style::Text { colour: true }, GroupBy::None)
                .lines(&o)
                .remove(0);
            assert!(
                line.contains(&format!("{code}{channel} ")),
                "{channel}: {line:?}"
            );
            assert!(line.contains("\x1b[31mfailed"), "status in red: {line:?}");
            assert!(line.contains("\x1b[31mrefused"), "error in red: {line:?}");
        }
    }

    #[test]
    fn commands_replies_and_partner_events_summarise_their_payload() {
        let command = observe(
            "alliance-commands",
            envelope(
                EventType::CreateAlliance,
                "c-1",
                None,
                json!({"partner_id": "p-1", "attempt": 2, "idempotency_key": "k"}),
            ),
        );
        let line = plain().lines(&command).remove(0);
        assert!(line.contains("CreateAlliance"), "{line}");
        assert!(line.ends_with("partner_id=p-1 attempt=2"), "{line}");

        let reply = observe(
            "saga-replies",
            envelope(
                EventType::CreateAllianceReply,
                "c-1",
                Some(MessageStatus::Progress),
                json!({"progress": "half way"}),
            ),
        );
        assert!(plain().lines(&reply)[0].ends_with("progress=half way"));

        let event = observe(
            "partner-events",
            envelope(
                EventType::PartnerCreated,
                "c-1",
                None,
                json!({"partner_id": "p-1", "name": "Acme"}),
            ),
        );
        let line = plain().lines(&event).remove(0);
        assert!(
            line.contains("PartnerCreated      -         -         c-1  partner_id=p-1"),
            "{line}"
        );
    }

    #[test]
    fn malformed_input_is_shown_marked_and_cleaned() {
        let o = observe(
            "partner-events",
            RawMessage::Fields(vec![
                ("event_id".into(), b"e-1".to_vec()),
                ("payload".into(), b"{bad\x1b[2J\n".to_vec()),
            ]),
        );
        let line = plain().lines(&o).remove(0);
        assert!(line.contains("MALFORMED invalid JSON: payload"), "{line}");
        assert!(
            line.contains("raw: event_id=e-1 payload={bad?[2J "),
            "{line}"
        );
        assert!(!line.contains('\x1b') && !line.contains('\n'));
        // Colour codes only come from us.
        let coloured = printer(Style::Text { colour: true }, GroupBy::None)
            .lines(&o)
            .remove(0);
        assert!(coloured.contains("\x1b[1;7;31mMALFORMED\x1b[0m"));
        assert!(!coloured.contains("\x1b[2J"));

        let binary = observe(
            "saga-replies",
            RawMessage::Body {
                data: vec![0, 159, 146, 150],
                properties: vec![],
            },
        );
        assert!(plain().lines(&binary)[0].contains("MALFORMED"));
    }

    #[test]
    fn dead_letters_show_reason_and_source() {
        let original = envelope(
            EventType::PartnerCreated,
            "c-1",
            None,
            json!({"partner_id": "p-1"}),
        );
        let dl = dead_letter_message(
            &original,
            "missing required field payload.name",
            "partner-events",
        );
        let o = observe("partner-events-dlq", dl);
        let line = plain().lines(&o).remove(0);
        assert!(line.contains("partner-events-dlq"), "{line}");
        assert!(line.contains("PartnerCreated"), "{line}");
        assert!(
            line.ends_with(
                "partner_id=p-1 dlq_reason=missing required field payload.name source=partner-events"
            ),
            "{line}"
        );
        assert!(!line.contains("MALFORMED"));

        // A stream entry whose payload was not JSON: that text is shown.
        let bad = RawMessage::Fields(vec![
            ("event_id".into(), b"e-1".to_vec()),
            ("payload".into(), b"{\"partner_id\":".to_vec()),
        ]);
        let dl = dead_letter_message(&bad, "invalid JSON: payload", "partner-events");
        let line = plain().lines(&observe("partner-events-dlq", dl)).remove(0);
        assert!(
            line.ends_with("source=partner-events payload={\"partner_id\":"),
            "{line}"
        );
        // An unparseable body: the original kept under `raw`.
        let body = RawMessage::Body {
            data: b"oops".to_vec(),
            properties: vec![],
        };
        let dl = dead_letter_message(&body, "invalid JSON", "saga-replies");
        let line = plain().lines(&observe("saga-replies-dlq", dl)).remove(0);
        assert!(line.ends_with("source=saga-replies raw=oops"), "{line}");
    }

    #[test]
    fn grouped_view_prints_a_header_when_the_group_changes() {
        let mut p = printer(Style::Text { colour: false }, GroupBy::Correlation);
        let a = |corr: &str| {
            observe(
                "saga-events",
                envelope(
                    EventType::SagaStarted,
                    corr,
                    Some(MessageStatus::Started),
                    json!({"partner_id": "p"}),
                ),
            )
        };
        let first = p.lines(&a("order-1"));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0], "── correlation order-1 ──");
        assert!(first[1].starts_with("│ 14:00:00.123 saga-events"));
        assert_eq!(p.lines(&a("order-1")).len(), 1, "same group: no header");
        let next = p.lines(&a("order-2"));
        assert_eq!(next[0], "── correlation order-2 ──");

        let mut by_saga = printer(Style::Text { colour: true }, GroupBy::Saga);
        let lines = by_saga.lines(&a("order-1"));
        let colour = group_colour(SAGA);
        assert_eq!(lines[0], format!("\x1b[{colour}m── saga {SAGA} ──\x1b[0m"));
        assert!(lines[1].starts_with(&format!("\x1b[{colour}m│\x1b[0m ")));
    }

    #[test]
    fn group_colours_are_stable_and_never_red() {
        assert_eq!(group_colour("order-42"), group_colour("order-42"));
        let distinct: std::collections::HashSet<_> = (0..50)
            .map(|i| group_colour(&format!("corr-{i}")))
            .collect();
        assert!(distinct.len() > 3);
        assert!(!distinct.contains("31"));
    }

    #[test]
    fn json_lines_carry_every_field_and_no_colour() {
        let o = observe(
            "saga-events",
            envelope(
                EventType::SagaStarted,
                "order-1",
                Some(MessageStatus::Started),
                json!({"partner_id": "p-1"}),
            ),
        );
        let mut p = printer(Style::Json, GroupBy::Correlation);
        let lines = p.lines(&o);
        assert_eq!(lines.len(), 1, "no header lines in JSON");
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["time"], "2026-11-22T14:00:00.123Z");
        assert_eq!(v["channel"], "saga-events");
        assert_eq!(v["kind"], "saga-events");
        assert_eq!(v["event_type"], "SagaStarted");
        assert_eq!(v["status"], "started");
        assert_eq!(v["saga_id"], SAGA);
        assert_eq!(v["correlation_id"], "order-1");
        assert_eq!(v["payload"]["partner_id"], "p-1");
        assert_eq!(v["malformed"], Value::Null);
        assert_eq!(v["group"], "order-1");

        let bad = observe(
            "partner-events",
            RawMessage::Fields(vec![("payload".into(), b"\x1b[31m".to_vec())]),
        );
        let v: Value = serde_json::from_str(&p.lines(&bad)[0]).unwrap();
        assert!(v["malformed"].as_str().unwrap().contains("invalid JSON"));
        assert_eq!(v["group"], "(none)");
    }
}
