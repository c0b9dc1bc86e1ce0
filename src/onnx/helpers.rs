//! Reading and making ONNX tensors, attributes and value infos (the prost types of
//! [`crate::onnx`]): float32 initializers in either encoding (`raw_data` little-endian or
//! `float_data`), scalars behind `Constant` nodes, the float16/float32/int8/uint8/int32 tensors
//! the exporter and the quantiser write, attributes read with a default or built typed, and
//! element type names. Names say the direction: `get_*` reads, `*_attribute`/`*_tensor` build.
use anyhow::{bail, Context, Result};

use super::attribute_proto::AttributeType;
use super::tensor_proto::DataType;
use super::tensor_shape_proto::{dimension, Dimension};
use super::type_proto;
use super::{AttributeProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto};

/// Shape of `t` as sizes (a negative dimension is an error).
pub fn dims(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims.iter().map(|&d| usize::try_from(d).with_context(|| format!("tensor {} has dimension {d}", name(t)))).collect()
}

pub fn name(t: &TensorProto) -> &str {
    t.name.as_deref().unwrap_or("")
}

/// True if `t` holds float32 values.
pub fn is_float(t: &TensorProto) -> bool {
    t.data_type == Some(DataType::Float as i32)
}

/// The values of a float32 tensor, whichever field holds them.
pub fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    if !is_float(t) {
        bail!("tensor {} is not float32 (data type {:?})", name(t), t.data_type);
    }
    if t.data_location == Some(1) {
        bail!("tensor {} keeps its data in an external file, which the quantiser does not read", name(t));
    }
    let n: usize = dims(t)?.iter().product();
    let values: Vec<f32> = match &t.raw_data {
        Some(raw) if !raw.is_empty() || t.float_data.is_empty() => {
            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        _ => t.float_data.clone(),
    };
    if values.len() != n {
        bail!("tensor {} has {} values for shape {:?}", name(t), values.len(), t.dims);
    }
    Ok(values)
}

/// The single value of a float32 scalar (or one-element) tensor.
pub fn scalar(t: &TensorProto) -> Result<f32> {
    match floats(t)?.as_slice() {
        [v] => Ok(*v),
        other => bail!("tensor {} holds {} values, expected one", name(t), other.len()),
    }
}

/// The tensor a `Constant` node holds in its `value` attribute.
pub fn constant_value(node: &NodeProto) -> Option<&TensorProto> {
    (node.op_type.as_deref() == Some("Constant")).then(|| node.attribute.iter().find(|a| a.name.as_deref() == Some("value"))?.t.as_ref())?
}

/// A tensor of element type `ty` from its little-endian bytes.
pub fn tensor(name: &str, dims: &[usize], ty: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(ty as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[usize], v: &[f32]) -> TensorProto {
    tensor(name, dims, DataType::Float, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

pub fn i8_tensor(name: &str, dims: &[usize], v: &[i8]) -> TensorProto {
    tensor(name, dims, DataType::Int8, v.iter().map(|&x| x as u8).collect())
}

pub fn u8_tensor(name: &str, dims: &[usize], v: &[u8]) -> TensorProto {
    tensor(name, dims, DataType::Uint8, v.to_vec())
}

pub fn i32_tensor(name: &str, dims: &[usize], v: &[i32]) -> TensorProto {
    tensor(name, dims, DataType::Int32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// An integer attribute of `node`, or `default`.
pub fn get_int(node: &NodeProto, key: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(key)).and_then(|a| a.i).unwrap_or(default)
}

/// A float attribute of `node`, or `default`.
pub fn get_float(node: &NodeProto, key: &str, default: f32) -> f32 {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(key)).and_then(|a| a.f).unwrap_or(default)
}

/// An attribute of `node` that is present.
pub fn has_attr(node: &NodeProto, key: &str) -> bool {
    node.attribute.iter().any(|a| a.name.as_deref() == Some(key))
}

/// An integer attribute to put on a node.
pub fn int_attribute(key: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(key.into()), r#type: Some(AttributeType::Int as i32), i: Some(v), ..Default::default() }
}

/// An integer-list attribute to put on a node.
pub fn ints_attribute(key: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(key.into()), r#type: Some(AttributeType::Ints as i32), ints: v.to_vec(), ..Default::default() }
}

/// A float attribute to put on a node.
pub fn float_attribute(key: &str, v: f32) -> AttributeProto {
    AttributeProto { name: Some(key.into()), r#type: Some(AttributeType::Float as i32), f: Some(v), ..Default::default() }
}

/// A float32 graph input or output of shape `dims` (fixed sizes or symbolic names).
pub fn float_value_info(name: &str, dims: &[dimension::Value], doc: &str) -> ValueInfoProto {
    let shape = TensorShapeProto { dim: dims.iter().map(|d| Dimension { value: Some(d.clone()), denotation: None }).collect() };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(DataType::Float as i32), shape: Some(shape) })),
            denotation: None,
        }),
        doc_string: Some(doc.into()),
        ..Default::default()
    }
}

/// The lower-case name of an element type (`float`, `int8`), or `type N` for an unknown one.
pub fn elem_type_name(t: i32) -> String {
    DataType::try_from(t).map_or_else(|_| format!("type {t}"), |d| d.as_str_name().to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_either_encoding_and_check_the_count() {
        let raw = f32_tensor("w", &[2], &[1.5, -2.0]);
        assert_eq!(floats(&raw).unwrap(), vec![1.5, -2.0]);
        let listed = TensorProto { name: Some("v".into()), dims: vec![2], data_type: Some(1), float_data: vec![3.0, 4.0], ..Default::default() };
        assert_eq!(floats(&listed).unwrap(), vec![3.0, 4.0]);
        let short = TensorProto { dims: vec![3], ..raw.clone() };
        assert!(floats(&short).unwrap_err().to_string().contains("2 values for shape [3]"));
        assert!(floats(&i8_tensor("q", &[1], &[1])).is_err());
        assert_eq!(scalar(&f32_tensor("s", &[], &[6.0])).unwrap(), 6.0);
        assert!(scalar(&raw).is_err());
    }
}
