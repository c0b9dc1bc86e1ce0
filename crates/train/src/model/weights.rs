//! Moving PyTorch state dicts in and out of a `VarStore`, checked the way PyTorch's
//! `load_state_dict(strict=True)` and candle's `VarBuilder` check them: every missing,
//! unexpected and wrongly shaped tensor is listed, and nothing is copied unless all of it fits.
//!
//! Reads `.safetensors` (torchvision or timm naming — timm's ResNets use torchvision's names;
//! EfficientNet-Lite in efficientnet-lite-pytorch's or timm's `tf_efficientnet_lite*` names,
//! the latter renamed through the spec's aliases) and `torch.save(state_dict)` pickles (`.pth`/`.pt`/`.bin`, the zip format PyTorch has written
//! since 1.6) through sorbier's own reader (`pickle.rs`; libtorch's cannot read an
//! `OrderedDict`). Writes `.safetensors` under PyTorch names,
//! including BatchNorm running statistics and `num_batches_tracked`, so that torchvision loads
//! our checkpoints with `strict=True`.
use sorbier::arch::NetSpec;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Wrappers that training scripts put around a model, stripped when every key carries them:
/// `DataParallel`/DDP (`module.`), timm's EMA and many trainers (`model.`), `torch.compile`
/// (`_orig_mod.`).
const WRAPPER_PREFIXES: [&str; 3] = ["module.", "model.", "_orig_mod."];

/// How many names an error message lists before summarising the rest.
const LIST_LIMIT: usize = 12;

/// A tensor whose shape differs between the model and the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    /// Shape in the model.
    pub expected: Vec<i64>,
    /// Shape in the file.
    pub got: Vec<i64>,
}

impl std::fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} expected {:?}, got {:?}", self.name, self.expected, self.got)
    }
}

/// What [`load_weights`] did. On success `missing` can only hold classifier (`fc.*`, `_fc.*`)
/// tensors, and `unexpected`/`mismatched` are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub path: PathBuf,
    /// Wrapper prefixes removed from every key (e.g. `module.`), in the order removed.
    pub stripped_prefixes: Vec<String>,
    /// Tensors copied into the model.
    pub loaded: Vec<String>,
    /// Model tensors absent from the file (left at their initial values).
    pub missing: Vec<String>,
    /// File tensors the model has no place for.
    pub unexpected: Vec<String>,
    pub mismatched: Vec<ShapeMismatch>,
    /// Classifier tensors in the file deliberately not loaded (`drop_head`).
    pub dropped_head: Vec<String>,
    /// Tensors read under another naming scheme of the architecture (e.g. timm's), renamed
    /// to ours: how many.
    pub renamed: usize,
    /// BatchNorm `num_batches_tracked` counters: libtorch's BatchNorm with momentum 0.1 has no
    /// use for them.
    pub ignored: Vec<String>,
}

impl LoadReport {
    /// One line for the log, e.g. `loaded 320 tensors from x.pth; head dropped (fc.weight, fc.bias)`.
    pub fn summary(&self) -> String {
        let mut s = format!("loaded {} tensors from {}", self.loaded.len(), self.path.display());
        if !self.stripped_prefixes.is_empty() {
            s += &format!("; stripped prefix {}", self.stripped_prefixes.join(""));
        }
        if self.renamed > 0 {
            s += &format!("; {} renamed from timm's names", self.renamed);
        }
        if !self.dropped_head.is_empty() {
            s += &format!("; head dropped ({})", self.dropped_head.join(", "));
        }
        if !self.missing.is_empty() {
            s += &format!("; not in file, left at random init: {}", listing(&self.missing));
        }
        s
    }
}

fn listing<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s = items.iter().take(LIST_LIMIT).map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
    if items.len() > LIST_LIMIT {
        s += &format!(", … ({} in all)", items.len());
    }
    s
}

/// Reads every tensor of a state dict on the CPU: `.safetensors`, or (any other extension) a
/// `torch.save` zip file holding a `{name: tensor}` dict, possibly nested in a checkpoint under
/// `state_dict`/`model`.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    if !path.is_file() {
        bail!("weights file {} does not exist", path.display());
    }
    if ext == "safetensors" {
        return Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read {} as safetensors", path.display()));
    }
    let mut head = Vec::with_capacity(16);
    let _ = std::fs::File::open(path).and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 16), &mut head));
    if super::pickle::is_legacy(&head) {
        return super::pickle::read_torch_legacy(path).with_context(|| {
            format!("cannot read {} as a (legacy) torch.save state dict; convert it with:\n  {}", path.display(), conversion_hint(path))
        });
    }
    if !head.starts_with(b"PK\x03\x04") {
        bail!(
            "{} is neither .safetensors nor a torch.save file (zip, or the legacy format). \
             Convert it with:\n  {}",
            path.display(),
            conversion_hint(path)
        );
    }
    super::pickle::read_torch_zip(path).with_context(|| {
        format!("cannot read {} as a torch.save state dict; convert it with:\n  {}", path.display(), conversion_hint(path))
    })
}

