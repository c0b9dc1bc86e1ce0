//! Picture primitives shared by the reports: line panels, a confusion heatmap, scatter plots,
//! bar charts and a thumbnail grid, drawn with `plotters` into an RGB buffer and saved as PNG
//! with `image`.
//!
//! Text uses DejaVu Sans embedded in the binary (the `dejavu` crate) and registered with
//! plotters' `ab_glyph` font backend, so pictures render the same on a machine with no fonts.
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};

/// The family every picture uses; registered as plotters' default name.
pub const FONT: &str = "sans-serif";

/// matplotlib's tab10 colours, the ones readers know from PyTorch tutorials.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

const GRID: RGBColor = RGBColor(232, 232, 232);

/// Registers the embedded font once per process.
pub fn ensure_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if !ok {
        bail!("the embedded DejaVu Sans font could not be loaded");
    }
    Ok(())
}

/// plotters' errors carry the backend type; keep the message.
pub fn pe<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// An RGB buffer that plotters draws into and `image` saves.
pub struct Picture {
    pub w: u32,
    pub h: u32,
    pub buf: Vec<u8>,
}

impl Picture {
    pub fn new(w: u32, h: u32) -> Result<Picture> {
        ensure_font()?;
        Ok(Picture { w, h, buf: vec![255; w as usize * h as usize * 3] })
    }

    /// Draws with `f` on the whole picture.
    pub fn draw(&mut self, f: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>) -> Result<()> {
        let root = BitMapBackend::with_buffer(&mut self.buf, (self.w, self.h)).into_drawing_area();
        f(&root)?;
        root.present().map_err(pe)
    }

    pub fn save(self, path: &Path) -> Result<()> {
        let img = RgbImage::from_raw(self.w, self.h, self.buf).ok_or_else(|| anyhow!("picture buffer has the wrong size"))?;
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, image::ImageFormat::Png).with_context(|| format!("cannot encode {}", path.display()))?;
        // Atomic, because the trainer redraws its pictures every epoch and may be killed.
        crate::run::write_atomic(path, bytes.get_ref())
    }
}

pub fn text_style(size: u32, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle { font: (FONT, size as f64).into_font(), color: color.to_backend_color(), pos: Pos::new(h, v) }
}

/// Width in pixels of `text` at `size`.
pub fn text_width(area: &DrawingArea<BitMapBackend<'_>, Shift>, text: &str, size: u32) -> u32 {
    area.estimate_text_size(text, &TextStyle::from((FONT, size as f64).into_font())).map(|(w, _)| w).unwrap_or(size * text.len() as u32 * 6 / 10)
}

/// Shortens a label to at most `max` characters with an ellipsis.
pub fn clip_label(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Sequential white → dark blue (matplotlib's "Blues"), v in 0–1.
pub fn blues(v: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [247.0, 251.0, 255.0]),
        (0.25, [198.0, 219.0, 239.0]),
        (0.5, [107.0, 174.0, 214.0]),
        (0.75, [33.0, 113.0, 181.0]),
        (1.0, [8.0, 48.0, 107.0]),
    ];
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    for w in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            let c = [0, 1, 2].map(|k| (ca[k] + (cb[k] - ca[k]) * t).round() as u8);
            return RGBColor(c[0], c[1], c[2]);
        }
    }
    RGBColor(8, 48, 107)
}

/// One line of a panel.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// One chart of [`line_panels`].
pub struct Panel {
    pub title: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    /// Fixed y range (e.g. 0–1 for accuracy); otherwise fitted to the data.
    pub y_range: Option<(f64, f64)>,
    pub log_y: bool,
}

fn finite(points: &[(f64, f64)], log_y: bool) -> Vec<(f64, f64)> {
    points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0)).collect()
}

fn padded(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    if log {
        if hi / lo < 1.5 {
            (lo / 2.0, hi * 2.0)
        } else {
            (lo / 1.3, hi * 1.3)
        }
    } else if hi - lo < 1e-12 {
        (lo - 0.5_f64.max(lo.abs() * 0.1), hi + 0.5_f64.max(hi.abs() * 0.1))
    } else {
        let pad = (hi - lo) * 0.06;
        (lo - pad, hi + pad)
    }
}

