//! What a run cost beside its timings, per saga where it can be counted:
//! the service's CPU seconds and peak memory (from /proc), PostgreSQL's
//! WAL bytes, commits and statements (`pg_stat_statements`, when the
//! server preloads it), and Redis's commands. Each figure is `null` when it
//! cannot be read, never a guess.

use crate::stack;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The bench's database.
const DATABASE: &str = "saga_bench";
/// Statements shown by name in the report.
const TOP_STATEMENTS: usize = 8;

/// A process's CPU seconds so far (user + system), from /proc/<pid>/stat.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. utime and stime are fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| ticks as f64 / per_sec as f64)
}

/// CPU seconds (user + system) of every child this process has waited
/// for so far: around one child's run, the difference is that child's.
pub fn children_cpu_secs() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes the struct it is handed.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: it succeeded, so the struct is filled (and was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// The whole machine's CPU ticks so far, from the first line of
/// /proc/stat: over a run, whether the machine itself was the limit
/// (every core busy) or the run waited on something, and how much the
/// host took from us (steal: a noisy neighbour).
#[derive(Debug, Clone, Copy)]
pub struct MachineTicks {
    busy: u64,
    steal: u64,
    total: u64,
}

/// The machine's ticks now, or `None` where /proc/stat cannot be read.
pub fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let t: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = t.try_into().ok()?;
    Some(MachineTicks {
        busy: user + nice + system + irq + softirq,
        steal,
        total: user + nice + system + idle + iowait + irq + softirq + steal,
    })
}

/// The machine's CPU between two [`machine_ticks`] samples: CPU seconds
/// busy (every process's, ours and the stack's), the busy share of all
/// cores, and the share the host stole.
pub fn machine_delta(
    before: Option<MachineTicks>,
    after: Option<MachineTicks>,
    sagas: u64,
) -> Value {
    let (Some(a), Some(b)) = (before, after) else {
        return Value::Null;
    };
    // SAFETY: sysconf only reads a constant of the system.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_sec <= 0 || b.total <= a.total {
        return Value::Null;
    }
    let busy = b.busy.saturating_sub(a.busy) as f64;
    let total = (b.total - a.total) as f64;
    let busy_secs = busy / per_sec as f64;
    json!({
        "busy_cpu_secs": round2(busy_secs),
        "busy_cpu_ms_per_saga": round2(busy_secs * 1000.0 / sagas.max(1) as f64),
        "busy_share": round2(busy / total),
        "steal_share": round2(b.steal.saturating_sub(a.steal) as f64 / total),
    })
}

/// A process's peak resident memory in KiB (VmHWM).
pub fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One query's single value, or `None` if psql fails.
fn pg_value(sql: &str) -> Option<String> {
    let out = stack::psql()
        .ok()?
        .args(["-X", "-At", "-c", sql])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// PostgreSQL's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct PgSample {
    wal_lsn: Option<String>,
    /// commits, rollbacks, rows inserted, updated, deleted in saga_bench.
    database: Option<[i64; 5]>,
    /// Whether pg_stat_statements answers (preloaded, extension created).
    statements: bool,
}

impl PgSample {
    /// Reads the counters; with `reset`, pg_stat_statements starts over
    /// (the "before" sample), so it holds only what the run did.
    pub fn take(reset: bool) -> Self {
        let wal_lsn = pg_value("SELECT pg_current_wal_lsn()");
        let database = pg_value(&format!(
            "SELECT concat_ws(' ', xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted) \
             FROM pg_stat_database WHERE datname = '{DATABASE}'"
        ))
        .and_then(|row| {
            let n: Vec<i64> = row.split(' ').filter_map(|v| v.parse().ok()).collect();
            n.try_into().ok()
        });
        let preloaded = pg_value("SHOW shared_preload_libraries")
            .is_some_and(|libs| libs.contains("pg_stat_statements"));
        let statements = preloaded
            && pg_value("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").is_some()
            && (!reset || pg_value("SELECT pg_stat_statements_reset()").is_some());
        Self {
            wal_lsn,
            database,
            statements,
        }
    }
}

/// What PostgreSQL did between `before` and `after`, per saga too.
pub fn pg_delta(before: &PgSample, after: &PgSample, sagas: u64) -> Value {
    let per = |n: f64| round2(n / sagas.max(1) as f64);
    let wal_bytes = match (&before.wal_lsn, &after.wal_lsn) {
        (Some(a), Some(b)) => pg_value(&format!("SELECT pg_wal_lsn_diff('{b}', '{a}')::bigint"))
            .and_then(|v| v.parse::<i64>().ok()),
        _ => None,
    };
    let counters = match (before.database, after.database) {
        (Some(a), Some(b)) => {
            let names = [
                "commits",
                "rollbacks",
                "rows_inserted",
                "rows_updated",
                "rows_deleted",
            ];
            let per_saga: serde_json::Map<String, Value> = names
                .iter()
                .zip(a.iter().zip(b.iter()))
                .map(|(name, (a, b))| (name.to_string(), json!(per((b - a) as f64))))
                .collect();
            Value::Object(per_saga)
        }
        _ => Value::Null,
    };
    let statements = (before.statements && after.statements).then(statements);
    json!({
        "wal_bytes": wal_bytes,
        "wal_bytes_per_saga": wal_bytes.map(|b| per(b as f64)),
        "per_saga": counters,
        "statements_per_saga": statements.as_ref().map(|(total, _)| per(*total as f64)),
        "top_statements_per_saga": statements.map(|(_, top)| {
            top.into_iter().map(|(calls, query)| json!({"calls": per(calls as f64), "query": query})).collect::<Vec<_>>()
        }),
        "statements_note": if before.statements { Value::Null } else {
            json!("pg_stat_statements is not preloaded: restart the dev stack (make dev-down, make dev-up) to count statements")
        },
    })
}

