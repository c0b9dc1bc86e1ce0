//! Short content hashes that let one run recognise the files and lists of another: a model
//! file's SHA-256 (the same model copied to another machine under another path hashes the
//! same) and the fingerprint of an ordered image list. Both are the first 16 hex digits of a
//! SHA-256, as the data fingerprints of [`sorbier::data::Dataset::fingerprint`].
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

fn short(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's bytes, read in 1 MiB pieces.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(short(&h.finalize()))
}

/// Fingerprint of an ordered list of names (order matters; a name's bytes are hashed with a
/// separator, so `["ab"]` and `["a", "b"]` differ).
pub fn list_fingerprint(names: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(b"sorbier-image-list-v1\n");
    for n in names {
        h.update(n.as_bytes());
        h.update(b"\0");
    }
    short(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_follow_content_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"same bytes").unwrap();
        std::fs::write(&b, b"same bytes").unwrap();
        assert_eq!(file_sha256(&a).unwrap(), file_sha256(&b).unwrap());
        assert_eq!(file_sha256(&a).unwrap().len(), 16);
        std::fs::write(&b, b"other bytes").unwrap();
        assert_ne!(file_sha256(&a).unwrap(), file_sha256(&b).unwrap());
        assert!(file_sha256(&dir.path().join("none")).is_err());
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_ne!(list_fingerprint(&s(&["x", "y"])), list_fingerprint(&s(&["y", "x"])));
        assert_ne!(list_fingerprint(&s(&["ab"])), list_fingerprint(&s(&["a", "b"])));
        assert_eq!(list_fingerprint(&s(&["x", "y"])), list_fingerprint(&s(&["x", "y"])));
    }
}
