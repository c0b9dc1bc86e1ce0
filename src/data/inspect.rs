//! `trainer inspect DATA_DIR`: the class table, class-size statistics, image sizes, and what
//! the scan passed over.
//!
//! [`summarize`] gathers everything into a serialisable [`Summary`] so that reports can reuse
//! it; [`render`] makes the tables the binary prints.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::scan::{resolve_test_dir, resolve_train_dir, Dataset, ScanReport, TestSet};
use super::pool::default_threads;
use super::stats::{class_table, describe_counts, image_sizes, ClassRow, Describe, SizeSummary};

/// The test half of a competition folder, when there is one.
#[derive(Clone, Debug, Serialize)]
pub struct TestSummary {
    pub dir: PathBuf,
    pub sample_submission: Option<PathBuf>,
    pub images: usize,
    pub missing: Vec<String>,
    pub unlisted: Vec<String>,
    pub report: ScanReport,
}

/// Everything `inspect` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The ImageFolder root that was scanned (`train/` of a competition folder).
    pub root: PathBuf,
    pub num_images: usize,
    pub fingerprint: String,
    pub classes: Vec<ClassRow>,
    /// pandas-style `describe` of the class sizes.
    pub class_sizes: Describe,
    /// `None` when sizes were skipped.
    pub image_sizes: Option<SizeSummary>,
    pub report: ScanReport,
    pub test: Option<TestSummary>,
}

/// Gathers the class table, statistics and (unless `sizes_sample == Some(0)`) image sizes of
/// a scanned dataset.
pub fn summarize(ds: &Dataset, sizes_sample: Option<usize>) -> Result<Summary> {
    let classes = class_table(ds);
    let counts: Vec<usize> = classes.iter().map(|r| r.count).collect();
    let image_sizes = match sizes_sample {
        Some(0) => None,
        s => Some(image_sizes(&ds.paths(), s, default_threads())),
    };
    Ok(Summary {
        root: ds.root.clone(),
        num_images: ds.samples.len(),
        fingerprint: ds.fingerprint()?,
        class_sizes: describe_counts(&counts),
        classes,
        image_sizes,
        report: ds.report.clone(),
        test: None,
    })
}

/// Scans `data_dir` (an ImageFolder tree or a competition folder) and summarises it, including
/// the test folder of a competition layout.
pub fn inspect(data_dir: &Path, sizes_sample: Option<usize>) -> Result<Summary> {
    inspect_dataset(data_dir, sizes_sample).map(|(_, summary)| summary)
}

/// As [`inspect`], also returning the scanned training set (for reports that show images).
pub fn inspect_dataset(data_dir: &Path, sizes_sample: Option<usize>) -> Result<(Dataset, Summary)> {
    let root = resolve_train_dir(data_dir);
    let ds = Dataset::scan(&root).with_context(|| format!("cannot inspect {}", data_dir.display()))?;
    let mut summary = summarize(&ds, sizes_sample)?;
    if root != data_dir {
        if let Some((dir, csv)) = resolve_test_dir(data_dir) {
            let ts = TestSet::scan(&dir, csv.as_deref())?;
            summary.test = Some(TestSummary {
                images: ts.names.len() - ts.missing.len(),
                dir,
                sample_submission: csv,
                missing: ts.missing,
                unlisted: ts.unlisted,
                report: ts.report,
            });
        }
    }
    Ok((ds, summary))
}

fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn kind_of(report_root: &Path, p: &Path) -> &'static str {
    let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    if hidden {
        "hidden"
    } else if p.parent() == Some(report_root) {
        "stray"
    } else {
        "not an image"
    }
}

fn render_report(out: &mut String, root: &Path, r: &ScanReport) {
    out.push_str(&format!("{}\n", r.summary_line()));
    for p in &r.examples {
        out.push_str(&format!("  {:<13} {}\n", kind_of(root, p), p.display()));
    }
}