/// saga_bench's statements since the reset: the total calls and the most
/// called, with their text shortened.
fn statements() -> (i64, Vec<(i64, String)>) {
    let scope = format!("FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{DATABASE}'");
    let total = pg_value(&format!("SELECT coalesce(sum(calls), 0)::bigint {scope}"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let top = pg_value(&format!(
        "SELECT string_agg(calls || E'\\t' || left(regexp_replace(query, '\\s+', ' ', 'g'), 100), E'\\n') \
         FROM (SELECT calls, query {scope} ORDER BY calls DESC LIMIT {TOP_STATEMENTS}) t"
    ))
    .unwrap_or_default();
    let top = top
        .lines()
        .filter_map(|l| {
            let (calls, query) = l.split_once('\t')?;
            Some((calls.parse().ok()?, query.to_string()))
        })
        .collect();
    (total, top)
}

/// Redis's calls by command (INFO commandstats), every client's.
pub fn redis_commands() -> Option<BTreeMap<String, u64>> {
    let out = stack::redis_cli(&["INFO", "commandstats"])
        .ok()?
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let calls = text
        .lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect();
    Some(calls)
}

/// Redis commands between two samples, per saga, busiest first.
pub fn redis_delta(
    before: &Option<BTreeMap<String, u64>>,
    after: &Option<BTreeMap<String, u64>>,
    sagas: u64,
) -> Value {
    let (Some(before), Some(after)) = (before, after) else {
        return Value::Null;
    };
    let mut by: Vec<(String, u64)> = after
        .iter()
        .map(|(name, n)| {
            (
                name.clone(),
                n - before.get(name).copied().unwrap_or(0).min(*n),
            )
        })
        .filter(|(name, n)| *n > 0 && name != "info")
        .collect();
    by.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let total: u64 = by.iter().map(|(_, n)| n).sum();
    let per = |n: u64| round2(n as f64 / sagas.max(1) as f64);
    json!({
        "note": "every client's: the service's, the load test's reader and publisher, the simulator's (broker mode)",
        "commands_per_saga": per(total),
        // A list, busiest first: a JSON object would lose the order.
        "by_command_per_saga": by.iter().map(|(name, n)| json!({"command": name, "per_saga": per(*n)})).collect::<Vec<_>>(),
    })
}

/// `x` to two decimals, as the report shows figures.
pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_a_peak() {
        let pid = std::process::id() as i32;
        assert!(cpu_secs(pid).is_some_and(|s| s >= 0.0));
        assert!(peak_rss_kib(pid).is_some_and(|k| k > 0));
        assert_eq!(cpu_secs(-1), None);
        assert!(children_cpu_secs().is_some_and(|s| s >= 0.0));
        let t = machine_ticks().expect("/proc/stat");
        assert!(t.busy + t.steal <= t.total && t.total > 0);
    }

    #[test]
    fn machine_deltas_are_shares_of_every_core() {
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let at = |busy, steal, total| MachineTicks { busy, steal, total };
        let d = machine_delta(
            Some(at(0, 0, 0)),
            Some(at(ticks * 3, ticks / 2, ticks * 4)),
            1000,
        );
        assert_eq!(d["busy_cpu_secs"], 3.0);
        assert_eq!(d["busy_cpu_ms_per_saga"], 3.0);
        assert_eq!(d["busy_share"], 0.75);
        assert_eq!(d["steal_share"], 0.13);
        assert_eq!(machine_delta(None, Some(at(1, 0, 2)), 10), Value::Null);
    }

    #[test]
    fn redis_deltas_are_per_saga_and_skip_our_own_info_calls() {
        let before = BTreeMap::from([("xadd".to_string(), 10), ("info".to_string(), 1)]);
        let after = BTreeMap::from([
            ("xadd".to_string(), 30),
            ("xack".to_string(), 10),
            ("info".to_string(), 2),
        ]);
        let d = redis_delta(&Some(before), &Some(after), 10);
        assert_eq!(d["commands_per_saga"], 3.0);
        assert_eq!(
            d["by_command_per_saga"],
            json!([{"command": "xadd", "per_saga": 2.0}, {"command": "xack", "per_saga": 1.0}])
        );
        assert_eq!(redis_delta(&None, &None, 10), Value::Null);
    }
}
