//! A dead letter's id in the API: its channel and its broker message id,
//! readable and URL-safe, so it can be a path segment and be decoded back.
//!
//! Each part keeps `A-Z a-z 0-9 - _` as they are and writes every other
//! byte as `~` and two upper-case hex digits; a `.` joins the two parts.
//! So `partner-events-dlq.1700000000000-0` on Redis, and
//! `partner-events-dlq.12~3A5~3A-1` on Pulsar (`12:5:-1`).

/// Why a text is not a dead-letter id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a dead-letter id: {0}")]
pub struct BadId(&'static str);

/// The id of message `message_id` on dead-letter channel `channel`.
pub fn encode(channel: &str, message_id: &str) -> String {
    let mut out = String::with_capacity(channel.len() + message_id.len() + 1);
    escape(channel, &mut out);
    out.push('.');
    escape(message_id, &mut out);
    out
}

/// The channel and message id an [`encode`]d id names.
pub fn decode(id: &str) -> Result<(String, String), BadId> {
    let (channel, message_id) = id
        .split_once('.')
        .ok_or(BadId("no '.' between its parts"))?;
    let channel = unescape(channel)?;
    if channel.is_empty() {
        return Err(BadId("empty channel"));
    }
    Ok((channel, unescape(message_id)?))
}

fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn escape(part: &str, out: &mut String) {
    for &b in part.as_bytes() {
        if kept(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
}

fn unescape(part: &str) -> Result<String, BadId> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'~' => {
                let hex = part
                    .get(i + 1..i + 3)
                    .ok_or(BadId("'~' without two hex digits"))?;
                // Upper case only, so every id has exactly one spelling.
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return Err(BadId("'~' without two upper-case hex digits"));
                }
                let b = u8::from_str_radix(hex, 16).map_err(|_| BadId("bad hex after '~'"))?;
                if kept(b) {
                    return Err(BadId("an escaped character that is never escaped"));
                }
                out.push(b);
                i += 3;
            }
            b if kept(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(BadId("a character outside A-Z a-z 0-9 - _ ~ .")),
        }
    }
    String::from_utf8(out).map_err(|_| BadId("not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn broker_ids_stay_readable() {
        assert_eq!(
            encode("partner-events-dlq", "1700000000000-0"),
            "partner-events-dlq.1700000000000-0"
        );
        assert_eq!(
            encode("t1-partner-events-dlq", "12:5:-1"),
            "t1-partner-events-dlq.12~3A5~3A-1"
        );
        assert_eq!(
            decode("t1-partner-events-dlq.12~3A5~3A-1").unwrap(),
            ("t1-partner-events-dlq".into(), "12:5:-1".into())
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "", "no-dot", ".1-0", "a.b.c", "a.~4", "a.~zz", "a.~2d", "a.~41", "a b.1", "a.é",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} decoded");
        }
    }

    proptest! {
        #[test]
        fn any_channel_and_message_id_round_trip(channel in ".{1,40}", message_id in ".{0,40}") {
            let id = encode(&channel, &message_id);
            prop_assert!(id.bytes().all(|b| kept(b) || b == b'~' || b == b'.'));
            prop_assert_eq!(id.matches('.').count(), 1);
            prop_assert_eq!(decode(&id).unwrap(), (channel, message_id));
        }

        #[test]
        fn any_text_decodes_or_is_refused_and_decoded_ids_are_canonical(text in ".{0,60}") {
            if let Ok((channel, message_id)) = decode(&text) {
                prop_assert_eq!(encode(&channel, &message_id), text);
            }
        }
    }
}
