//! Preprocessing, one module for every stage: decoding (`decode`), the deterministic eval
//! transform (`eval`: resize shorter side → center crop → normalise, as torchvision's
//! `Resize + CenterCrop + ToTensor + Normalize`), the training augmentations (`augment`) and the
//! automatic augmentation policies they can run (`auto_augment`: timm's RandAugment, torchvision's
//! TrivialAugmentWide).
//!
//! The parameters are serde structs: training records them in `config.json`, export copies
//! them into the ONNX metadata, and the predictor reads them back from there.
use serde::{Deserialize, Serialize};

pub mod augment;
pub mod auto_augment;
pub mod decode;
pub mod eval;

pub use augment::{train_into, Augment};
pub use auto_augment::{AutoAugment, RandAugment};
pub use decode::{decode_rgb, decode_rgb_limited, load_rgb, DEFAULT_MAX_PIXELS};
pub use eval::{eval_into, eval_tensor_len};

/// ImageNet channel means (RGB, 0–1 scale), as used by every torchvision pretrained model.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Resampling filter. Bilinear/bicubic are antialiased when downscaling, as Pillow does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
}

crate::spelled!(Interpolation, "interpolation", [Nearest, Bilinear, Bicubic]);

/// Eval preprocessing: resize the shorter side to `resize`, center-crop `crop`×`crop`,
/// scale to 0–1, normalise per channel, lay out as CHW float32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub resize: u32,
    pub crop: u32,
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess { resize: 256, crop: 224, interpolation: Interpolation::Bilinear, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }
}

impl Preprocess {
    /// Same as default but with the torchvision ratio 256/224 kept for another crop size.
    pub fn for_crop(crop: u32) -> Self {
        let resize = ((crop as f64) * 256.0 / 224.0).round() as u32;
        Preprocess { resize, crop, ..Default::default() }
    }
}
