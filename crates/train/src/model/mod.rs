//! The libtorch side of the models: a ResNet built by walking `arch::ResNetSpec`, with
//! torchvision's parameter names, and weight loading/saving that reports every mismatch.
//!
//! - [`ResNet`] follows torchvision's `resnet.py` (v1.5) forward pass and initialisation, so a
//!   torchvision or timm state dict loads unchanged and our checkpoints load back into
//!   torchvision with `strict=True`.
//! - [`load_weights`] / [`save_safetensors`] move those state dicts in and out of a `VarStore`
//!   (names, shapes and missing tensors checked the way candle's `VarBuilder` and PyTorch's
//!   `load_state_dict(strict=True)` do).
//! - [`select_device`] turns `--device auto|cpu|cuda[:N]` into a `tch::Device`, never falling
//!   back silently.
pub mod autocast;
mod device;
pub mod memory_format;
mod pickle;
mod resnet;
pub(crate) mod shim;
mod weights;

pub use device::{cpu_has_native_bf16, precision_advice, select_device};
pub use resnet::{freeze_backbone, trainable_params, ParamGroups, ResNet, DECAY_GROUP, NO_DECAY_GROUP};
pub use weights::{load_weights, read_state_dict, save_safetensors, LoadReport, ShapeMismatch};
