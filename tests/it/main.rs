//! One integration-test binary (faster to build than one per file): the
//! real service against real PostgreSQL and a real broker (Redis or Pulsar,
//! by `TEST_BROKER`), participants mocked.

mod api;
mod broker;
mod broker_mode;
mod broker_restart;
mod dead_letters;
mod demo;
mod helpers;
mod load;
mod monitor;
mod participants_http;
mod recovery;
mod saga_flow;
mod store;
