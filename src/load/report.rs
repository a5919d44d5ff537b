//! `flashsale load --report FILE.html`: one self-contained page (inline SVG, no script,
//! nothing fetched) with the figures of the run, its throughput over time and its
//! latency distribution.

use std::fmt::Write as _;
use std::path::Path;

use super::{LoadPlan, LoadReport, Schedule, Summary};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const MARGIN_LEFT: f64 = 64.0;
const MARGIN_BOTTOM: f64 = 36.0;
const MARGIN_TOP: f64 = 16.0;
const MARGIN_RIGHT: f64 = 16.0;

pub fn write_html(
    path: &Path,
    plan: &LoadPlan,
    report: &LoadReport,
    summary: &Summary,
) -> std::io::Result<()> {
    std::fs::write(path, render(plan, report, summary))
}

pub fn render(plan: &LoadPlan, report: &LoadReport, summary: &Summary) -> String {
    let schedule = match plan.schedule {
        Schedule::Closed { connections } => format!("closed loop, {connections} connections"),
        Schedule::Open { rate } => format!("open loop, {rate:.0} attempts/s offered"),
    };
    let target = match &plan.probe {
        Some(path) => format!("GET {}", escape(path)),
        None => format!("sale {}", escape(&plan.sale_id)),
    };
    let l = &summary.latency_ms;
    let a = &summary.audit;
    let mut rows = vec![
        ("gateway", escape(&plan.base_url)),
        ("target", target),
        ("schedule", schedule),
        (
            "requests",
            format!(
                "{} in {:.2} s ({} attempts)",
                summary.requests, summary.elapsed_s, summary.attempts
            ),
        ),
        (
            "throughput",
            format!("{:.0} requests/s", summary.throughput_rps),
        ),
        (
            "accepted",
            format!(
                "{} orders, {} units",
                summary.accepted, summary.acknowledged
            ),
        ),
        ("refused", counts(summary.rejected.iter())),
        ("HTTP status", counts(summary.by_status.iter())),
        (
            "latency",
            format!(
                "p50 {:.2} ms · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        ),
    ];
    if plan.probe.is_none() {
        rows.push((
            "audit",
            format!(
                "stock {} · oversold {} · buyers over the limit {} · replay mismatches {} → <b>{}</b>",
                a.stock,
                a.audit.oversold,
                a.audit.buyers_over_limit,
                a.audit.replay_mismatches,
                if a.ok { "OK" } else { "BROKEN" }
            ),
        ));
    }
    let table: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{v}</td></tr>\n"))
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>flashsale load report</title>\n<style>{STYLE}</style></head><body>\n\
         <h1>flashsale load report</h1>\n<table>\n{table}</table>\n\
         <h2>Throughput over time</h2>\n{throughput}\n\
         <h2>Latency distribution</h2>\n{latency}\n\
         <p class=\"note\">Latency is from when a request was due (open loop) or sent (closed \
         loop) to its answer, recorded in an HDR histogram (3 significant digits).</p>\n\
         </body></html>\n",
        throughput = throughput_chart(report),
        latency = latency_chart(report),
    )
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}th{text-align:left;padding:2px 16px 2px 0;color:#555}\
td{padding:2px 0}svg{background:#fafafa;border:1px solid #ddd}\
.axis{stroke:#888}.grid{stroke:#e4e4e4}text{font-size:11px;fill:#444}\
.note{color:#666;font-size:12px}";

fn counts<'a, K: std::fmt::Display + 'a>(items: impl Iterator<Item = (&'a K, &'a u64)>) -> String {
    let parts: Vec<String> = items
        .map(|(k, n)| format!("{} {n}", escape(&k.to_string())))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" · ")
    }
}

/// Requests answered per second as bars, orders accepted per second as a line.
fn throughput_chart(report: &LoadReport) -> String {
    let seconds = report.per_second.len().max(1);
    let top = nice_ceiling(report.per_second.iter().copied().max().unwrap_or(0) as f64);
    let mut svg = frame(&format!("second of the run (1…{seconds})"), "per second");
    grid(&mut svg, top, |v| format!("{v:.0}"));
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let bar_w = plot_w / seconds as f64;
    for (i, &n) in report.per_second.iter().enumerate() {
        let h = y_of(n as f64, top);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#7aa6d6\"><title>second {}: {n} requests</title></rect>",
            MARGIN_LEFT + i as f64 * bar_w + bar_w * 0.1,
            h,
            bar_w * 0.8,
            HEIGHT - MARGIN_BOTTOM - h,
            i + 1
        );
    }
    let points: Vec<String> = report
        .accepted_per_second
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            format!(
                "{:.1},{:.1}",
                MARGIN_LEFT + (i as f64 + 0.5) * bar_w,
                y_of(n as f64, top)
            )
        })
        .collect();
    let _ = write!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#d0582c\" stroke-width=\"2\"/>\
         <text x=\"{:.0}\" y=\"{:.0}\" style=\"fill:#7aa6d6\">■ requests answered</text>\
         <text x=\"{:.0}\" y=\"{:.0}\" style=\"fill:#d0582c\">— orders accepted (202)</text></svg>",
        points.join(" "),
        WIDTH - 300.0,
        MARGIN_TOP + 12.0,
        WIDTH - 160.0,
        MARGIN_TOP + 12.0
    );
    svg
}

