//! The offline commands, each a function the binary calls with typed options:
//! [`predict`] (submission CSV), [`evaluate`] (on a labelled folder), [`score`] (a submission
//! against a solution), [`info`] (a model's card, without ONNX Runtime), [`merge`] (shards of
//! one run) and [`blend`] (saved logits of several runs).
pub mod blend;
pub mod evaluate;
pub mod info;
pub mod merge;
pub mod predict;
pub mod score;
