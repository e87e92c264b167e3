//! SVG plots (plotters, SVG backend only): throughput vs connections per
//! mode (one plot per message size), latency percentiles per mode at fixed
//! rate, and connections per second per mode.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::{Results, Sample, Section};

/// One line per mode: palette index, name, points.
type Series<'a> = Vec<(usize, &'a str, Vec<(f64, f64)>)>;

const W: u32 = 960;
const H: u32 = 600;

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

fn color(i: usize) -> RGBColor {
    // A qualitative palette that stays readable with 13 series.
    const P: [(u8, u8, u8); 13] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (0, 0, 0),
        (120, 120, 255),
        (255, 80, 160),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

/// Draws every plot into `out`; returns the files written.
pub fn all(res: &Results, out: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for &size in &res.opts.sizes {
        let path = out.join(format!("throughput_{size}B.svg"));
        if throughput(res, size, &path)? {
            files.push(path);
        }
    }
    let path = out.join("latency_fixed_rate.svg");
    if latency(res, &path)? {
        files.push(path);
    }
    let path = out.join("reconnect.svg");
    if reconnect(res, &path)? {
        files.push(path);
    }
    Ok(files)
}

fn ok_median<'a>(res: &'a Results, mode: &str, section: &Section, conns: usize, size: usize) -> Option<&'a Sample> {
    res.find(mode, section, conns, size).filter(|r| r.na.is_none() && r.median.failure.is_none()).map(|r| &r.median)
}

fn throughput(res: &Results, size: usize, path: &Path) -> Result<bool, String> {
    let series: Series = res
        .modes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pts: Vec<(f64, f64)> = res
                .opts
                .conns
                .iter()
                .filter_map(|&c| ok_median(res, m.name, &Section::Closed, c, size).map(|s| (c as f64, s.msgs_per_sec)))
                .collect();
            (i, m.name, pts)
        })
        .filter(|(_, _, p)| !p.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let ymax = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(0.0, f64::max) * 1.6; // room for the legend
    let xmax = *res.opts.conns.iter().max().unwrap_or(&1000) as f64;
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Closed-loop throughput, {size} B messages"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((0.8f64..xmax * 1.25).log_scale(), 0f64..ymax.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("messages per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, name, pts) in series {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

fn latency(res: &Results, path: &Path) -> Result<bool, String> {
    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    let series: Series = res
        .modes
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let r = res.rows.iter().find(|r| r.mode == m.name && matches!(r.section, Section::Rate(_)))?;
            if r.median.failure.is_some() || r.na.is_some() {
                return None;
            }
            let s = &r.median;
            let v = [s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us];
            Some((i, m.name, v.iter().enumerate().map(|(k, &y)| (k as f64, y.max(1.0))).collect()))
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let ymax = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(1.0, f64::max) * 2.0;
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency at 50% of each mode's peak rate (64 B, corrected)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.2f64..4.2, (1f64..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| {
            let k = x.round();
            if (x - k).abs() < 0.05 && (0.0..=4.0).contains(&k) {
                labels[k as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, name, pts) in series {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

fn reconnect(res: &Results, path: &Path) -> Result<bool, String> {
    let bars: Vec<(usize, &str, f64)> = res
        .modes
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let r = res.rows.iter().find(|r| r.mode == m.name && r.section == Section::Reconnect)?;
            (r.median.failure.is_none() && r.na.is_none()).then_some((i, m.name, r.median.msgs_per_sec))
        })
        .collect();
    if bars.is_empty() {
        return Ok(false);
    }
    let n = bars.len();
    let xmax = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 1.15;
    let names: Vec<String> = bars.iter().map(|b| b.1.to_string()).collect();
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("New connections per second (one 64 B message each)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(130)
        .build_cartesian_2d(0f64..xmax, -0.5f64..n as f64 - 0.5)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .x_desc("connections per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            let k = y.round();
            if (y - k).abs() < 0.05 && k >= 0.0 && (k as usize) < names.len() {
                names[k as usize].clone()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(k, (i, _, v))| {
            let y = k as f64;
            Rectangle::new([(0.0, y - 0.35), (*v, y + 0.35)], color(*i).filled())
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}
