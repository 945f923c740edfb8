//! The picture of `quaver jitter --out FILE.svg`: one panel per timing figure the run measured,
//! its percentiles (p50, p99, p99.9, max) as bars on a shared log-scale time axis, Quaver's
//! beside the baseline sender's where the baseline ran. Figures that were not measured get no
//! panel. Plain SVG 1.1 (no script, no CSS), so browsers and `rsvg-convert` draw the same.

use std::fmt::Write as _;

use crate::report::{Quantiles, Report};

/// Canvas width, px.
const WIDTH: f64 = 960.0;
/// Room for the percentile names left of the bars.
const LEFT: f64 = 150.0;
/// Room right of the plot for the longest value label.
const RIGHT: f64 = 110.0;
/// One bar's height and the gap below it.
const BAR: f64 = 16.0;
const BAR_GAP: f64 = 3.0;
/// Gap between percentile groups.
const GROUP_GAP: f64 = 10.0;

const QUAVER_COLOUR: &str = "#2f6db3";
const BASELINE_COLOUR: &str = "#e07b1a";
const RECEIVER_COLOUR: &str = "#3b9a57";
const RECEIVER_NAME: &str = "Quaver receiver (what a bot in the call gets)";

/// One sender's (or receiver's) quantiles in a panel, in µs.
struct Series {
    name: &'static str,
    colour: &'static str,
    quantiles: Quantiles,
}

/// One measured figure.
struct Panel {
    title: &'static str,
    /// What the figure is, and which way is better.
    explain: &'static str,
    series: Vec<Series>,
}

/// Picks one percentile out of a figure's quantiles.
type Pick = fn(&Quantiles) -> f64;

/// The percentiles drawn, with the name shown beside each group.
const PERCENTILES: [(&str, Pick); 4] = [
    ("p50 (median)", |q| q.p50),
    ("p99", |q| q.p99),
    ("p99.9", |q| q.p999),
    ("max", |q| q.max),
];

