//! # saga-orchestrator
//!
//! Runs one saga per `PartnerCreated` event: record it durably, ask
//! alliances to create the partner's alliance, and compensate by deleting the
//! partner in integrations when that fails. See `README.md` for the contract
//! and the architecture.
//!
//! ## Layout
//!
//! - [`config`]: settings from defaults, an optional file and the environment.
//! - [`envelope`]: the message envelope and its wire codecs.
//! - [`saga`]: states, the stored saga and the pure state machine.
//! - [`store`]: the `SagaStore` trait and PostgreSQL, with history and outbox.
//! - [`transport`]: the `Transport` trait; Redis Streams and in-memory adapters.

pub mod config;
pub mod envelope;
pub mod saga;
pub mod store;
pub mod transport;
