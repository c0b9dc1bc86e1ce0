//! `trainer inspect --report DIR`: what a practitioner looks at before training — the
//! class-size distribution (sorted, optionally log scale; long tails are the rule in plant
//! data), a grid of sample images per class, the image-size scatter, and the statistics
//! table as CSV/JSON beside the pictures (the reference notebook's first figures).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{DynamicImage, ImageDecoder, RgbImage};

use super::draw;
use crate::data::inspect::Summary;
use crate::data::scan::Dataset;

/// What the dataset report draws.
#[derive(Clone, Debug)]
pub struct DatasetReportOptions {
    /// Class sizes on a log scale.
    pub log_scale: bool,
    /// Sample images per class in the grid.
    pub samples_per_class: usize,
    /// At most this many classes in the grid (spread evenly over the size order).
    pub max_grid_classes: usize,
    /// Thumbnail edge in pixels.
    pub thumb: u32,
}

impl Default for DatasetReportOptions {
    fn default() -> Self {
        DatasetReportOptions { log_scale: false, samples_per_class: 6, max_grid_classes: 24, thumb: 96 }
    }
}

/// Writes `class_sizes.png`, `samples.png`, `image_sizes.png` (when sizes were measured),
/// `class_table.csv`, `stats.csv` and `summary.json` into `out_dir` and returns their paths.
/// `summary` is [`crate::data::inspect::summarize`] of `ds`.
pub fn render(ds: &Dataset, summary: &Summary, out_dir: &Path, opts: &DatasetReportOptions) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create report folder {}", out_dir.display()))?;
    let mut written = Vec::new();
    let names: Vec<String> = summary.classes.iter().map(|r| r.name.clone()).collect();
    let counts: Vec<usize> = summary.classes.iter().map(|r| r.count).collect();
    let order = super::tables::order_by_size(&counts, &names);

    let p = out_dir.join("class_sizes.png");
    let sorted_names: Vec<String> = order.iter().map(|&i| names[i].clone()).collect();
    let sorted_counts: Vec<usize> = order.iter().map(|&i| counts[i]).collect();
    let d = &summary.class_sizes;
    draw::bars(
        &p,
        &format!(
            "{} images in {} classes, largest first (max/min {:.1}, median {:.0}){}",
            summary.num_images,
            names.len(),
            d.imbalance,
            d.q50,
            if opts.log_scale { ", log scale" } else { "" }
        ),
        "images per class",
        &sorted_names,
        &sorted_counts,
        opts.log_scale,
    )?;
    written.push(p);

    let p = out_dir.join("samples.png");
    sample_grid(&p, ds, &order, opts)?;
    written.push(p);

    if let Some(sz) = summary.image_sizes.as_ref().filter(|s| !s.sizes.is_empty()) {
        let p = out_dir.join("image_sizes.png");
        let points: Vec<draw::Point> = sz.sizes.iter().map(|&(w, h)| draw::Point { x: w as f64, y: h as f64, label: None }).collect();
        let max = sz.sizes.iter().map(|&(w, h)| w.max(h)).max().unwrap_or(1) as f64 * 1.05;
        draw::scatter(
            &p,
            &draw::ScatterSpec {
                title: &format!(
                    "Image sizes ({} of {} images): {} landscape, {} portrait, {} square",
                    sz.measured, sz.total, sz.landscape, sz.portrait, sz.square
                ),
                x_desc: "width (px)",
                y_desc: "height (px)",
                log_x: false,
                x_range: Some((0.0, max)),
                y_range: Some((0.0, max)),
                hline: None,
                diagonal: true,
                point_alpha: 0.35,
            },
            &points,
        )?;
        written.push(p);
    }

    let p = out_dir.join("class_table.csv");
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &summary.classes {
        w.serialize(r).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {}", p.display(), e.error()))?;
    crate::run::write_atomic(&p, &bytes)?;
    written.push(p);

    let p = out_dir.join("stats.csv");
    crate::run::write_atomic(&p, stats_csv(summary).as_bytes())?;
    written.push(p);

    let p = out_dir.join("summary.json");
    crate::run::write_atomic(&p, serde_json::to_string_pretty(summary)?.as_bytes())?;
    written.push(p);
    Ok(written)
}

