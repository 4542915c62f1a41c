//! The audit report's pictures as SVG inline in the HTML (no script, no external asset, no
//! namespace URL: HTML puts `<svg>` in its namespace by itself): recovery
//! time per catalog id across seeds, a failing run's timeline, data-loss windows and the probe
//! coverage matrix. Pure functions of their inputs, so the report stays a function of the
//! results.

use super::html_escape as esc;
use crate::coverage::Matrix;
use crate::outcome::FinishedRun;
use std::fmt::Write as _;

const FONT: &str = "font-family=\"system-ui,sans-serif\" font-size=\"11\"";
const PASS: &str = "#2e7d32";
const FAIL: &str = "#c62828";

/// One run's recovery for the recovery picture.
pub struct RecoveryPoint {
    pub label: String,
    /// `None`: not every accepted request finished.
    pub ms: Option<u64>,
    pub passed: bool,
}

fn open(w: u32, h: u32, title: &str) -> String {
    format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         role=\"img\" aria-label=\"{t}\" {FONT}><title>{t}</title>\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>",
        t = esc(title)
    )
}

/// A round axis maximum (1, 2 or 5 × 10^k) at least `max`, and its tick step.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Vertical grid lines and their labels along an x axis of `max` units over `[x0, x0 + w]`.
fn x_ticks(o: &mut String, x0: f64, w: f64, top: f64, bottom: f64, max: f64, step: f64) {
    let mut v = 0.0;
    while v <= max + step / 2.0 {
        let x = x0 + v / max * w;
        let _ = write!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            bottom + 14.0,
            num(v)
        );
        v += step;
    }
}

/// Recovery time (s) of every run, one row per catalog id, with each id's target when it lies
/// within the axis (else it is written at the row's end).
pub fn recovery(rows: &[(String, Vec<RecoveryPoint>, Option<f64>)]) -> String {
    let (left, width, row_h) = (150.0, 560.0, 22.0);
    let measured = rows
        .iter()
        .flat_map(|r| r.1.iter().filter_map(|p| p.ms))
        .max()
        .unwrap_or(0) as f64
        / 1000.0;
    let (max, step) = axis(measured * 1.1);
    let h = 40.0 + row_h * rows.len() as f64 + 30.0;
    let mut o = open(
        (left + width + 120.0) as u32,
        h as u32,
        "Recovery time per catalog id across seeds",
    );
    let bottom = 30.0 + row_h * rows.len() as f64;
    let _ = write!(
        o,
        "<text x=\"{left}\" y=\"16\" font-weight=\"bold\">Recovery time per catalog id (simulated s; \
         green pass, red fail, × did not recover)</text>"
    );
    x_ticks(&mut o, left, width, 24.0, bottom, max, step);
    for (i, (id, points, target)) in rows.iter().enumerate() {
        let y = 30.0 + row_h * (i as f64 + 0.5);
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + 4.0,
            esc(id)
        );
        for (j, p) in points.iter().enumerate() {
            // A small vertical spread keeps equal values apart.
            let dy = (j % 5) as f64 * 2.0 - 4.0;
            match p.ms {
                Some(ms) => {
                    let x = left + (ms as f64 / 1000.0) / max * width;
                    let _ = write!(
                        o,
                        "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\" fill-opacity=\"0.75\">\
                         <title>{}: {:.2} s</title></circle>",
                        y + dy,
                        if p.passed { PASS } else { FAIL },
                        esc(&p.label),
                        ms as f64 / 1000.0
                    );
                }
                None => {
                    let _ = write!(
                        o,
                        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{FAIL}\" text-anchor=\"middle\">×<title>{}: did not recover</title></text>",
                        left + width,
                        y + 4.0,
                        esc(&p.label)
                    );
                }
            }
        }
        if let Some(t) = target {
            if *t <= max {
                let x = left + t / max * width;
                let _ = write!(
                    o,
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#1565c0\" stroke-width=\"2\"/>",
                    y - 8.0,
                    y + 8.0
                );
            } else {
                let _ = write!(
                    o,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1565c0\">target {} s →</text>",
                    left + width + 8.0,
                    y + 4.0,
                    num(*t)
                );
            }
        }
    }
    o.push_str("</svg>");
    o
}

