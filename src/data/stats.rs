//! Class statistics (pandas `describe` of class sizes) and an image-size summary.
//!
//! `describe` follows pandas: sample standard deviation (ddof = 1) and quantiles by linear
//! interpolation between order statistics (`numpy.percentile`'s default "linear" method).
//! Image sizes come from file headers only (no pixel decoding), honouring EXIF orientation so
//! that a portrait photo stored sideways counts as portrait.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::scan::Dataset;

/// One row of the class table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    pub label: usize,
    pub name: String,
    pub count: usize,
    /// Fraction of all samples (0–1).
    pub share: f64,
}

/// Per-class counts and shares, in label order.
pub fn class_table(ds: &Dataset) -> Vec<ClassRow> {
    let counts = ds.class_counts();
    let total = counts.iter().sum::<usize>().max(1) as f64;
    ds.classes
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(label, (name, count))| ClassRow { label, name: name.clone(), count, share: count as f64 / total })
        .collect()
}

/// What pandas' `Series.describe()` shows for numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Describe {
    pub count: usize,
    pub mean: f64,
    /// Sample standard deviation (ddof = 1); NaN for fewer than two values, as pandas.
    pub std: f64,
    pub min: f64,
    #[serde(rename = "25%")]
    pub q25: f64,
    #[serde(rename = "50%")]
    pub q50: f64,
    #[serde(rename = "75%")]
    pub q75: f64,
    pub max: f64,
    /// max / min: how long-tailed the classes are (NaN if min is 0 or there are no values).
    pub imbalance: f64,
}

