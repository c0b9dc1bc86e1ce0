//! `predictor info MODEL.onnx`: inputs, outputs, opset, producer and every metadata field,
//! decoded straight from the protobuf ([`sorbier::onnx`]), so it needs no ONNX Runtime.
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use sorbier::meta::{ModelMeta, Quantization, PREFIX};
use sorbier::onnx::helpers::elem_type_name;
use sorbier::onnx::tensor_shape_proto::dimension::Value as Dim;
use sorbier::onnx::type_proto::Value as TypeValue;
use sorbier::onnx::{ModelProto, ValueInfoProto};


fn value_info(v: &ValueInfoProto) -> String {
    let name = v.name.clone().unwrap_or_default();
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => {
            let dims: Vec<String> = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(Dim::DimValue(n)) => n.to_string(),
                            Some(Dim::DimParam(p)) => p.clone(),
                            None => "?".into(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{name}: {} [{}]", elem_type_name(t.elem_type.unwrap_or(0)), dims.join(", "))
        }
        Some(other) => format!("{name}: {other:?}"),
        None => format!("{name}: (no type)"),
    }
}

/// The human-readable description `predictor info` prints.
pub fn describe(model: &ModelProto, path: &Path) -> String {
    let mut s = String::new();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let _ = writeln!(s, "model      {} ({:.1} MB)", path.display(), size as f64 / 1e6);
    let producer = format!("{} {}", model.producer_name.as_deref().unwrap_or("?"), model.producer_version.as_deref().unwrap_or(""));
    let _ = writeln!(s, "producer   {}", producer.trim());
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| format!("{} {}", o.domain.as_deref().filter(|d| !d.is_empty()).unwrap_or("ai.onnx"), o.version.unwrap_or(0)))
        .collect();
    let _ = writeln!(s, "ir version {}   opset {}", model.ir_version.unwrap_or(0), opsets.join(", "));
    if let Some(g) = &model.graph {
        let inits: std::collections::HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        for v in g.input.iter().filter(|v| !inits.contains(v.name.as_deref().unwrap_or(""))) {
            let _ = writeln!(s, "input      {}", value_info(v));
        }
        for v in &g.output {
            let _ = writeln!(s, "output     {}", value_info(v));
        }
        let params: i64 = g.initializer.iter().map(|t| t.dims.iter().product::<i64>()).sum();
        let _ = writeln!(s, "graph      {} nodes, {} initializers, {:.2} M parameters", g.node.len(), g.initializer.len(), params as f64 / 1e6);
    }
    let props: Vec<(&str, &str)> =
        model.metadata_props.iter().map(|p| (p.key.as_deref().unwrap_or(""), p.value.as_deref().unwrap_or(""))).collect();
    let _ = writeln!(s, "metadata   ({} fields)", props.len());
    match ModelMeta::from_props(props.iter().copied()) {
        Ok(m) => {
            let shown: Vec<&str> = m.classes.iter().take(10).map(String::as_str).collect();
            let more = if m.classes.len() > shown.len() { format!(", … ({} more)", m.classes.len() - shown.len()) } else { String::new() };
            let _ = writeln!(s, "  classes          {}: {}{more}", m.classes.len(), shown.join(", "));
            let _ = writeln!(s, "  arch             {}", m.arch);
            let p = &m.preprocess;
            let _ = writeln!(
                s,
                "  preprocess       resize {} → center crop {} ({:?}), mean {:?}, std {:?}",
                p.resize, p.crop, p.interpolation, p.mean, p.std
            );
            let metrics: Vec<String> = m.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            let _ = writeln!(s, "  metrics          {}", if metrics.is_empty() { "(none)".to_string() } else { metrics.join(", ") });
            let _ = writeln!(s, "  precision        {}", m.precision);
            let _ = writeln!(s, "  source           {}", m.source);
            let _ = writeln!(s, "  data_fingerprint {}", m.data_fingerprint);
            let _ = writeln!(s, "  sorbier_version  {}", m.sorbier_version);
        }
        Err(e) => {
            let _ = writeln!(s, "  (not a complete sorbier model card: {e:#})");
        }
    }
    let mut known: Vec<String> = ModelMeta::keys().iter().map(|k| format!("{PREFIX}{k}")).collect();
    match Quantization::from_props(props.iter().copied()) {
        Ok(Some(q)) => {
            let nodes: Vec<String> = q.nodes.iter().map(|(op, n)| format!("{n} {op}")).collect();
            let _ = writeln!(s, "  quantization     weights {}, activations {}", q.weights, q.activations);
            let _ = writeln!(s, "    calibration    {} on {} images from {} (fingerprint {})", q.method, q.images, q.selection, q.data_fingerprint);
            let _ = writeln!(s, "    quantised      {}", nodes.join(", "));
            let _ = writeln!(s, "    parent         float32 model sha256 {} (sorbier {})", q.parent_sha256, q.sorbier_version);
            known.push(format!("{PREFIX}{}", Quantization::KEY));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(s, "  ({e:#})");
        }
    }
    // Keys the card does not know (or all of them, raw, when it could not be read).
    for (k, v) in props.iter().filter(|(k, _)| !known.iter().any(|x| x == k)) {
        let _ = writeln!(s, "  {k} = {v}");
    }
    s
}

/// Reads `path` and describes it (see [`describe`]).
pub fn describe_file(path: &Path) -> Result<String> {
    let model = sorbier::export::read_model(path)?;
    Ok(describe(&model, path))
}
