//! Reading channels *beside* the orchestrator, never from its
//! subscription, so a reader cannot take a message away from the service:
//!
//! - Redis: plain `XREAD` on all streams at once, no consumer group (the
//!   orchestrator's group and its pending lists are never touched);
//! - Pulsar: per topic an exclusive subscription of its own (`saga-monitor-…`,
//!   non-durable, by default), acked as read (by entry) and unsubscribed on a clean stop
//!   (see `pulsar/tap.rs` for why both).
//!
//! The monitor and `load-test` read with it; each broker's reader lives
//! beside that broker's adapter, in its folder.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::pulsar::tap::PulsarTap;
use super::redis_streams::tap::RedisTap;
use super::RawMessage;
use crate::config::BrokerUrl;

/// The target of the readers' own logs, wherever their code lives: a
/// tool that quiets the service's logs lets these through by name.
pub const LOG_TARGET: &str = "saga_orchestrator::transport::tap";

/// Why a [`Tap`] cannot read the broker.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
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

impl From<pulsar::Error> for TapError {
    fn from(e: pulsar::Error) -> Self {
        Self::Pulsar(Box::new(e))
    }
}

/// Where reading starts on each channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Only messages published from now on.
    #[default]
    Now,
    /// Everything the broker still holds (Redis id `0`, Pulsar `Earliest`).
    Beginning,
}

/// The reader's own subscriptions on Pulsar (Redis reads need none): named
/// `<prefix>-<random>`, durable or not, Exclusive or Shared.
///
/// Measured in `make bench` (10,000 sagas, ~40,000 saga events): pulsar-lite
/// delivered 99,435 extra copies to a durable *Exclusive* subscription,
/// none to a Shared one, durable or not. The reader skips the copies, but
/// reading them cost the load test more than twice the CPU. A reader that
/// must keep up (`load-test`) therefore asks for Shared (it is the only
/// consumer, so nothing is split) and durable: on a real Pulsar that is the
/// kind the service itself uses. A durable subscription outlives a crash,
/// so it relies on being removed at [`Tap::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapSubscription {
    pub prefix: &'static str,
    /// A non-durable subscription goes with its consumer on a real Pulsar,
    /// even after a crash (pulsar-lite keeps it until unsubscribed).
    pub durable: bool,
    /// Shared instead of Exclusive.
    pub shared: bool,
}

impl Default for TapSubscription {
    /// The monitor's: `saga-monitor-…`, non-durable, Exclusive.
    fn default() -> Self {
        Self {
            prefix: "saga-monitor",
            durable: false,
            shared: false,
        }
    }
}

/// One message as read, before any interpretation.
#[derive(Debug, Clone, PartialEq)]
pub struct Tapped {
    pub channel: String,
    /// The broker's id for it.
    pub id: String,
    pub raw: RawMessage,
    /// When the monitor read it.
    pub received_at: DateTime<Utc>,
    /// When the broker took it, in Unix milliseconds, if it says: orders
    /// one batch read from several channels.
    pub broker_time_ms: Option<u64>,
}

impl Tapped {
    /// A message read from `channel` at `received_at`.
    pub fn new(
        channel: impl Into<String>,
        id: impl Into<String>,
        raw: RawMessage,
        received_at: DateTime<Utc>,
    ) -> Self {
        Self {
            channel: channel.into(),
            id: id.into(),
            raw,
            received_at,
            broker_time_ms: None,
        }
    }
}

/// Reads a set of channels on the broker of `BROKER_URL`.
pub struct Tap(Inner);

enum Inner {
    Redis(Box<RedisTap>),
    Pulsar(PulsarTap),
}

impl Tap {
    /// Starts reading `channels` from `start`. When this returns, every
    /// channel's position is fixed: anything published afterwards is seen.
    pub async fn open(
        broker: &BrokerUrl,
        channels: &[String],
        start: StartAt,
    ) -> Result<Self, TapError> {
        Self::open_with(broker, channels, start, TapSubscription::default()).await
    }

    /// [`Tap::open`] with subscriptions of `subscription`'s kind on Pulsar.
    pub async fn open_with(
        broker: &BrokerUrl,
        channels: &[String],
        start: StartAt,
        subscription: TapSubscription,
    ) -> Result<Self, TapError> {
        if channels.is_empty() {
            return Err(TapError::NoChannels);
        }
        let inner = match broker {
            BrokerUrl::Redis(url) => Inner::Redis(Box::new(
                RedisTap::open(url.as_str(), channels, start).await?,
            )),
            BrokerUrl::Pulsar(url) => {
                Inner::Pulsar(PulsarTap::open(url.as_str(), channels, start, subscription).await?)
            }
            BrokerUrl::Memory => return Err(TapError::MemoryBroker),
        };
        Ok(Self(inner))
    }

    /// The next messages, oldest first within the batch. An empty batch
    /// means nothing arrived within about a second, so callers can check
    /// for shutdown. After an error the next call reconnects.
    pub async fn next_batch(&mut self) -> Result<Vec<Tapped>, TapError> {
        let mut batch = match &mut self.0 {
            Inner::Redis(tap) => tap.next_batch().await?,
            Inner::Pulsar(tap) => tap.next_batch().await?,
        };
        // Stable: one channel's own order is kept whatever the clocks say.
        batch.sort_by_key(|t| t.broker_time_ms.unwrap_or(u64::MAX));
        Ok(batch)
    }

    /// Counts the messages the broker delivered to this reader again, which
    /// it skipped (a Pulsar subscription's redeliveries; Redis reads by
    /// position and never repeats).
    pub fn repeats(&self) -> Arc<AtomicU64> {
        match &self.0 {
            Inner::Redis(_) => Arc::new(AtomicU64::new(0)),
            Inner::Pulsar(tap) => tap.repeats(),
        }
    }

    /// Stops reading; Pulsar readers are closed so their subscriptions go.
    pub async fn close(self) {
        match self.0 {
            Inner::Redis(_) => {}
            Inner::Pulsar(tap) => tap.close().await,
        }
    }
}