/// `stat,value` rows: pandas `describe` of the class sizes, then the image-size summary.
fn stats_csv(s: &Summary) -> String {
    let d = &s.class_sizes;
    let mut rows: Vec<(String, String)> = vec![
        ("classes".into(), s.classes.len().to_string()),
        ("images".into(), s.num_images.to_string()),
        ("class_size_count".into(), d.count.to_string()),
    ];
    for (k, v) in d.rows().into_iter().chain([("max/min", d.imbalance)]) {
        rows.push((format!("class_size_{k}"), format!("{v}")));
    }
    if let Some(z) = &s.image_sizes {
        for (k, v) in [
            ("measured", z.measured.to_string()),
            ("min_width", z.min_width.to_string()),
            ("median_width", z.median_width.to_string()),
            ("max_width", z.max_width.to_string()),
            ("min_height", z.min_height.to_string()),
            ("median_height", z.median_height.to_string()),
            ("max_height", z.max_height.to_string()),
            ("landscape", z.landscape.to_string()),
            ("portrait", z.portrait.to_string()),
            ("square", z.square.to_string()),
            ("unreadable", z.unreadable.to_string()),
        ] {
            rows.push((format!("image_{k}"), v));
        }
    }
    let mut out = String::from("stat,value\n");
    for (k, v) in rows {
        out.push_str(&format!("{k},{v}\n"));
    }
    out
}

/// Decodes an image upright (EXIF orientation applied) and shrinks it to fit `edge`.
fn thumbnail(path: &Path, edge: u32) -> Result<RgbImage> {
    let mut dec = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_decoder()
        .with_context(|| format!("cannot decode {}", path.display()))?;
    let orientation = dec.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).with_context(|| format!("cannot decode {}", path.display()))?;
    img.apply_orientation(orientation);
    Ok(img.thumbnail(edge, edge).to_rgb8())
}

/// Evenly spaced picks of `k` out of `n` (all of them when n ≤ k).
fn spread(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        (0..n).collect()
    } else {
        (0..k).map(|i| i * n / k).collect()
    }
}

fn sample_grid(path: &Path, ds: &Dataset, order: &[usize], opts: &DatasetReportOptions) -> Result<()> {
    let shown: Vec<usize> = spread(order.len(), opts.max_grid_classes.max(1)).into_iter().map(|i| order[i]).collect();
    let mut by_class: Vec<Vec<&Path>> = vec![Vec::new(); ds.classes.len()];
    for s in &ds.samples {
        by_class[s.label].push(&s.path);
    }
    let jobs: Vec<(usize, &Path)> = shown
        .iter()
        .flat_map(|&c| spread(by_class[c].len(), opts.samples_per_class).into_iter().map(move |i| (c, i)))
        .map(|(c, i)| (c, by_class[c][i]))
        .collect();
    let threads = crate::data::pool::default_threads().min(jobs.len().max(1));
    let chunk = jobs.len().div_ceil(threads).max(1);
    let thumbs: Vec<Option<RgbImage>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            jobs.chunks(chunk).map(|part| s.spawn(move || part.iter().map(|(_, p)| thumbnail(p, opts.thumb).ok()).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let unreadable = thumbs.iter().filter(|t| t.is_none()).count();
    let mut rows: Vec<(String, Vec<RgbImage>)> = shown.iter().map(|&c| (format!("{} ({})", ds.classes[c], by_class[c].len()), Vec::new())).collect();
    for ((c, _), t) in jobs.iter().zip(thumbs) {
        let row = shown.iter().position(|x| x == c).unwrap_or(0);
        // An unreadable file shows as an empty grey cell; the title counts them.
        rows[row].1.push(t.unwrap_or_else(|| RgbImage::new(1, 1)));
    }
    let mut title = String::from("Sample images per class (images in brackets), largest class first");
    if shown.len() < ds.classes.len() {
        title.push_str(&format!("; {} of {} classes shown", shown.len(), ds.classes.len()));
    }
    if unreadable > 0 {
        title.push_str(&format!("; {unreadable} unreadable"));
    }
    draw::thumb_grid(path, &title, &rows, opts.thumb)
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_picks_evenly_and_all_when_few() {
        assert_eq!(spread(3, 6), vec![0, 1, 2]);
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(153, 24).len(), 24);
    }
}
