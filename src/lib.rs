//! # saga-orchestrator
//!
//! Runs one saga per `PartnerCreated` event: record it durably, ask
//! alliances to create the partner's alliance, and compensate by deleting the
//! partner in integrations when that fails. The product's contract is
//! `docs/contract.md`; how this crate is built is `docs/architecture.md`.
//!
//! ## Layout
//!
//! - [`config`]: settings from defaults, an optional file and the environment.
//! - [`envelope`]: the message envelope and its wire codecs.
//! - [`saga`]: states, the stored saga and the pure state machine.
//! - [`store`]: the `SagaStore` trait, PostgreSQL and SQLite, with history and outbox.
//! - [`transport`]: the `Transport` trait; Pulsar, Redis Streams and in-memory adapters.
//! - [`participants`]: alliances and integrations clients (HTTP; broker mode
//!   sends commands from the orchestrator instead).
//! - [`orchestrator`]: consumer, saga driver, outbox relay, recovery sweeper.
//! - [`telemetry`]: logging and metric names.
//! - [`redact`]: credentials masked in URLs and messages before they are shown.
//! - [`stats`]: this instance's live counters for the JSON metrics summary.
//! - [`operator`]: dead letters indexed, redriven and discarded; bulk jobs
//!   and their background runner; who did what, and why.
//! - [`api`]: the HTTP API.
//! - [`startup`]: builds and runs the whole service.
//!
//! The operator tools (command line, simulator, demo, load test, monitor)
//! are in [`tools`], built on the service's public API.

pub mod api;
pub mod config;
pub mod envelope;
pub mod operator;
pub mod orchestrator;
pub mod participants;
pub mod redact;
pub mod saga;
pub mod startup;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod transport;
