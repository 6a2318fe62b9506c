//! A scenario's verdict: what the store and the participants say once the
//! run settled, as one line of figures; every count but the first three
//! must be zero.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use sqlx::PgPool;

use super::participants::{refused, Tally};

/// One scenario's figures.
#[derive(Debug, Default)]
pub struct Figures {
    pub scenario: String,
    pub broker: String,
    pub events: usize,
    /// Kills, restarts, outages and pauses made.
    pub faults: usize,
    pub terminal: i64,
    /// Events that started no saga.
    pub lost: usize,
    /// Sagas not terminal when the run gave up waiting.
    pub unfinished: i64,
    /// Events that started more than one saga.
    pub duplicates: usize,
    /// Saga steps called under more than one idempotency key.
    pub keys_over_one: usize,
    /// Saga steps with two calls in flight at once.
    pub overlapping: usize,
    /// Sagas whose state disagrees with what the participants did: a
    /// completed one without its alliance, a compensated one not deleted,
    /// a deletion of a partner whose saga completed.
    pub disagreeing: usize,
    /// Calls the participants received, and sends of the load that the
    /// broker did not take and that were made again.
    pub calls: usize,
    pub resent: usize,
    /// The longest any saga took to end, counted from the end of the last
    /// fault or from its event if that came later: how long the faults
    /// kept work waiting (the backlog's own latency included).
    pub slowest_after_fault: Duration,
    /// Transitions each instance made, from the history's `instance_id`.
    pub split: Vec<(String, i64)>,
}

impl Figures {
    /// Panics, naming the figures, unless every zero is there.
    pub fn assert_nothing_lost_or_doubled(&self) {
        let zero = self.lost == 0
            && self.unfinished == 0
            && self.duplicates == 0
            && self.keys_over_one == 0
            && self.overlapping == 0
            && self.disagreeing == 0
            && self.terminal == self.events as i64;
        assert!(zero, "{self}");
    }

    /// Writes the line to the output and, under `make faults`, to the
    /// report file the table is made from (`FAULTS_REPORT`).
    pub fn report(&self) {
        eprintln!("{self}");
        if let Ok(path) = std::env::var("FAULTS_REPORT") {
            use std::io::Write;
            let line = serde_json::json!({
                "scenario": self.scenario, "broker": self.broker, "events": self.events,
                "faults": self.faults, "terminal": self.terminal, "lost": self.lost,
                "unfinished": self.unfinished, "duplicates": self.duplicates,
                "keys_over_one": self.keys_over_one, "overlapping": self.overlapping,
                "disagreeing": self.disagreeing, "calls": self.calls, "resent": self.resent,
                "slowest_after_fault_ms": self.slowest_after_fault.as_millis() as u64,
                "split": self.split,
            });
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(file, "{line}");
            }
        }
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let split: Vec<String> = self.split.iter().map(|(i, n)| format!("{i} {n}")).collect();
        write!(
            f,
            "faults: {} · {} · events {} · faults {} · terminal {} · lost {} · unfinished {} · \
             duplicates {} · keys>1 {} · overlapping {} · disagreeing {} · \
             slowest {:.1} s after the last fault · calls {} · resent {} · transitions by instance: {}",
            self.scenario,
            self.broker,
            self.events,
            self.faults,
            self.terminal,
            self.lost,
            self.unfinished,
            self.duplicates,
            self.keys_over_one,
            self.overlapping,
            self.disagreeing,
            self.slowest_after_fault.as_secs_f64(),
            self.calls,
            self.resent,
            split.join(", ")
        )
    }
}

/// Fills in what the store and the participants say about `partners`
/// (the scenario's, one per event).
pub async fn judge(figures: &mut Figures, pool: &PgPool, partners: &[String], tally: &Tally) {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT partner_id, state FROM sagas")
        .fetch_all(pool)
        .await
        .expect("read the sagas");
    let mut states: HashMap<&str, Vec<&str>> = HashMap::new();
    for (partner, state) in &rows {
        states.entry(partner).or_default().push(state);
    }
    let terminal = |s: &&str| matches!(*s, "completed" | "compensated" | "failed");
    figures.events = partners.len();
    figures.terminal = rows.iter().filter(|(_, s)| terminal(&s.as_str())).count() as i64;
    figures.unfinished = rows.len() as i64 - figures.terminal;
    figures.lost = partners
        .iter()
        .filter(|p| !states.contains_key(p.as_str()))
        .count();
    figures.duplicates = states.values().filter(|s| s.len() > 1).count();
    figures.calls = tally.calls;
    figures.keys_over_one = tally.keys_per_step_over_one;
    figures.overlapping = tally.overlapping;
    figures.disagreeing = rows
        .iter()
        .filter(|(partner, state)| {
            let created = tally.partners_created.contains(partner);
            let deleted = tally.partners_deleted.contains(partner);
            match state.as_str() {
                "completed" => !created || deleted,
                // Refused or given up on: compensated by deleting the partner.
                "compensated" => !deleted || (created && refused(partner)),
                _ => false,
            }
        })
        .count();
    figures.split = sqlx::query_as(
        "SELECT coalesce(instance_id, '?'), count(*) FROM saga_history \
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("read the history");
}

/// The longest time from `fault_end`, or a saga's event when later, to the
/// saga's terminal state (its last update).
pub async fn slowest_after(
    pool: &PgPool,
    offered: &super::load::Offered,
    fault_end: chrono::DateTime<chrono::Utc>,
) -> Duration {
    let ended: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT partner_id, updated_at FROM sagas \
         WHERE state IN ('completed', 'compensated', 'failed')",
    )
    .fetch_all(pool)
    .await
    .expect("read the sagas");
    let offered = offered.lock().unwrap_or_else(|e| e.into_inner());
    ended
        .iter()
        .filter_map(|(partner, at)| {
            let from = offered
                .get(partner)
                .map_or(fault_end, |o| (*o).max(fault_end));
            (*at - from).to_std().ok()
        })
        .max()
        .unwrap_or_default()
}
