//! A small SVG of line charts, for the picture of the Grafana dashboard's panels drawn from the
//! data the Prometheus test scraped (Grafana itself is not packaged in Debian).

use std::fmt::Write;

/// One line: its legend and (seconds, value) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title and its lines.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 460.0;
const HEIGHT: f64 = 220.0;
const COLUMNS: usize = 2;
const COLOURS: [&str; 6] = [
    "#e02f44", "#73bf69", "#5794f2", "#ff9830", "#b877d9", "#fade2a",
];

/// The panels in a grid, two per row, Grafana's dark theme.
pub fn svg(panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLUMNS);
    let mut out = String::new();
    let (total_w, total_h) = (WIDTH * COLUMNS as f64 + 30.0, HEIGHT * rows as f64 + 30.0);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#111217"/>"##
    );
    for (index, panel) in panels.iter().enumerate() {
        let x = 10.0 + (index % COLUMNS) as f64 * (WIDTH + 10.0);
        let y = 10.0 + (index / COLUMNS) as f64 * (HEIGHT + 10.0);
        draw_panel(&mut out, panel, x, y);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, x: f64, y: f64) {
    let _ = writeln!(
        out,
        r##"<rect x="{x}" y="{y}" width="{WIDTH}" height="{HEIGHT}" fill="#181b1f" stroke="#2c3235"/>"##
    );
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" fill="#ccccdc" font-size="13">{}</text>"##,
        x + 8.0,
        y + 18.0,
        escape(&panel.title)
    );
    let points = panel.series.iter().flat_map(|series| &series.points);
    let (t0, t1, top) = points.fold((f64::MAX, f64::MIN, 0.0f64), |(a, b, m), (t, v)| {
        (a.min(*t), b.max(*t), m.max(*v))
    });
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let span = if t1 > t0 { t1 - t0 } else { 1.0 };
    let (plot_x, plot_y, plot_w, plot_h) = (x + 50.0, y + 30.0, WIDTH - 60.0, HEIGHT - 75.0);
    for step in 0..=4 {
        let value = top * f64::from(step) / 4.0;
        let line_y = plot_y + plot_h - plot_h * f64::from(step) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{plot_x}" y1="{line_y:.1}" x2="{}" y2="{line_y:.1}" stroke="#2c3235"/><text x="{}" y="{:.1}" fill="#8e8e8e" text-anchor="end">{}</text>"##,
            plot_x + plot_w,
            plot_x - 4.0,
            line_y + 4.0,
            short(value)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" fill="#8e8e8e" text-anchor="end">{span:.0} s</text>"##,
        plot_x + plot_w,
        plot_y + plot_h + 14.0
    );
    for (index, series) in panel.series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let path: Vec<String> = series
            .points
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    plot_x + (t - t0) / span * plot_w,
                    plot_y + plot_h - v / top * plot_h
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let legend_x = x + 10.0 + (index % 3) as f64 * 150.0;
        let legend_y = y + HEIGHT - 22.0 + (index / 3) as f64 * 13.0;
        let _ = writeln!(
            out,
            r##"<rect x="{legend_x}" y="{}" width="10" height="3" fill="{colour}"/><text x="{}" y="{legend_y}" fill="#ccccdc">{}</text>"##,
            legend_y - 4.0,
            legend_x + 14.0,
            escape(&series.label)
        );
    }
}

fn short(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
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
