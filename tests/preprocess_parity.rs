//! Parity of the eval transform with PIL + torchvision on real photos.
//!
//! `tools/preprocess_reference.py` runs `Image.open().convert('RGB')` + `Resize(256)` +
//! `CenterCrop(224)` + `ToTensor()` + `Normalize(ImageNet)` on the first images of
//! `../shared/data/flowers/test` (sorted by name); this test runs `load_rgb` + `eval_into` on the
//! same files and compares the normalised tensors.
//!
//! Why they are not bit-identical: (1) JPEG decoding — Pillow uses libjpeg-turbo, we use
//! zune-jpeg; both are exact IDCTs up to rounding, with different chroma upsampling rounding,
//! so decoded pixels may differ by a level or two; (2) resampling — fast_image_resize uses
//! Pillow's bilinear filter and 8-bit fixed-point convolution, but its coefficient
//! normalisation and rounding of the horizontal pass are not guaranteed identical, so a
//! resized pixel can differ by ±1 level. One 8-bit level is 1/255/0.225 ≈ 0.0174 after
//! normalisation (std ≈ 0.225).
//!
//! Measured on 40 images at 256→224 (this machine, Pillow 12 wheel with libjpeg-turbo):
//! mean |diff| 0.0028 (≈ 0.16 level), max |diff| 0.052 (3 levels); worst image mean 0.0042.
//! Tolerances are about twice that: mean 0.006, max 0.105 (6 levels), any one image's mean
//! 0.012. A systematic mistake lands far above: the same tensors compared one column apart
//! differ by 0.156 on average (measured; the test checks it stays above 2× the mean bound).
use std::path::{Path, PathBuf};
use std::process::Command;

use sorbier::transforms::{eval_into, eval_tensor_len, load_rgb, Preprocess};

mod common;
use common::python;

const N_IMAGES: usize = 40;
const MEAN_TOL: f64 = 0.006;
const MAX_TOL: f64 = 0.105;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a little-endian float32 C-order `.npy` file: (shape, data).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let (shape, bytes) = common::read_npy_bytes(path, "<f4");
    let data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

#[test]
fn eval_transform_matches_torchvision_on_flowers_test() {
    let data = manifest().join("../shared/data/flowers/test");
    assert!(data.is_dir(), "parity data missing: {} (the shared flowers set must sit beside the repo)", data.display());
    let py = python();
    assert!(py.exists(), "python {} not found: run tools/setup.sh (or set SORBIER_PYTHON)", py.display());

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ref.npy");
    let status = Command::new(&py)
        .arg(manifest().join("tools/preprocess_reference.py"))
        .arg(&data)
        .arg(&out)
        .args(["256", "224", &N_IMAGES.to_string()])
        .output()
        .unwrap();
    assert!(status.status.success(), "reference script failed: {}", String::from_utf8_lossy(&status.stderr));
    let (shape, reference) = read_npy(&out);
    assert_eq!(shape, vec![N_IMAGES, 3, 224, 224]);
    let names: Vec<String> = std::fs::read_to_string(tmp.path().join("ref.npy.names")).unwrap().lines().map(String::from).collect();
    assert_eq!(names.len(), N_IMAGES);

    let p = Preprocess::default();
    assert_eq!((p.resize, p.crop), (256, 224));
    let len = eval_tensor_len(&p);
    let mut ours = vec![0f32; len];
    let (mut sum, mut max, mut count) = (0f64, 0f64, 0usize);
    // The same comparison with our tensor shifted one column: shows the bounds can fail.
    let (mut shifted_sum, mut shifted_count) = (0f64, 0usize);
    let mut worst_image = (0f64, String::new());
    for (i, name) in names.iter().enumerate() {
        let img = load_rgb(&data.join(name)).unwrap();
        eval_into(&img, &p, &mut ours).unwrap();
        let want = &reference[i * len..(i + 1) * len];
        let mut img_sum = 0f64;
        for (a, b) in ours.iter().zip(want) {
            let d = (*a as f64 - *b as f64).abs();
            img_sum += d;
            max = max.max(d);
        }
        sum += img_sum;
        for row in 0..3 * 224 {
            let (a, b) = (&ours[row * 224..(row + 1) * 224], &want[row * 224..(row + 1) * 224]);
            shifted_sum += a[1..].iter().zip(&b[..223]).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>();
            shifted_count += 223;
        }
        count += len;
        if img_sum / len as f64 > worst_image.0 {
            worst_image = (img_sum / len as f64, name.clone());
        }
    }
    let mean = sum / count as f64;
    eprintln!("parity over {N_IMAGES} images: mean |diff| {mean:.5}, max |diff| {max:.5}, worst image {} (mean {:.5})", worst_image.1, worst_image.0);
    let shifted = shifted_sum / shifted_count as f64;
    eprintln!("(one column off: mean |diff| {shifted:.5})");
    assert!(shifted > 2.0 * MEAN_TOL, "a one-pixel shift is not detected ({shifted})");
    assert!(mean < MEAN_TOL, "mean |diff| {mean} ≥ {MEAN_TOL}");
    assert!(max < MAX_TOL, "max |diff| {max} ≥ {MAX_TOL}");
    // Per image too: no single image may be systematically off (e.g. a wrong crop).
    assert!(worst_image.0 < 2.0 * MEAN_TOL, "image {} mean |diff| {}", worst_image.1, worst_image.0);
}
