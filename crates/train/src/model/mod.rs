//! The libtorch side of the models: a network built by walking `arch::NetSpec`, with the
//! reference implementations' parameter names, and weight loading/saving that reports every
//! mismatch.
//!
//! - [`Net`] follows torchvision's `resnet.py` (v1.5) and efficientnet-lite-pytorch's forward
//!   passes, so torchvision, timm and efficientnet-lite-pytorch state dicts load unchanged and
//!   our checkpoints load back into them with `strict=True`.
//! - [`pretrained`] finds the standard ImageNet weights of an architecture on this machine.
//! - [`load_weights`] / [`save_safetensors`] move those state dicts in and out of a `VarStore`
//!   (names, shapes and missing tensors checked the way candle's `VarBuilder` and PyTorch's
//!   `load_state_dict(strict=True)` do).
//! - [`select_device`] turns `--device auto|cpu|cuda[:N]` into a `tch::Device`, never falling
//!   back silently.
pub mod autocast;
mod device;
pub mod memory_format;
mod pickle;
mod net;
pub mod pretrained;
pub(crate) mod shim;
mod weights;

pub use device::{cpu_has_native_bf16, precision_advice, select_device};
pub use net::{freeze_backbone, trainable_params, Net, ParamGroups, DECAY_GROUP, NO_DECAY_GROUP};
pub use weights::{load_weights, read_state_dict, save_safetensors, LoadReport, ShapeMismatch};
