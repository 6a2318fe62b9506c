//! Pulsar frames on the broker-to-client direction: splitting a byte stream
//! into frames and rewriting the two things pulsar-lite gets "wrong" for the
//! `pulsar` crate.
//!
//! Frame layout (all integers big-endian):
//!
//! ```text
//! [totalSize u32][commandSize u32][BaseCommand]
//!     [magic 0x0e01 u16][CRC32C u32]            <- optional, pulsar-lite omits it
//!     [metadataSize u32][MessageMetadata][payload]
//! ```
//!
//! `totalSize` counts everything after itself.

use std::fmt;

use bytes::{BufMut, BytesMut};
use prost::Message as _;
use pulsar::proto::{base_command::Type, BaseCommand};

/// Larger than any frame a broker sends: Pulsar's default message size limit
/// is 5 MiB (pulsar-lite's too) plus a few KiB of command and metadata. A
/// length beyond this means the stream is not Pulsar or is out of sync.
pub const MAX_FRAME_SIZE: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Marks the start of the optional checksum in a payload section.
const CHECKSUM_MAGIC: [u8; 2] = [0x0e, 0x01];
/// Marks optional broker entry metadata, which comes before the checksum.
const BROKER_ENTRY_METADATA_MAGIC: [u8; 2] = [0x0e, 0x02];
/// Magic plus the CRC32C itself.
const CHECKSUM_SECTION_LEN: usize = 2 + 4;

/// The checksum the `pulsar` crate verifies (CRC-32C, Castagnoli).
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Why a byte stream from the broker cannot be Pulsar frames. The proxy
/// closes the connection on any of these: forwarding bytes it cannot
/// frame would only move the confusion to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(usize),
    TooSmall(usize),
    CommandSize {
        command: usize,
        total: usize,
    },
    BadCommand(String),
    BadPayload(&'static str),
    /// The stream ended in the middle of a frame.
    Truncated(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(
                f,
                "frame of {n} bytes exceeds the {MAX_FRAME_SIZE} byte limit"
            ),
            Self::TooSmall(n) => write!(f, "frame of {n} bytes cannot hold a command size"),
            Self::CommandSize { command, total } => {
                write!(
                    f,
                    "command size {command} does not fit in a frame of {total} bytes"
                )
            }
            Self::BadCommand(e) => write!(f, "undecodable BaseCommand: {e}"),
            Self::BadPayload(why) => write!(f, "malformed payload section: {why}"),
            Self::Truncated(n) => write!(f, "stream ended {n} bytes into a frame"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Takes one complete frame (size prefix included) off the front of `buf`,
/// or returns `None` when more bytes are needed. Frames may span any number
/// of reads, and one read may hold many frames.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(buf.split_to(total)))
}

/// Full length (prefix included) of the frame at the front of `buf`, once its
/// size prefix has arrived; used to reserve room for a large frame up front.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let total = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if total > MAX_FRAME_SIZE {
        return Err(FrameError::TooLarge(total));
    }
    if total < 4 {
        return Err(FrameError::TooSmall(total));
    }
    Ok(Some(4 + total))
}

/// What happened to frames on one connection, for its closing log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub frames: u64,
    pub bytes: u64,
    pub checksums_added: u64,
    pub lookups_rewritten: u64,
    /// Payloads with broker entry metadata: forwarded as they are, though the
    /// `pulsar` crate cannot read them (pulsar-lite 0.2.0 never sends them).
    pub unsupported_payloads: u64,
}

/// Rewrites broker-to-client frames so the `pulsar` crate accepts them.
#[derive(Debug, Clone)]
pub struct Rewriter {
    advertise: String,
}

impl Rewriter {
    /// `advertise` is the `pulsar://host:port` URL clients must use to reach
    /// this proxy; lookup responses are pointed at it.
    pub fn new(advertise: impl Into<String>) -> Self {
        Self {
            advertise: advertise.into(),
        }
    }

