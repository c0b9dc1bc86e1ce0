//! Classification metrics shared by training, evaluation and scoring: top-k accuracy,
//! macro-average (balanced) accuracy, per-class accuracy, confusion matrix, most-confused pairs.
//!
//! Logits are row-major `n × c` `f32` slices; labels are class indices. Definitions follow
//! scikit-learn (`confusion_matrix` rows = true class, columns = prediction;
//! `balanced_accuracy_score` = mean recall over the classes present in the labels), fastai
//! (`most_confused`) and PyTorch (`cross_entropy` = mean negative log-softmax of the true class).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

fn check(logits: &[f32], c: usize, labels: &[usize]) -> Result<usize> {
    if c == 0 {
        bail!("logits have zero classes");
    }
    if !logits.len().is_multiple_of(c) {
        bail!("{} logits do not divide into rows of {c} classes", logits.len());
    }
    let n = logits.len() / c;
    if labels.len() != n {
        bail!("{n} rows of logits but {} labels", labels.len());
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= c) {
        bail!("label {l} is out of range for {c} classes");
    }
    Ok(n)
}

/// Index of the largest value of each row (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32], c: usize) -> Vec<usize> {
    if c == 0 {
        return Vec::new();
    }
    logits
        .chunks_exact(c)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                    best = j;
                }
            }
            best
        })
        .collect()
}

/// True when the true class is among the `k` highest logits of `row`: fewer than `k` classes
/// score strictly higher. A tie at the k-th place counts as a hit (torch.topk breaks ties
/// arbitrarily; this makes the result independent of the order).
fn in_top_k(row: &[f32], label: usize, k: usize) -> bool {
    let t = row[label];
    if t.is_nan() {
        return false;
    }
    row.iter().filter(|&&v| v > t).count() < k
}

/// Number of rows whose true class is in the top `k`.
pub fn topk_correct(logits: &[f32], c: usize, labels: &[usize], k: usize) -> Result<usize> {
    check(logits, c, labels)?;
    Ok(logits.chunks_exact(c).zip(labels).filter(|(row, &l)| in_top_k(row, l, k)).count())
}

/// Top-`k` accuracy (0–1); 0 for no rows.
pub fn topk_accuracy(logits: &[f32], c: usize, labels: &[usize], k: usize) -> Result<f64> {
    let n = check(logits, c, labels)?;
    Ok(if n == 0 { 0.0 } else { topk_correct(logits, c, labels, k)? as f64 / n as f64 })
}

/// Mean cross-entropy of softmax(logits) against the labels, computed in f64 with the
/// log-sum-exp shift (PyTorch's `F.cross_entropy`, reduction mean, no smoothing); 0 for no rows.
pub fn cross_entropy(logits: &[f32], c: usize, labels: &[usize]) -> Result<f64> {
    let n = check(logits, c, labels)?;
    if n == 0 {
        return Ok(0.0);
    }
    Ok(cross_entropy_sum(logits, c, labels) / n as f64)
}

fn cross_entropy_sum(logits: &[f32], c: usize, labels: &[usize]) -> f64 {
    logits
        .chunks_exact(c)
        .zip(labels)
        .map(|(row, &l)| {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            lse - row[l] as f64
        })
        .sum()
}

/// `cm[true][predicted]` counts.
pub fn confusion_matrix(preds: &[usize], labels: &[usize], c: usize) -> Result<Vec<Vec<usize>>> {
    if preds.len() != labels.len() {
        bail!("{} predictions but {} labels", preds.len(), labels.len());
    }
    let mut cm = vec![vec![0; c]; c];
    for (&p, &t) in preds.iter().zip(labels) {
        if p >= c || t >= c {
            bail!("class index out of range for {c} classes (true {t}, predicted {p})");
        }
        cm[t][p] += 1;
    }
    Ok(cm)
}

