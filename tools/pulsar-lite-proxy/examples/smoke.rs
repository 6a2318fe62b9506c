//! End-to-end check that the `pulsar` crate can produce to and consume from
//! a broker: N messages with properties and partition keys through a Shared
//! subscription from the earliest position, every one acked.
//!
//! ```text
//! make pulsar-up && source .dev/pulsar-lite/env
//! cargo run -p pulsar-lite-proxy --example smoke                  # via the proxy: passes
//! cargo run -p pulsar-lite-proxy --example smoke -- \
//!     --url "$TEST_PULSAR_DIRECT_URL" --timeout 10                # straight to pulsar-lite: fails
//! ```
//!
//! Exits 0 only if every message arrived intact.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use pulsar::consumer::InitialPosition;
use pulsar::{Consumer, ConsumerOptions, Pulsar, SubType, TokioExecutor};

#[derive(Debug, Parser)]
struct Args {
    /// Broker (or proxy) URL.
    #[arg(long, env = "TEST_PULSAR_URL")]
    url: String,

    /// Topic [default: persistent://public/default/proxy-check-<millis>]; a
    /// fresh one per run, so earlier runs' messages don't count.
    #[arg(long)]
    topic: Option<String>,

    #[arg(long, default_value_t = 2000)]
    count: u32,

    /// Seconds to wait for all messages to arrive.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// Sends in flight at once; the producer's outbound queue must be larger,
/// or it answers SlowDown instead of queueing.
const WINDOW: usize = 500;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smoke: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis();
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("persistent://public/default/proxy-check-{millis}"));
    let run_id = millis.to_string();
    println!("smoke: {} messages on {topic} via {}", args.count, args.url);

    let pulsar: Pulsar<_> = Pulsar::builder(&args.url, TokioExecutor)
        .with_outbound_channel_size(WINDOW * 2)
        .build()
        .await
        .map_err(|e| format!("connect to {}: {e}", args.url))?;

    // Subscribe first, so the subscription exists before the first message
    // (Earliest would also cover it, but this checks live dispatch too).
    let mut consumer: Consumer<Vec<u8>, _> = pulsar
        .consumer()
        .with_topic(&topic)
        .with_subscription(format!("smoke-{run_id}"))
        .with_consumer_name(format!("smoke-consumer-{run_id}"))
        .with_subscription_type(SubType::Shared)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .map_err(|e| format!("subscribe: {e}"))?;

    let mut producer = pulsar
        .producer()
        .with_topic(&topic)
        .with_name(format!("smoke-producer-{run_id}"))
        .build()
        .await
        .map_err(|e| format!("create producer: {e}"))?;

    let started = Instant::now();
    let mut receipts: FuturesUnordered<pulsar::producer::SendFuture> = FuturesUnordered::new();
    for i in 0..args.count {
        if receipts.len() >= WINDOW {
            if let Some(receipt) = receipts.next().await {
                receipt.map_err(|e| format!("send: {e}"))?;
            }
        }
        let receipt = producer
            .create_message()
            .with_content(format!("message {i}").into_bytes())
            .with_partition_key(format!("partner-{}", i % 50))
            .with_property("run", run_id.as_str())
            .with_property("seq", i.to_string())
            .send_non_blocking()
            .await
            .map_err(|e| format!("send {i}: {e}"))?;
        receipts.push(receipt);
    }
    while let Some(receipt) = receipts.next().await {
        receipt.map_err(|e| format!("send: {e}"))?;
    }
    let produced = started.elapsed();
    println!(
        "smoke: produced {} in {:.2}s ({:.0} msgs/s, every send confirmed)",
        args.count,
        produced.as_secs_f64(),
        f64::from(args.count) / produced.as_secs_f64()
    );

    let consume_started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut seen = HashSet::new();
    let mut duplicates = 0u32;
    while seen.len() < args.count as usize {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let message = match next {
            Err(_) => {
                return Err(format!(
                    "only {} of {} messages arrived within {}s",
                    seen.len(),
                    args.count,
                    args.timeout
                ))
            }
            Ok(None) => return Err("consumer stream ended".into()),
            Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        let metadata = &message.payload.metadata;
        let property = |key: &str| {
            metadata
                .properties
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.clone())
        };
        let seq: u32 = property("seq")
            .and_then(|s| s.parse().ok())
            .ok_or("message without a seq property")?;
        if property("run").as_deref() != Some(run_id.as_str()) {
            return Err(format!(
                "message {seq} from another run: {:?}",
                property("run")
            ));
        }
        if metadata.partition_key.as_deref() != Some(format!("partner-{}", seq % 50).as_str()) {
            return Err(format!(
                "message {seq} has partition key {:?}",
                metadata.partition_key
            ));
        }
        if message.payload.data != format!("message {seq}").into_bytes() {
            return Err(format!("message {seq} has the wrong body"));
        }
        consumer
            .ack(&message)
            .await
            .map_err(|e| format!("ack {seq}: {e}"))?;
        if !seen.insert(seq) {
            duplicates += 1;
        }
    }
    let consumed = consume_started.elapsed();
    let total = started.elapsed();
    println!(
        "smoke: consumed and acked {} in {:.2}s after production ({:.0} msgs/s; {duplicates} redelivered)",
        args.count,
        consumed.as_secs_f64(),
        f64::from(args.count) / consumed.as_secs_f64()
    );
    println!(
        "smoke: OK, {} messages end to end in {:.2}s ({:.0} msgs/s)",
        args.count,
        total.as_secs_f64(),
        f64::from(args.count) / total.as_secs_f64()
    );

    consumer
        .close()
        .await
        .map_err(|e| format!("close consumer: {e}"))?;
    producer
        .close()
        .await
        .map_err(|e| format!("close producer: {e}"))?;
    Ok(())
}
