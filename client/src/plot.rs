//! `client plot report.json -o run.svg`: a report (or a merge) over time,
//! from its per-second series, as an SVG (plotters, SVG backend only):
//! messages per second on top, then the corrected latency per second (p50,
//! p99, max; and the uncorrected p99 at a fixed rate) on a log scale, and at
//! a fixed rate the client's own schedule lag (p99, max) below. Called by
//! `cli.rs`.

use std::io;
use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::report::Report;

const W: u32 = 960;

fn err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(format!("plot: {e}"))
}

/// One line of a panel: its name, colour and points (s, value).
struct Line {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const RED: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(127, 127, 127);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

/// Draws one panel of lines over `x` seconds; `log`: a logarithmic y axis (µs).
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    desc: &str,
    x: f64,
    lines: &[Line],
    log: bool,
) -> io::Result<()> {
    let ymax = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area);
    chart.margin(12).x_label_area_size(35).y_label_area_size(80);
    let xr = 0f64..x.max(1.0);
    if log {
        let mut c = chart.build_cartesian_2d(xr, (1f64..ymax * 4.0).log_scale()).map_err(err)?;
        draw_lines(&mut c, desc, lines)
    } else {
        let mut c = chart.build_cartesian_2d(xr, 0f64..ymax * 1.3).map_err(err)?;
        draw_lines(&mut c, desc, lines)
    }
}

/// Draws the axes (y described by `desc`), `lines` and their legend into `chart`.
fn draw_lines<'a, 'b, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>,
    desc: &str,
    lines: &[Line],
) -> io::Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    'b: 'a,
{
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(desc)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for l in lines {
        let c = l.color;
        chart
            .draw_series(LineSeries::new(l.points.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(l.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(l.points.iter().map(|&p| Circle::new(p, 2, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Draws `r` into the SVG file `path`, titled `title`.
pub fn svg(r: &Report, title: &str, path: &Path) -> io::Result<()> {
    if r.series.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the report has no per-second series"));
    }
    let paced = r.target_rate.is_some() && r.series.iter().any(|s| s.lag_p99_us.is_some());
    // Each second is drawn at its middle.
    let x = r.series.iter().map(|s| s.t).fold(0.0, f64::max);
    let pts = |f: &dyn Fn(&crate::SecondStat) -> Option<f64>| -> Vec<(f64, f64)> {
        r.series.iter().filter_map(|s| f(s).map(|v| (s.t - 0.5, v.max(1.0)))).collect()
    };
    let rate = vec![Line {
        name: "messages per second",
        color: BLUE,
        points: r.series.iter().map(|s| (s.t - 0.5, s.messages as f64)).collect(),
    }];
    let mut latency = vec![
        Line { name: "p50", color: BLUE, points: pts(&|s| s.p50_us) },
        Line { name: "p99", color: ORANGE, points: pts(&|s| s.p99_us) },
        Line { name: "max", color: RED, points: pts(&|s| Some(s.max_us)) },
    ];
    if paced {
        latency.push(Line { name: "uncorrected p99", color: GREY, points: pts(&|s| s.uncorrected_p99_us) });
    }
    let lag = [
        Line { name: "lag p99", color: PURPLE, points: pts(&|s| s.lag_p99_us) },
        Line { name: "lag max", color: RED, points: pts(&|s| s.lag_max_us) },
    ];
    let h = if paced { 900 } else { 640 };
    let root = SVGBackend::new(path, (W, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    let parts = root.split_evenly((if paced { 3 } else { 2 }, 1));
    panel(&parts[0], "messages per second", x, &rate, false)?;
    let desc = if paced { "latency, corrected (µs)" } else { "latency (µs)" };
    panel(&parts[1], desc, x, &latency, true)?;
    if paced {
        panel(&parts[2], "schedule lag (µs)", x, &lag, true)?;
    }
    root.present().map_err(err)
}
