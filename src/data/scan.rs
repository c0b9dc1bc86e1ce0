//! Scanning an ImageFolder tree (`root/<class>/...`) or a flat test folder.
//!
//! Classes are the sub-folder names sorted as strings (`"10"` is a name, not an index), as
//! torchvision's `ImageFolder` does. Images are recognised by extension, case-insensitively
//! (jpg, jpeg, png, webp, bmp), or failing that by their magic bytes. Hidden files and
//! non-images are counted in a [`ScanReport`], never dropped silently.
//!
//! Hidden means a name starting with `.` (`.DS_Store`, `.ipynb_checkpoints/`): a hidden folder
//! counts once and is not entered. Symbolic links are followed (a link loop is an error).
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

/// Extensions taken as images without looking inside (compared lower-cased).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// Example paths kept per kind of skipped entry (hidden, not an image, stray).
const EXAMPLES_PER_KIND: usize = 3;

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

impl ScanReport {
    /// Nothing was skipped.
    pub fn is_clean(&self) -> bool {
        self.hidden == 0 && self.not_images == 0 && self.stray_files == 0
    }

    /// One line, e.g. `skipped: 2 hidden, 1 not an image, 0 stray files`.
    pub fn summary_line(&self) -> String {
        format!(
            "skipped: {} hidden, {} not an image, {} stray file{}",
            self.hidden,
            self.not_images,
            self.stray_files,
            if self.stray_files == 1 { "" } else { "s" }
        )
    }

    fn note(&mut self, kind: Skip, path: &Path) {
        let count = match kind {
            Skip::Hidden => &mut self.hidden,
            Skip::NotImage => &mut self.not_images,
            Skip::Stray => &mut self.stray_files,
        };
        *count += 1;
        // The first few of each kind, so a reader sees what "not an image" was.
        if *count <= EXAMPLES_PER_KIND {
            self.examples.push(path.to_path_buf());
        }
    }
}

#[derive(Clone, Copy)]
enum Skip {
    Hidden,
    NotImage,
    Stray,
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
    ///
    /// Class folders are the non-hidden directories directly under `root` (links followed);
    /// images are searched recursively inside each. Files directly under `root` are counted as
    /// stray files.
    pub fn scan(root: &Path) -> Result<Dataset> {
        let mut report = ScanReport::default();
        let mut class_dirs: Vec<(String, PathBuf)> = Vec::new();
        let entries = fs::read_dir(root).with_context(|| format!("cannot read dataset folder {}", root.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                bail!("folder or file name is not valid UTF-8: {}", path.display());
            };
            if name.starts_with('.') {
                report.note(Skip::Hidden, &path);
                continue;
            }
            // fs::metadata follows symbolic links, so a linked class folder counts as a folder.
            let meta = fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
            if meta.is_dir() {
                class_dirs.push((name.to_string(), path));
            } else {
                report.note(Skip::Stray, &path);
            }
        }
        if class_dirs.is_empty() {
            bail!(
                "no class folders in {} (expected {}/<class>/<images>; {})",
                root.display(),
                root.display(),
                report.summary_line()
            );
        }
        class_dirs.sort();

        let mut classes = Vec::with_capacity(class_dirs.len());
        let mut samples = Vec::new();
        for (label, (name, dir)) in class_dirs.into_iter().enumerate() {
            let mut files = scan_class(&dir, &mut report)?;
            if files.is_empty() {
                bail!(
                    "class folder {} holds no images (jpg, jpeg, png, webp, bmp); remove it or add images ({} so far)",
                    dir.display(),
                    report.summary_line()
                );
            }
            files.sort();
            samples.extend(files.into_iter().map(|path| Sample { path, label }));
            classes.push(name);
        }
        Ok(Dataset { root: root.to_path_buf(), classes, samples, report })
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

    /// Image paths, in sample order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.samples.iter().map(|s| s.path.clone()).collect()
    }

    /// A short stable hash (hex) of the class names and each file's relative path and size,
    /// recorded by training and export so that a model names the data it was trained on.
    ///
    /// SHA-256 over the class names and, per sample, its label, its path relative to the root
    /// (with `/` separators, so the hash is the same on every OS and wherever the folder lies)
    /// and its size in bytes; the first 16 hex digits. File contents are not read: renaming,
    /// adding, removing or resizing a file changes the fingerprint, re-encoding in place to
    /// the same size does not.
    pub fn fingerprint(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(b"sorbier-dataset-v1\n");
        for c in &self.classes {
            h.update(b"class\0");
            h.update(c.as_bytes());
            h.update(b"\n");
        }
        for s in &self.samples {
            let rel = s.path.strip_prefix(&self.root).unwrap_or(&s.path);
            let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let size = fs::metadata(&s.path).with_context(|| format!("cannot stat {}", s.path.display()))?.len();
            h.update(format!("{}\0{}\0{}\n", s.label, rel.join("/"), size).as_bytes());
        }
        let digest = h.finalize();
        Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
    }
}