/// One failing run over simulated time: its faults as bands, every operation's completion as a
/// dot at (done, latency) coloured by its status, and what never finished as a cross at its
/// planned time.
pub fn timeline(title: &str, f: &FinishedRun) -> String {
    let r = &f.result;
    let (left, width, top, height) = (60.0, 700.0, 40.0, 200.0);
    let end_s = r.simulated_ms.max(1) as f64 / 1000.0;
    let (xmax, xstep) = axis(end_s);
    let lat_max = r
        .ops
        .iter()
        .filter_map(|o| o.done_ms.map(|d| d.saturating_sub(o.planned_ms)))
        .max()
        .unwrap_or(0) as f64
        / 1000.0;
    let (ymax, ystep) = axis(lat_max);
    let bottom = top + height;
    let mut o = open((left + width + 20.0) as u32, (bottom + 40.0) as u32, title);
    let _ = write!(
        o,
        "<text x=\"{left}\" y=\"16\" font-weight=\"bold\">{}</text>\
         <text x=\"{left}\" y=\"30\" fill=\"#555\">faults as bands; dots: completions at (time, latency s), \
         green completed, orange dead-lettered, red failed; × never finished</text>",
        esc(title)
    );
    let x = |s: f64| left + s / xmax * width;
    let y = |s: f64| bottom - s / ymax * height;
    for (i, w) in r.fault_windows.iter().enumerate() {
        let (a, b) = (w.start_ms as f64 / 1000.0, w.end_ms as f64 / 1000.0);
        let bw = (x(b) - x(a)).max(2.0);
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{top}\" width=\"{bw:.1}\" height=\"{height}\" fill=\"#ff9800\" fill-opacity=\"0.18\">\
             <title>fault {}: {} on {} ({a:.1}–{b:.1} s)</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#e65100\" font-size=\"9\">{}</text>",
            x(a),
            w.fault,
            esc(w.kind.as_str()),
            esc(&w.target),
            x(a) + 2.0,
            top + 10.0 + (i % 6) as f64 * 10.0,
            esc(w.kind.as_str())
        );
    }
    x_ticks(&mut o, left, width, top, bottom, xmax, xstep);
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            left - 4.0,
            y(v) + 4.0,
            num(v)
        );
        v += ystep;
    }
    let _ = write!(
        o,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for op in &r.ops {
        let label = format!("op {} {}", op.op, op.kind);
        match op.done_ms {
            Some(d) => {
                let colour = match op.status.as_deref() {
                    Some("completed") => PASS,
                    Some("dead_letter") => "#ef6c00",
                    _ => FAIL,
                };
                let lat = d.saturating_sub(op.planned_ms) as f64 / 1000.0;
                let _ = write!(
                    o,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"><title>{} {}: done {:.2} s, latency {lat:.2} s</title></circle>",
                    x(d as f64 / 1000.0),
                    y(lat),
                    esc(&label),
                    esc(op.status.as_deref().unwrap_or("?")),
                    d as f64 / 1000.0
                );
            }
            None => {
                let _ = write!(
                    o,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{FAIL}\" text-anchor=\"middle\">×<title>{}: never finished (planned {:.2} s)</title></text>",
                    x(op.planned_ms as f64 / 1000.0),
                    top + 4.0,
                    esc(&label),
                    op.planned_ms as f64 / 1000.0
                );
            }
        }
    }
    let _ = write!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">simulated s</text>",
        left + width / 2.0,
        bottom + 30.0
    );
    o.push_str("</svg>");
    o
}