/// A tick label without a needless ".0" (10 not 10.0, 0.25 stays).
fn short_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 && v.abs() < 1e15 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn epoch_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// Panels side by side under one title, x = epoch.
pub fn line_panels(path: &Path, title: &str, x_desc: &str, panels: &[Panel]) -> Result<()> {
    let pw = 560;
    let mut pic = Picture::new(pw * panels.len().max(1) as u32, 470)?;
    let xs: Vec<f64> = panels.iter().flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0))).filter(|x| x.is_finite()).collect();
    let (x0, x1) = match (xs.iter().copied().reduce(f64::min), xs.iter().copied().reduce(f64::max)) {
        (Some(a), Some(b)) => (a - 0.25, b + 0.25),
        _ => (0.0, 1.0),
    };
    pic.draw(|root| {
        root.fill(&WHITE).map_err(pe)?;
        let body = root.titled(title, (FONT, 22)).map_err(pe)?;
        let areas = body.split_evenly((1, panels.len().max(1)));
        for (area, panel) in areas.iter().zip(panels) {
            let series: Vec<(&Series, Vec<(f64, f64)>)> =
                panel.series.iter().map(|s| (s, finite(&s.points, panel.log_y))).filter(|(_, p)| !p.is_empty()).collect();
            let ys: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).collect();
            let (y0, y1) = match panel.y_range {
                Some(r) => r,
                None => match (ys.iter().copied().reduce(f64::min), ys.iter().copied().reduce(f64::max)) {
                    (Some(a), Some(b)) => padded(a, b, panel.log_y),
                    _ => (if panel.log_y { 1e-4 } else { 0.0 }, 1.0),
                },
            };
            let mut cb = ChartBuilder::on(area);
            cb.caption(&panel.title, (FONT, 18)).margin(14).x_label_area_size(42).y_label_area_size(70);
            let n_epochs = (x1 - x0).round().max(1.0) as usize;
            macro_rules! finish {
                ($chart:expr) => {{
                    let mut chart = $chart;
                    chart
                        .configure_mesh()
                        .x_desc(x_desc)
                        .y_desc(&panel.y_desc)
                        .x_labels(n_epochs.min(10) + 1)
                        .x_label_formatter(&epoch_label)
                        .y_labels(8)
                        .y_label_formatter(&|v: &f64| if panel.log_y { format!("{v:.0e}") } else { short_num(*v) })
                        .label_style((FONT, 13))
                        .axis_desc_style((FONT, 14))
                        .light_line_style(WHITE)
                        .bold_line_style(GRID)
                        .draw()
                        .map_err(pe)?;
                    for (s, pts) in &series {
                        let color = s.color;
                        chart
                            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                            .map_err(pe)?
                            .label(s.name.as_str())
                            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                        if pts.len() <= 60 {
                            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(pe)?;
                        }
                    }
                    if !series.is_empty() {
                        chart
                            .configure_series_labels()
                            .background_style(WHITE.mix(0.85))
                            .border_style(RGBColor(180, 180, 180))
                            .label_font((FONT, 13))
                            .position(SeriesLabelPosition::UpperRight)
                            .draw()
                            .map_err(pe)?;
                    }
                }};
            }
            if panel.log_y {
                finish!(cb.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(pe)?);
            } else {
                finish!(cb.build_cartesian_2d(x0..x1, y0..y1).map_err(pe)?);
            }
        }
        Ok(())
    })?;
    pic.save(path)
}