/// Walks one class folder recursively, returning its image files (unsorted).
fn scan_class(dir: &Path, report: &mut ScanReport) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut walker = WalkDir::new(dir).follow_links(true).min_depth(1).into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.with_context(|| format!("cannot walk class folder {}", dir.display()))?;
        let hidden = entry.file_name().to_str().is_none_or(|n| n.starts_with('.'));
        if entry.file_type().is_dir() {
            if hidden {
                report.note(Skip::Hidden, entry.path());
                walker.skip_current_dir();
            }
            continue;
        }
        if hidden {
            report.note(Skip::Hidden, entry.path());
        } else if is_image(entry.path())? {
            files.push(entry.into_path());
        } else {
            report.note(Skip::NotImage, entry.path());
        }
    }
    Ok(files)
}

/// True for a known image extension (any case); otherwise decided by the file's magic bytes.
pub fn is_image(path: &Path) -> Result<bool> {
    if has_image_extension(path) {
        return Ok(true);
    }
    let mut head = [0u8; 16];
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    // A short read is normal for tiny files; read until the buffer is full or the file ends.
    while n < head.len() {
        let k = f.read(&mut head[n..]).with_context(|| format!("cannot read {}", path.display()))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(matches!(
        image::guess_format(&head[..n]),
        Ok(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP | image::ImageFormat::Bmp)
    ))
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Accepts a competition root as well as an ImageFolder tree: returns `p/train` when `p/train`
/// is a folder that holds sub-folders and no images directly (so a class that happens to be
/// called `train` is not mistaken for a competition layout); otherwise `p` itself.
pub fn resolve_train_dir(p: &Path) -> PathBuf {
    let train = p.join("train");
    let Ok(entries) = fs::read_dir(&train) else {
        return p.to_path_buf();
    };
    let mut has_dir = false;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            has_dir = true;
        } else if has_image_extension(&path) {
            return p.to_path_buf();
        }
    }
    if has_dir {
        train
    } else {
        p.to_path_buf()
    }
}

/// The test half of a competition root: `p/test` (if a folder) and `p/sample_submission.csv`
/// (if present).
pub fn resolve_test_dir(p: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let test = p.join("test");
    if !test.is_dir() {
        return None;
    }
    let csv = p.join("sample_submission.csv");
    Some((test, csv.is_file().then_some(csv)))
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
    ///
    /// With a sample submission, `names` holds every listed name in CSV order, including the
    /// `missing` ones, so that the caller can decide and no row is dropped silently; a listed
    /// file is taken as given even if its name does not look like an image (decoding will
    /// say). A duplicate or empty name in the CSV is an error. Without one, `names` are the
    /// images found, sorted. Sub-folders are not entered; they count as not images.
    pub fn scan(root: &Path, sample_submission: Option<&Path>) -> Result<TestSet> {
        let mut report = ScanReport::default();
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let entries = fs::read_dir(root).with_context(|| format!("cannot read test folder {}", root.display()))?;
        let mut listed_set = HashSet::new();
        let listed = match sample_submission {
            Some(csv) => {
                let names = read_submission_names(csv)?;
                listed_set = names.iter().cloned().collect();
                Some(names)
            }
            None => None,
        };
        let mut present: HashSet<String> = HashSet::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                bail!("file name is not valid UTF-8: {}", path.display());
            };
            let meta = fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
            if meta.is_file() && listed_set.contains(&name) {
                present.insert(name);
                continue;
            }
            if name.starts_with('.') {
                report.note(Skip::Hidden, &path);
            } else if meta.is_dir() || !is_image(&path)? {
                report.note(Skip::NotImage, &path);
            } else {
                found.push((name, path));
            }
        }
        found.sort();
        match listed {
            Some(names) => {
                let missing = names.iter().filter(|n| !present.contains(*n)).cloned().collect();
                let unlisted = found.into_iter().map(|(n, _)| n).collect();
                Ok(TestSet { root: root.to_path_buf(), names, report, missing, unlisted })
            }
            None => {
                if found.is_empty() {
                    bail!("no images (jpg, jpeg, png, webp, bmp) in test folder {} ({})", root.display(), report.summary_line());
                }
                let names = found.into_iter().map(|(n, _)| n).collect();
                Ok(TestSet { root: root.to_path_buf(), names, report, missing: Vec::new(), unlisted: Vec::new() })
            }
        }
    }

    /// Full paths of `names`, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.names.iter().map(|n| self.root.join(n)).collect()
    }
}