/// Data-loss windows: one bar per (run, failover) with loss, against the run's target.
pub fn data_loss(rows: &[(String, u64, u64, Option<f64>)]) -> String {
    let (left, width, row_h) = (220.0, 480.0, 20.0);
    let longest = rows
        .iter()
        .map(|r| r.1 as f64 / 1000.0)
        .fold(0.0f64, f64::max);
    let (max, step) = axis(longest * 1.1);
    let bottom = 30.0 + row_h * rows.len() as f64;
    let mut o = open(
        (left + width + 140.0) as u32,
        (bottom + 30.0) as u32,
        "Data-loss windows",
    );
    let _ = write!(
        o,
        "<text x=\"{left}\" y=\"16\" font-weight=\"bold\">Data-loss window per run with loss (simulated s)</text>"
    );
    x_ticks(&mut o, left, width, 24.0, bottom, max, step);
    for (i, (label, window_ms, lost, target)) in rows.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let s = *window_ms as f64 / 1000.0;
        let over = target.is_some_and(|t| s > t);
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
             <title>{}: {s:.2} s, {lost} commit(s) lost</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{s:.2} s{}</text>",
            left - 6.0,
            y + 13.0,
            esc(label),
            y + 3.0,
            (s / max * width).max(1.0),
            row_h - 6.0,
            if over { FAIL } else { "#6d4c41" },
            esc(label),
            left + width + 6.0,
            y + 13.0,
            target.map_or(String::new(), |t| format!(" (target {})", num(t)))
        );
    }
    o.push_str("</svg>");
    o
}

/// The probe coverage matrix: a row per declared probe, a column per catalog id (`-`: reference
/// scenarios), a filled cell where a run of that id reached it; unreached rows in red.
pub fn coverage(m: &Matrix, ids: &[String]) -> String {
    let (left, cell, top) = (260.0, 14.0, 140.0);
    // Room for the rotated column labels, which lean right.
    let w = left + cell * ids.len() as f64 + 90.0;
    let h = top + cell * m.probes.len() as f64 + 10.0;
    let mut o = open(w as u32, h as u32, "Engine probe coverage matrix");
    let _ = write!(
        o,
        "<text x=\"4\" y=\"16\" font-weight=\"bold\">Probe coverage: probes × catalog ids</text>"
    );
    for (j, id) in ids.iter().enumerate() {
        let x = left + cell * (j as f64 + 0.5);
        let _ = write!(
            o,
            "<text transform=\"translate({x:.1},{:.1}) rotate(-60)\" font-size=\"9\">{}</text>",
            top - 4.0,
            esc(id)
        );
    }
    for (i, p) in m.probes.iter().enumerate() {
        let y = top + cell * i as f64;
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"9\" font-family=\"monospace\" fill=\"{}\">{}</text>",
            left - 4.0,
            y + cell - 4.0,
            if p.runs == 0 { FAIL } else { "#222" },
            esc(p.name)
        );
        for (j, id) in ids.iter().enumerate() {
            let hit = p.by_id.get(id);
            let _ = write!(
                o,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"#fff\"><title>{} × {}: {}</title></rect>",
                left + cell * j as f64,
                cell - 1.0,
                cell - 1.0,
                if hit.is_some() { "#1565c0" } else { "#eeeeee" },
                esc(p.name),
                esc(id),
                hit.map_or("not reached".to_string(), |s| {
                    format!("reached in {}", s.iter().cloned().collect::<Vec<_>>().join(", "))
                })
            );
        }
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_cover_the_maximum() {
        assert_eq!(axis(0.0), (1.0, 0.2));
        assert_eq!(axis(9.3), (10.0, 2.0));
        let (max, step) = axis(123.0);
        assert!(max >= 123.0 && (max / step) <= 10.0, "{max} {step}");
    }

    #[test]
    fn pictures_are_well_formed_and_escape_their_labels() {
        let rows = vec![(
            "FM-<X>".to_string(),
            vec![
                RecoveryPoint {
                    label: "s seed 1".into(),
                    ms: Some(1500),
                    passed: true,
                },
                RecoveryPoint {
                    label: "s seed 2".into(),
                    ms: None,
                    passed: false,
                },
            ],
            Some(900.0),
        )];
        let svg = recovery(&rows);
        assert!(
            svg.starts_with("<svg width="),
            "inline in HTML: no namespace, no URL"
        );
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("FM-&lt;X&gt;") && !svg.contains("FM-<X>"));
        assert!(svg.contains("target 900 s"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1);
        let loss = data_loss(&[("a seed 1".into(), 2500, 3, Some(1.0))]);
        assert!(loss.contains(FAIL), "over its target: red");
    }
}