/// A row-normalised confusion heatmap. `names`, `counts` and `norm` are already in display
/// order; `row_sizes` is shown beside each row label (e.g. the class's training size).
pub fn heatmap(path: &Path, title: &str, subtitle: &str, names: &[String], row_sizes: &[usize], counts: &[Vec<usize>], norm: &[Vec<f64>]) -> Result<(u32, u32)> {
    let n = names.len();
    let (cell, font, stride) = super::tables::heatmap_layout(n);
    let max_chars = 28;
    let row_labels: Vec<String> = names.iter().zip(row_sizes).map(|(s, k)| format!("{} ({k})", clip_label(s, max_chars))).collect();
    let col_labels: Vec<String> = names.iter().map(|s| clip_label(s, max_chars)).collect();
    // Measure labels on a scratch picture: plotters needs a backend to measure text.
    let (row_w, col_w, title_w) = {
        let mut scratch = Picture::new(8, 8)?;
        let mut out = (0, 0, 0);
        scratch.draw(|a| {
            out = (
                row_labels.iter().map(|s| text_width(a, s, font)).max().unwrap_or(0),
                col_labels.iter().map(|s| text_width(a, s, font)).max().unwrap_or(0),
                text_width(a, title, 20).max(text_width(a, subtitle, 13)),
            );
            Ok(())
        })?;
        out
    };
    let matrix = cell * n as u32;
    let mut left = row_w + 50;
    let top = 80;
    let bottom = col_w + 60;
    let right = 120;
    let natural = left + matrix + right;
    let (w, h) = (natural.max(title_w + 40), (top + matrix + bottom).max(380));
    // A small matrix under a wide title: centre it.
    left += (w - natural) / 2;
    let mut pic = Picture::new(w, h)?;
    let annotate = cell >= 28;
    pic.draw(|root| {
        root.fill(&WHITE).map_err(pe)?;
        root.draw(&Text::new(title, (w as i32 / 2, 22), text_style(20, BLACK, HPos::Center, VPos::Center))).map_err(pe)?;
        root.draw(&Text::new(
            subtitle,
            (w as i32 / 2, 50),
            text_style(13, RGBColor(90, 90, 90), HPos::Center, VPos::Center),
        ))
        .map_err(pe)?;
        let (l, t, c) = (left as i32, top as i32, cell as i32);
        for i in 0..n {
            for j in 0..n {
                let v = norm[i][j];
                let (x, y) = (l + j as i32 * c, t + i as i32 * c);
                root.draw(&Rectangle::new([(x, y), (x + c, y + c)], blues(v).filled())).map_err(pe)?;
                if annotate && counts[i][j] > 0 {
                    let fg = if v > 0.5 { WHITE } else { BLACK };
                    root.draw(&Text::new(counts[i][j].to_string(), (x + c / 2, y + c / 2), text_style((cell / 3).min(16), fg, HPos::Center, VPos::Center)))
                        .map_err(pe)?;
                }
            }
        }
        // The diagonal outlined, so the eye finds it at any size.
        if n <= 60 {
            for i in 0..n as i32 {
                let (x, y) = (l + i * c, t + i * c);
                root.draw(&Rectangle::new([(x, y), (x + c, y + c)], RGBColor(120, 120, 120).stroke_width(1))).map_err(pe)?;
            }
        }
        root.draw(&Rectangle::new([(l, t), (l + matrix as i32, t + matrix as i32)], BLACK.stroke_width(1))).map_err(pe)?;
        for i in (0..n).step_by(stride) {
            let mid = t + i as i32 * c + c / 2;
            root.draw(&Text::new(row_labels[i].clone(), (l - 6, mid), text_style(font, BLACK, HPos::Right, VPos::Center))).map_err(pe)?;
            let x = l + i as i32 * c + c / 2;
            let style = text_style(font, BLACK, HPos::Right, VPos::Center).transform(FontTransform::Rotate270);
            root.draw(&Text::new(col_labels[i].clone(), (x, t + matrix as i32 + 6), style)).map_err(pe)?;
        }
        root.draw(&Text::new(
            "predicted class",
            (l + matrix as i32 / 2, h as i32 - 20),
            text_style(15, BLACK, HPos::Center, VPos::Center),
        ))
        .map_err(pe)?;
        root.draw(&Text::new(
            "true class",
            (16, t + matrix as i32 / 2),
            text_style(15, BLACK, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
        ))
        .map_err(pe)?;
        // Colour bar.
        let bx = l + matrix as i32 + 30;
        let bh = (matrix as i32).clamp(120, 400);
        for k in 0..bh {
            let v = 1.0 - k as f64 / (bh - 1) as f64;
            root.draw(&Rectangle::new([(bx, t + k), (bx + 18, t + k + 1)], blues(v).filled())).map_err(pe)?;
        }
        root.draw(&Rectangle::new([(bx, t), (bx + 18, t + bh)], BLACK.stroke_width(1))).map_err(pe)?;
        for (v, label) in [(1.0, "1.0"), (0.5, "0.5"), (0.0, "0.0")] {
            let y = t + ((1.0 - v) * (bh - 1) as f64) as i32;
            root.draw(&Text::new(label, (bx + 24, y), text_style(12, BLACK, HPos::Left, VPos::Center))).map_err(pe)?;
        }
        Ok(())
    })?;
    pic.save(path)?;
    Ok((w, h))
}

/// One labelled point of [`scatter`].
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: Option<String>,
}

/// Options of [`scatter`].
pub struct ScatterSpec<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub log_x: bool,
    pub y_range: Option<(f64, f64)>,
    pub x_range: Option<(f64, f64)>,
    /// A horizontal reference line (y, legend text).
    pub hline: Option<(f64, String)>,
    /// Draw y = x (e.g. square images).
    pub diagonal: bool,
    pub point_alpha: f64,
}