    /// Appends `frame` (one complete frame as returned by [`split_frame`]),
    /// rewritten if needed, to `out`.
    pub fn rewrite(
        &self,
        frame: &[u8],
        out: &mut BytesMut,
        stats: &mut Stats,
    ) -> Result<(), FrameError> {
        let total = frame.len().saturating_sub(4);
        let Some(size) = frame.get(4..8) else {
            return Err(FrameError::TooSmall(total));
        };
        let command_len = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
        let Some(command_bytes) = command_len.checked_add(8).and_then(|end| frame.get(8..end))
        else {
            return Err(FrameError::CommandSize {
                command: command_len,
                total,
            });
        };
        let payload = &frame[8 + command_len..];
        let command = BaseCommand::decode(command_bytes)
            .map_err(|e| FrameError::BadCommand(e.to_string()))?;

        stats.frames += 1;
        stats.bytes += frame.len() as u64;

        if command.r#type == Type::LookupResponse as i32 {
            if let Some(rewritten) = self.rewrite_lookup(command) {
                stats.lookups_rewritten += 1;
                write_frame(out, &rewritten, None, payload);
                return Ok(());
            }
            out.extend_from_slice(frame);
            return Ok(());
        }

        if payload.is_empty() || payload.starts_with(&CHECKSUM_MAGIC) {
            out.extend_from_slice(frame);
            return Ok(());
        }
        if payload.starts_with(&BROKER_ENTRY_METADATA_MAGIC) {
            stats.unsupported_payloads += 1;
            out.extend_from_slice(frame);
            return Ok(());
        }

        // No magic, so the section starts with the metadata size. That can't
        // be mistaken for the magic: it would mean metadata of more than
        // 0x0e01_0000 bytes, far beyond MAX_FRAME_SIZE.
        let metadata_len = payload
            .get(..4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or(FrameError::BadPayload("shorter than its metadata size"))?;
        if metadata_len > payload.len() - 4 {
            return Err(FrameError::BadPayload("metadata size runs past the frame"));
        }

        // The checksum covers exactly what follows it: metadata size,
        // metadata and payload — the whole section as pulsar-lite sent it.
        let crc = CRC32C.checksum(payload);
        stats.checksums_added += 1;
        write_frame(out, command_bytes, Some(crc), payload);
        Ok(())
    }

    /// Points a lookup answer at the proxy, or `None` if it names no broker
    /// (an error answer), in which case the frame is left alone.
    fn rewrite_lookup(&self, mut command: BaseCommand) -> Option<Vec<u8>> {
        let lookup = command.lookup_topic_response.as_mut()?;
        if lookup.broker_service_url.is_none() && lookup.broker_service_url_tls.is_none() {
            return None;
        }
        // The client connects to whatever the lookup names; if that were
        // pulsar-lite itself, consumers would bypass the proxy and hit the
        // missing checksum again. The proxy speaks no TLS, so a TLS URL is
        // pointed here too rather than left as a silent way around it.
        lookup.broker_service_url = Some(self.advertise.clone());
        if lookup.broker_service_url_tls.is_some() {
            lookup.broker_service_url_tls = Some(self.advertise.clone());
        }
        // Re-encoding drops fields this proto version doesn't know; the
        // client decodes with the same proto, so it would not see them anyway.
        Some(command.encode_to_vec())
    }
}