fn panels(report: &Report) -> Vec<Panel> {
    let quaver = |q: Option<Quantiles>| {
        q.map(|quantiles| Series {
            name: "Quaver",
            colour: QUAVER_COLOUR,
            quantiles,
        })
    };
    let baseline = |pick: fn(&crate::report::BaselineReport) -> Option<Quantiles>| {
        report
            .baseline
            .as_ref()
            .and_then(|b| Some((b.sender.label(), pick(b)?)))
            .map(|(name, quantiles)| Series {
                name,
                colour: BASELINE_COLOUR,
                quantiles,
            })
    };
    let ms = |q: Option<Quantiles>| q.map(|q| q.scaled(1_000.0));
    let heard = report.heard.as_ref();
    let candidates = [
        Panel {
            title: "Send lateness at the sender",
            explain: "when each packet's send returned, against its 20 ms deadline (lower is better)",
            series: quaver(report.send_lateness_us).into_iter().collect(),
        },
        Panel {
            title: "Send lateness at the receiver",
            explain: "arrival at the server (kernel timestamp) against the ideal 20 ms grid (lower is better)",
            series: [
                quaver(report.recv_lateness_us),
                baseline(|b| b.recv_lateness_us),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Panel {
            title: "Inter-arrival jitter (RFC 3550)",
            explain: "smoothed variation of the packets' transit time at the server and at Quaver's receiver (lower is better)",
            series: [
                quaver(report.interarrival_jitter_us),
                baseline(|b| b.interarrival_jitter_us),
                heard
                    .and_then(|h| h.interarrival_jitter_us)
                    .map(|quantiles| Series {
                        name: RECEIVER_NAME,
                        colour: RECEIVER_COLOUR,
                        quantiles,
                    }),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Panel {
            title: "Latency, push to listener",
            explain: "from the push into the engine to the arrival at another client in the call",
            series: quaver(ms(report.latency_ms)).into_iter().collect(),
        },
        Panel {
            title: "Mouth to ear through Quaver's receiver",
            explain: "from the push into the sending engine to the play-out at a receiving engine",
            series: ms(heard.and_then(|h| h.mouth_to_ear_ms))
                .map(|quantiles| Series {
                    name: RECEIVER_NAME,
                    colour: RECEIVER_COLOUR,
                    quantiles,
                })
                .into_iter()
                .collect(),
        },
    ];
    candidates
        .into_iter()
        .filter(|p| !p.series.is_empty())
        .collect()
}

/// A duration given in µs, in the unit that reads best.
pub fn time_label(us: f64) -> String {
    if us <= 0.0 {
        "0".into()
    } else if us < 1.0 {
        format!("{:.0} ns", us * 1_000.0)
    } else if us < 1_000.0 {
        format!("{} µs", significant(us))
    } else if us < 1_000_000.0 {
        format!("{} ms", significant(us / 1_000.0))
    } else {
        format!("{} s", significant(us / 1_000_000.0))
    }
}

/// The label of the grid line at 10^`decade` µs.
fn decade_label(decade: i32) -> &'static str {
    const LABELS: [&str; 11] = [
        "10 ns", "100 ns", "1 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s",
        "100 s",
    ];
    LABELS[(decade + 2).clamp(0, 10) as usize]
}

/// Three significant digits, at most, without trailing noise.
fn significant(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The decades the axis spans: from below the smallest positive value to above the largest,
/// at least two, never finer than 10 ns nor coarser than 100 s.
fn decades(values: impl Iterator<Item = f64>) -> (i32, i32) {
    let (mut low, mut high) = (f64::INFINITY, 0.0_f64);
    for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
        low = low.min(v);
        high = high.max(v);
    }
    if !low.is_finite() {
        return (0, 2);
    }
    let from = (low.log10().floor() as i32).clamp(-2, 7);
    let to = (high.log10().ceil() as i32).clamp(from + 2, 8);
    (from, to)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report's timing figures as an SVG document.
pub fn svg(report: &Report) -> String {
    let panels = panels(report);
    let (from, to) = decades(panels.iter().flat_map(|p| {
        p.series
            .iter()
            .flat_map(|s| PERCENTILES.map(|(_, pick)| pick(&s.quantiles)))
    }));
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |us: f64| {
        if us <= 0.0 {
            return LEFT;
        }
        let t = (us.log10() - f64::from(from)) / f64::from(to - from);
        LEFT + t.clamp(0.0, 1.0) * plot_width
    };
    let panel_height = |p: &Panel| {
        let group = p.series.len() as f64 * (BAR + BAR_GAP) + GROUP_GAP;
        52.0 + 4.0 * group + 34.0
    };
    let header = 78.0;
    let height = header + panels.iter().map(panel_height).sum::<f64>() + 16.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<title>quaver jitter: {} call(s), {:.1} s</title>
<rect width="100%" height="100%" fill="white"/>"#,
        report.calls, report.seconds
    );
    let _ = writeln!(
        svg,
        r##"<text x="16" y="26" font-size="17" font-weight="bold">quaver jitter — {} call(s), {:.1} s, {}</text>
<text x="16" y="46" fill="#444">sender: {}. Percentiles of each figure; time axis in log scale (each grid line ×10).</text>"##,
        report.calls,
        report.seconds,
        escape(&report.mode),
        escape(&report.sender)
    );
    // The legend: every series that appears in some panel.
    let mut legend: Vec<(&str, &str)> = Vec::new();
    for s in panels.iter().flat_map(|p| p.series.iter()) {
        if !legend.iter().any(|(name, _)| *name == s.name) {
            legend.push((s.name, s.colour));
        }
    }
    let mut lx = 16.0;
    for (name, colour) in &legend {
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="58" width="14" height="12" fill="{colour}"/><text x="{:.1}" y="69">{}</text>"#,
            lx + 19.0,
            escape(name)
        );
        lx += 19.0 + 6.8 * name.chars().count() as f64 + 24.0;
    }
    if panels.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="16" y="{:.1}" fill="#a00">nothing timed was measured in this run</text>"##,
            header + 10.0
        );
    }

    let mut top = header;
    for panel in &panels {
        let h = panel_height(panel);
        let _ = writeln!(
            svg,
            r##"<g>
<text x="16" y="{:.1}" font-size="14" font-weight="bold">{}</text>
<text x="16" y="{:.1}" fill="#555">{}</text>"##,
            top + 18.0,
            escape(panel.title),
            top + 35.0,
            escape(panel.explain)
        );
        let plot_top = top + 46.0;
        let plot_bottom = top + h - 34.0;
        // Grid: a line and a label per decade, thinner lines at 2× and 5×.
        for decade in from..=to {
            let base = 10_f64.powi(decade);
            let gx = x(base);
            let _ = writeln!(
                svg,
                r##"<line x1="{gx:.1}" y1="{plot_top:.1}" x2="{gx:.1}" y2="{plot_bottom:.1}" stroke="#bbb"/>
<text x="{gx:.1}" y="{:.1}" fill="#333" text-anchor="middle">{}</text>"##,
                plot_bottom + 14.0,
                decade_label(decade)
            );
            if decade < to {
                for m in [2.0, 5.0] {
                    let mx = x(base * m);
                    let _ = writeln!(
                        svg,
                        r##"<line x1="{mx:.1}" y1="{plot_top:.1}" x2="{mx:.1}" y2="{plot_bottom:.1}" stroke="#eee"/>"##
                    );
                }
            }
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{plot_bottom:.1}" x2="{:.1}" y2="{plot_bottom:.1}" stroke="#333"/>
<text x="{:.1}" y="{:.1}" fill="#333" text-anchor="middle">time (log scale)</text>"##,
            LEFT + plot_width,
            LEFT + plot_width / 2.0,
            plot_bottom + 28.0
        );
        let mut y = plot_top + 4.0;
        for (label, pick) in PERCENTILES {
            let group_height = panel.series.len() as f64 * (BAR + BAR_GAP) - BAR_GAP;
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold">{label}</text>"#,
                LEFT - 8.0,
                y + group_height / 2.0 + 4.0
            );
            for series in &panel.series {
                let value = pick(&series.quantiles);
                let end = x(value);
                let _ = writeln!(
                    svg,
                    r#"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{}"><title>{}: {label} {}</title></rect>
<text x="{:.1}" y="{:.1}">{}</text>"#,
                    (end - LEFT).max(1.0),
                    series.colour,
                    escape(series.name),
                    escape(&time_label(value)),
                    end + 5.0,
                    y + BAR - 4.0,
                    escape(&time_label(value))
                );
                y += BAR + BAR_GAP;
            }
            y += GROUP_GAP;
        }
        let _ = writeln!(svg, "</g>");
        top += h;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_their_unit() {
        assert_eq!(time_label(0.0), "0");
        assert_eq!(time_label(0.25), "250 ns");
        assert_eq!(time_label(3.456), "3.46 µs");
        assert_eq!(time_label(250.0), "250 µs");
        assert_eq!(time_label(20_000.0), "20.0 ms");
        assert_eq!(time_label(1_500_000.0), "1.50 s");
    }

    #[test]
    fn grid_lines_are_labelled_in_round_units() {
        assert_eq!(decade_label(-2), "10 ns");
        assert_eq!(decade_label(0), "1 µs");
        assert_eq!(decade_label(3), "1 ms");
        assert_eq!(decade_label(8), "100 s");
    }

    #[test]
    fn the_axis_covers_every_value() {
        assert_eq!(decades([3.0, 450.0].into_iter()), (0, 3));
        assert_eq!(decades([0.4, 2.0].into_iter()), (-1, 1));
        assert_eq!(decades(std::iter::empty()), (0, 2));
        assert_eq!(decades([0.0, 5.0].into_iter()), (0, 2));
    }
}
