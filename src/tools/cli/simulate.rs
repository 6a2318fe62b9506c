//! `simulate`: both participants as local simulators, over HTTP and, with
//! `--broker`, over the broker.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::Behaviour;
use crate::config::Settings;
use crate::startup::{reach, shutdown_signal};
use crate::tools::simulator::{self, Simulator, SimulatorConfig};

/// `simulate`'s options. The flags keep the participants' service names.
#[derive(Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub behaviour: Behaviour,
    /// Where the simulated alliances service listens.
    #[arg(long = "alianzas-addr", default_value = "127.0.0.1:8002")]
    pub alliances_addr: SocketAddr,
    /// Where the simulated integrations service listens.
    #[arg(long = "integraciones-addr", default_value = "127.0.0.1:8001")]
    pub integrations_addr: SocketAddr,
    /// Also answer commands on the broker named by BROKER_URL.
    #[arg(long)]
    pub broker: bool,
}

/// Runs the simulators until Ctrl-C or SIGTERM, then prints their counts.
pub async fn run(args: &SimulateArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let sim = Simulator::new(SimulatorConfig::from(&args.behaviour));
    let alliances = bind(args.alliances_addr).await?;
    let integrations = bind(args.integrations_addr).await?;
    let stop = CancellationToken::new();
    let http = tokio::spawn(simulator::http::serve(
        sim.clone(),
        alliances,
        integrations,
        stop.clone(),
    ));
    println!(
        "simulated alliances:     http://{}  (POST /alliances, GET /stats)",
        args.alliances_addr
    );
    println!(
        "simulated integrations:  http://{}  (DELETE /partners/{{id}}, GET /stats)",
        args.integrations_addr
    );
    let broker = if args.broker {
        Some(answer_on_broker(&sim, settings, &stop).await?)
    } else {
        None
    };
    shutdown_signal().await;
    stop.cancel();
    let _ = http.await;
    if let Some(broker) = broker {
        let _ = broker.await;
    }
    println!("{}", serde_json::to_string_pretty(&sim.stats())?);
    Ok(ExitCode::SUCCESS)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Starts answering the participants' commands on the broker.
async fn answer_on_broker(
    sim: &Simulator,
    settings: &Settings,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // The participants' own consumer group, apart from the orchestrator's.
    let mut own = settings.clone();
    own.broker.subscription = "saga-participants".into();
    let transport = reach::connect_broker(&own).await?;
    println!(
        "answering commands on {} and {}",
        own.broker.channels.alliance_commands, own.broker.channels.integration_commands
    );
    Ok(tokio::spawn(simulator::broker::run(
        sim.clone(),
        transport,
        own.broker.channels.clone(),
        own.limits.max_message_bytes,
        stop.clone(),
    )))
}
