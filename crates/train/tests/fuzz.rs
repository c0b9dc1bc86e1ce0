//! Mutation fuzzing (see `tests/common/fuzz.rs`) of the `torch.save` readers (zip and legacy
//! format, both pickles): on any input they return the tensors or a clean error — no panic,
//! and no allocation sized by a header not checked against the file.
use std::io::Write;

use proptest::prelude::*;

#[path = "../../../tests/common/fuzz.rs"]
mod fuzz;
use fuzz::{config, corpus, mutate, mutation};

fn read(bytes: &[u8]) -> anyhow::Result<Vec<(String, tch::Tensor)>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("w.pt");
    std::fs::File::create(&path)?.write_all(bytes)?;
    sorbier_train::model::read_state_dict(&path)
}

#[test]
fn the_seeds_are_read() {
    for (name, bytes) in corpus("torch") {
        let tensors = read(&bytes).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(tensors.len() >= 3, "{name}");
    }
}

#[test]
fn a_header_claiming_a_huge_entry_is_refused_without_allocating_it() {
    // Rewrite the uncompressed size of the data.pkl entry in its local header and in the
    // central directory to 4 GiB − 1: the reader must say the file is corrupt.
    let (_, mut bytes) = corpus("torch").into_iter().find(|(_, b)| b.starts_with(b"PK")).expect("a zip seed");
    let mut patched = 0;
    for sig in [[0x50u8, 0x4b, 0x03, 0x04], [0x50, 0x4b, 0x01, 0x02]] {
        let size_at = if sig[2] == 3 { 22 } else { 24 };
        let mut i = 0;
        while let Some(p) = bytes[i..].windows(4).position(|w| w == sig) {
            let at = i + p;
            let name_len = u16::from_le_bytes([bytes[at + size_at + 4], bytes[at + size_at + 5]]) as usize;
            let name_at = at + if sig[2] == 3 { 30 } else { 46 };
            if bytes[name_at..name_at + name_len].ends_with(b"data.pkl") {
                bytes[at + size_at..at + size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                patched += 1;
            }
            i = at + 4;
        }
    }
    assert_eq!(patched, 2, "the seed's data.pkl entry was not found");
    let err = format!("{:#}", read(&bytes).unwrap_err());
    assert!(err.contains("data.pkl") && err.contains(&format!("claims {} bytes, more than a {}-byte file can hold: the file is corrupt", u32::MAX, bytes.len())), "{err}");
}

#[test]
fn a_legacy_storage_claiming_more_elements_than_the_file_holds_is_refused() {
    let (_, bytes) = corpus("torch").into_iter().find(|(n, _)| n.contains("legacy")).expect("a legacy-format seed");
    assert!(read(&bytes).is_ok());
    // The first storage's int64 element count follows the pickle of the storage keys, which
    // ends with APPENDS (or APPEND) then STOP: find the count of 18 (2×1×3×3) after it.
    let at = bytes.windows(8).position(|w| w == 18u64.to_le_bytes()).expect("the conv weight's count");
    let mut patched = bytes.clone();
    patched[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = format!("{:#}", read(&patched).unwrap_err());
    assert!(err.contains("corrupt"), "{err}");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_torch_save_readers_never_panic(seed in 0usize..64, m in mutation()) {
        let seeds = corpus("torch");
        let (_, bytes) = &seeds[seed % seeds.len()];
        let _ = read(&mutate(bytes, &m));
    }
}
