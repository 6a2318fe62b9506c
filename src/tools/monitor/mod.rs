//! `monitor`: a live view of every channel's messages, on either broker.
//!
//! The monitor only ever *reads* beside the orchestrator, never with it, so
//! it cannot take a message away from the service:
//!
//! - Redis: plain `XREAD` on all streams at once, no consumer group (the
//!   orchestrator's group and its pending lists are never touched);
//! - Pulsar: per topic an exclusive, non-durable subscription of its own
//!   (`saga-monitor-…`), acked as read and unsubscribed on a clean stop (see
//!   `pulsar_tap.rs` for why both).
//!
//! Parsing, filtering, grouping and rendering are pure functions over the
//! [`RawMessage`](crate::transport::RawMessage) as read, so they are unit
//! tested without a broker; [`Tap`] is the only part doing I/O. Nothing here
//! assumes a message is well formed: whatever arrives is shown, malformed
//! input included.
//!
//! - [`view`]: a message as the monitor sees it ([`Observed`]), read leniently.
//! - [`filter`]: `--correlation-id` / `--saga-id` / `--event-type`, and group keys.
//! - [`render`]: text lines (colour optional) and JSON lines.
//! - [`tap`]: the broker readers.

pub mod filter;
pub mod render;
pub mod tap;
pub mod view;

mod pulsar_tap;
mod redis_tap;

pub use filter::{Filter, GroupBy};
pub use render::{colour_wanted, Printer, Style};
pub use tap::{StartAt, Tap, Tapped};
pub use view::{ChannelKind, Observed};

use crate::config::Channels;
use crate::transport::dead_letter_channel;

/// Why the monitor cannot read the broker.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("pulsar: {0}")]
    Pulsar(Box<pulsar::Error>),
    #[error("the in-memory broker lives inside one process: there is nothing to monitor from outside (set BROKER_URL to a Redis or Pulsar URL)")]
    MemoryBroker,
    #[error("no channel to monitor")]
    NoChannels,
    #[error("the readers have stopped")]
    Closed,
}

impl From<pulsar::Error> for MonitorError {
    fn from(e: pulsar::Error) -> Self {
        Self::Pulsar(Box::new(e))
    }
}

/// Every configured channel followed by its dead-letter channel, in the
/// order a message travels: events, commands, replies, saga events.
pub fn all_channels(channels: &Channels) -> Vec<String> {
    let base = [
        &channels.partner_events,
        &channels.alliance_commands,
        &channels.integration_commands,
        &channels.saga_replies,
        &channels.saga_events,
    ];
    let mut all: Vec<String> = base.iter().map(|c| c.to_string()).collect();
    all.extend(base.iter().map(|c| dead_letter_channel(c)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_channels_include_every_dead_letter_channel() {
        let all = all_channels(&Channels::default());
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], "partner-events");
        assert!(all.contains(&"saga-events".to_string()));
        assert!(all.contains(&"saga-replies-dlq".to_string()));
        assert!(all.contains(&"partner-events-dlq".to_string()));
    }
}
