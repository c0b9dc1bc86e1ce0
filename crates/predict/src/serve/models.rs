//! What the server serves, under which names: the Open Inference Protocol addresses models by
//! name and version.
//!
//! - One `--model`: one model, named after the file stem (or `--name`).
//! - Several: the ensemble, named `ensemble` (or `--name`), which `/v1/identify` runs, and
//!   each member under its own file stem (a stem that repeats gets `-<position>`; characters
//!   other than ASCII letters, digits, `.`, `_`, `-` become `_`), so a client
//!   can also ask one member. The ensemble takes a tensor input only when every member
//!   preprocesses the same way (same size, resize, normalisation): one tensor then means the
//!   same thing to all of them. Otherwise its `infer` is refused with a message naming the
//!   members to ask instead (photos still work, each member gets its own preprocessing).
//!
//! Every model applies the server's TTA and averages in its space (`--average`), as `predict`
//! does; its output is `logits` or `probs` accordingly, `[-1, classes]` float32. Its version is
//! the first 12 hex digits of the SHA-256 of its model cards (every `sorbier.*` field) and of
//! how they are combined (weights, average, TTA): the same files served the same way always
//! have the same version, and anything that changes the answers changes it.
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::batcher::Target;
use crate::engine::ensemble::{Average, Ensemble};
use crate::engine::tta::Tta;

/// One model as the protocol shows it.
#[derive(Clone, Debug)]
pub struct ServedModel {
    pub name: String,
    pub version: String,
    pub target: Target,
    /// `onnxruntime_onnx` for one ONNX model, `ensemble` for several.
    pub platform: &'static str,
    /// The tensor input, when there is one: its name and the preprocess index it stands for.
    pub input: Option<(String, usize)>,
    /// Why there is no tensor input (an ensemble whose members preprocess differently).
    pub no_input: Option<String>,
    /// Architectures and input sizes of what it runs, e.g. `resnet18 64px`.
    pub runs: Vec<String>,
    /// The member model names (an ensemble's).
    pub members: Vec<String>,
}

/// Every served model, the primary one (what `/v1/identify` runs) first.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub models: Vec<ServedModel>,
    pub classes: Vec<String>,
    /// `logits` or `probs`: the one output every model has.
    pub output: &'static str,
    pub average: Average,
    pub tta: Tta,
    /// Input sizes of the ensemble's preprocesses, by index.
    pub crops: Vec<u32>,
}

/// A name the protocol's URLs carry as they are.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        bail!("model name {name:?} must be non-empty ASCII letters, digits, '.', '_' or '-' (it is part of URLs)");
    }
    Ok(())
}

impl Catalog {
    /// The models `ens` is served as; `name` names the primary model.
    pub fn new(ens: &Ensemble, name: Option<&str>, tta: Tta) -> Result<Catalog> {
        let how = |weights: &[f64]| serde_json::json!({ "weights": weights, "average": ens.average, "tta": tta });
        let version = |cards: Vec<&sorbier::meta::ModelMeta>, weights: &[f64]| -> Result<String> {
            let text = serde_json::to_string(&serde_json::json!({ "cards": cards, "combined": how(weights) })).context("cannot serialise the model cards")?;
            Ok(Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect())
        };
        // File stems with characters URLs would need escaped get '_' instead.
        let stem = |i: usize| {
            let s = ens.members[i].path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let s: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
            if s.is_empty() { format!("model-{}", i + 1) } else { s }
        };
        let runs = |i: usize| format!("{} {}px", ens.members[i].meta.arch, ens.members[i].meta.preprocess.crop);
        let n = ens.members.len();
        let mut member_names: Vec<String> = (0..n).map(stem).collect();
        for i in 0..n {
            if member_names.iter().filter(|m| **m == member_names[i]).count() > 1 {
                member_names[i] = format!("{}-{}", stem(i), i + 1);
            }
        }
        let primary = match name {
            Some(x) => x.to_string(),
            None if n == 1 => member_names[0].clone(),
            None => "ensemble".to_string(),
        };
        let mut models = Vec::new();
        let (input, no_input) = if ens.preprocesses.len() == 1 {
            (Some((ens.members[0].input_name().to_string(), 0)), None)
        } else {
            let sizes: Vec<String> = (0..n).map(|i| format!("{} {}px", member_names[i], ens.members[i].meta.preprocess.crop)).collect();
            let why = format!(
                "the ensemble's members preprocess their inputs differently ({}), so one tensor cannot feed them all: send tensors to a member model ({}), or photos to POST /v1/identify",
                sizes.join(", "),
                member_names.join(", ")
            );
            (None, Some(why))
        };
        models.push(ServedModel {
            name: primary.clone(),
            version: version(ens.members.iter().map(|m| &m.meta).collect(), &ens.weights())?,
            target: Target::Ensemble,
            platform: if n == 1 { "onnxruntime_onnx" } else { "ensemble" },
            input,
            no_input,
            runs: (0..n).map(runs).collect(),
            members: if n == 1 { Vec::new() } else { member_names.clone() },
        });
        if n > 1 {
            for (i, m) in ens.members.iter().enumerate() {
                models.push(ServedModel {
                    name: member_names[i].clone(),
                    version: version(vec![&m.meta], &[1.0])?,
                    target: Target::Member(i),
                    platform: "onnxruntime_onnx",
                    input: Some((m.input_name().to_string(), m.preprocess)),
                    no_input: None,
                    runs: vec![runs(i)],
                    members: Vec::new(),
                });
            }
        }
        for (i, m) in models.iter().enumerate() {
            check_name(&m.name)?;
            if models[..i].iter().any(|o| o.name == m.name) {
                bail!("two served models would be called {:?} (the ensemble and a member): pick another --name", m.name);
            }
        }
        Ok(Catalog {
            models,
            classes: ens.classes.clone(),
            output: match ens.average {
                Average::Logits => "logits",
                Average::Probs => "probs",
            },
            average: ens.average,
            tta,
            crops: ens.preprocesses.iter().map(|p| p.crop).collect(),
        })
    }

    /// The model `/v1/identify` runs.
    pub fn primary(&self) -> &ServedModel {
        &self.models[0]
    }

    pub fn get(&self, name: &str) -> Option<&ServedModel> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}
