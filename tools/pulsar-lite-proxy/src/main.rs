//! `pulsar-lite-proxy`: lets the `pulsar` crate consume from pulsar-lite.
//!
//! **A development and test tool. Never put it in front of a real Apache
//! Pulsar, and never ship it in production**: a real broker forwards the
//! producer's payload checksum, so the client needs no help there.
//!
//! Why it exists: no Docker runs on the development and CI machines, so the
//! tests' Pulsar is pulsar-lite (`pip install pulsar-lite`), a small broker
//! that speaks Pulsar's binary protocol. The protocol makes the payload
//! checksum (magic `0x0e01` + CRC32C) optional, and pulsar-lite dispatches
//! MESSAGE frames without it, while the `pulsar` crate (6.9) always expects
//! it: its consumer fails on the first message with
//! `Error decoding payload frame: Incomplete(…)`. See docs/troubleshooting.md.
//!
//! What it does, on loopback only, between the client and pulsar-lite:
//! - broker → client: inserts the missing checksum into payload frames
//!   (fixing the frame size), and rewrites lookup responses to name this
//!   proxy instead of pulsar-lite, so the client keeps coming through here;
//! - client → broker: bytes pass unchanged;
//! - while pulsar-lite is down (a test restarting it), new connections are
//!   held until it is back rather than closed, because the `pulsar` crate
//!   treats a connection closed during its handshake as fatal (see
//!   `proxy::BROKER_PATIENCE`).
//!
//! ```text
//! pulsar-lite-proxy --listen 127.0.0.1:6650 --upstream 127.0.0.1:6651
//! ```
//!
//! Each connection is logged once to stderr, when it ends.

mod frame;
mod proxy;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::TcpListener;

use crate::frame::Rewriter;

/// Make the `pulsar` crate work with pulsar-lite (development and tests only).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where Pulsar clients connect (a loopback address; port 0 picks one).
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,

    /// The pulsar-lite broker.
    #[arg(long, value_name = "IP:PORT")]
    upstream: SocketAddr,

    /// URL that lookup responses point clients to [default: pulsar://<listen address>].
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pulsar-lite-proxy: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // No TLS, no authentication, and it rewrites what the broker says:
    // nothing that should be reachable from another machine.
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {} is not a loopback address",
            args.listen
        ));
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let advertise = args
        .advertise
        .unwrap_or_else(|| format!("pulsar://{local}"));
    if !advertise.starts_with("pulsar://") {
        return Err(format!("--advertise {advertise:?} is not a pulsar:// URL"));
    }
    eprintln!(
        "pulsar-lite-proxy: listening on {local}, forwarding to {}, advertising {advertise}",
        args.upstream
    );

    let rewriter = Arc::new(Rewriter::new(advertise));
    let upstream = args.upstream;
    let mut next_id: u64 = 0;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off instead of
                // spinning, and keep serving the connections already open.
                eprintln!("pulsar-lite-proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let rewriter = Arc::clone(&rewriter);
        tokio::spawn(async move {
            let started = Instant::now();
            let (end, stats) = proxy::serve(client, upstream, &rewriter).await;
            eprintln!(
                "pulsar-lite-proxy: connection #{id} from {peer}: {end} after {:.1}s; \
                 {} frames ({} bytes) from the broker, {} checksums added, {} lookups rewritten{}",
                started.elapsed().as_secs_f64(),
                stats.frames,
                stats.bytes,
                stats.checksums_added,
                stats.lookups_rewritten,
                if stats.unsupported_payloads > 0 {
                    format!(
                        ", {} payloads with broker entry metadata the client cannot read",
                        stats.unsupported_payloads
                    )
                } else {
                    String::new()
                },
            );
        });
    }
}
