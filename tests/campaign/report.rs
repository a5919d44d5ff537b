//! The campaign's table: one row per fault and deployment, summed over its runs.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::scenario::{Fault, Kind, RunResult};

/// One line per run, as it finishes.
pub fn run_line(n: usize, of: usize, result: &RunResult) -> String {
    let v = &result.verdict;
    let mut line = format!(
        "[{n:>2}/{of}] {:<58} {:>5.1} s  intents {:>4} reqs {:>4} acked {:>3} stored {:>3} paid {:>3} | oversold {} over_limit {} lost {} undrained {} dup {} replay≠ {} leaked {} surplus {} stuck {} check {} | unacked {}",
        result.scenario.name(),
        result.seconds,
        v.intents,
        v.requests,
        v.acked,
        v.stored,
        v.paid,
        v.oversold,
        v.over_limit,
        v.lost,
        v.undrained,
        v.duplicated,
        v.replay_mismatch,
        v.leaked,
        v.surplus,
        v.stuck,
        if v.check_failed > 0 { "FAIL" } else { "ok" },
        v.unacknowledged,
    );
    if !result.fault_note.is_empty() {
        write!(line, "\n        fault: {}", result.fault_note).unwrap();
    }
    if let Some(error) = &result.error {
        write!(line, "\n        HARNESS ERROR: {error}").unwrap();
    }
    if let Some(environment) = &result.environment {
        write!(line, "\n        ENVIRONMENT: {environment}").unwrap();
    }
    let bad = v.violations() > 0 || result.error.is_some() || result.environment.is_some();
    for detail in &v.details {
        if bad || detail.starts_with("load ") {
            write!(line, "\n        {detail}").unwrap();
        }
    }
    if bad {
        write!(
            line,
            "\n        logs: {} (kept with FLASHSALE_TEST_KEEP=1)",
            result.logs
        )
        .unwrap();
    }
    line
}

#[derive(Default)]
struct Row {
    runs: u64,
    errors: u64,
    requests: u64,
    acked: u64,
    stored: u64,
    oversold: u64,
    over_limit: u64,
    lost: u64,
    undrained: u64,
    duplicated: u64,
    replay: u64,
    leaked: u64,
    surplus: u64,
    check_failed: u64,
    stuck: u64,
    unacked: u64,
}

/// The table, and whether every bad column is zero.
pub fn table(results: &[RunResult]) -> (String, bool) {
    let mut rows: BTreeMap<(Fault, Kind), Row> = BTreeMap::new();
    for r in results {
        let row = rows.entry((r.scenario.fault, r.scenario.kind)).or_default();
        let v = &r.verdict;
        row.runs += 1;
        if r.error.is_some() || r.environment.is_some() {
            // No verdict (or one about a broken test broker, not the engine).
            row.errors += 1;
            continue;
        }
        row.requests += v.requests;
        row.acked += v.acked;
        row.stored += v.stored;
        row.oversold += v.oversold;
        row.over_limit += v.over_limit;
        row.lost += v.lost;
        row.undrained += v.undrained;
        row.duplicated += v.duplicated;
        row.replay += v.replay_mismatch;
        row.leaked += v.leaked;
        row.surplus += v.surplus;
        row.check_failed += v.check_failed;
        row.stuck += v.stuck;
        row.unacked += v.unacknowledged;
    }
    let header = [
        "fault",
        "deployment",
        "runs",
        "requests",
        "acked",
        "stored",
        "oversold",
        "over limit",
        "lost",
        "undrained",
        "dup",
        "replay≠",
        "leaked",
        "surplus",
        "stuck keys",
        "check fail",
        "errors",
        "unacked",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let mut total = Row::default();
    for ((fault, kind), row) in &rows {
        lines.push(vec![
            fault.label().to_string(),
            kind.label().to_string(),
            row.runs.to_string(),
            row.requests.to_string(),
            row.acked.to_string(),
            row.stored.to_string(),
            row.oversold.to_string(),
            row.over_limit.to_string(),
            row.lost.to_string(),
            row.undrained.to_string(),
            row.duplicated.to_string(),
            row.replay.to_string(),
            row.leaked.to_string(),
            row.surplus.to_string(),
            row.stuck.to_string(),
            row.check_failed.to_string(),
            row.errors.to_string(),
            row.unacked.to_string(),
        ]);
        total.runs += row.runs;
        total.errors += row.errors;
        total.requests += row.requests;
        total.acked += row.acked;
        total.stored += row.stored;
        total.oversold += row.oversold;
        total.over_limit += row.over_limit;
        total.lost += row.lost;
        total.undrained += row.undrained;
        total.duplicated += row.duplicated;
        total.replay += row.replay;
        total.leaked += row.leaked;
        total.surplus += row.surplus;
        total.check_failed += row.check_failed;
        total.stuck += row.stuck;
        total.unacked += row.unacked;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c < 2 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        writeln!(out, "| {} |", cells.join(" | ")).unwrap();
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            writeln!(out, "|-{}-|", rule.join("-|-")).unwrap();
        }
    }
    let bad = total.oversold
        + total.over_limit
        + total.lost
        + total.undrained
        + total.duplicated
        + total.replay
        + total.leaked
        + total.surplus
        + total.stuck
        + total.check_failed
        + total.errors;
    writeln!(
        out,
        "{} runs, {} requests, {} acknowledged; bad columns: oversold, over limit, lost (acknowledged, then missing or failed), undrained (acknowledged, still on the bus when the 45 s drain ended), dup (a key stored twice), replay≠ (I5), leaked / surplus (I6: sold + remaining ≠ stock), stuck keys (I5: no final answer after 30 s of keyed retries), check fail, errors (runs without a verdict: the harness failed, or the test broker broke in ten attempts). unacked (stored orders never answered 202) is reported, not judged.",
        total.runs, total.requests, total.acked
    )
    .unwrap();
    (out, bad == 0)
}
