//! The scenarios, each run on the broker `TEST_BROKER` names.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::{Rig, Scale};

/// How long a run may take to settle once its faults are over.
const SETTLE: Duration = Duration::from_secs(120);

/// `FAULTS_SEED`, or a fresh one; printed so a run can be repeated.
fn seeded(scenario: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("faults: {scenario}: FAULTS_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Up to `count` distinct moments, as counts of events published, spread
/// over the run.
fn moments(rng: &mut impl Rng, events: usize, count: usize) -> Vec<usize> {
    let mut at: Vec<usize> = (0..count)
        .map(|_| rng.random_range(events / 10..events * 9 / 10))
        .collect();
    at.sort_unstable();
    at.dedup();
    at
}

#[tokio::test]
async fn kill_9_under_load_loses_and_doubles_nothing() {
    let scale = Scale::from_env();
    let events = scale.events(2000, 400);
    let mut rig = Rig::new("kill-9", &[]).await;
    let mut rng = seeded(rig.scenario);
    let kills = moments(&mut rng, events, scale.events(3, 2));
    let mut current = rig.start_instance().await;
    let load = rig.load(events).await;
    for at in kills {
        rig.when_published(&load, at).await;
        rig.instances[current].kill().await;
        current = rig.start_instance().await;
        rig.fault_done();
    }
    rig.verdict(load, events, SETTLE)
        .await
        .assert_nothing_lost_or_doubled();
}

#[tokio::test]
async fn instances_share_the_load_and_never_drive_one_saga_at_once() {
    let scale = Scale::from_env();
    let events = scale.events(3000, 400);
    let mut rig = Rig::new("instances", &[]).await;
    let first = rig.start_instance().await;
    rig.start_instance().await;
    // The last quarter waits for the third instance: at full speed the two
    // first could otherwise finish everything before it is subscribed.
    let joins_at = events * 3 / 4;
    let load = rig.load_held(events, joins_at).await;
    rig.when_published(&load, events / 2).await;
    // Killed half-way and never restarted: the others take over its work.
    rig.instances[first].kill().await;
    rig.fault_done();
    rig.when_published(&load, joins_at).await;
    rig.start_instance().await;
    load.release();
    let figures = rig.verdict(load, events, SETTLE).await;
    figures.assert_nothing_lost_or_doubled();
    let ids: Vec<&str> = figures.split.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["i1", "i2", "i3"],
        "each instance drove a share: {figures}"
    );
}

/// A store stopped with `mode` under load, down for a few seconds while
/// every instance says it is not ready, then back: the same processes
/// carry on, and every saga ends within seconds of the store's return —
/// not after a lease or a reclaim timer (left at their defaults here).
async fn store_restart(mode: &'static str, scenario: &'static str) {
    let scale = Scale::from_env();
    let events = scale.events(2000, 300);
    let defaults = [
        ("STEP_TIMEOUT_MS", "10000"),
        ("REDIS_CLAIM_IDLE_MS", "30000"),
    ];
    let mut rig = Rig::new(scenario, &defaults).await;
    rig.start_instance().await;
    rig.start_instance().await;
    let load = rig.load(events).await;
    rig.when_published(&load, events / 3).await;
    rig.store.stop(mode).await;
    for instance in &rig.instances {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let status = instance.ready_status().await;
            if status == Some(503) {
                break;
            }
            assert!(
                Instant::now() < until,
                "{}'s /ready answered {status:?} with the store down",
                instance.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Longer than a driver's few tries at a commit.
    tokio::time::sleep(scale.secs(10, 4)).await;
    rig.store.start_again().await;
    rig.fault_done();
    let figures = rig.verdict(load, events, SETTLE).await;
    figures.assert_nothing_lost_or_doubled();
    for instance in &mut rig.instances {
        assert_eq!(
            instance.ready_status().await,
            Some(200),
            "{} recovered by itself",
            instance.id
        );
    }
    assert!(
        figures.slowest_after_fault < Duration::from_secs(10),
        "a saga ended {:?} after the store came back, as if waiting for a timer: {figures}",
        figures.slowest_after_fault
    );
}

#[tokio::test]
async fn store_restart_fast_under_load_recovers_without_a_restart() {
    store_restart("fast", "store-restart-fast").await;
}

#[tokio::test]
async fn store_crash_immediate_under_load_recovers_without_a_restart() {
    store_restart("immediate", "store-restart-immediate").await;
}

#[tokio::test]
async fn broker_crash_under_load_loses_nothing_it_acknowledged() {
    let scale = Scale::from_env();
    let events = scale.events(2000, 300);
    let mut rig = Rig::new("broker-restart", &[]).await;
    rig.start_instance().await;
    let load = rig.load(events).await;
    rig.when_published(&load, events / 3).await;
    rig.broker.crash_and_restart(Duration::from_secs(2)).await;
    rig.fault_done();
    rig.verdict(load, events, SETTLE)
        .await
        .assert_nothing_lost_or_doubled();
}

#[tokio::test]
async fn a_participant_outage_is_waited_out_by_the_retry_policy_without_a_tight_loop() {
    let scale = Scale::from_env();
    let events = scale.events(1500, 400);
    let outage = scale.secs(20, 5);
    // Five attempts, 100, 200, 400, 800 ms apart: a saga caught by the
    // outage runs out of them and is compensated, as the policy says.
    let mut rig = Rig::new("participant-outage", &[("RETRY_MAX_ATTEMPTS", "5")]).await;
    rig.start_instance().await;
    let load = rig.load(events).await;
    rig.when_published(&load, events / 4).await;
    rig.participants.take_alliances_down().await;
    tokio::time::sleep(outage).await;
    rig.participants.bring_alliances_back().await;
    rig.fault_done();
    let figures = rig.verdict(load, events, SETTLE).await;
    figures.assert_nothing_lost_or_doubled();
    let (exhausted, completed_after) = policy_was_followed(&rig, 5).await;
    assert!(exhausted > 0, "the outage caught no saga: {figures}");
    // No tight loop: what reached the dead participant is what the policy
    // allows the sagas it caught (the ones that gave up, and at most the
    // in-flight ones that came through), five attempts each.
    let attempts = rig.participants.alliance_attempts_while_down();
    let caught = exhausted + super::IN_FLIGHT;
    eprintln!("faults: {attempts} connections reached alliances while it was down; {exhausted} sagas gave up");
    assert!(
        attempts <= caught * 5,
        "{attempts} attempts reached alliances while down, for {exhausted} sagas that gave up: {figures}"
    );
    assert!(completed_after > 0, "nothing completed after it: {figures}");
    assert_eq!(rig.instances[0].ready_status().await, Some(200), "no crash");
}

/// Checks every saga's history against a policy of `attempts` tries: a
/// saga that gave up did so after exactly that many, and one compensated
/// without a business refusal is one that gave up. Returns how many gave
/// up and how many completed after trying more than once.
async fn policy_was_followed(rig: &Rig, attempts: i64) -> (usize, usize) {
    let pool = super::load::store_pool(&rig.store.url).await;
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT s.partner_id, s.state, \
                count(*) FILTER (WHERE h.reason = 'attempt_failed'), \
                count(*) FILTER (WHERE h.reason = 'retries_exhausted') \
         FROM sagas s JOIN saga_history h USING (saga_id) GROUP BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .expect("the histories");
    let (mut exhausted, mut completed_after) = (0, 0);
    for (partner, state, failed, gave_up) in rows {
        let refused = super::participants::refused(&partner);
        assert!(failed < attempts, "{partner} tried {failed} + 1 times");
        if gave_up > 0 {
            exhausted += 1;
            assert_eq!(
                failed,
                attempts - 1,
                "{partner} gave up after {failed} + 1 tries"
            );
        }
        if state == "compensated" && !refused {
            assert_eq!(
                gave_up, 1,
                "{partner} compensated without a refusal or giving up"
            );
        }
        if state == "completed" && failed > 0 {
            completed_after += 1;
        }
    }
    (exhausted, completed_after)
}

#[tokio::test]
async fn sigterm_under_load_exits_in_the_grace_period_and_the_next_start_finishes() {
    let scale = Scale::from_env();
    let events = scale.events(2000, 300);
    let grace = Duration::from_secs(10);
    let mut rig = Rig::new("sigterm", &[("SHUTDOWN_GRACE_SECS", "10")]).await;
    let first = rig.start_instance().await;
    let load = rig.load(events).await;
    rig.when_published(&load, events / 2).await;
    let (status, took) = rig.instances[first].terminate(grace * 3).await;
    rig.fault_done();
    assert!(
        status.success(),
        "{status}: {}",
        rig.instances[first].tail()
    );
    assert!(took <= grace, "took {took:?} with a {grace:?} grace");
    // With participants answering in milliseconds nothing is mid-step at
    // the end of the grace: every lease it held was handed back.
    let pool = super::load::store_pool(&rig.store.url).await;
    let still_leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas WHERE lease_owner = 'i1' \
         AND state NOT IN ('completed', 'compensated', 'failed')",
    )
    .fetch_one(&pool)
    .await
    .expect("the leases");
    assert_eq!(
        still_leased, 0,
        "live sagas left leased by the stopped instance"
    );
    rig.start_instance().await;
    rig.verdict(load, events, SETTLE)
        .await
        .assert_nothing_lost_or_doubled();
}

/// The store stops answering for longer than a lease (2 s step timeout +
/// 5 s grace) under two instances: once it answers again, leases have
/// lapsed everywhere, and still no saga is driven by two at once — a
/// driver's write is fenced by the saga's version and lease owner.
#[tokio::test]
async fn a_store_paused_past_the_leases_lets_no_saga_be_driven_twice() {
    let scale = Scale::from_env();
    let events = scale.events(1500, 300);
    let mut rig = Rig::new("store-paused", &[]).await;
    rig.start_instance().await;
    rig.start_instance().await;
    let load = rig.load(events).await;
    rig.when_published(&load, events / 3).await;
    rig.store.pause().await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    rig.store.resume().await;
    rig.fault_done();
    rig.verdict(load, events, SETTLE)
        .await
        .assert_nothing_lost_or_doubled();
}

/// One of two instances stops (SIGSTOP, as a long GC pause or a frozen VM)
/// for longer than its leases, mid-load; the other takes its sagas over.
/// When it wakes, every write it had under way is refused (the saga moved,
/// or is leased to the other), so no saga's history shows both; requests it
/// had not sent yet go out late, under the saga's own key.
#[tokio::test]
async fn an_instance_frozen_past_its_leases_cannot_write_over_its_successor() {
    let scale = Scale::from_env();
    let events = scale.events(1500, 300);
    let mut rig = Rig::new("instance-frozen", &[]).await;
    let frozen = rig.start_instance().await;
    rig.start_instance().await;
    let load = rig.load(events).await;
    rig.when_published(&load, events / 3).await;
    rig.instances[frozen].signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(10)).await;
    rig.instances[frozen].signal(libc::SIGCONT);
    rig.fault_done();
    rig.verdict(load, events, SETTLE)
        .await
        .assert_nothing_lost_or_doubled_but_late_calls();
}
