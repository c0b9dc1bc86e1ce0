//! Mutation fuzzing of the readers that take files from users, with `proptest`: each case
//! takes a seed file (the committed corpus in `tests/corpus/`, or one a test builds) and
//! applies random byte flips, a truncation, an insertion and a duplicated span, and the reader
//! under test must return — `Ok` or a clean `Err` — without panicking (a panic fails the case
//! and proptest shrinks it to a minimal input).
//!
//! The suite runs a short smoke pass (`FUZZ_CASES`, 64 cases per reader by default); a long
//! run is `PROPTEST_CASES=20000 cargo test --test fuzz` (see the README for what ran and what
//! it found).
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use proptest::prelude::*;

/// Cases per property in the test suite, unless `PROPTEST_CASES` says otherwise.
pub const FUZZ_CASES: u32 = 64;

pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(FUZZ_CASES);
    // No failure-persistence files in the source tree: a failing case is printed, shrunk.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// The committed corpus folder `tests/corpus/<kind>`, from any crate of the workspace.
pub fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = [root.join("tests/corpus"), root.join("../../tests/corpus")]
        .into_iter()
        .find(|d| d.is_dir())
        .expect("tests/corpus is missing")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())).collect()
}

/// One mutation plan, applied by [`mutate`].
#[derive(Clone, Debug)]
pub struct Mutation {
    /// (position, xor mask) byte flips; positions wrap around the input length.
    pub flips: Vec<(usize, u8)>,
    /// Keep this fraction (per mille) of the input, if set.
    pub truncate: Option<u16>,
    /// Bytes inserted at a position.
    pub insert: Option<(usize, Vec<u8>)>,
    /// A span `(start, len)` copied again right after itself (repeated fields, bigger counts).
    pub duplicate: Option<(usize, usize)>,
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((any::<usize>(), 1u8..=255), 0..6),
        prop::option::of(0u16..1000),
        prop::option::of((any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))),
        prop::option::of((any::<usize>(), 1usize..64)),
    )
        .prop_map(|(flips, truncate, insert, duplicate)| Mutation { flips, truncate, insert, duplicate })
}

pub fn mutate(seed: &[u8], m: &Mutation) -> Vec<u8> {
    let mut v = seed.to_vec();
    if !v.is_empty() {
        for &(p, x) in &m.flips {
            let i = p % v.len();
            v[i] ^= x;
        }
        if let Some((start, len)) = m.duplicate {
            let s = start % v.len();
            let e = (s + len).min(v.len());
            let span = v[s..e].to_vec();
            v.splice(e..e, span);
        }
    }
    if let Some((p, bytes)) = &m.insert {
        let i = if v.is_empty() { 0 } else { p % (v.len() + 1) };
        v.splice(i..i, bytes.iter().copied());
    }
    if let Some(t) = m.truncate {
        let keep = v.len() * t as usize / 1000;
        v.truncate(keep);
    }
    v
}
