//! The hit-ratio chart: one panel per trace, hit ratio against cache size, one
//! line per cache and per reference row. A PNG, drawn with `plotters`.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// One line on a panel.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// (size, hit %) points, in size order.
    pub points: Vec<(usize, f64)>,
    /// A reference row (drawn thin and dashed) rather than a measured cache.
    pub reference: bool,
}

/// One trace's panel.
pub struct Panel {
    /// Title (the trace's name).
    pub title: String,
    /// The sizes tested, in order.
    pub sizes: Vec<usize>,
    /// Its lines.
    pub series: Vec<Series>,
}

/// Fonts looked for, in order; text needs one (plotters draws glyphs itself).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    let bytes = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| {
            format!("no TrueType font found (looked for {FONTS:?}; Debian: fonts-dejavu-core)")
        })?;
    // plotters keeps fonts for the process's life.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "the font file is not a valid TrueType font".to_string())
}

/// Draws `panels` into a PNG at `path`.
///
/// # Errors
///
/// No usable font, or a drawing/encoding error, as text.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<(), String> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1800, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let cells = root.split_evenly((2, 3));
    for (panel, area) in panels.iter().zip(cells.iter()) {
        let n = panel.sizes.len();
        let (lo, hi) = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = ((lo - 2.0).max(0.0), (hi + 2.0).min(100.0));
        let sizes = panel.sizes.clone();
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 26))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(-0.2f64..(n as f64 - 0.8), lo..hi)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round() as usize;
                if (x - i as f64).abs() < 0.01 && i < sizes.len() {
                    sizes[i].to_string()
                } else {
                    String::new()
                }
            })
            .x_desc("cache size (entries)")
            .y_desc("hit %")
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| err(&e))?;
        let (mut cache_i, mut ref_i) = (0, 0);
        for s in &panel.series {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|(size, v)| {
                    panel
                        .sizes
                        .iter()
                        .position(|x| x == size)
                        .map(|i| (i as f64, *v))
                })
                .collect();
            let color = if s.reference {
                ref_i += 1;
                Palette99::pick(20 + ref_i).mix(0.55)
            } else {
                cache_i += 1;
                Palette99::pick(cache_i - 1).mix(1.0)
            };
            let width = if s.label == "tiered" {
                4
            } else if s.reference {
                1
            } else {
                2
            };
            let style = ShapeStyle::from(&color).stroke_width(width);
            let line = if s.reference {
                chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(points.clone(), style))
            };
            line.map_err(|e| err(&e))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            if !s.reference {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled())))
                    .map_err(|e| err(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