/// Recall of each class (correct / images of that class); `None` for a class with no images.
pub fn per_class_accuracy(cm: &[Vec<usize>]) -> Vec<Option<f64>> {
    cm.iter()
        .enumerate()
        .map(|(i, row)| {
            let total: usize = row.iter().sum();
            (total > 0).then(|| row.get(i).copied().unwrap_or(0) as f64 / total as f64)
        })
        .collect()
}

/// Macro-average (balanced) accuracy: mean of per-class recall over the classes present;
/// 0 if none is.
pub fn macro_accuracy(cm: &[Vec<usize>]) -> f64 {
    let present: Vec<f64> = per_class_accuracy(cm).into_iter().flatten().collect();
    if present.is_empty() {
        0.0
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    }
}

/// One off-diagonal cell of a confusion matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub actual: usize,
    pub predicted: usize,
    pub count: usize,
}

/// Off-diagonal cells with at least `min_count` (≥ 1) images, most frequent first, then by
/// (actual, predicted) — fastai's `most_confused(min_val)`.
pub fn most_confused(cm: &[Vec<usize>], min_count: usize) -> Vec<Confusion> {
    let min_count = min_count.max(1);
    let mut out: Vec<Confusion> = cm
        .iter()
        .enumerate()
        .flat_map(|(a, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(p, &n)| p != a && n >= min_count)
                .map(move |(p, &n)| Confusion { actual: a, predicted: p, count: n })
        })
        .collect();
    out.sort_by(|x, y| y.count.cmp(&x.count).then(x.actual.cmp(&y.actual)).then(x.predicted.cmp(&y.predicted)));
    out
}

/// The summary reported per validation epoch and by `evaluate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows scored.
    pub n: usize,
    pub top1: f64,
    pub top5: f64,
    /// Mean per-class recall over the classes present.
    pub macro_acc: f64,
    /// Mean cross-entropy, when logits were scored (not for bare predictions).
    pub loss: Option<f64>,
}

/// Accumulates batches of logits and labels; `finish` gives [`Metrics`], and the confusion
/// matrix stays available for per-class reports.
#[derive(Clone, Debug)]
pub struct MetricsAccumulator {
    c: usize,
    n: usize,
    top1: usize,
    top5: usize,
    loss_sum: f64,
    cm: Vec<Vec<usize>>,
}

impl MetricsAccumulator {
    pub fn new(num_classes: usize) -> Self {
        MetricsAccumulator { c: num_classes, n: 0, top1: 0, top5: 0, loss_sum: 0.0, cm: vec![vec![0; num_classes]; num_classes] }
    }

    /// Adds a batch: `logits` is `labels.len() × num_classes`, row-major.
    pub fn push(&mut self, logits: &[f32], labels: &[usize]) -> Result<()> {
        let c = self.c;
        check(logits, c, labels)?;
        for ((row, &l), p) in logits.chunks_exact(c).zip(labels).zip(argmax(logits, c)) {
            self.cm[l][p] += 1;
            self.top1 += usize::from(in_top_k(row, l, 1));
            self.top5 += usize::from(in_top_k(row, l, 5));
        }
        self.loss_sum += cross_entropy_sum(logits, c, labels);
        self.n += labels.len();
        Ok(())
    }

    /// Same as [`push`](Self::push) with `i64` labels, as batches carry them for libtorch.
    pub fn push_i64(&mut self, logits: &[f32], labels: &[i64]) -> Result<()> {
        let mut l = Vec::with_capacity(labels.len());
        for &x in labels {
            match usize::try_from(x) {
                Ok(v) => l.push(v),
                Err(_) => bail!("negative label {x}"),
            }
        }
        self.push(logits, &l)
    }

    pub fn confusion(&self) -> &[Vec<usize>] {
        &self.cm
    }

    pub fn num_classes(&self) -> usize {
        self.c
    }

