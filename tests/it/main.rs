//! One integration-test binary (faster to build than one per file): the
//! real service against real PostgreSQL and Redis, participants mocked.

mod api;
mod dead_letters;
mod demo;
mod helpers;
mod recovery;
mod saga_flow;
mod store;