/// A Python one-liner that turns any checkpoint holding a state dict into safetensors.
fn conversion_hint(path: &Path) -> String {
    format!(
        "python -c \"import torch, safetensors.torch as st; sd = torch.load('{p}', map_location='cpu'); \
         sd = sd.get('state_dict', sd.get('model', sd)); \
         st.save_file({{k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}}, '{p}.safetensors')\"",
        p = path.display()
    )
}

/// Removes wrapper prefixes ([`WRAPPER_PREFIXES`]) carried by every key.
fn strip_prefixes(mut tensors: Vec<(String, Tensor)>) -> (Vec<(String, Tensor)>, Vec<String>) {
    let mut stripped = Vec::new();
    'again: loop {
        for p in WRAPPER_PREFIXES {
            if !tensors.is_empty() && tensors.iter().all(|(n, _)| n.starts_with(p)) {
                tensors = tensors.into_iter().map(|(n, t)| (n[p.len()..].to_string(), t)).collect();
                stripped.push(p.to_string());
                continue 'again;
            }
        }
        break;
    }
    (tensors, stripped)
}

/// Loads a torchvision/timm/efficientnet-lite-pytorch state dict into `vs`, whose variables
/// were made by `Net::new(&vs.root(), spec, _)`. Names of another scheme of the architecture
/// ([`NetSpec::aliases`]) are renamed to ours first, when a name is not ours.
///
/// With `drop_head`, the classifier in the file is skipped (an ImageNet head of any size is fine) and
/// the model's new head keeps its initialisation. Errors — listing each name, with shapes —
/// when any backbone tensor is missing, a tensor is unexpected, or a shape differs; then
/// nothing is copied. Values are copied under `no_grad` into the existing variables, keeping
/// their dtype and device.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path, spec: &NetSpec, drop_head: bool) -> Result<LoadReport> {
    let raw = read_state_dict(path)?;
    let (file_tensors, stripped_prefixes) = strip_prefixes(raw);
    let mut report = LoadReport { path: path.to_path_buf(), stripped_prefixes, ..Default::default() };

    let mut file: BTreeMap<String, Tensor> = BTreeMap::new();
    let ours: std::collections::HashSet<String> = spec.tensors().into_iter().map(|(n, _)| n).collect();
    for (name, t) in file_tensors {
        if name.ends_with(".num_batches_tracked") {
            report.ignored.push(name);
            continue;
        }
        let name = match spec.canonical_name(&name).filter(|_| !ours.contains(&name)) {
            Some(renamed) => {
                report.renamed += 1;
                renamed
            }
            None => name,
        };
        file.insert(name, t);
    }

    let vars = vs.variables();
    let is_head = |n: &str| spec.is_classifier(n);
    let mut plan: Vec<(String, Tensor)> = Vec::new();
    for (name, shape) in spec.tensors() {
        let expected: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if !vars.contains_key(&name) {
            bail!("the model has no variable {name}: it was not built from the {} spec", spec.arch);
        }
        if drop_head && is_head(&name) {
            continue;
        }
        match file.remove(&name) {
            None => report.missing.push(name),
            Some(t) if t.size() != expected => {
                report.mismatched.push(ShapeMismatch { name, expected, got: t.size() })
            }
            Some(t) => plan.push((name, t)),
        }
    }
    for name in file.into_keys() {
        if drop_head && is_head(&name) {
            report.dropped_head.push(name);
        } else {
            report.unexpected.push(name);
        }
    }

    let missing_backbone: Vec<&String> = report.missing.iter().filter(|n| !is_head(n)).collect();
    if !missing_backbone.is_empty() || !report.unexpected.is_empty() || !report.mismatched.is_empty() {
        let mut msg = format!(
            "{}: the weights do not fit {} with {} classes",
            path.display(),
            spec.arch,
            spec.num_classes
        );
        if !report.stripped_prefixes.is_empty() {
            msg += &format!(" (after stripping {})", report.stripped_prefixes.join(""));
        }
        if !missing_backbone.is_empty() {
            msg += &format!("\n  {} missing: {}", missing_backbone.len(), listing(&missing_backbone));
        }
        if !report.unexpected.is_empty() {
            msg += &format!("\n  {} unexpected: {}", report.unexpected.len(), listing(&report.unexpected));
        }
        if !report.mismatched.is_empty() {
            msg += &format!("\n  {} with the wrong shape: {}", report.mismatched.len(), listing(&report.mismatched));
            if !drop_head && report.mismatched.iter().all(|m| is_head(&m.name)) {
                msg += "\n  only the classifier head differs: drop it to fine-tune on new classes";
            }
        }
        bail!(msg);
    }

    tch::no_grad(|| -> Result<()> {
        for (name, src) in &plan {
            let mut dst = vars[name].shallow_clone();
            dst.f_copy_(src).with_context(|| format!("cannot copy {name} from {}", path.display()))?;
        }
        Ok(())
    })?;
    report.loaded = plan.into_iter().map(|(n, _)| n).collect();
    Ok(report)
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => bail!("cannot store a {other:?} tensor in safetensors"),
    })
}

