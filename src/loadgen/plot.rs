//! SVG pictures of a comparison: latency percentiles against offered rate, and the percentile
//! spectrum of each system at a chosen step.

use std::path::Path;

use plotters::prelude::*;

use super::error::{LoadgenError, Result};
use super::report::RunReport;
use super::step::StepResult;

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Display>(e: E) -> LoadgenError {
    LoadgenError::Plot(e.to_string())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.1, 10.0)
    } else {
        (lo / 1.5, hi * 1.5)
    }
}

/// 1, 2 and 5 times the powers of ten between `lo` and `hi`: the labelled ticks of a log axis.
fn ticks_125(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

fn label(v: &f64) -> String {
    if *v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// p50 (thin) and p99 (thick) end-to-end latency against offered rate, one colour per system,
/// both axes logarithmic.
pub fn latency_vs_rate(reports: &[RunReport], title: &str, path: &Path) -> Result<()> {
    let steps: Vec<(usize, &StepResult)> = reports
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.all_steps().into_iter().map(move |s| (i, s)))
        .filter(|(_, s)| s.latency.count > 0)
        .collect();
    let (x0, x1) = bounds(steps.iter().map(|(_, s)| s.offered_rps));
    let (y0, y1) = bounds(steps.iter().flat_map(|(_, s)| [s.latency.p50_ms, s.latency.p99_ms]));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(ticks_125(x0, x1)),
            (y0..y1).log_scale().with_key_points(ticks_125(y0, y1)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered rate (records/s)")
        .y_desc("end-to-end latency (ms)")
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .draw()
        .map_err(err)?;
    for (i, r) in reports.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let pts = |f: fn(&StepResult) -> f64| -> Vec<(f64, f64)> {
            steps
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, s)| (s.offered_rps, f(s)))
                .filter(|(_, y)| *y > 0.0)
                .collect()
        };
        let p99 = pts(|s| s.latency.p99_ms);
        let p50 = pts(|s| s.latency.p50_ms);
        chart
            .draw_series(LineSeries::new(p99.clone(), c.stroke_width(3)))
            .map_err(err)?
            .label(format!("{} p99", r.label()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(p99.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(err)?;
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(1)))
            .map_err(err)?
            .label(format!("{} p50", r.label()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
        chart.draw_series(p50.iter().map(|&p| Circle::new(p, 2, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Position of quantile `q` on the "nines" axis: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 ...
fn nines(q: f64) -> f64 {
    -(1.0 - q.min(0.99999)).log10()
}

/// The percentile spectrum (latency at each quantile) of one step per system: `picks[i]` is
/// the step of `reports[i]` to draw.
pub fn spectrum(
    reports: &[RunReport],
    picks: &[Option<&StepResult>],
    title: &str,
    path: &Path,
) -> Result<()> {
    let (y0, y1) =
        bounds(picks.iter().flatten().flat_map(|s| s.spectrum.iter().map(|(_, ms)| *ms)));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..5.0, (y0..y1).log_scale().with_key_points(ticks_125(y0, y1)))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("end-to-end latency (ms)")
        .y_label_formatter(&label)
        .x_labels(6)
        .x_label_formatter(&|x: &f64| match x.round() as i64 {
            0 => "p0".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            3 => "p99.9".into(),
            4 => "p99.99".into(),
            _ => "max".into(),
        })
        .draw()
        .map_err(err)?;
    for (i, (r, pick)) in reports.iter().zip(picks).enumerate() {
        let Some(step) = pick else { continue };
        let c = COLOURS[i % COLOURS.len()];
        let pts: Vec<(f64, f64)> = step
            .spectrum
            .iter()
            .map(|&(q, ms)| (if q >= 1.0 { 5.0 } else { nines(q) }, ms))
            .filter(|(_, ms)| *ms > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} at {:.0}/s", r.label(), step.offered_rps))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::recorder::Percentiles;
    use crate::loadgen::sweep::SweepOutcome;

    #[test]
    fn draws_both_pictures() {
        let step = |rate: f64, p99: f64| StepResult {
            rate,
            offered_rps: rate,
            latency: Percentiles {
                count: 10,
                p50_ms: p99 / 3.0,
                p99_ms: p99,
                ..Default::default()
            },
            spectrum: vec![(0.0, 1.0), (0.5, p99 / 3.0), (0.99, p99), (1.0, p99 * 2.0)],
            ..Default::default()
        };
        let r = RunReport {
            system: "sluice".into(),
            sweep: SweepOutcome {
                steps: vec![step(100.0, 5.0), step(200.0, 9.0)],
                max_sustained_rps: Some(200.0),
                min_failed_rps: None,
                half_step: Some(step(100.0, 4.0)),
            },
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.svg");
        latency_vs_rate(std::slice::from_ref(&r), "t", &a).unwrap();
        let svg = std::fs::read_to_string(&a).unwrap();
        assert!(svg.contains("<svg") && svg.contains("sluice p99"), "{svg}");
        let b = dir.path().join("b.svg");
        spectrum(std::slice::from_ref(&r), &[r.sweep.half_step.as_ref()], "t", &b).unwrap();
        assert!(std::fs::read_to_string(&b).unwrap().contains("sluice at 100/s"));
    }
}
