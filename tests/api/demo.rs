//! `flashsale demo --json` runs a whole sale and reports invariants checked from the store.

use std::process::Command;

#[test]
fn demo_sells_exactly_the_stock_and_reports_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "demo",
            "--stock",
            "40",
            "--buyers",
            "800",
            "--connections",
            "16",
            "--json",
        ])
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["stock"], 40);
    assert_eq!(report["buyers"], 800);
    assert_eq!(report["sold"], 40);
    assert_eq!(report["acknowledged"], 40);
    for broken in [
        "oversold",
        "buyers_over_limit",
        "lost",
        "phantom",
        "replay_mismatches",
    ] {
        assert_eq!(report[broken], 0, "{broken}");
    }
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests >= 800, "every buyer sent at least one request");
    let refused: u64 = report["rejected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    // Replays of one accepted order count once in `acknowledged`, so allow for them.
    assert!(refused + 40 <= requests && refused >= 760 - 40, "{report}");
    assert!(report["rejected"]["sold_out"].as_u64().unwrap() > 0);
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][q].as_f64().unwrap() > 0.0, "{q}");
    }
    assert!(report["throughput_rps"].as_f64().unwrap() > 0.0);
}

/// `demo --queue`: the buyers join the sale's line before it starts; the first in line
/// get the stock, everyone is told, in line order, and the store agrees.
#[test]
fn demo_through_a_line_sells_the_stock_in_line_order() {
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "demo",
            "--queue",
            "--stock",
            "30",
            "--buyers",
            "600",
            "--connections",
            "16",
            "--json",
        ])
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["sold"], 30);
    assert_eq!(report["acknowledged"], 30);
    for broken in ["oversold", "buyers_over_limit", "lost", "phantom"] {
        assert_eq!(report[broken], 0, "{broken}");
    }
    let line = &report["line"];
    assert_eq!(line["joined"], 600, "{line}");
    assert_eq!(line["success"], 30, "{line}");
    assert_eq!(line["out_of_order"], 0, "{line}");
    assert_eq!(line["still_waiting"], 0, "{line}");
    // Everyone else is told: closed when the last unit's order is stored (unpaced, the
    // decider may refuse the 31st at its turn just before).
    let refused = line["refused"]["sold_out"].as_u64().unwrap_or(0);
    assert!(refused <= 1, "{line}");
    assert_eq!(
        line["closed"].as_u64().unwrap() + refused,
        600 - 30,
        "{line}"
    );
    assert!(line["wait_p99_ms"].as_f64().unwrap() > 0.0, "{line}");
}
