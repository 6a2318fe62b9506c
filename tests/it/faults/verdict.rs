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
    /// Saga steps called under any key but `<saga_id>:<step>` of the
    /// partner's one saga: a second key, a wrong one, or none.
    pub keys_off: usize,
    /// Sagas parked as `failed` (no scenario should leave any: deletions
    /// never fail here).
    pub failed: usize,
    /// Sagas whose history returns to an instance after another one wrote
    /// to it: two drivers taking turns.
    pub interleaved: usize,
    /// Saga steps with two calls in flight at once.
    pub overlapping: usize,
    /// Sagas a participant was called for after they had ended: a driver
    /// that acted on a saga it no longer held.
    pub stale_calls: usize,
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
        assert_eq!(self.stale_calls, 0, "{self}");
        self.assert_nothing_lost_or_doubled_but_late_calls();
    }

    /// The same, except calls that reach a participant after their saga
    /// ended: a process frozen after its last lease check and before its
    /// request left sends it when it wakes, whatever the lease says — no
    /// lease can stop a process that cannot know it is late. What must
    /// hold then is that the call carries the saga's own key (the
    /// participant answers it as done) and that no write follows it.
    pub fn assert_nothing_lost_or_doubled_but_late_calls(&self) {
        let zero = self.lost == 0
            && self.unfinished == 0
            && self.duplicates == 0
            && self.keys_off == 0
            && self.failed == 0
            && self.interleaved == 0
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
                "keys_off": self.keys_off, "failed": self.failed, "interleaved": self.interleaved, "overlapping": self.overlapping, "stale_calls": self.stale_calls,
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
             duplicates {} · failed {} · keys off {} · interleaved {} · overlapping {} · called after the end {} · disagreeing {} · \
             slowest {:.1} s after the last fault · calls {} · resent {} · transitions by instance: {}",
            self.scenario,
            self.broker,
            self.events,
            self.faults,
            self.terminal,
            self.lost,
            self.unfinished,
            self.duplicates,
            self.failed,
            self.keys_off,
            self.interleaved,
            self.overlapping,
            self.stale_calls,
            self.disagreeing,
            self.slowest_after_fault.as_secs_f64(),
            self.calls,
            self.resent,
            split.join(", ")
        )
    }
}

/// Fills in what the store and the participants say about `partners`
/// (the scenario's, one per event, first offered at `offered`), the waits
/// counted from `fault_end`.
pub async fn judge(
    figures: &mut Figures,
    pool: &PgPool,
    (partners, offered): (&[String], &super::load::Offered),
    fault_end: chrono::DateTime<chrono::Utc>,
    tally: &Tally,
) {
    let rows: Vec<(String, String, chrono::DateTime<chrono::Utc>, uuid::Uuid)> =
        sqlx::query_as("SELECT partner_id, state, updated_at, saga_id FROM sagas")
            .fetch_all(pool)
            .await
            .expect("read the sagas");
    let mut states: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut saga_of: HashMap<&str, uuid::Uuid> = HashMap::new();
    for (partner, state, _, saga_id) in &rows {
        states.entry(partner).or_default().push(state);
        saga_of.insert(partner, *saga_id);
    }
    let terminal = |s: &&str| matches!(*s, "completed" | "compensated" | "failed");
    figures.events = partners.len();
    figures.terminal = rows
        .iter()
        .filter(|(_, s, _, _)| terminal(&s.as_str()))
        .count() as i64;
    figures.failed = rows.iter().filter(|(_, s, _, _)| s == "failed").count();
    figures.slowest_after_fault = slowest_after(&rows, terminal, offered, fault_end);
    figures.stale_calls = rows
        .iter()
        .filter(|(partner, state, ended, _)| {
            terminal(&state.as_str()) && tally.last_call.get(partner).is_some_and(|at| at > ended)
        })
        .count();
    figures.unfinished = rows.len() as i64 - figures.terminal;
    figures.lost = partners
        .iter()
        .filter(|p| !states.contains_key(p.as_str()))
        .count();
    figures.duplicates = states.values().filter(|s| s.len() > 1).count();
    figures.calls = tally.calls;
    figures.keys_off = tally
        .keys
        .iter()
        .filter(|((partner, step), keys)| {
            let expected = saga_of
                .get(partner.as_str())
                .map(|id| format!("{id}:{step}"));
            keys.len() != 1 || expected.as_ref() != keys.iter().next()
        })
        .count();
    figures.interleaved = interleaved(pool).await;
    figures.overlapping = tally.overlapping;
    figures.disagreeing = rows
        .iter()
        .filter(|(partner, state, _, _)| {
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

/// The longest time from `fault_end`, or a saga's event when later, to a
/// terminal saga's last update, over `rows` (partner, state, updated_at).
fn slowest_after(
    rows: &[(String, String, chrono::DateTime<chrono::Utc>, uuid::Uuid)],
    terminal: impl Fn(&&str) -> bool,
    offered: &super::load::Offered,
    fault_end: chrono::DateTime<chrono::Utc>,
) -> Duration {
    let offered = offered.lock().unwrap_or_else(|e| e.into_inner());
    rows.iter()
        .filter(|(_, state, _, _)| terminal(&state.as_str()))
        .filter_map(|(partner, _, at, _)| {
            let from = offered
                .get(partner)
                .map_or(fault_end, |o| (*o).max(fault_end));
            (*at - from).to_std().ok()
        })
        .max()
        .unwrap_or_default()
}

/// Sagas whose history (late news aside: it is recorded beside whoever
/// drives the saga) goes back to an instance after another instance wrote.
async fn interleaved(pool: &PgPool) -> usize {
    let rows: Vec<(uuid::Uuid, Option<String>)> = sqlx::query_as(
        "SELECT saga_id, instance_id FROM saga_history \
         WHERE reason <> 'alliance_created_late' ORDER BY saga_id, seq",
    )
    .fetch_all(pool)
    .await
    .expect("read the history");
    let mut bad = 0;
    let mut i = 0;
    while i < rows.len() {
        let saga = rows[i].0;
        let mut seen: Vec<&Option<String>> = Vec::new();
        let mut back = false;
        while i < rows.len() && rows[i].0 == saga {
            let by = &rows[i].1;
            if seen.last() != Some(&by) {
                back |= seen.contains(&by);
                seen.push(by);
            }
            i += 1;
        }
        bad += usize::from(back);
    }
    bad
}
