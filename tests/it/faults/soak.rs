//! `make soak DURATION=…`: a steady load for a given time with random
//! kills and restarts, sampling every instance's memory and open sockets
//! (they must stay flat: checked once each instance is warm) and the sagas
//! done, then the usual verdict. Not
//! in `make test`: it is ignored unless asked for (`--run-ignored`).

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::instance::Instance;
use super::load::{progress, store_pool};
use super::Rig;

/// Events offered per second.
const RATE: f64 = 100.0;
/// How often the samples are taken.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// A process's resident memory in KiB and its open sockets, from /proc.
fn sample(pid: libc::pid_t) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0);
    (rss, sockets)
}

/// Every instance's samples, in the order taken.
type Samples = std::collections::HashMap<String, Vec<(u64, usize)>>;

fn print_samples(at: Duration, done: i64, instances: &[&Instance], samples: &mut Samples) {
    let each: Vec<String> = instances
        .iter()
        .map(|i| {
            let (rss, sockets) = sample(i.pid());
            samples
                .entry(i.id.clone())
                .or_default()
                .push((rss, sockets));
            format!("{} {} MiB {} sockets", i.id, rss / 1024, sockets)
        })
        .collect();
    eprintln!(
        "soak: {:>5} s · {done} sagas terminal · {}",
        at.as_secs(),
        each.join(" · ")
    );
}

#[tokio::test]
#[ignore = "long: make soak DURATION=… runs it"]
async fn a_steady_load_with_random_kills_stays_flat_and_loses_nothing() {
    let secs: u64 = std::env::var("FAULTS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("soak: {secs} s at {RATE} events/s, FAULTS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let events = (secs as f64 * RATE) as usize;
    let mut rig = Rig::new("soak", &[]).await;
    let mut running = vec![rig.start_instance().await, rig.start_instance().await];
    let load = rig.load_at(events, Some(RATE)).await;
    let pool = store_pool(&rig.store.url).await;
    let began = Instant::now();
    let mut next_kill = began + Duration::from_secs(rng.random_range(20..60));
    let mut next_sample = began;
    let mut samples = Samples::new();
    while load.published() < events {
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let done = progress(&pool).await.map_or(-1, |p| p.terminal);
            let live: Vec<&Instance> = running.iter().map(|&i| &rig.instances[i]).collect();
            print_samples(began.elapsed(), done, &live, &mut samples);
        }
        if Instant::now() >= next_kill {
            let victim = running.remove(rng.random_range(0..running.len()));
            rig.instances[victim].kill().await;
            running.push(rig.start_instance().await);
            rig.fault_done();
            eprintln!(
                "soak: killed {} at {} s",
                rig.instances[victim].id,
                began.elapsed().as_secs()
            );
            next_kill = Instant::now() + Duration::from_secs(rng.random_range(20..60));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rig.verdict(load, events, Duration::from_secs(120))
        .await
        .assert_nothing_lost_or_doubled();
    assert_flat(&samples);
}

/// Each instance's memory and sockets, once warmed up (its second
/// sample), stay within a margin: a leak grows with the sagas it drives.
fn assert_flat(samples: &Samples) {
    for (id, taken) in samples {
        let (Some(&(rss0, sockets0)), Some(&(rss, sockets))) = (taken.get(1), taken.last()) else {
            continue;
        };
        eprintln!(
            "soak: {id}: {} → {} MiB, {sockets0} → {sockets} sockets over {} samples",
            rss0 / 1024,
            rss / 1024,
            taken.len()
        );
        assert!(
            rss <= rss0 * 3 / 2 + 8 * 1024,
            "{id}'s memory grew: {taken:?}"
        );
        assert!(
            sockets <= sockets0 * 2 + 16,
            "{id}'s sockets grew: {taken:?}"
        );
    }
}