/// Latency by percentile, the percentile axis stretched towards the tail (as
/// HdrHistogram plots do): 0, 90, 99, 99.9, 99.99 % are equally spaced.
fn latency_chart(report: &LoadReport) -> String {
    const NINES: f64 = 5.0;
    let hist = &report.latency_us;
    let top = nice_ceiling(hist.max() as f64 / 1000.0);
    let mut svg = frame("percentile", "latency (ms)");
    grid(&mut svg, top, |v| format!("{v}"));
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let x_of = |nines: f64| MARGIN_LEFT + nines / NINES * plot_w;
    for (nines, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        // The last label ends at the axis' end, inside the picture.
        let anchor = if nines == NINES { "end" } else { "middle" };
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.0}\" y2=\"{:.0}\"/>\
             <text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"{anchor}\">{label}</text>",
            MARGIN_TOP,
            HEIGHT - MARGIN_BOTTOM,
            HEIGHT - MARGIN_BOTTOM + 14.0,
            x = x_of(nines)
        );
    }
    if !hist.is_empty() {
        let points: Vec<String> = (0..=200)
            .map(|step| {
                let nines = step as f64 / 200.0 * NINES;
                let quantile = 1.0 - 10f64.powf(-nines);
                let ms = hist.value_at_quantile(quantile) as f64 / 1000.0;
                format!("{:.1},{:.1}", x_of(nines), y_of(ms, top))
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#2c7bd0\" stroke-width=\"2\"/>",
            points.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

fn frame(x_label: &str, y_label: &str) -> String {
    format!(
        "<svg width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\
         <line class=\"axis\" x1=\"{MARGIN_LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{MARGIN_LEFT}\" y1=\"{MARGIN_TOP}\" x2=\"{MARGIN_LEFT}\" y2=\"{b}\"/>\
         <text x=\"{cx}\" y=\"{lx}\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"12\" y=\"{cy}\" transform=\"rotate(-90 12 {cy})\" text-anchor=\"middle\">{y_label}</text>",
        b = HEIGHT - MARGIN_BOTTOM,
        r = WIDTH - MARGIN_RIGHT,
        cx = (MARGIN_LEFT + WIDTH - MARGIN_RIGHT) / 2.0,
        lx = HEIGHT - 4.0,
        cy = (MARGIN_TOP + HEIGHT - MARGIN_BOTTOM) / 2.0,
    )
}

/// Four horizontal grid lines with their values.
fn grid(svg: &mut String, top: f64, label: impl Fn(f64) -> String) {
    for i in 1..=4 {
        let v = top * i as f64 / 4.0;
        let y = y_of(v, top);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{MARGIN_LEFT}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            label(v)
        );
    }
}

fn y_of(value: f64, top: f64) -> f64 {
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    HEIGHT - MARGIN_BOTTOM - (value / top).clamp(0.0, 1.0) * plot_h
}

/// The next 1, 2 or 5 × 10ⁿ at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&v| v >= value)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(14_000.0), 20_000.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(50.0), 50.0);
    }

    #[test]
    fn text_from_the_run_is_escaped() {
        assert_eq!(
            escape("<b>\"x\" & y</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; y&lt;/b&gt;"
        );
    }
}
