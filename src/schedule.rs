//! Learning-rate schedules as pure functions of the training position plus a small serde state,
//! so that `--resume` restores them exactly. They follow PyTorch's `torch.optim.lr_scheduler`:
//!
//! - `step`: `StepLR` — `lr = base · gamma^⌊epoch / step_size⌋`, constant within an epoch.
//! - `plateau`: `ReduceLROnPlateau` (threshold mode `rel`, threshold 1e-4, cooldown 0, eps 1e-8),
//!   mode `min` for a loss and `max` for an accuracy, stepped once per epoch on the validation metric.
//! - `cosine`: linear warmup then cosine annealing, evaluated per optimisation step (`t`, 0-based,
//!   `W` warmup steps, `T` total steps):
//!   `t < W`: `lr = base · (s + (1 − s) · t / W)` (`s` = warmup start factor, PyTorch `LinearLR`);
//!   `t ≥ W`: `lr = min_lr + (base − min_lr) · (1 + cos(π · (t − W) / (T − W))) / 2`
//!   (PyTorch `CosineAnnealingLR(T_max = T − W, eta_min = min_lr)`, the two chained by `SequentialLR`).
//! - `none`: constant.
use serde::{Deserialize, Serialize};

/// Which schedule (`--schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    None,
    Step,
    Plateau,
    Cosine,
}

crate::spelled!(ScheduleKind, "schedule", [None, Step, Plateau, Cosine]);

/// Schedule settings, recorded in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    /// StepLR: epochs between decays.
    pub step_size: usize,
    /// StepLR: decay factor.
    pub gamma: f64,
    /// ReduceLROnPlateau: epochs without improvement before a decay.
    pub plateau_patience: usize,
    /// ReduceLROnPlateau: decay factor.
    pub plateau_factor: f64,
    /// Cosine: linear warmup length in epochs (may be fractional).
    pub warmup_epochs: f64,
    /// Cosine: first warmup LR as a fraction of `base_lr` (PyTorch `LinearLR` start_factor, > 0).
    pub warmup_start_factor: f64,
    /// Lower bound: cosine's `eta_min` and plateau's `min_lr`.
    pub min_lr: f64,
}

/// ReduceLROnPlateau's threshold (relative) and the smallest LR change it applies.
const PLATEAU_THRESHOLD: f64 = 1e-4;
const PLATEAU_EPS: f64 = 1e-8;

/// What a plateau schedule remembers between epochs (the other kinds are stateless).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Current LR of the plateau schedule.
    pub lr: f64,
    /// Best metric so far (`None` = ±∞, none seen yet).
    pub best: Option<f64>,
    pub num_bad_epochs: usize,
}

/// A schedule: settings plus state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub config: ScheduleConfig,
    /// Total training epochs and steps per epoch, fixing the cosine horizon.
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// `true` when a larger metric is better (accuracies), `false` for a loss.
    pub maximize: bool,
    pub state: ScheduleState,
}

impl LrSchedule {
    pub fn new(config: ScheduleConfig, epochs: usize, steps_per_epoch: usize, maximize: bool) -> Self {
        let state = ScheduleState { lr: config.base_lr, best: None, num_bad_epochs: 0 };
        LrSchedule { config, epochs, steps_per_epoch: steps_per_epoch.max(1), maximize, state }
    }

    /// LR for step `step` (0-based) of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize, step: usize) -> f64 {
        let c = &self.config;
        match c.kind {
            ScheduleKind::None => c.base_lr,
            ScheduleKind::Step => c.base_lr * c.gamma.powi((epoch / c.step_size.max(1)) as i32),
            ScheduleKind::Plateau => self.state.lr,
            ScheduleKind::Cosine => {
                let t = (epoch * self.steps_per_epoch + step) as f64;
                let total = (self.epochs * self.steps_per_epoch) as f64;
                let warmup = (c.warmup_epochs * self.steps_per_epoch as f64).round().min(total);
                warmup_cosine(c.base_lr, c.warmup_start_factor, warmup, total, c.min_lr, t)
            }
        }
    }

    /// Ends an epoch with its validation metric (only the plateau schedule uses it).
    /// Returns `true` when the LR was reduced.
    pub fn end_epoch(&mut self, metric: f64) -> bool {
        if self.config.kind != ScheduleKind::Plateau {
            return false;
        }
        let s = &mut self.state;
        let better = match s.best {
            None => !metric.is_nan(),
            Some(best) if self.maximize => metric > best * (1.0 + PLATEAU_THRESHOLD),
            Some(best) => metric < best * (1.0 - PLATEAU_THRESHOLD),
        };
        if better {
            s.best = Some(metric);
            s.num_bad_epochs = 0;
        } else {
            s.num_bad_epochs += 1;
        }
        if s.num_bad_epochs > self.config.plateau_patience {
            s.num_bad_epochs = 0;
            let new_lr = (s.lr * self.config.plateau_factor).max(self.config.min_lr);
            if s.lr - new_lr > PLATEAU_EPS {
                s.lr = new_lr;
                return true;
            }
        }
        false
    }
}