impl Describe {
    /// `mean, std, min, 25%, 50%, 75%, max` with pandas' labels, in pandas' order.
    pub fn rows(&self) -> [(&'static str, f64); 7] {
        [
            ("mean", self.mean),
            ("std", self.std),
            ("min", self.min),
            ("25%", self.q25),
            ("50%", self.q50),
            ("75%", self.q75),
            ("max", self.max),
        ]
    }
}

/// pandas `describe()` of `values`. With no values every statistic is NaN and count is 0.
pub fn describe(values: &[f64]) -> Describe {
    let n = values.len();
    if n == 0 {
        let nan = f64::NAN;
        return Describe { count: 0, mean: nan, std: nan, min: nan, q25: nan, q50: nan, q75: nan, max: nan, imbalance: nan };
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = if n < 2 { f64::NAN } else { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
    let (min, max) = (v[0], v[n - 1]);
    Describe {
        count: n,
        mean,
        std,
        min,
        q25: quantile_sorted(&v, 0.25),
        q50: quantile_sorted(&v, 0.5),
        q75: quantile_sorted(&v, 0.75),
        max,
        imbalance: if min > 0.0 { max / min } else { f64::NAN },
    }
}

/// `describe` of class sizes.
pub fn describe_counts(counts: &[usize]) -> Describe {
    describe(&counts.iter().map(|&c| c as f64).collect::<Vec<_>>())
}

/// Quantile `q` (0–1) of sorted, non-empty `v`, linear interpolation at position q·(n−1).
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Width/height statistics of the images, from their headers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SizeSummary {
    /// Images whose size was read.
    pub measured: usize,
    /// Images in the dataset (measured may be a sample of them).
    pub total: usize,
    pub min_width: u32,
    pub median_width: f64,
    pub max_width: u32,
    pub min_height: u32,
    pub median_height: f64,
    pub max_height: u32,
    /// Height > width (after EXIF orientation).
    pub portrait: usize,
    pub landscape: usize,
    pub square: usize,
    /// Files whose header could not be read; each one's error names the file. Up to a few kept.
    pub unreadable: usize,
    pub unreadable_examples: Vec<String>,
    /// Every measured (width, height), in the order of the measured paths (for scatter plots).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sizes: Vec<(u32, u32)>,
}

/// Upright (width, height) of an image from its header, EXIF orientation applied; pixels are
/// not decoded.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    use image::ImageDecoder;
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut dec = reader.into_decoder().with_context(|| format!("cannot read image header of {}", path.display()))?;
    let (w, h) = dec.dimensions();
    // A missing or broken EXIF block is not an error for a size summary: take the stored size.
    let o = dec.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    use image::metadata::Orientation::*;
    Ok(match o {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        _ => (w, h),
    })
}

/// Reads the sizes of `paths` (or of at most `sample` of them, evenly spaced so the choice is
/// deterministic and covers every class of a sorted dataset) on `threads` threads.
/// Unreadable files are counted, not fatal.
pub fn image_sizes(paths: &[PathBuf], sample: Option<usize>, threads: usize) -> SizeSummary {
    let chosen: Vec<&PathBuf> = match sample {
        Some(k) if k < paths.len() => (0..k).map(|i| &paths[i * paths.len() / k]).collect(),
        _ => paths.iter().collect(),
    };
    let threads = threads.max(1).min(chosen.len().max(1));
    let chunk = chosen.len().div_ceil(threads).max(1);
    let results: Vec<Result<(u32, u32)>> = std::thread::scope(|s| {
        let handles: Vec<_> = chosen
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|p| image_dimensions(p)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                // A panicking decoder thread: report its images as unreadable rather than abort.
                Err(_) => vec![Err(anyhow::anyhow!("image header reader panicked"))],
            })
            .collect()
    });
    let mut out = SizeSummary { total: paths.len(), ..Default::default() };
    for r in results {
        match r {
            Ok(wh) => out.sizes.push(wh),
            Err(e) => {
                out.unreadable += 1;
                if out.unreadable_examples.len() < 3 {
                    out.unreadable_examples.push(format!("{e:#}"));
                }
            }
        }
    }
    out.measured = out.sizes.len();
    if out.sizes.is_empty() {
        return out;
    }
    let mut ws: Vec<u32> = out.sizes.iter().map(|s| s.0).collect();
    let mut hs: Vec<u32> = out.sizes.iter().map(|s| s.1).collect();
    ws.sort_unstable();
    hs.sort_unstable();
    let median = |v: &[u32]| {
        let f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        quantile_sorted(&f, 0.5)
    };
    out.min_width = ws[0];
    out.max_width = ws[ws.len() - 1];
    out.median_width = median(&ws);
    out.min_height = hs[0];
    out.max_height = hs[hs.len() - 1];
    out.median_height = median(&hs);
    for &(w, h) in &out.sizes {
        match h.cmp(&w) {
            std::cmp::Ordering::Greater => out.portrait += 1,
            std::cmp::Ordering::Less => out.landscape += 1,
            std::cmp::Ordering::Equal => out.square += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn describe_matches_pandas() {
        // pd.Series([30, 60, 120, 220, 400]).describe():
        // count 5, mean 166.0, std 149.599465, min 30, 25% 60, 50% 120, 75% 220, max 400
        let d = describe_counts(&[400, 220, 120, 60, 30]);
        assert_eq!(d.count, 5);
        assert!(close(d.mean, 166.0));
        assert!(close(d.std, 22380f64.sqrt()), "{}", d.std);
        assert!((d.std - 149.599465).abs() < 1e-6);
        assert_eq!((d.min, d.q25, d.q50, d.q75, d.max), (30.0, 60.0, 120.0, 220.0, 400.0));
        assert!(close(d.imbalance, 400.0 / 30.0));
        // pd.Series([1, 2, 3, 4]).describe(): interpolated quartiles 1.75, 2.5, 3.25; std 1.290994
        let d = describe(&[4.0, 1.0, 3.0, 2.0]);
        assert!(close(d.q25, 1.75) && close(d.q50, 2.5) && close(d.q75, 3.25));
        assert!((d.std - 1.290994).abs() < 1e-6);
        // pandas gives NaN std for a single value.
        let d = describe(&[7.0]);
        assert!(d.std.is_nan());
        assert_eq!((d.min, d.q50, d.max), (7.0, 7.0, 7.0));
        assert_eq!(describe(&[]).count, 0);
    }

    #[test]
    fn sizes_orientation_and_unreadable() {
        let t = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (i, (w, h)) in [(8u32, 4u32), (4, 8), (5, 5), (10, 6)].into_iter().enumerate() {
            let p = t.path().join(format!("{i}.png"));
            image::RgbImage::new(w, h).save(&p).unwrap();
            paths.push(p);
        }
        let bad = t.path().join("bad.jpg");
        std::fs::write(&bad, b"\xFF\xD8\xFFtruncated").unwrap();
        paths.push(bad);
        let s = image_sizes(&paths, None, 2);
        assert_eq!((s.measured, s.total, s.unreadable), (4, 5, 1));
        assert!(s.unreadable_examples[0].contains("bad.jpg"), "{:?}", s.unreadable_examples);
        assert_eq!((s.min_width, s.max_width, s.min_height, s.max_height), (4, 10, 4, 8));
        assert_eq!((s.median_width, s.median_height), (6.5, 5.5));
        assert_eq!((s.portrait, s.landscape, s.square), (1, 2, 1));
        assert_eq!(s.sizes, vec![(8, 4), (4, 8), (5, 5), (10, 6)]);
        // Sampling takes evenly spaced images.
        let s = image_sizes(&paths[..4], Some(2), 3);
        assert_eq!((s.measured, s.total), (2, 4));
        assert_eq!(s.sizes, vec![(8, 4), (5, 5)]);
    }

    #[test]
    fn exif_rotated_jpeg_counts_as_portrait() {
        // A 6×2 JPEG with EXIF orientation 6 (rotate 90° clockwise) is a 2×6 portrait.
        let t = tempfile::tempdir().unwrap();
        let mut jpg = Vec::new();
        image::RgbImage::new(6, 2).write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg).unwrap();
        // APP1 Exif segment: big-endian TIFF with one IFD entry, Orientation (0x0112) = 6.
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = (app1.len() + 2) as u16;
        let mut out = jpg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpg[2..]);
        let p = t.path().join("rot.jpg");
        std::fs::write(&p, out).unwrap();
        assert_eq!(image_dimensions(&p).unwrap(), (2, 6));
    }
}