pub fn scatter(path: &Path, spec: &ScatterSpec<'_>, points: &[Point]) -> Result<()> {
    let pts: Vec<&Point> = points.iter().filter(|p| p.x.is_finite() && p.y.is_finite() && (!spec.log_x || p.x > 0.0)).collect();
    let fit = |v: Vec<f64>, log: bool| match (v.iter().copied().reduce(f64::min), v.iter().copied().reduce(f64::max)) {
        (Some(a), Some(b)) => padded(a, b, log),
        _ => (if log { 1.0 } else { 0.0 }, if log { 10.0 } else { 1.0 }),
    };
    let (x0, x1) = spec.x_range.unwrap_or_else(|| fit(pts.iter().map(|p| p.x).collect(), spec.log_x));
    let (y0, y1) = spec.y_range.unwrap_or_else(|| fit(pts.iter().map(|p| p.y).collect(), false));
    let mut pic = Picture::new(900, 640)?;
    let color = PALETTE[0];
    pic.draw(|root| {
        root.fill(&WHITE).map_err(pe)?;
        let mut cb = ChartBuilder::on(root);
        cb.caption(spec.title, (FONT, 20)).margin(18).x_label_area_size(48).y_label_area_size(70);
        macro_rules! finish {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(spec.x_desc)
                    .y_desc(spec.y_desc)
                    .x_label_formatter(&|v: &f64| short_num(*v))
                    .y_label_formatter(&|v: &f64| short_num(*v))
                    .label_style((FONT, 13))
                    .axis_desc_style((FONT, 15))
                    .light_line_style(WHITE)
                    .bold_line_style(GRID)
                    .draw()
                    .map_err(pe)?;
                if spec.diagonal {
                    let m = x1.min(y1);
                    let lo = x0.max(y0);
                    chart
                        .draw_series(LineSeries::new(vec![(lo, lo), (m, m)], RGBColor(160, 160, 160).stroke_width(1)))
                        .map_err(pe)?
                        .label("square (width = height)")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(160, 160, 160)));
                }
                if let Some((yv, label)) = &spec.hline {
                    let c = PALETTE[3];
                    chart
                        .draw_series(LineSeries::new(vec![(x0, *yv), (x1, *yv)], c.stroke_width(2)))
                        .map_err(pe)?
                        .label(label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                }
                chart.draw_series(pts.iter().map(|p| Circle::new((p.x, p.y), 5, color.mix(spec.point_alpha).filled()))).map_err(pe)?;
                chart
                    .draw_series(pts.iter().filter_map(|p| {
                        p.label.as_ref().map(|l| Text::new(clip_label(l, 20), (p.x, p.y), text_style(12, RGBColor(60, 60, 60), HPos::Left, VPos::Bottom)))
                    }))
                    .map_err(pe)?;
                if spec.diagonal || spec.hline.is_some() {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.85))
                        .border_style(RGBColor(180, 180, 180))
                        .label_font((FONT, 13))
                        .position(SeriesLabelPosition::LowerRight)
                        .draw()
                        .map_err(pe)?;
                }
            }};
        }
        if spec.log_x {
            finish!(cb.build_cartesian_2d((x0..x1).log_scale(), y0..y1).map_err(pe)?);
        } else {
            finish!(cb.build_cartesian_2d(x0..x1, y0..y1).map_err(pe)?);
        }
        Ok(())
    })?;
    pic.save(path)
}