    /// Every count and the loss sum as one flat vector — `[n, top1, top5, loss_sum, cm…]` —
    /// so that accumulators of disjoint shares of a set add up element-wise (a distributed
    /// validation's allreduce) to the accumulator of the whole set.
    pub fn sums(&self) -> Vec<f64> {
        let head = [self.n as f64, self.top1 as f64, self.top5 as f64, self.loss_sum];
        head.into_iter().chain(self.cm.iter().flatten().map(|&x| x as f64)).collect()
    }

    /// The accumulator whose [`sums`](Self::sums) are `sums`.
    pub fn from_sums(num_classes: usize, sums: &[f64]) -> Result<Self> {
        let c = num_classes;
        if sums.len() != 4 + c * c {
            bail!("{} sums do not describe the counts of {c} classes", sums.len());
        }
        let count = |x: f64| x.round() as usize;
        let cm = sums[4..].chunks_exact(c.max(1)).take(c).map(|row| row.iter().map(|&x| count(x)).collect()).collect();
        Ok(MetricsAccumulator { c, n: count(sums[0]), top1: count(sums[1]), top5: count(sums[2]), loss_sum: sums[3], cm })
    }

    pub fn finish(&self) -> Metrics {
        let n = self.n;
        let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        Metrics {
            n,
            top1: frac(self.top1),
            top5: frac(self.top5),
            macro_acc: macro_accuracy(&self.cm),
            loss: (n > 0).then(|| self.loss_sum / n as f64),
        }
    }
}