/// The warmup + cosine formula of the module header; `warmup` and `total` in steps.
pub fn warmup_cosine(base: f64, start_factor: f64, warmup: f64, total: f64, min_lr: f64, t: f64) -> f64 {
    if t < warmup {
        base * (start_factor + (1.0 - start_factor) * t / warmup)
    } else if total <= warmup {
        base
    } else {
        let progress = ((t - warmup) / (total - warmup)).min(1.0);
        min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config(kind: ScheduleKind) -> ScheduleConfig {
        ScheduleConfig {
            kind,
            base_lr: 0.1,
            step_size: 3,
            gamma: 0.5,
            plateau_patience: 2,
            plateau_factor: 0.5,
            warmup_epochs: 0.0,
            warmup_start_factor: 0.01,
            min_lr: 0.0,
        }
    }

    #[test]
    fn step_decays_on_epoch_boundaries() {
        let s = LrSchedule::new(config(ScheduleKind::Step), 10, 4, true);
        let lrs: Vec<f64> = (0..7).map(|e| s.lr(e, 2)).collect();
        assert_eq!(lrs, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]);
        assert_eq!(LrSchedule::new(config(ScheduleKind::None), 10, 4, true).lr(9, 3), 0.1);
    }

    #[test]
    fn plateau_waits_patience_then_decays_and_respects_min_lr() {
        let mut c = config(ScheduleKind::Plateau);
        c.min_lr = 0.03;
        let mut s = LrSchedule::new(c.clone(), 10, 1, false);
        // Loss improves, then stalls: decay after 3 bad epochs (patience 2), then the floor.
        let mut lrs = Vec::new();
        for m in [1.0, 0.9, 0.95, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8] {
            s.end_epoch(m);
            lrs.push(s.lr(0, 0));
        }
        assert_eq!(lrs, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03, 0.03]);
        // `end_epoch` says when it reduced: at the two decays, never at the floor.
        let mut s = LrSchedule::new(c, 10, 1, false);
        let reduced: Vec<bool> = [1.0, 0.9, 0.95, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8].iter().map(|&m| s.end_epoch(m)).collect();
        let at: Vec<usize> = reduced.iter().enumerate().filter(|(_, &r)| r).map(|(i, _)| i).collect();
        assert_eq!(at, [4, 8], "{reduced:?}");
        // State round-trips through JSON.
        let back: LrSchedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn plateau_improvement_is_relative_and_strict_in_both_modes() {
        // PyTorch's threshold_mode "rel": better means beyond best · (1 ± 1e-4), strictly.
        let mut c = config(ScheduleKind::Plateau);
        c.plateau_patience = 0;
        let edge_max = 0.5 * (1.0 + PLATEAU_THRESHOLD);
        // Accuracies (maximize): 0.5, then exactly the edge (not better: decays), then above it.
        let mut s = LrSchedule::new(c.clone(), 10, 1, true);
        assert!(!s.end_epoch(0.5));
        assert!(s.end_epoch(edge_max), "the edge itself is no improvement");
        assert!(!s.end_epoch(edge_max * (1.0 + 1e-9)), "just above the edge is");
        assert_eq!(s.state.best, Some(edge_max * (1.0 + 1e-9)));
        // A small gain below the threshold is no improvement either; a lower accuracy is none.
        let mut s = LrSchedule::new(c.clone(), 10, 1, true);
        s.end_epoch(0.5);
        assert!(s.end_epoch(0.50002));
        assert!(s.end_epoch(0.4));
        assert_eq!(s.state.best, Some(0.5));
        // Losses (minimize): exactly best · (1 − 1e-4) is no improvement, below it is.
        let mut s = LrSchedule::new(c, 10, 1, false);
        s.end_epoch(2.0);
        assert!(s.end_epoch(2.0 * (1.0 - PLATEAU_THRESHOLD)));
        assert!(!s.end_epoch(2.0 * (1.0 - PLATEAU_THRESHOLD) * (1.0 - 1e-9)));
    }

    #[test]
    fn cosine_without_warmup_starts_at_the_base_rate() {
        let s = LrSchedule::new(config(ScheduleKind::Cosine), 4, 10, true);
        assert_eq!(s.lr(0, 0), 0.1);
        assert_eq!(warmup_cosine(0.1, 0.01, 0.0, 40.0, 0.0, 0.0), 0.1);
    }

    #[test]
    fn warmup_then_cosine_endpoints() {
        let mut c = config(ScheduleKind::Cosine);
        c.warmup_epochs = 1.0;
        c.min_lr = 0.001;
        let s = LrSchedule::new(c, 5, 10, true);
        assert!((s.lr(0, 0) - 0.001).abs() < 1e-15);
        assert!((s.lr(0, 5) - 0.1 * (0.01 + 0.99 * 0.5)).abs() < 1e-15);
        assert!((s.lr(1, 0) - 0.1).abs() < 1e-15);
        // Halfway through the cosine part: the mean of base and min.
        assert!((s.lr(3, 0) - 0.0505).abs() < 1e-12);
        assert!(s.lr(4, 9) > 0.001 && s.lr(4, 9) < 0.0012);
    }
}
