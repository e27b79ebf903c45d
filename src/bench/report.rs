//! Rendering of a finished run: the Markdown table (`--markdown`) flattened from the JSON
//! result, and small hand-written SVG line charts (`--plot`): a latency-percentile chart for
//! fan-out and a value-over-time chart for the other scenarios. It must not measure anything or
//! touch sockets; it turns an already computed result into text.

use std::fmt::Write;

use serde_json::Value;

/// The result as a two-column Markdown table, one row per leaf (`results.latency_us.p99`).
pub fn markdown(result: &Value) -> String {
    let mut rows = Vec::new();
    flatten("", result, &mut rows);
    let mut out = String::new();
    let scenario = result["scenario"].as_str().unwrap_or("?");
    let _ = writeln!(out, "### ringcast bench {scenario}\n");
    out.push_str("| metric | value |\n|---|---|\n");
    for (key, value) in rows {
        let _ = writeln!(out, "| {key} | {value} |");
    }
    out
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                // The timeline is for charts and scripts, not for a table.
                if key == "timeline" {
                    continue;
                }
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, child, rows);
            }
        }
        // Long arrays (time series, percentile curves) stay out of the table.
        Value::Array(items) if items.len() > 16 => {
            rows.push((prefix.to_string(), format!("({} values)", items.len())));
        }
        Value::Array(items) if items.iter().any(|item| item.is_object()) => {
            for (index, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{index}]"), item, rows);
            }
        }
        Value::Null => rows.push((prefix.to_string(), "–".to_string())),
        Value::String(text) => rows.push((prefix.to_string(), text.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Axis description: title and tick positions with labels.
pub struct Axis {
    pub title: String,
    pub ticks: Vec<(f64, String)>,
}

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Width and height of the plot area inside the margins.
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

/// A line chart as a standalone SVG document. The y axis starts at zero; x spans the ticks
/// and the data.
pub fn line_chart(title: &str, x: &Axis, y_title: &str, series: &[Series]) -> String {
    let scale = Scale::of(x, series);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + PLOT_W / 2.0,
        escape(title)
    );
    grid(&mut svg, &scale, x);
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + PLOT_W / 2.0,
        HEIGHT - 15.0,
        escape(&x.title)
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + PLOT_H / 2.0,
        escape(y_title)
    );
    lines(&mut svg, &scale, series);
    svg.push_str("</svg>\n");
    svg
}

/// The data ranges of a chart and where their values land in the plot area.
struct Scale {
    x_min: f64,
    x_max: f64,
    y_max: f64,
}

impl Scale {
    fn of(x: &Axis, series: &[Series]) -> Scale {
        let all = || series.iter().flat_map(|s| s.points.iter());
        let xs = || x.ticks.iter().map(|t| t.0).chain(all().map(|p| p.0));
        let x_min = xs().fold(f64::INFINITY, f64::min);
        let x_max = xs().fold(f64::NEG_INFINITY, f64::max);
        let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
            (x_min, x_max)
        } else {
            (0.0, 1.0)
        };
        let y_max = nice_ceiling(all().map(|p| p.1).fold(0.0, f64::max));
        Scale {
            x_min,
            x_max,
            y_max,
        }
    }

    fn px(&self, v: f64) -> f64 {
        LEFT + (v - self.x_min) / (self.x_max - self.x_min) * PLOT_W
    }

    fn py(&self, v: f64) -> f64 {
        TOP + PLOT_H - v / self.y_max * PLOT_H
    }
}

/// The horizontal grid lines with their y values, and the x ticks with their labels.
fn grid(svg: &mut String, scale: &Scale, x: &Axis) {
    // Grid and y ticks.
    for i in 0..=5 {
        let value = scale.y_max * f64::from(i) / 5.0;
        let y = scale.py(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + PLOT_W,
            LEFT - 6.0,
            y + 4.0,
            format_number(value)
        );
    }
    for (value, label) in &x.ticks {
        let xp = scale.px(*value);
        let _ = writeln!(
            svg,
            r##"<line x1="{xp:.1}" y1="{TOP}" x2="{xp:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{xp:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + PLOT_H,
            TOP + PLOT_H + 18.0,
            escape(label)
        );
    }
}

/// One polyline per series, and its entry in the legend right of the plot.
fn lines(svg: &mut String, scale: &Scale, series: &[Series]) {
    for (index, line) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .map(|(xv, yv)| format!("{:.1},{:.1}", scale.px(*xv), scale.py(*yv)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 10.0 + index as f64 * 18.0;
        let lx = LEFT + PLOT_W + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&line.label)
        );
    }
}

/// Percentile axis ticks for x = -log10(1 - q).
pub fn percentile_axis() -> Axis {
    Axis {
        title: "percentile".to_string(),
        ticks: vec![
            (0.0, "0%".to_string()),
            (1.0, "90%".to_string()),
            (2.0, "99%".to_string()),
            (3.0, "99.9%".to_string()),
            (4.0, "99.99%".to_string()),
            (5.0, "99.999%".to_string()),
        ],
    }
}

/// Time axis ticks (seconds) for a series ending at `end`.
pub fn time_axis(end: f64) -> Axis {
    let step = nice_ceiling(end / 8.0).max(1.0);
    let mut ticks = Vec::new();
    let mut t = 0.0;
    while t <= end + 1e-9 {
        ticks.push((t, format!("{t}")));
        t += step;
    }
    Axis {
        title: "seconds".to_string(),
        ticks,
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `value` (1 for zero or less).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for factor in [1.0, 2.0, 5.0, 10.0] {
        if factor * magnitude >= value {
            return factor * magnitude;
        }
    }
    10.0 * magnitude
}

fn format_number(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_flattens_nested_results() {
        let value =
            serde_json::json!({"scenario":"fanout","results":{"lost":0,"latency_us":{"p99":12}}});
        let table = markdown(&value);
        assert!(table.contains("| results.lost | 0 |"), "{table}");
        assert!(table.contains("| results.latency_us.p99 | 12 |"), "{table}");
    }

    #[test]
    fn chart_is_svg_with_one_polyline_per_series() {
        let svg = line_chart(
            "t",
            &percentile_axis(),
            "ms",
            &[
                Series {
                    label: "a".into(),
                    points: vec![(0.0, 1.0), (2.0, 3.0)],
                },
                Series {
                    label: "b<".into(),
                    points: vec![(0.0, 2.0)],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b&lt;"));
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }
}
