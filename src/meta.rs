//! The model card carried inside every exported `.onnx` file as `metadata_props`.
//!
//! The predictor reads class names and preprocessing from here and nowhere else, so a model
//! can never be paired with the wrong class list or the wrong resize/normalisation.
//! Each field is one metadata key (`sorbier.*`); values are JSON.
//!
//! A model quantised by `predictor quantize` carries one more key, `sorbier.quantization`
//! ([`Quantization`]: how it was calibrated), and `precision` `int8`. The key is optional, so
//! every earlier model file still reads, and a reader that does not know it ignores it.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::transforms::Preprocess;

/// Key prefix of every sorbier metadata entry.
pub const PREFIX: &str = "sorbier.";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Class folder names in output-index order.
    pub classes: Vec<String>,
    /// `resnet18` … `resnet152`.
    pub arch: String,
    /// Eval preprocessing: resize, crop (= input size), interpolation, mean, std.
    pub preprocess: Preprocess,
    /// Metrics of the exported checkpoint and its `epoch`: validation `top1`, `top5`,
    /// `macro_acc`, `loss`; or `train_acc`, `train_loss` for a run trained without a
    /// validation split (`--val-fraction 0`).
    pub metrics: BTreeMap<String, f64>,
    /// Fingerprint of the training data (see `data::Dataset::fingerprint`).
    pub data_fingerprint: String,
    /// Version of sorbier that wrote the file.
    pub sorbier_version: String,
    /// `float32`, `float16` or `int8` (weights/compute; input and output are always float32).
    pub precision: String,
    /// Name of the run the model came from, and which checkpoint (`best`/`last`).
    pub source: String,
}

impl ModelMeta {
    /// As `(key, value)` pairs for ONNX `metadata_props`.
    pub fn to_props(&self) -> Result<Vec<(String, String)>> {
        let value = serde_json::to_value(self)?;
        let obj = value.as_object().context("model metadata is not a JSON object")?;
        obj.iter()
            .map(|(k, v)| Ok((format!("{PREFIX}{k}"), serde_json::to_string(v)?)))
            .collect()
    }

    /// Rebuilds the card from `metadata_props`; a missing or malformed key is an error naming it.
    pub fn from_props<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut obj = serde_json::Map::new();
        for (k, v) in props {
            if let Some(field) = k.strip_prefix(PREFIX) {
                let parsed: serde_json::Value = serde_json::from_str(v)
                    .with_context(|| format!("metadata key {k} is not valid JSON: {v:?}"))?;
                obj.insert(field.to_string(), parsed);
            }
        }
        if obj.is_empty() {
            anyhow::bail!("the model has no sorbier metadata (keys {PREFIX}*): was it exported by `trainer export`?");
        }
        serde_json::from_value(serde_json::Value::Object(obj)).context("incomplete or invalid sorbier metadata")
    }

    /// The metadata keys every sorbier model carries.
    pub fn keys() -> &'static [&'static str] {
        &["classes", "arch", "preprocess", "metrics", "data_fingerprint", "sorbier_version", "precision", "source"]
    }
}

/// [`ModelMeta::precision`] of a model quantised to int8 by `predictor quantize`.
pub const PRECISION_INT8: &str = "int8";

/// How an int8 model was made from its float32 parent (`sorbier.quantization`): post-training
/// static quantisation in QDQ form, calibrated on images run through the parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// Activation-range method, e.g. `minmax` or `percentile 99.999`.
    pub method: String,
    /// Calibration images actually run.
    pub images: usize,
    /// Fingerprint of those images (class names, relative paths, sizes; as
    /// `data::Dataset::fingerprint`).
    pub data_fingerprint: String,
    /// Where they came from and how they were chosen (e.g. `flowers/train, stratified over 5
    /// classes`).
    pub selection: String,
    /// Weight encoding, e.g. `int8 symmetric per output channel`.
    pub weights: String,
    /// Activation encoding, e.g. `uint8 asymmetric per tensor`.
    pub activations: String,
    /// Nodes quantised, by operator (`Conv` 20, `Add` 8, …).
    pub nodes: BTreeMap<String, usize>,
    /// SHA-256 (first 16 hex digits) of the float32 model file it was made from.
    pub parent_sha256: String,
    /// Version of sorbier that quantised it.
    pub sorbier_version: String,
}

impl Quantization {
    /// Metadata key (after [`PREFIX`]).
    pub const KEY: &'static str = "quantization";

    /// The card's `(key, value)` pair for ONNX `metadata_props`.
    pub fn to_prop(&self) -> Result<(String, String)> {
        Ok((format!("{PREFIX}{}", Self::KEY), serde_json::to_string(self)?))
    }

    /// The quantisation record among `metadata_props`, if the model has one; a malformed one is
    /// an error.
    pub fn from_props<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Option<Self>> {
        let key = format!("{PREFIX}{}", Self::KEY);
        match props.into_iter().find(|(k, _)| *k == key) {
            None => Ok(None),
            Some((_, v)) => serde_json::from_str(v).map(Some).with_context(|| format!("metadata key {key} is not a valid quantisation record: {v:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_round_trip() {
        let meta = ModelMeta {
            classes: vec!["10".into(), "2".into(), "daisy".into()],
            arch: "resnet18".into(),
            preprocess: Preprocess::default(),
            metrics: [("top1".to_string(), 0.5)].into_iter().collect(),
            data_fingerprint: "abc".into(),
            sorbier_version: "0.1.0".into(),
            precision: "float32".into(),
            source: "runs/x:best".into(),
        };
        let props = meta.to_props().unwrap();
        assert_eq!(props.len(), ModelMeta::keys().len());
        let back = ModelMeta::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, meta);
        let missing = props.iter().filter(|(k, _)| k != "sorbier.classes").map(|(k, v)| (k.as_str(), v.as_str()));
        let err = ModelMeta::from_props(missing).unwrap_err();
        assert!(format!("{err:#}").contains("classes"), "{err:#}");
    }

    #[test]
    fn quantization_record_is_optional_and_round_trips() {
        let meta = ModelMeta {
            classes: vec!["a".into()],
            arch: "resnet18".into(),
            preprocess: Preprocess::default(),
            metrics: Default::default(),
            data_fingerprint: "abc".into(),
            sorbier_version: "0.1.0".into(),
            precision: PRECISION_INT8.into(),
            source: "r:best".into(),
        };
        let mut props = meta.to_props().unwrap();
        // A model without the key (every model written before it existed) has no record.
        assert_eq!(Quantization::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap(), None);
        let q = Quantization {
            method: "minmax".into(),
            images: 300,
            data_fingerprint: "0123".into(),
            selection: "train, stratified over 5 classes".into(),
            weights: "int8 symmetric per output channel".into(),
            activations: "uint8 asymmetric per tensor".into(),
            nodes: [("Conv".to_string(), 20)].into_iter().collect(),
            parent_sha256: "feed".into(),
            sorbier_version: "0.1.0".into(),
        };
        props.push(q.to_prop().unwrap());
        let pairs = || props.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert_eq!(Quantization::from_props(pairs()).unwrap(), Some(q));
        // The card itself still reads with the extra key present.
        assert_eq!(ModelMeta::from_props(pairs()).unwrap(), meta);
        let bad = [("sorbier.quantization", "{\"method\": 1}")];
        assert!(format!("{:#}", Quantization::from_props(bad).unwrap_err()).contains("sorbier.quantization"));
    }
}
