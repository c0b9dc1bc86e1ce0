//! Test-time augmentation on the preprocessed CHW tensor: the flips and quarter turns the
//! trainer's augmentation uses (the dihedral group D4 of the square crop).
//!
//! Applying them after the eval transform (rather than to the decoded image) is exact here:
//! the center crop is square and symmetric, so flipping or rotating the crop equals cropping
//! the flipped or rotated image up to the resize filter's sub-pixel alignment. Rotations
//! follow `torch.rot90(x, k, dims=(1, 2))` (counter-clockwise for k = 1).

/// One dihedral transform of a square image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Identity,
    Hflip,
    Vflip,
    Rot90,
    Rot180,
    Rot270,
    Transpose,
    AntiTranspose,
}

/// Which variants are run and averaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The image as is.
    #[default]
    None,
    /// Original + horizontal flip.
    Hflip,
    /// Original + horizontal flip + vertical flip.
    Flips,
    /// All 8 flips and quarter turns.
    D4,
}

sorbier::spelled!(Tta, "test-time augmentation", [None, Hflip, Flips, D4]);

impl Tta {
    /// The variants, identity first.
    pub fn variants(self) -> &'static [Variant] {
        use Variant::*;
        match self {
            Tta::None => &[Identity],
            Tta::Hflip => &[Identity, Hflip],
            Tta::Flips => &[Identity, Hflip, Vflip],
            Tta::D4 => &[Identity, Hflip, Vflip, Rot90, Rot180, Rot270, Transpose, AntiTranspose],
        }
    }
}

/// Writes `variant` of the `3 × s × s` tensor `src` into `dst` (same length).
pub fn apply(variant: Variant, src: &[f32], s: usize, dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    let plane = s * s;
    let last = s.saturating_sub(1);
    for (sp, dp) in src.chunks_exact(plane).zip(dst.chunks_exact_mut(plane)) {
        for i in 0..s {
            let row = &mut dp[i * s..(i + 1) * s];
            match variant {
                Variant::Identity => row.copy_from_slice(&sp[i * s..(i + 1) * s]),
                Variant::Hflip => {
                    row.copy_from_slice(&sp[i * s..(i + 1) * s]);
                    row.reverse();
                }
                Variant::Vflip => row.copy_from_slice(&sp[(last - i) * s..(last - i + 1) * s]),
                Variant::Rot180 => {
                    row.copy_from_slice(&sp[(last - i) * s..(last - i + 1) * s]);
                    row.reverse();
                }
                // out[i][j] = in[j][s-1-i]
                Variant::Rot90 => row.iter_mut().enumerate().for_each(|(j, v)| *v = sp[j * s + last - i]),
                // out[i][j] = in[s-1-j][i]
                Variant::Rot270 => row.iter_mut().enumerate().for_each(|(j, v)| *v = sp[(last - j) * s + i]),
                // out[i][j] = in[j][i]
                Variant::Transpose => row.iter_mut().enumerate().for_each(|(j, v)| *v = sp[j * s + i]),
                // out[i][j] = in[s-1-j][s-1-i]
                Variant::AntiTranspose => row.iter_mut().enumerate().for_each(|(j, v)| *v = sp[(last - j) * s + last - i]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: Variant, src: &[f32], s: usize) -> Vec<f32> {
        let mut out = vec![0.0; src.len()];
        apply(v, src, s, &mut out);
        out
    }

    #[test]
    fn matches_torch_conventions() {
        // One channel [[1,2],[3,4]] repeated ×3; torch.rot90([[1,2],[3,4]]) = [[2,4],[1,3]].
        let src: Vec<f32> = [1., 2., 3., 4.].repeat(3);
        let expect = |v: [f32; 4]| v.repeat(3);
        assert_eq!(run(Variant::Identity, &src, 2), expect([1., 2., 3., 4.]));
        assert_eq!(run(Variant::Hflip, &src, 2), expect([2., 1., 4., 3.]));
        assert_eq!(run(Variant::Vflip, &src, 2), expect([3., 4., 1., 2.]));
        assert_eq!(run(Variant::Rot90, &src, 2), expect([2., 4., 1., 3.]));
        assert_eq!(run(Variant::Rot180, &src, 2), expect([4., 3., 2., 1.]));
        assert_eq!(run(Variant::Rot270, &src, 2), expect([3., 1., 4., 2.]));
        assert_eq!(run(Variant::Transpose, &src, 2), expect([1., 3., 2., 4.]));
        assert_eq!(run(Variant::AntiTranspose, &src, 2), expect([4., 2., 3., 1.]));
    }

    #[test]
    fn group_laws_hold_on_odd_sizes() {
        let s = 5;
        let src: Vec<f32> = (0..3 * s * s).map(|x| x as f32).collect();
        let twice = |v| run(v, &run(v, &src, s), s);
        for v in [Variant::Hflip, Variant::Vflip, Variant::Rot180, Variant::Transpose, Variant::AntiTranspose] {
            assert_eq!(twice(v), src, "{v:?} is an involution");
        }
        assert_eq!(run(Variant::Rot270, &run(Variant::Rot90, &src, s), s), src);
        assert_eq!(run(Variant::Rot90, &run(Variant::Rot90, &src, s), s), run(Variant::Rot180, &src, s));
        // All eight D4 variants are distinct on a generic image.
        let outs: Vec<Vec<f32>> = Tta::D4.variants().iter().map(|&v| run(v, &src, s)).collect();
        for i in 0..outs.len() {
            for j in i + 1..outs.len() {
                assert_ne!(outs[i], outs[j]);
            }
        }
    }
}