/// All metrics of one set of logits at once.
pub fn compute(logits: &[f32], c: usize, labels: &[usize]) -> Result<Metrics> {
    let mut acc = MetricsAccumulator::new(c);
    acc.push(logits, labels)?;
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_shares_give_the_whole_sets_accumulator() {
        let labels = [0usize, 1, 2, 2];
        let mut whole = MetricsAccumulator::new(3);
        whole.push(&LOGITS, &labels).unwrap();
        let (mut a, mut b) = (MetricsAccumulator::new(3), MetricsAccumulator::new(3));
        a.push(&LOGITS[..6], &labels[..2]).unwrap();
        b.push(&LOGITS[6..], &labels[2..]).unwrap();
        let sum: Vec<f64> = a.sums().iter().zip(b.sums()).map(|(x, y)| x + y).collect();
        // The ranks rebuild the accumulator from its own class count (dist::sum_metrics).
        assert_eq!(whole.num_classes(), 3);
        let merged = MetricsAccumulator::from_sums(whole.num_classes(), &sum).unwrap();
        assert_eq!(merged.num_classes(), 3);
        assert_eq!(merged.confusion(), whole.confusion());
        let (m, w) = (merged.finish(), whole.finish());
        assert_eq!((m.n, m.top1, m.top5, m.macro_acc), (w.n, w.top1, w.top5, w.macro_acc));
        assert!((m.loss.unwrap() - w.loss.unwrap()).abs() < 1e-12);
        assert!(MetricsAccumulator::from_sums(3, &sum[1..]).is_err());
    }

    // 4 rows, 3 classes.
    const LOGITS: [f32; 12] = [
        2.0, 1.0, 0.0, // true 0: correct
        0.0, 1.0, 3.0, // true 1: predicted 2, true class second
        1.0, 0.5, 0.2, // true 2: predicted 0, true class last
        0.0, 0.0, 5.0, // true 2: correct
    ];
    const LABELS: [usize; 4] = [0, 1, 2, 2];

    #[test]
    fn argmax_topk_and_ties() {
        assert_eq!(argmax(&LOGITS, 3), vec![0, 2, 0, 2]);
        assert_eq!(argmax(&[1.0, 1.0, 0.0], 3), vec![0]);
        assert_eq!(argmax(&[f32::NAN, 1.0], 2), vec![1]);
        assert_eq!(topk_correct(&LOGITS, 3, &LABELS, 1).unwrap(), 2);
        assert_eq!(topk_correct(&LOGITS, 3, &LABELS, 2).unwrap(), 3);
        assert_eq!(topk_accuracy(&LOGITS, 3, &LABELS, 5).unwrap(), 1.0);
        // A tie at the top counts for top-1.
        assert_eq!(topk_correct(&[1.0, 1.0], 2, &[1], 1).unwrap(), 1);
        assert!(topk_accuracy(&LOGITS, 3, &[0, 1, 2], 1).is_err());
        assert!(topk_accuracy(&LOGITS, 3, &[0, 1, 2, 3], 1).is_err());
        assert!(topk_accuracy(&LOGITS[..11], 3, &LABELS, 1).is_err());
    }

    #[test]
    fn cross_entropy_by_hand() {
        // Row [2,1,0], true 0: log(e^2+e+1) - 2 = 0.407605964444; row [0,0,5] true 2:
        // log(2+e^5) - 5 = 0.013385901721. Mean 0.210495933083, as F.cross_entropy gives.
        let l = cross_entropy(&[2.0, 1.0, 0.0, 0.0, 0.0, 5.0], 3, &[0, 2]).unwrap();
        assert!((l - 0.210495933083).abs() < 1e-10, "{l}");
        // Uniform logits: log(c), and large logits do not overflow.
        let l = cross_entropy(&[1000.0; 4], 4, &[3]).unwrap();
        assert!((l - 4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn confusion_per_class_macro_and_most_confused() {
        let cm = confusion_matrix(&argmax(&LOGITS, 3), &LABELS, 3).unwrap();
        assert_eq!(cm, vec![vec![1, 0, 0], vec![0, 0, 1], vec![1, 0, 1]]);
        assert_eq!(per_class_accuracy(&cm), vec![Some(1.0), Some(0.0), Some(0.5)]);
        assert!((macro_accuracy(&cm) - 0.5).abs() < 1e-12);
        // A class absent from the labels does not count towards the macro average.
        let cm4 = confusion_matrix(&[0, 0, 1], &[0, 0, 1], 4).unwrap();
        assert_eq!(per_class_accuracy(&cm4)[3], None);
        assert_eq!(macro_accuracy(&cm4), 1.0);

        let cm = vec![vec![5, 2, 3], vec![3, 4, 0], vec![1, 3, 9]];
        let mc = most_confused(&cm, 2);
        let triples: Vec<_> = mc.iter().map(|x| (x.actual, x.predicted, x.count)).collect();
        assert_eq!(triples, vec![(0, 2, 3), (1, 0, 3), (2, 1, 3), (0, 1, 2)]);
        assert_eq!(most_confused(&cm, 0).len(), 5);
        assert!(confusion_matrix(&[3], &[0], 3).is_err());
    }

    #[test]
    fn accumulator_matches_one_shot() {
        let m = compute(&LOGITS, 3, &LABELS).unwrap();
        assert_eq!(m.n, 4);
        assert_eq!((m.top1, m.top5), (0.5, 1.0));
        assert!((m.macro_acc - 0.5).abs() < 1e-12);
        let mut acc = MetricsAccumulator::new(3);
        acc.push(&LOGITS[..6], &LABELS[..2]).unwrap();
        acc.push_i64(&LOGITS[6..], &[2, 2]).unwrap();
        let m2 = acc.finish();
        assert_eq!(m2.n, 4);
        assert_eq!((m2.top1, m2.top5, m2.macro_acc), (m.top1, m.top5, m.macro_acc));
        let (a, b) = (m.loss.unwrap(), m2.loss.unwrap());
        assert!((a - b).abs() < 1e-12);
        assert!((a - cross_entropy(&LOGITS, 3, &LABELS).unwrap()).abs() < 1e-12);
        assert_eq!(acc.confusion()[2], vec![1, 0, 1]);
        assert!(acc.push_i64(&LOGITS[..3], &[-1]).is_err());
        assert_eq!(MetricsAccumulator::new(3).finish().loss, None);
    }
}