/// Writes every variable of `vs` under its PyTorch name (BatchNorm running statistics
/// included), plus a zero `num_batches_tracked` (int64 scalar) per BatchNorm, which
/// torchvision's `load_state_dict(strict=True)` requires. Atomic: temp file + rename.
pub fn save_safetensors(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(vars.len() * 5 / 4);
    for (name, var) in &vars {
        let t = var.detach().to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).with_context(|| format!("variable {name}"))?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel).with_context(|| format!("cannot read variable {name}"))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        entries.push((name.clone(), dtype, shape, bytes));
    }
    for name in vars.keys() {
        if let Some(bn) = name.strip_suffix(".running_mean") {
            let counter = format!("{bn}.num_batches_tracked");
            if !vars.contains_key(&counter) {
                entries.push((counter, Dtype::I64, vec![], 0i64.to_le_bytes().to_vec()));
            }
        }
    }
    let views = entries
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("cannot lay out safetensors")?;
    // safetensors.torch.save_file writes this; some readers look for it.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .with_context(|| format!("cannot serialise weights for {}", path.display()))?;
    sorbier::run::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sorbier::arch::Arch;
    use crate::model::Net;

    fn model(classes: usize) -> (nn::VarStore, NetSpec) {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = Arch::Resnet18.spec(classes);
        let _ = Net::new(&vs.root(), &spec, 0.0);
        (vs, spec)
    }

    #[test]
    fn save_then_load_round_trips_with_running_stats() {
        tch::manual_seed(5);
        let dir = tempfile::tempdir().unwrap();
        let (vs, spec) = model(4);
        tch::no_grad(|| {
            let _ = vs.variables()["layer2.0.bn1.running_mean"].shallow_clone().fill_(0.25);
        });
        let p = dir.path().join("w.safetensors");
        save_safetensors(&vs, &p).unwrap();
        let names: Vec<String> = Tensor::read_safetensors(&p).unwrap().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"layer1.0.bn1.num_batches_tracked".to_string()));
        assert_eq!(names.len(), spec.tensors().len() + 20);

        tch::manual_seed(6);
        let (mut vs2, _) = model(4);
        let report = load_weights(&mut vs2, &p, &spec, false).unwrap();
        assert_eq!(report.loaded.len(), spec.tensors().len());
        assert_eq!(report.ignored.len(), 20);
        let (a, b) = (vs.variables(), vs2.variables());
        for (name, _) in spec.tensors() {
            assert!(a[&name].equal(&b[&name]), "{name}");
        }
        // Only the file and nothing else is in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn wrapper_prefixes_are_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, spec) = model(3);
        let named: Vec<(String, Tensor)> =
            vs.variables().into_iter().map(|(n, t)| (format!("module.model.{n}"), t.detach())).collect();
        let p = dir.path().join("w.safetensors");
        Tensor::write_safetensors(&named, &p).unwrap();
        let (mut vs2, _) = model(3);
        let report = load_weights(&mut vs2, &p, &spec, false).unwrap();
        assert_eq!(report.stripped_prefixes, ["module.", "model."]);
        assert!(report.summary().contains("module.model."));
    }

    #[test]
    fn unreadable_file_names_it_and_offers_a_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.pth");
        std::fs::write(&p, b"not a pickle").unwrap();
        let (mut vs, spec) = model(3);
        let err = format!("{:#}", load_weights(&mut vs, &p, &spec, true).unwrap_err());
        assert!(err.contains("junk.pth") && err.contains("safetensors.torch"), "{err}");
        let err = format!("{:#}", load_weights(&mut vs, &dir.path().join("nope.pth"), &spec, true).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");
    }
}