/// Vertical bars, one per name, in the given order; optional log scale.
pub fn bars(path: &Path, title: &str, y_desc: &str, names: &[String], values: &[usize], log_y: bool) -> Result<()> {
    let n = names.len().max(1);
    let bar = (900 / n as u32).clamp(9, 70);
    let font = (bar.saturating_sub(1)).clamp(8, 14);
    let labels: Vec<String> = names.iter().map(|s| clip_label(s, 24)).collect();
    let longest = labels.iter().map(|s| s.chars().count()).max().unwrap_or(4) as u32;
    let label_px = longest * font * 62 / 100;
    // Upright labels when they fit under their bar, else rotated to read upwards.
    let rotate = label_px + 8 > bar;
    let label_h = if rotate { (label_px + 16).max(40) } else { 40 };
    let w = (bar * n as u32 + 140).max(700);
    let h = 460 + label_h;
    let vmax = values.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut pic = Picture::new(w, h)?;
    pic.draw(|root| {
        root.fill(&WHITE).map_err(pe)?;
        let mut cb = ChartBuilder::on(root);
        cb.caption(title, (FONT, 20)).margin(16).x_label_area_size(label_h).y_label_area_size(70);
        let x_style = if rotate {
            text_style(font, BLACK, HPos::Right, VPos::Center).transform(FontTransform::Rotate270)
        } else {
            text_style(font, BLACK, HPos::Center, VPos::Top)
        };
        let labels = &labels;
        // plotters centres tick labels on the tick whatever their rotation, which hides half of a
        // rotated label under the bars; rotated labels are drawn by hand below instead.
        let fmt = move |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if !rotate => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        macro_rules! finish {
            ($chart:expr, $base:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(n)
                    .label_style((FONT, 13))
                    .x_label_formatter(&fmt)
                    .x_label_style(x_style.clone())
                    .y_label_formatter(&|v: &f64| short_num(*v))
                    .y_desc(y_desc)
                    .axis_desc_style((FONT, 15))
                    .light_line_style(WHITE)
                    .bold_line_style(GRID)
                    .draw()
                    .map_err(pe)?;
                chart
                    .draw_series(values.iter().enumerate().map(|(i, &v)| {
                        let mut r = Rectangle::new([(SegmentValue::Exact(i), $base), (SegmentValue::Exact(i + 1), v as f64)], PALETTE[0].filled());
                        r.set_margin(0, 0, 1, 1);
                        r
                    }))
                    .map_err(pe)?;
                if rotate {
                    for (i, label) in labels.iter().enumerate() {
                        let (x, y) = chart.backend_coord(&(SegmentValue::CenterOf(i), $base));
                        root.draw(&Text::new(label.clone(), (x, y + 8), x_style.clone())).map_err(pe)?;
                    }
                }
            }};
        }
        if log_y {
            finish!(cb.build_cartesian_2d((0..n - 1).into_segmented(), (0.8..vmax * 1.6).log_scale()).map_err(pe)?, 0.8);
        } else {
            finish!(cb.build_cartesian_2d((0..n - 1).into_segmented(), 0.0..vmax * 1.08).map_err(pe)?, 0.0);
        }
        Ok(())
    })?;
    pic.save(path)
}

/// Rows of thumbnails with a label on the left: `rows[i] = (label, images)`.
pub fn thumb_grid(path: &Path, title: &str, rows: &[(String, Vec<RgbImage>)], thumb: u32) -> Result<()> {
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1) as u32;
    let label_w = 190;
    let gap = 4;
    let top = 50;
    let w = label_w + cols * (thumb + gap) + gap;
    let h = top + rows.len().max(1) as u32 * (thumb + gap) + gap;
    let mut pic = Picture::new(w, h)?;
    // Thumbnails straight into the buffer, letterboxed on light grey, then text over them.
    for (r, (_, imgs)) in rows.iter().enumerate() {
        for (c, img) in imgs.iter().enumerate() {
            let x0 = label_w + c as u32 * (thumb + gap);
            let y0 = top + r as u32 * (thumb + gap);
            for y in 0..thumb {
                for x in 0..thumb {
                    let i = (((y0 + y) * w + x0 + x) * 3) as usize;
                    pic.buf[i..i + 3].copy_from_slice(&[236, 236, 236]);
                }
            }
            let (tw, th) = (img.width().min(thumb), img.height().min(thumb));
            let (ox, oy) = ((thumb - tw) / 2, (thumb - th) / 2);
            for y in 0..th {
                for x in 0..tw {
                    let p = img.get_pixel(x, y).0;
                    let i = (((y0 + oy + y) * w + x0 + ox + x) * 3) as usize;
                    pic.buf[i..i + 3].copy_from_slice(&p);
                }
            }
        }
    }
    pic.draw(|root| {
        root.draw(&Text::new(title, (w as i32 / 2, 24), text_style(20, BLACK, HPos::Center, VPos::Center))).map_err(pe)?;
        for (r, (label, _)) in rows.iter().enumerate() {
            let y = (top + r as u32 * (thumb + gap) + thumb / 2) as i32;
            root.draw(&Text::new(clip_label(label, 22), (label_w as i32 - 10, y), text_style(15, BLACK, HPos::Right, VPos::Center))).map_err(pe)?;
        }
        Ok(())
    })?;
    pic.save(path)
}
