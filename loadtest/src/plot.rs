//! `--plot FILE.svg`: throughput and latency over time, as a small hand-written SVG (two
//! panels sharing the time axis; the warmup shaded).

use std::fmt::Write as _;

use crate::engine::Point;

const W: f64 = 960.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const PANEL_H: f64 = 220.0;
const TOP1: f64 = 60.0;
const TOP2: f64 = 350.0;
const H: f64 = 620.0;

/// A round step that cuts `0..max` into about `n` parts (1, 2 or 5 times a power of 10).
pub fn nice_step(max: f64, n: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / n.max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One line: its name, its colour and its (time, value) points.
struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

struct Panel<'a> {
    top: f64,
    title: &'a str,
    unit: &'a str,
    series: Vec<Series<'a>>,
}

fn draw_panel(out: &mut String, p: &Panel<'_>, t_max: f64, warmup: f64) {
    let plot_w = W - LEFT - RIGHT;
    let y_max = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max);
    let y_step = nice_step(y_max, 4.0);
    let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| p.top + PANEL_H - v / y_top * PANEL_H;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        p.top - 12.0,
        escape(p.title)
    );
    if warmup > 0.0 {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{}" width="{:.1}" height="{PANEL_H}" fill="#eeeeee"/><text x="{:.1}" y="{}" font-size="11" fill="#888">warmup</text>"##,
            p.top,
            (x(warmup.min(t_max)) - LEFT).max(0.0),
            LEFT + 4.0,
            p.top + 14.0
        );
    }
    let mut v = 0.0;
    while v <= y_top + y_step * 0.01 {
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
        v += y_step;
    }
    let _ = writeln!(
        out,
        r#"<text x="18" y="{:.1}" font-size="12" transform="rotate(-90 18 {:.1})" text-anchor="middle">{}</text>"#,
        p.top + PANEL_H / 2.0,
        p.top + PANEL_H / 2.0,
        escape(p.unit)
    );
    let x_step = nice_step(t_max, 10.0);
    let mut t = 0.0;
    while t <= t_max + x_step * 0.01 {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            x(t),
            p.top + PANEL_H + 16.0,
            fmt_num(t)
        );
        t += x_step;
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="black"/>"#,
        p.top
    );
    for (
        i,
        Series {
            name,
            colour,
            points,
        },
    ) in p.series.iter().enumerate()
    {
        if !points.is_empty() {
            let path: Vec<String> = points
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
                path.join(" ")
            );
        }
        let lx = W - RIGHT - 200.0 + 100.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            p.top - 16.0,
            lx + 18.0,
            p.top - 16.0,
            lx + 22.0,
            p.top - 12.0,
            escape(name)
        );
    }
}

/// The SVG document.
pub fn svg(title: &str, timeline: &[Point], warmup_secs: f64) -> String {
    let t_max = timeline.iter().map(|p| p.t).fold(1.0f64, f64::max);
    let rate = |f: fn(&Point) -> u64| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter(|p| p.secs >= 0.25)
            .map(|p| (p.t, f(p) as f64 / p.secs))
            .collect()
    };
    let lat = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter(|p| p.ok > 0)
            .map(|p| (p.t, f(p)))
            .collect()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="16">{}</text>"#,
        escape(title)
    );
    draw_panel(
        &mut out,
        &Panel {
            top: TOP1,
            title: "throughput",
            unit: "requests/s",
            series: vec![
                Series {
                    name: "ok/s",
                    colour: "#2a9d4b",
                    points: rate(|p| p.ok),
                },
                Series {
                    name: "errors/s",
                    colour: "#d62728",
                    points: rate(|p| p.errors),
                },
            ],
        },
        t_max,
        warmup_secs,
    );
    draw_panel(
        &mut out,
        &Panel {
            top: TOP2,
            title: "latency of successes",
            unit: "ms",
            series: vec![
                Series {
                    name: "p50",
                    colour: "#1f77b4",
                    points: lat(|p| p.latency.p50),
                },
                Series {
                    name: "p99",
                    colour: "#ff7f0e",
                    points: lat(|p| p.latency.p99),
                },
            ],
        },
        t_max,
        warmup_secs,
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">seconds since start</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 8.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0, 4.0), 50.0);
        assert_eq!(nice_step(7.0, 10.0), 1.0);
        assert_eq!(nice_step(2300.0, 4.0), 1000.0);
        assert_eq!(nice_step(0.0, 4.0), 1.0);
        assert_eq!(nice_step(f64::NAN, 4.0), 1.0);
    }

    #[test]
    fn the_svg_has_both_panels_and_escapes_text() {
        let pts: Vec<Point> = (1..=5)
            .map(|i| Point {
                t: f64::from(i),
                secs: 1.0,
                ok: 100 * u64::from(i as u8),
                errors: 1,
                latency: Percentiles {
                    p50: 2.0,
                    p99: 9.5,
                    ..Percentiles::default()
                },
            })
            .collect();
        let s = svg("ott <&> run", &pts, 1.0);
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("ott &lt;&amp;&gt; run"));
        assert_eq!(s.matches("<polyline").count(), 4);
        assert!(s.contains("warmup"));
        // Empty timelines still make a valid document.
        assert!(svg("x", &[], 0.0).contains("</svg>"));
    }
}