/// The human-readable tables.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "dataset {}: {} images in {} classes (fingerprint {})\n\n",
        s.root.display(),
        s.num_images,
        s.classes.len(),
        s.fingerprint
    ));
    let w = s.classes.iter().map(|r| r.name.chars().count()).max().unwrap_or(5).max(5);
    out.push_str(&format!("{:>5}  {:<w$}  {:>7}  {:>6}\n", "label", "class", "images", "share"));
    for r in &s.classes {
        out.push_str(&format!("{:>5}  {:<w$}  {:>7}  {:>5.1}%\n", r.label, r.name, r.count, 100.0 * r.share));
    }
    let d = &s.class_sizes;
    out.push_str("\nclass sizes\n");
    for (k, v) in std::iter::once(("count", d.count as f64)).chain(d.rows()) {
        out.push_str(&format!("  {k:<6} {:>10}\n", fmt_num(v)));
    }
    out.push_str(&format!("  max/min {:>8}\n", fmt_num(d.imbalance)));
    if let Some(z) = &s.image_sizes {
        out.push_str(&format!("\nimage sizes ({} of {} images measured)\n", z.measured, z.total));
        if z.measured > 0 {
            out.push_str(&format!("  width  min {:>6}  median {:>8}  max {:>6}\n", z.min_width, fmt_num(z.median_width), z.max_width));
            out.push_str(&format!("  height min {:>6}  median {:>8}  max {:>6}\n", z.min_height, fmt_num(z.median_height), z.max_height));
            out.push_str(&format!("  {} landscape, {} portrait, {} square\n", z.landscape, z.portrait, z.square));
        }
        if z.unreadable > 0 {
            out.push_str(&format!("  {} unreadable:\n", z.unreadable));
            for e in &z.unreadable_examples {
                out.push_str(&format!("    {e}\n"));
            }
        }
    }
    out.push('\n');
    render_report(&mut out, &s.root, &s.report);
    if let Some(t) = &s.test {
        out.push_str(&format!("\ntest folder {}: {} images", t.dir.display(), t.images));
        match &t.sample_submission {
            Some(csv) => out.push_str(&format!(
                ", sample submission {} ({} listed but missing, {} present but unlisted)\n",
                csv.display(),
                t.missing.len(),
                t.unlisted.len()
            )),
            None => out.push_str(", no sample_submission.csv\n"),
        }
        for n in t.missing.iter().take(3) {
            out.push_str(&format!("  missing   {n}\n"));
        }
        for n in t.unlisted.iter().take(3) {
            out.push_str(&format!("  unlisted  {n}\n"));
        }
        render_report(&mut out, &t.dir, &t.report);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_small_competition_folder() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for (c, n) in [("b", 3), ("a", 1)] {
            std::fs::create_dir_all(r.join("train").join(c)).unwrap();
            for i in 0..n {
                image::RgbImage::new(4 + i, 3).save(r.join("train").join(c).join(format!("{i}.png"))).unwrap();
            }
        }
        std::fs::write(r.join("train/b/notes.txt"), "x").unwrap();
        std::fs::create_dir(r.join("test")).unwrap();
        image::RgbImage::new(2, 2).save(r.join("test/t1.png")).unwrap();
        std::fs::write(r.join("sample_submission.csv"), "image_name,class\nt1.png,a\nt2.png,a\n").unwrap();

        let s = inspect(r, None).unwrap();
        assert_eq!(s.root, r.join("train"));
        assert_eq!(s.num_images, 4);
        assert_eq!(s.classes.iter().map(|c| (c.name.as_str(), c.count)).collect::<Vec<_>>(), vec![("a", 1), ("b", 3)]);
        assert_eq!((s.class_sizes.mean, s.class_sizes.max), (2.0, 3.0));
        let z = s.image_sizes.as_ref().unwrap();
        assert_eq!((z.measured, z.landscape, z.min_width, z.max_width), (4, 4, 4, 6));
        let test = s.test.as_ref().unwrap();
        assert_eq!((test.images, test.missing.clone()), (1, vec!["t2.png".to_string()]));

        let text = render(&s);
        assert!(text.contains("4 images in 2 classes"), "{text}");
        assert!(text.contains("75.0%"), "{text}");
        assert!(text.contains("1 not an image") && text.contains("notes.txt"), "{text}");
        assert!(text.contains("missing   t2.png"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["class_sizes"]["50%"], 2.0);
        assert!(inspect(r, Some(0)).unwrap().image_sizes.is_none());
    }
}
