//! Class-balancing weighted sampler, as `torch.utils.data.WeightedRandomSampler` with
//! weight = 1 / size(class) per sample, drawn with replacement; built in O(n).
use rand::Rng;

/// Draws `num_samples` indices into `labels` (positions, not dataset indices) with replacement,
/// each sample weighted 1/size(its class) so that classes come out uniformly.
pub fn weighted_indices<R: Rng>(labels: &[usize], num_samples: usize, rng: &mut R) -> Vec<usize> {
    todo!("{} {num_samples} {}", labels.len(), rng.random::<u8>())
}
