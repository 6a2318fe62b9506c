//! Output: text for people (ANSI colours optional) or one JSON object per
//! line for machines; a message at a time (the flat view) or a block at a
//! time (the grouped view: in text a header, then the group's lines).
//!
//! Everything taken from a message is cleaned of control characters before
//! it reaches a terminal: a message must not be able to move the cursor or
//! change colours.

use serde_json::{json, Value};

use super::filter::{GroupBy, NO_KEY};
use super::group::{Block, Flush, GroupKey};
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

/// Turns messages, and blocks of them, into output lines.
#[derive(Debug)]
pub struct Printer {
    style: Style,
    group_by: GroupBy,
    channel_width: usize,
    /// The group of the block printed last.
    last: Option<GroupKey>,
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
            last: None,
        }
    }

    /// The line for `o` in the flat view (no grouping).
    pub fn line(&self, o: &Observed) -> String {
        match self.style {
            Style::Json => json_line(o, None),
            Style::Text { colour } => self.text_line(o, colour),
        }
    }

    /// The lines of `block`. In text: a header saying what the group is
    /// and why it is printed now (one per run of ungrouped messages),
    /// then a line per message. In JSON: an object per message, each
    /// naming its group.
    pub fn block(&mut self, block: &Block) -> Vec<String> {
        let key = block.key.text();
        let colour = match self.style {
            Style::Json => {
                return block
                    .messages
                    .iter()
                    .map(|o| json_line(o, Some(&key)))
                    .collect()
            }
            Style::Text { colour } => colour,
        };
        let paint_group = |text: &str| paint(colour, group_colour(&key), text);
        let mut lines = Vec::with_capacity(block.messages.len() + 1);
        let ungrouped_again =
            block.key == GroupKey::Missing && self.last.as_ref() == Some(&GroupKey::Missing);
        if !ungrouped_again {
            lines.push(paint_group(&self.header(block)));
        }
        self.last = Some(block.key.clone());
        for o in &block.messages {
            lines.push(format!(
                "{} {}",
                paint_group("│"),
                self.text_line(o, colour)
            ));
        }
        lines
    }

    /// `── saga <id> · partner <id> · <state>[ · continued][ · why now] ──`
    fn header(&self, block: &Block) -> String {
        let mut parts = match &block.key {
            GroupKey::Saga(id) => {
                let mut parts = vec![format!("saga {}", clean(id))];
                parts.extend(
                    block
                        .partner_id
                        .as_deref()
                        .map(|p| format!("partner {}", clean(p))),
                );
                parts.extend(block.state.as_deref().map(clean));
                parts
            }
            GroupKey::Partner(id) => vec![format!("partner {}", clean(id)), "no saga seen".into()],
            GroupKey::Correlation(id) => vec![format!("correlation {}", clean(id))],
            GroupKey::Missing => vec![format!("{} {NO_KEY}", self.group_by.label())],
        };
        if block.continued {
            parts.push("continued".into());
        }
        match block.flush {
            Flush::Quiet => parts.push(format!("quiet {}", seconds(block.idle))),
            Flush::Held => parts.push("more to come".into()),
            Flush::Full => parts.push("buffer full".into()),
            Flush::Finished | Flush::End | Flush::Ungrouped => {}
        }
        format!("── {} ──", parts.join(" · "))
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
    if key == NO_KEY {
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

/// A duration as whole seconds, or milliseconds when under one.
fn seconds(d: std::time::Duration) -> String {
    match d.as_secs() {
        0 => format!("{}ms", d.as_millis()),
        s => format!("{s}s"),
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
        let lines = vec![plain().line(&o)];
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
            let line = printer(Style::Text { colour: true }, GroupBy::None).line(&o);
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
        let line = plain().line(&command);
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
        assert!(plain().line(&reply).ends_with("progress=half way"));

        let event = observe(
            "partner-events",
            envelope(
                EventType::PartnerCreated,
                "c-1",
                None,
                json!({"partner_id": "p-1", "name": "Acme"}),
            ),
        );
        let line = plain().line(&event);
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
        let line = plain().line(&o);
        assert!(line.contains("MALFORMED invalid JSON: payload"), "{line}");
        assert!(
            line.contains("raw: event_id=e-1 payload={bad?[2J "),
            "{line}"
        );
        assert!(!line.contains('\x1b') && !line.contains('\n'));
        // Colour codes only come from us.
        let coloured = printer(Style::Text { colour: true }, GroupBy::None).line(&o);
        assert!(coloured.contains("\x1b[1;7;31mMALFORMED\x1b[0m"));
        assert!(!coloured.contains("\x1b[2J"));

        let binary = observe(
            "saga-replies",
            RawMessage::Body {
                data: vec![0, 159, 146, 150],
                properties: vec![],
            },
        );
        assert!(plain().line(&binary).contains("MALFORMED"));
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
        let line = plain().line(&o);
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
        let line = plain().line(&observe("partner-events-dlq", dl));
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
        let line = plain().line(&observe("saga-replies-dlq", dl));
        assert!(line.ends_with("source=saga-replies raw=oops"), "{line}");
    }

    fn started(corr: &str) -> Observed {
        observe(
            "saga-events",
            envelope(
                EventType::SagaStarted,
                corr,
                Some(MessageStatus::Started),
                json!({"partner_id": "p-1", "state": "creating_alliance"}),
            ),
        )
    }

    fn block(key: GroupKey, flush: Flush, messages: Vec<Observed>) -> Block {
        Block {
            key,
            messages,
            flush,
            continued: false,
            partner_id: Some("p-1".into()),
            state: Some("completed".into()),
            idle: std::time::Duration::from_millis(3200),
        }
    }

    #[test]
    fn a_block_is_a_header_saying_what_became_of_the_saga_then_its_lines() {
        let mut p = printer(Style::Text { colour: false }, GroupBy::Saga);
        let created = observe(
            "partner-events",
            envelope(
                EventType::PartnerCreated,
                "order-1",
                None,
                json!({"partner_id": "p-1", "name": "Acme"}),
            ),
        );
        let saga = GroupKey::Saga(SAGA.into());
        let lines = p.block(&block(
            saga.clone(),
            Flush::Finished,
            vec![created, started("order-1")],
        ));
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(
            lines[0],
            format!("── saga {SAGA} · partner p-1 · completed ──")
        );
        assert!(lines[1].starts_with("│ 14:00:00.123 partner-events"));
        assert!(lines[2].starts_with("│ 14:00:00.123 saga-events"));

        // Unfinished, and not the saga's first block.
        let mut quiet = block(saga.clone(), Flush::Quiet, vec![started("order-1")]);
        quiet.state = Some("awaiting_alliance".into());
        quiet.continued = true;
        assert_eq!(
            p.block(&quiet)[0],
            format!("── saga {SAGA} · partner p-1 · awaiting_alliance · continued · quiet 3s ──")
        );
        let reasons = [
            (Flush::Held, " · more to come"),
            (Flush::Full, " · buffer full"),
            (Flush::End, ""),
        ];
        for (flush, note) in reasons {
            let b = block(saga.clone(), flush, vec![started("order-1")]);
            assert_eq!(
                p.block(&b)[0],
                format!("── saga {SAGA} · partner p-1 · completed{note} ──")
            );
        }
        let mut partner = block(GroupKey::Partner("p-1".into()), Flush::End, vec![]);
        partner.state = None;
        assert_eq!(p.block(&partner)[0], "── partner p-1 · no saga seen ──");

        let mut by_corr = printer(Style::Text { colour: false }, GroupBy::Correlation);
        let corr = block(
            GroupKey::Correlation("order-1".into()),
            Flush::Finished,
            vec![started("order-1")],
        );
        assert_eq!(by_corr.block(&corr)[0], "── correlation order-1 ──");

        let mut coloured = printer(Style::Text { colour: true }, GroupBy::Saga);
        let lines = coloured.block(&block(saga, Flush::End, vec![started("order-1")]));
        let colour = group_colour(SAGA);
        assert!(lines[0].starts_with(&format!("\x1b[{colour}m── saga {SAGA}")));
        assert!(lines[1].starts_with(&format!("\x1b[{colour}m│\x1b[0m ")));
    }

    #[test]
    fn ungrouped_messages_in_a_row_share_one_header() {
        let mut p = printer(Style::Text { colour: false }, GroupBy::Saga);
        let bare = || {
            block(
                GroupKey::Missing,
                Flush::Ungrouped,
                vec![started("order-1")],
            )
        };
        let first = p.block(&bare());
        assert_eq!(first.len(), 2);
        assert_eq!(first[0], "── saga (none) ──");
        assert_eq!(p.block(&bare()).len(), 1, "no second header");
        let saga = block(GroupKey::Saga(SAGA.into()), Flush::End, vec![started("x")]);
        assert_eq!(p.block(&saga).len(), 2);
        assert_eq!(p.block(&bare()).len(), 2, "a header again after a group");
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
        let p = printer(Style::Json, GroupBy::None);
        let v: Value = serde_json::from_str(&p.line(&o)).unwrap();
        assert_eq!(v["time"], "2026-11-22T14:00:00.123Z");
        assert_eq!(v["channel"], "saga-events");
        assert_eq!(v["kind"], "saga-events");
        assert_eq!(v["event_type"], "SagaStarted");
        assert_eq!(v["status"], "started");
        assert_eq!(v["saga_id"], SAGA);
        assert_eq!(v["correlation_id"], "order-1");
        assert_eq!(v["payload"]["partner_id"], "p-1");
        assert_eq!(v["malformed"], Value::Null);
        assert_eq!(v["group"], Value::Null, "not grouped");

        // Grouped: one object per message, no header, each with its group.
        let mut p = printer(Style::Json, GroupBy::Saga);
        let two = block(
            GroupKey::Saga(SAGA.into()),
            Flush::Finished,
            vec![o.clone(), o.clone()],
        );
        let lines = p.block(&two);
        assert_eq!(lines.len(), 2, "no header lines in JSON");
        for line in &lines {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["group"], SAGA);
            assert!(!line.contains('\x1b'));
        }
        let partner = block(GroupKey::Partner("p-1".into()), Flush::End, vec![o]);
        let v: Value = serde_json::from_str(&p.block(&partner)[0]).unwrap();
        assert_eq!(v["group"], "partner:p-1");

        let bad = observe(
            "partner-events",
            RawMessage::Fields(vec![("payload".into(), b"\x1b[31m".to_vec())]),
        );
        let alone = block(GroupKey::Missing, Flush::Ungrouped, vec![bad]);
        let v: Value = serde_json::from_str(&p.block(&alone)[0]).unwrap();
        assert!(v["malformed"].as_str().unwrap().contains("invalid JSON"));
        assert_eq!(v["group"], "(none)");
    }
}
