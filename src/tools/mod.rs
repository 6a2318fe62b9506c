//! The operator tools, built on the service's public API and never the
//! other way round: nothing outside `tools` uses anything in it.
//!
//! - [`cli`]: the command line, one module per subcommand.
//! - [`simulator`]: both participants simulated, over HTTP and the broker.
//! - [`demo`]: the embedded demo and its report.
//! - [`load`]: `publish` and `load-test`: test events out, sagas read back, a report.
//! - [`monitor`]: a live view of every channel, read beside the orchestrator
//!   (never from its subscription): parsing, filters, grouping, output.

pub mod cli;
pub mod demo;
pub mod load;
pub mod monitor;
pub mod simulator;
