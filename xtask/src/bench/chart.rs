//! The scaling chart: cost above the floor against list or table size, one line per series,
//! on a logarithmic size axis.

use anyhow::Result;
use svg::{
    node::element::{Circle, Line, Polyline, Text},
    Document,
};

use super::ScalePoint;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

pub fn scaling_svg(points: &[ScalePoint]) -> Result<String> {
    let mut series: Vec<&str> = Vec::new();
    for point in points {
        if !series.contains(&point.series.as_str()) {
            series.push(&point.series);
        }
    }
    let max_size = points.iter().map(|p| p.size.max(1)).max().unwrap_or(10) as f64;
    let max_ns = points
        .iter()
        .map(|p| p.above_floor)
        .fold(10.0_f64, f64::max)
        * 1.15;
    let x = |size: u64| {
        let decades = max_size.log10().max(1.0);
        MARGIN + (size.max(1) as f64).log10() / decades * (WIDTH - 2.0 * MARGIN)
    };
    let y = |ns: f64| HEIGHT - MARGIN - ns.max(0.0) / max_ns * (HEIGHT - 2.0 * MARGIN);
    let text = |at: (f64, f64), content: String, anchor: &str| {
        Text::new(content)
            .set("x", at.0)
            .set("y", at.1)
            .set("font-size", 11)
            .set("font-family", "sans-serif")
            .set("text-anchor", anchor.to_string())
    };
    let mut document = Document::new()
        .set("viewBox", (0, 0, WIDTH, HEIGHT))
        .set("width", WIDTH)
        .set("height", HEIGHT)
        .add(
            Line::new()
                .set("x1", MARGIN)
                .set("y1", HEIGHT - MARGIN)
                .set("x2", WIDTH - MARGIN)
                .set("y2", HEIGHT - MARGIN)
                .set("stroke", "black"),
        )
        .add(
            Line::new()
                .set("x1", MARGIN)
                .set("y1", MARGIN)
                .set("x2", MARGIN)
                .set("y2", HEIGHT - MARGIN)
                .set("stroke", "black"),
        )
        .add(text(
            (WIDTH / 2.0, HEIGHT - 15.0),
            "entries (log scale)".into(),
            "middle",
        ))
        .add(text(
            (15.0, MARGIN - 20.0),
            "ns per packet above the floor".into(),
            "start",
        ));
    let mut decade = 1u64;
    while decade as f64 <= max_size {
        document = document.add(text(
            (x(decade), HEIGHT - MARGIN + 15.0),
            decade.to_string(),
            "middle",
        ));
        decade *= 10;
    }
    for step in 0..=4 {
        let ns = max_ns * f64::from(step) / 4.0;
        document = document.add(text((MARGIN - 6.0, y(ns) + 4.0), format!("{ns:.0}"), "end"));
    }
    for (index, name) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.series == *name)
            .map(|p| (x(p.size), y(p.above_floor)))
            .collect();
        let coordinates: Vec<String> = line.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        document = document.add(
            Polyline::new()
                .set("points", coordinates.join(" "))
                .set("fill", "none")
                .set("stroke", color)
                .set("stroke-width", 2),
        );
        for (a, b) in &line {
            document = document.add(
                Circle::new()
                    .set("cx", *a)
                    .set("cy", *b)
                    .set("r", 3)
                    .set("fill", color),
            );
        }
        let legend_y = MARGIN + 14.0 * index as f64;
        document = document
            .add(
                Line::new()
                    .set("x1", WIDTH - 300.0)
                    .set("y1", legend_y - 4.0)
                    .set("x2", WIDTH - 280.0)
                    .set("y2", legend_y - 4.0)
                    .set("stroke", color)
                    .set("stroke-width", 2),
            )
            .add(text((WIDTH - 275.0, legend_y), name.to_string(), "start"));
    }
    Ok(document.to_string())
}