/// The first column of a sample submission, in row order (header skipped).
fn read_submission_names(csv_path: &Path) -> Result<Vec<String>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(csv_path)
        .with_context(|| format!("cannot open sample submission {}", csv_path.display()))?;
    let mut names = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("cannot read {}", csv_path.display()))?;
        // Row numbers as a spreadsheet shows them: the header is row 1.
        let row = i + 2;
        let name = rec.get(0).map(str::trim).unwrap_or("");
        if name.is_empty() {
            bail!("{} row {row}: empty image name", csv_path.display());
        }
        if !seen.insert(name.to_string()) {
            bail!("{} row {row}: image {name} is listed twice", csv_path.display());
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        bail!("sample submission {} lists no images", csv_path.display());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path) {
        let img = image::RgbImage::from_pixel(3, 2, image::Rgb([10, 200, 30]));
        img.save_with_format(path, image::ImageFormat::Png).unwrap();
    }

    fn write_jpeg(path: &Path) {
        let img = image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 30]));
        img.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
    }

    fn flowers() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/flowers")
    }

    #[test]
    fn odd_names_extensions_hidden_and_text_files() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for c in ["2", "10", "rose pétale"] {
            fs::create_dir(r.join(c)).unwrap();
        }
        write_png(&r.join("2/a b.PNG"));
        write_jpeg(&r.join("2/Z.JPG"));
        write_jpeg(&r.join("10/ünïcödé 花.jpeg"));
        write_png(&r.join("10/x.Png"));
        // No extension and a misleading one: recognised by magic bytes.
        write_png(&r.join("rose pétale/noext"));
        fs::rename(r.join("rose pétale/noext"), r.join("rose pétale/photo.dat")).unwrap();
        write_jpeg(&r.join("rose pétale/bare"));
        fs::create_dir(r.join("rose pétale/nested")).unwrap();
        write_png(&r.join("rose pétale/nested/deep.webp.png"));
        // Skipped, and counted.
        fs::write(r.join("2/notes.txt"), "not an image").unwrap();
        fs::write(r.join("2/.DS_Store"), "x").unwrap();
        fs::create_dir(r.join("10/.ipynb_checkpoints")).unwrap();
        write_png(&r.join("10/.ipynb_checkpoints/x.png"));
        fs::create_dir(r.join(".git")).unwrap();
        fs::write(r.join("README.md"), "hello").unwrap();

        let ds = Dataset::scan(r).unwrap();
        // Sorted as strings: "10" before "2".
        assert_eq!(ds.classes, vec!["10", "2", "rose pétale"]);
        assert_eq!(ds.class_counts(), vec![2, 2, 3]);
        assert_eq!(ds.report.hidden, 3, "{:?}", ds.report);
        assert_eq!(ds.report.not_images, 1);
        assert_eq!(ds.report.stray_files, 1);
        assert_eq!(ds.report.examples.len(), 5);
        assert!(ds.report.examples.contains(&r.join("2/notes.txt")));
        let names: Vec<String> =
            ds.samples.iter().map(|s| s.path.strip_prefix(r).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            vec![
                "10/x.Png",
                "10/ünïcödé 花.jpeg",
                "2/Z.JPG",
                "2/a b.PNG",
                "rose pétale/bare",
                "rose pétale/nested/deep.webp.png",
                "rose pétale/photo.dat",
            ]
        );
        assert_eq!(ds.labels(), vec![0, 0, 1, 1, 2, 2, 2]);

        // Fingerprint: stable, independent of where the tree lies, sensitive to content.
        let fp = ds.fingerprint().unwrap();
        assert_eq!(fp.len(), 16);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fp, Dataset::scan(r).unwrap().fingerprint().unwrap());
        let t2 = tempfile::tempdir().unwrap();
        let moved = t2.path().join("moved");
        fs::rename(r, &moved).unwrap();
        assert_eq!(fp, Dataset::scan(&moved).unwrap().fingerprint().unwrap());
        fs::write(moved.join("2/Z.JPG"), "shorter").unwrap();
        assert_ne!(fp, Dataset::scan(&moved).unwrap().fingerprint().unwrap());
    }

    #[test]
    fn empty_class_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("a")).unwrap();
        fs::create_dir(t.path().join("b_empty")).unwrap();
        write_png(&t.path().join("a/1.png"));
        fs::write(t.path().join("b_empty/readme.txt"), "x").unwrap();
        let err = format!("{:#}", Dataset::scan(t.path()).unwrap_err());
        assert!(err.contains("b_empty"), "{err}");
        assert!(err.contains("no images"), "{err}");
    }

    #[test]
    fn empty_dataset_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let err = format!("{:#}", Dataset::scan(t.path()).unwrap_err());
        assert!(err.contains("no class folders"), "{err}");
        fs::write(t.path().join("stray.jpg"), "x").unwrap();
        let err = format!("{:#}", Dataset::scan(t.path()).unwrap_err());
        assert!(err.contains("1 stray file"), "{err}");
        let err = format!("{:#}", Dataset::scan(&t.path().join("nope")).unwrap_err());
        assert!(err.contains("nope"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_class_folder_is_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        write_png(&elsewhere.join("1.png"));
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("linked")).unwrap();
        let ds = Dataset::scan(&root).unwrap();
        assert_eq!(ds.classes, vec!["linked"]);
        assert_eq!(ds.samples.len(), 1);
    }

    #[test]
    fn competition_root_resolves_to_train() {
        let t = tempfile::tempdir().unwrap();
        // A plain ImageFolder whose class is called "train": not a competition root.
        fs::create_dir(t.path().join("train")).unwrap();
        write_png(&t.path().join("train/1.png"));
        assert_eq!(resolve_train_dir(t.path()), t.path());
        let comp = tempfile::tempdir().unwrap();
        fs::create_dir_all(comp.path().join("train/a")).unwrap();
        assert_eq!(resolve_train_dir(comp.path()), comp.path().join("train"));
        assert_eq!(resolve_train_dir(&comp.path().join("train")), comp.path().join("train"));
        assert!(resolve_test_dir(comp.path()).is_none());
    }

    #[test]
    fn test_set_with_and_without_sample_submission() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("test");
        fs::create_dir(&d).unwrap();
        for n in ["b.jpg", "a.JPG", "c.png", "extra.png"] {
            write_png(&d.join(n));
        }
        fs::write(d.join("notes.txt"), "x").unwrap();
        fs::write(d.join(".hidden.jpg"), "x").unwrap();
        let ts = TestSet::scan(&d, None).unwrap();
        assert_eq!(ts.names, vec!["a.JPG", "b.jpg", "c.png", "extra.png"]);
        assert_eq!((ts.report.hidden, ts.report.not_images), (1, 1));
        assert!(ts.missing.is_empty() && ts.unlisted.is_empty());

        let csv = t.path().join("sample_submission.csv");
        fs::write(&csv, "image_name,class\nc.png,x\nmissing.jpg,x\na.JPG,x\nb.jpg,x\n").unwrap();
        let ts = TestSet::scan(&d, Some(&csv)).unwrap();
        assert_eq!(ts.names, vec!["c.png", "missing.jpg", "a.JPG", "b.jpg"]);
        assert_eq!(ts.missing, vec!["missing.jpg"]);
        assert_eq!(ts.unlisted, vec!["extra.png"]);
        assert_eq!(ts.paths()[0], d.join("c.png"));

        fs::write(&csv, "image_name,class\nc.png,x\nc.png,y\n").unwrap();
        let err = format!("{:#}", TestSet::scan(&d, Some(&csv)).unwrap_err());
        assert!(err.contains("row 3") && err.contains("twice"), "{err}");
    }

    #[test]
    fn flowers_train_and_test() {
        let root = flowers();
        if !root.is_dir() {
            panic!("missing {} (the shared flowers data set)", root.display());
        }
        let train = resolve_train_dir(&root);
        assert_eq!(train, root.join("train"));
        let ds = Dataset::scan(&train).unwrap();
        assert_eq!(ds.classes, vec!["daisy", "dandelion", "roses", "sunflowers", "tulips"]);
        assert_eq!(ds.class_counts(), vec![30, 400, 60, 120, 220]);
        assert!(ds.report.is_clean(), "{:?}", ds.report);
        assert_eq!(ds.fingerprint().unwrap(), ds.fingerprint().unwrap());

        let (test_dir, csv) = resolve_test_dir(&root).unwrap();
        let csv = csv.unwrap();
        let ts = TestSet::scan(&test_dir, Some(&csv)).unwrap();
        assert_eq!(ts.names.len(), 250);
        assert!(ts.missing.is_empty(), "{:?}", ts.missing);
        assert!(ts.unlisted.is_empty(), "{:?}", ts.unlisted);
        let mut rdr = csv::Reader::from_path(&csv).unwrap();
        let order: Vec<String> = rdr.records().map(|r| r.unwrap()[0].to_string()).collect();
        assert_eq!(ts.names, order);
    }
}
