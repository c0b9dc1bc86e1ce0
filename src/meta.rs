//! The model card carried inside every exported `.onnx` file as `metadata_props`.
//!
//! The predictor reads class names and preprocessing from here and nowhere else, so a model
//! can never be paired with the wrong class list or the wrong resize/normalisation.
//! Each field is one metadata key (`sorbier.*`); values are JSON.
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
    /// `float32` or `float16` (weights/compute; input and output are always float32).
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
}
