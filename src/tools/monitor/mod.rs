//! `monitor`: a live view of every channel's messages, on either broker.
//!
//! The monitor only ever *reads* beside the orchestrator, never with it, so
//! it cannot take a message away from the service: it reads through
//! [`Tap`], the transport's passive reader (see [`crate::transport::tap`]).
//!
//! Parsing, filtering, grouping and rendering are pure functions over the
//! [`RawMessage`](crate::transport::RawMessage) as read, so they are unit
//! tested without a broker; [`Tap`] is the only part doing I/O. Nothing here
//! assumes a message is well formed: whatever arrives is shown, malformed
//! input included.
//!
//! - [`view`]: a message as the monitor sees it ([`Observed`]), read leniently.
//! - [`filter`]: `--correlation-id` / `--saga-id` / `--event-type`, and `--group-by`.
//! - [`group`]: which group a message is in (a saga's `PartnerCreated`
//!   included), buffered and printed as one block in time order.
//! - [`render`]: text lines (colour optional) and JSON lines.

pub mod filter;
pub mod group;
pub mod render;
pub mod view;

pub use crate::transport::tap::{StartAt, Tap, TapError, Tapped};
pub use filter::{Filter, GroupBy};
pub use group::{Block, BlockRules, Blocks, Flush, GroupKey};
pub use render::{Printer, Style};
pub use view::{ChannelKind, Observed};

use crate::config::Channels;
use crate::transport::dead_letter_channel;

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