/// Writes a frame from its parts, with a checksum section when `crc` is given.
fn write_frame(out: &mut BytesMut, command: &[u8], crc: Option<u32>, payload: &[u8]) {
    let checksum_len = if crc.is_some() {
        CHECKSUM_SECTION_LEN
    } else {
        0
    };
    let total = 4 + command.len() + checksum_len + payload.len();
    out.reserve(4 + total);
    // Both sizes are bounded by MAX_FRAME_SIZE plus a few bytes, far below u32::MAX.
    out.put_u32(total as u32);
    out.put_u32(command.len() as u32);
    out.put_slice(command);
    if let Some(crc) = crc {
        out.put_slice(&CHECKSUM_MAGIC);
        out.put_u32(crc);
    }
    out.put_slice(payload);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pulsar::message::Codec;
    use pulsar::proto::{
        command_lookup_topic_response::LookupType, CommandLookupTopicResponse, CommandMessage,
        CommandPartitionedTopicMetadataResponse, KeyValue, MessageIdData, MessageMetadata,
    };
    use tokio_util::codec::Decoder;

    const ADVERTISE: &str = "pulsar://127.0.0.1:16650";

    fn message_command() -> BaseCommand {
        BaseCommand {
            r#type: Type::Message as i32,
            message: Some(CommandMessage {
                consumer_id: 7,
                message_id: MessageIdData {
                    ledger_id: 1,
                    entry_id: 42,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn metadata() -> MessageMetadata {
        MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 42,
            publish_time: 1_700_000_000_000,
            partition_key: Some("partner-7".into()),
            properties: vec![KeyValue {
                key: "event_id".into(),
                value: "e-42".into(),
            }],
            ..Default::default()
        }
    }

    /// A MESSAGE frame the way pulsar-lite sends it: no checksum section.
    pub(crate) fn frame_without_checksum(body: &[u8]) -> Vec<u8> {
        let command = message_command().encode_to_vec();
        let metadata = metadata().encode_to_vec();
        let mut section = Vec::new();
        section.put_u32(metadata.len() as u32);
        section.put_slice(&metadata);
        section.put_slice(body);
        let mut out = BytesMut::new();
        write_frame(&mut out, &command, None, &section);
        out.to_vec()
    }

    fn command_frame(command: &BaseCommand) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame(&mut out, &command.encode_to_vec(), None, &[]);
        out.to_vec()
    }

    fn lookup_response(url: Option<&str>, tls: Option<&str>) -> BaseCommand {
        BaseCommand {
            r#type: Type::LookupResponse as i32,
            lookup_topic_response: Some(CommandLookupTopicResponse {
                broker_service_url: url.map(Into::into),
                broker_service_url_tls: tls.map(Into::into),
                response: Some(LookupType::Connect as i32),
                request_id: 3,
                authoritative: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rewrite(frame: &[u8]) -> (Vec<u8>, Stats) {
        let mut out = BytesMut::new();
        let mut stats = Stats::default();
        Rewriter::new(ADVERTISE)
            .rewrite(frame, &mut out, &mut stats)
            .expect("rewrite");
        (out.to_vec(), stats)
    }

    /// Decodes with the `pulsar` crate's own codec: what its consumer does.
    fn client_decode(
        bytes: &[u8],
    ) -> Result<Option<pulsar::message::Message>, pulsar::error::ConnectionError> {
        Codec.decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn the_client_rejects_a_frame_without_checksum() {
        // The reason this proxy exists; if a future `pulsar` release accepts
        // it, the proxy may no longer be needed.
        let err = client_decode(&frame_without_checksum(b"hello")).expect_err("should fail");
        assert!(err.to_string().contains("Incomplete"), "{err}");
    }

    #[test]
    fn message_without_checksum_gets_a_correct_one() {
        let body = b"{\"partner\":\"p-7\"}";
        let original = frame_without_checksum(body);
        let (rewritten, stats) = rewrite(&original);

        assert_eq!(stats.checksums_added, 1);
        assert_eq!(rewritten.len(), original.len() + CHECKSUM_SECTION_LEN);
        let total = u32::from_be_bytes(rewritten[..4].try_into().unwrap()) as usize;
        assert_eq!(total, rewritten.len() - 4);
        let command_len = u32::from_be_bytes(original[4..8].try_into().unwrap()) as usize;
        assert_eq!(
            rewritten[..8 + command_len][4..],
            original[4..8 + command_len]
        );
        let section = &rewritten[8 + command_len..];
        assert_eq!(section[..2], CHECKSUM_MAGIC);
        let after = &original[8 + command_len..];
        assert_eq!(&section[6..], after);
        // Reference value for CRC-32C ("123456789" -> 0xE3069283), so the
        // test does not just compare the implementation with itself.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        assert_eq!(
            u32::from_be_bytes(section[2..6].try_into().unwrap()),
            CRC32C.checksum(after)
        );

        let message = client_decode(&rewritten)
            .expect("decodes")
            .expect("complete");
        assert_eq!(
            message
                .command
                .message
                .expect("message")
                .message_id
                .entry_id,
            42
        );
        let payload = message.payload.expect("payload");
        assert_eq!(payload.data, body);
        assert_eq!(payload.metadata.partition_key.as_deref(), Some("partner-7"));
        assert_eq!(payload.metadata.properties[0].value, "e-42");
    }

    #[test]
    fn empty_message_body_gets_a_checksum_too() {
        let (rewritten, stats) = rewrite(&frame_without_checksum(b""));
        assert_eq!(stats.checksums_added, 1);
        let payload = client_decode(&rewritten)
            .expect("decodes")
            .expect("complete")
            .payload;
        assert!(payload.expect("payload").data.is_empty());
    }

    #[test]
    fn frame_with_checksum_is_untouched() {
        let (with_checksum, _) = rewrite(&frame_without_checksum(b"x"));
        let (again, stats) = rewrite(&with_checksum);
        assert_eq!(again, with_checksum);
        assert_eq!(stats.checksums_added, 0);
        assert_eq!(stats.frames, 1);
    }

    #[test]
    fn frames_without_payload_are_untouched() {
        let frame = command_frame(&BaseCommand {
            r#type: Type::PartitionedMetadataResponse as i32,
            partition_metadata_response: Some(CommandPartitionedTopicMetadataResponse {
                partitions: Some(0),
                request_id: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let (out, stats) = rewrite(&frame);
        assert_eq!(out, frame);
        assert_eq!(
            stats,
            Stats {
                frames: 1,
                bytes: frame.len() as u64,
                ..Stats::default()
            }
        );
    }

    #[test]
    fn lookup_response_points_at_the_proxy() {
        let frame = command_frame(&lookup_response(Some("pulsar://127.0.0.1:6651"), None));
        let (out, stats) = rewrite(&frame);
        assert_eq!(stats.lookups_rewritten, 1);

        let command = client_decode(&out)
            .expect("decodes")
            .expect("complete")
            .command;
        let lookup = command.lookup_topic_response.expect("lookup");
        assert_eq!(lookup.broker_service_url.as_deref(), Some(ADVERTISE));
        assert_eq!(lookup.broker_service_url_tls, None);
        assert_eq!(lookup.request_id, 3);
        assert_eq!(lookup.response, Some(LookupType::Connect as i32));
        assert_eq!(lookup.authoritative, Some(true));
    }

    #[test]
    fn lookup_tls_url_points_at_the_proxy_too() {
        let frame = command_frame(&lookup_response(
            Some("pulsar://localhost:6651"),
            Some("pulsar+ssl://localhost:6652"),
        ));
        let (out, _) = rewrite(&frame);
        let command = client_decode(&out)
            .expect("decodes")
            .expect("complete")
            .command;
        let lookup = command.lookup_topic_response.expect("lookup");
        assert_eq!(lookup.broker_service_url_tls.as_deref(), Some(ADVERTISE));
    }

    #[test]
    fn failed_lookup_is_untouched() {
        let mut command = lookup_response(None, None);
        if let Some(lookup) = command.lookup_topic_response.as_mut() {
            lookup.response = Some(LookupType::Failed as i32);
        }
        let frame = command_frame(&command);
        let (out, stats) = rewrite(&frame);
        assert_eq!(out, frame);
        assert_eq!(stats.lookups_rewritten, 0);
    }

    #[test]
    fn split_frame_waits_for_whole_frames() {
        let a = frame_without_checksum(b"first");
        let b = frame_without_checksum(b"second, longer");
        let stream: Vec<u8> = a.iter().chain(&b).copied().collect();

        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in &stream {
            buf.put_u8(*byte);
            while let Some(frame) = split_frame(&mut buf).expect("valid") {
                frames.push(frame.to_vec());
            }
        }
        assert_eq!(frames, vec![a, b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_or_undersized_length_is_garbage() {
        let mut huge = BytesMut::from(&((MAX_FRAME_SIZE + 1) as u32).to_be_bytes()[..]);
        assert_eq!(
            split_frame(&mut huge),
            Err(FrameError::TooLarge(MAX_FRAME_SIZE + 1))
        );
        // An HTTP answer read as a length: "HTTP" is 1.2 GB.
        let mut http = BytesMut::from(&b"HTTP/1.1 400 Bad Request\r\n"[..]);
        assert!(matches!(
            split_frame(&mut http),
            Err(FrameError::TooLarge(_))
        ));
        let mut tiny = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert_eq!(split_frame(&mut tiny), Err(FrameError::TooSmall(2)));
    }

    #[test]
    fn inconsistent_sizes_are_garbage() {
        let mut out = BytesMut::new();
        let mut stats = Stats::default();
        let rewriter = Rewriter::new(ADVERTISE);

        // Command size larger than the frame.
        let frame = [0, 0, 0, 6, 0, 0, 0, 9, 8, 9];
        assert!(matches!(
            rewriter.rewrite(&frame, &mut out, &mut stats),
            Err(FrameError::CommandSize {
                command: 9,
                total: 6
            })
        ));

        // Metadata size running past the end of the frame.
        let mut frame = frame_without_checksum(b"abc");
        let command_len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
        frame[8 + command_len..8 + command_len + 4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            rewriter.rewrite(&frame, &mut out, &mut stats),
            Err(FrameError::BadPayload(_))
        ));

        // Command bytes that are not a BaseCommand.
        let frame = [0, 0, 0, 7, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            rewriter.rewrite(&frame, &mut out, &mut stats),
            Err(FrameError::BadCommand(_))
        ));
        assert!(out.is_empty());
    }
}
