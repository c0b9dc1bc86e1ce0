//! Class-balancing weighted sampler, as `torch.utils.data.WeightedRandomSampler` with
//! weight = 1 / size(class) per sample, drawn with replacement; built in O(n).
//!
//! Why class-then-member is the same distribution: with weight 1/|C| for every sample of class
//! C and K non-empty classes, the weights sum to K, so sample i of class C is drawn with
//! probability (1/|C|)/K — exactly the probability of picking C uniformly among the K classes
//! (1/K) and then i uniformly among C's members (1/|C|). Draws are independent, with
//! replacement, as torch's `multinomial(replacement=True)`. The random streams differ from
//! torch's, so the same seed does not give torch's indices, only the same distribution.
//! Cost: O(n) to group the labels, O(1) per draw (no cumulative-weight search).
use rand::Rng;

/// Draws `num_samples` indices into `labels` (positions, not dataset indices) with replacement,
/// each sample weighted 1/size(its class) so that classes come out uniformly.
/// Empty `labels` give an empty result.
pub fn weighted_indices<R: Rng>(labels: &[usize], num_samples: usize, rng: &mut R) -> Vec<usize> {
    let Some(&max) = labels.iter().max() else {
        return Vec::new();
    };
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); max + 1];
    for (pos, &l) in labels.iter().enumerate() {
        members[l].push(pos);
    }
    members.retain(|m| !m.is_empty());
    (0..num_samples)
        .map(|_| {
            let class = &members[rng.random_range(0..members.len())];
            class[rng.random_range(0..class.len())]
        })
        .collect()
}

/// This rank's share of an epoch's `order`, as `torch.utils.data.DistributedSampler` deals it:
/// with `pad`, the order is first extended by wrap-around to a multiple of `world`, so every
/// rank gets the same count (what training needs: every rank takes the same number of steps);
/// without, the last ranks may get one element fewer (what evaluation needs: nothing counted
/// twice). Then element `rank`, `rank + world`, … .
pub fn distributed<T: Clone>(order: &[T], rank: usize, world: usize, pad: bool) -> Vec<T> {
    let world = world.max(1);
    let total = if pad && !order.is_empty() { order.len().div_ceil(world) * world } else { order.len() };
    order.iter().cycle().take(total).skip(rank).step_by(world).cloned().collect()
}

/// Samples per epoch for a multiplier of the training set size (at least one if any).
pub fn num_samples(train_size: usize, multiplier: f64) -> usize {
    if train_size == 0 {
        return 0;
    }
    ((train_size as f64 * multiplier).round() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn labels(counts: &[usize]) -> Vec<usize> {
        counts.iter().enumerate().flat_map(|(c, &n)| std::iter::repeat_n(c, n)).collect()
    }

    #[test]
    fn distributed_shares_like_torch_distributed_sampler() {
        // torch: DistributedSampler(range(10), num_replicas=4, shuffle=False) gives
        // [0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1].
        let order: Vec<usize> = (0..10).collect();
        let shares: Vec<Vec<usize>> = (0..4).map(|r| distributed(&order, r, 4, true)).collect();
        assert_eq!(shares, vec![vec![0, 4, 8], vec![1, 5, 9], vec![2, 6, 0], vec![3, 7, 1]]);
        let eval: Vec<Vec<usize>> = (0..4).map(|r| distributed(&order, r, 4, false)).collect();
        assert_eq!(eval, vec![vec![0, 4, 8], vec![1, 5, 9], vec![2, 6], vec![3, 7]]);
        assert_eq!(distributed(&order, 0, 1, true), order, "one rank keeps the order");
        // Fewer elements than ranks still gives every rank one.
        assert_eq!(distributed(&[7], 2, 3, true), vec![7]);
        assert!(distributed::<usize>(&[], 0, 2, true).is_empty());
    }

    #[test]
    fn classes_come_out_uniformly() {
        let counts = [30, 400, 60, 120, 220];
        let l = labels(&counts);
        let draws = 100_000;
        let idx = weighted_indices(&l, draws, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(idx.len(), draws);
        let mut freq = [0f64; 5];
        let mut per_sample = vec![0usize; l.len()];
        for &i in &idx {
            freq[l[i]] += 1.0;
            per_sample[i] += 1;
        }
        // Pearson chi-square against uniform, 4 degrees of freedom: the 0.999 quantile is 18.47.
        let e = draws as f64 / 5.0;
        let chi2: f64 = freq.iter().map(|f| (f - e).powi(2) / e).sum();
        assert!(chi2 < 18.47, "chi2 {chi2}, frequencies {freq:?}");
        // Members of the small class are drawn evenly too: each expects 20000/30 ≈ 667.
        let small = &per_sample[..30];
        assert!(small.iter().all(|&n| (567..767).contains(&n)), "{small:?}");
        // And every sample of the big class is reachable.
        assert!(per_sample[30..430].iter().all(|&n| n > 0));
    }

    #[test]
    fn reproducible_with_a_seed() {
        let l = labels(&[3, 7, 1]);
        let a = weighted_indices(&l, 50, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, weighted_indices(&l, 50, &mut ChaCha8Rng::seed_from_u64(9)));
        assert_ne!(a, weighted_indices(&l, 50, &mut ChaCha8Rng::seed_from_u64(10)));
        assert!(a.iter().all(|&i| i < l.len()));
    }

    #[test]
    fn gaps_in_labels_and_empty_input() {
        // Class 1 has no samples (e.g. all went to validation): it is never "drawn".
        let l = [0, 0, 2, 2, 2, 2];
        let idx = weighted_indices(&l, 10_000, &mut ChaCha8Rng::seed_from_u64(1));
        let zeros = idx.iter().filter(|&&i| l[i] == 0).count();
        assert!((4_700..5_300).contains(&zeros), "{zeros}");
        assert!(weighted_indices(&[], 10, &mut ChaCha8Rng::seed_from_u64(1)).is_empty());
        assert!(weighted_indices(&l, 0, &mut ChaCha8Rng::seed_from_u64(1)).is_empty());
        assert_eq!(num_samples(830, 1.0), 830);
        assert_eq!(num_samples(830, 2.5), 2075);
        assert_eq!(num_samples(0, 2.0), 0);
    }
}
