//! Scanning an ImageFolder tree (`root/<class>/...`) or a flat test folder.
//!
//! Classes are the sub-folder names sorted as strings (`"10"` is a name, not an index), as
//! torchvision's `ImageFolder` does. Images are recognised by extension, case-insensitively
//! (jpg, jpeg, png, webp, bmp), or failing that by their magic bytes. Hidden files and
//! non-images are counted in a [`ScanReport`], never dropped silently.
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into `Dataset::classes`.
    pub label: usize,
}

/// What a scan passed over, with up to a few example paths per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    pub hidden: usize,
    pub not_images: usize,
    /// Files directly under the root of an ImageFolder tree (not in any class folder).
    pub stray_files: usize,
    pub examples: Vec<PathBuf>,
}

/// A labelled ImageFolder dataset.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dataset {
    pub root: PathBuf,
    /// Class folder names, sorted; a sample's `label` indexes this.
    pub classes: Vec<String>,
    /// Sorted by (class, path) so that the order is reproducible across machines.
    pub samples: Vec<Sample>,
    pub report: ScanReport,
}

impl Dataset {
    /// Scans `root/<class>/**`. An empty class folder or an empty dataset is an error.
    pub fn scan(root: &Path) -> Result<Dataset> {
        todo!("{root:?}")
    }

    /// Labels of all samples, in sample order.
    pub fn labels(&self) -> Vec<usize> {
        self.samples.iter().map(|s| s.label).collect()
    }

    /// Number of samples per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            counts[s.label] += 1;
        }
        counts
    }

    /// A short stable hash (hex) of the class names and each file's relative path and size,
    /// recorded by training and export so that a model names the data it was trained on.
    pub fn fingerprint(&self) -> Result<String> {
        todo!()
    }
}

/// An unlabelled, flat test folder, optionally ordered by a `sample_submission.csv`.
#[derive(Clone, Debug)]
pub struct TestSet {
    pub root: PathBuf,
    /// File names (relative to `root`) in submission order.
    pub names: Vec<String>,
    pub report: ScanReport,
    /// Names listed in the sample submission that are not in the folder (empty without one).
    pub missing: Vec<String>,
    /// Images in the folder that the sample submission does not list (they get no row).
    pub unlisted: Vec<String>,
}

impl TestSet {
    /// Scans a flat folder of images. With `sample_submission` (CSV whose first column is the
    /// image name), the order and the row set come from that file.
    pub fn scan(root: &Path, sample_submission: Option<&Path>) -> Result<TestSet> {
        todo!("{root:?} {sample_submission:?}")
    }
}
