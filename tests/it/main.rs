//! One integration-test binary (faster to build than one per file): the
//! real service against real PostgreSQL and a real broker (Redis or Pulsar,
//! by `TEST_BROKER`), participants mocked.

mod api;
mod broker;
mod broker_mode;
mod broker_refusal;
mod broker_restart;
mod browser;
mod cli;
mod console;
mod console_browser;
mod cut;
mod dead_letters;
mod demo;
mod faults;
mod hardening;
mod helpers;
mod load;
mod monitor;
mod operator;
mod operator_jobs;
mod operator_safety;
mod outbox_rows;
mod participants_http;
mod properties;
mod pulsar_batching;
mod recovery;
mod redis_streams;
mod relay;
mod saga_flow;
mod shutdown;
mod store;
mod store_operator;
mod store_statistics;
