//! Learning-rate schedules with the values of `torch.optim.lr_scheduler`, step for step:
//! StepLR, MultiStepLR, CosineAnnealingLR, OneCycleLR and LinearLR (linear warm-up). Each is a
//! closed form of the step count, so a resumed run needs only the step count.

use crate::optim::Optimizer;
use crate::{NnError, Result};

/// A schedule: the learning rate at step `t` for a group whose initial rate is `base`.
#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    /// The initial rate throughout.
    Constant,
    /// `base * gamma^(t / step_size)`.
    Step {
        /// Steps between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// `base * gamma^(number of milestones <= t)`.
    MultiStep {
        /// Steps at which the rate decays (increasing).
        milestones: Vec<usize>,
        /// Decay factor.
        gamma: f64,
    },
    /// `eta_min + (base - eta_min) * (1 + cos(pi * t / t_max)) / 2`.
    Cosine {
        /// Half period.
        t_max: usize,
        /// Lowest rate.
        eta_min: f64,
    },
    /// The one-cycle policy (cosine annealing, two phases), from `max_lr / div_factor` up to
    /// `max_lr` over `pct_start` of the steps, then down to `initial / final_div_factor`.
    OneCycle {
        /// Peak rate.
        max_lr: f64,
        /// Total number of steps.
        total_steps: usize,
        /// Share of the steps spent rising (PyTorch's default 0.3).
        pct_start: f64,
        /// `initial = max_lr / div_factor` (default 25).
        div_factor: f64,
        /// `min = initial / final_div_factor` (default 1e4).
        final_div_factor: f64,
    },
    /// `base * (start + (end - start) * min(t, total) / total)`: linear warm-up.
    Linear {
        /// Factor at step 0.
        start_factor: f64,
        /// Factor from `total_iters` on.
        end_factor: f64,
        /// Steps of the ramp.
        total_iters: usize,
    },
}

impl LrSchedule {
    /// PyTorch's `OneCycleLR(max_lr, total_steps)` defaults.
    pub fn one_cycle(max_lr: f64, total_steps: usize) -> LrSchedule {
        LrSchedule::OneCycle { max_lr, total_steps, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 }
    }

    fn validate(&self) -> Result<()> {
        let ok = match self {
            LrSchedule::Constant => true,
            LrSchedule::Step { step_size, .. } => *step_size > 0,
            LrSchedule::MultiStep { milestones, .. } => milestones.windows(2).all(|w| w[0] <= w[1]),
            LrSchedule::Cosine { t_max, .. } => *t_max > 0,
            LrSchedule::OneCycle { total_steps, pct_start, div_factor, final_div_factor, .. } => {
                *total_steps > 1 && (0.0..=1.0).contains(pct_start) && *div_factor > 0.0 && *final_div_factor > 0.0
            }
            LrSchedule::Linear { total_iters, start_factor, .. } => *total_iters > 0 && *start_factor > 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(NnError::Config(format!("invalid learning-rate schedule {self:?}")))
        }
    }

    /// The rate at step `t` (0 = before the first optimizer step).
    pub fn lr_at(&self, base: f64, t: usize) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => base * gamma.powi((t / step_size) as i32),
            LrSchedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= t).count() as i32)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t as f64 / *t_max as f64).cos()) / 2.0
            }
            LrSchedule::OneCycle { max_lr, total_steps, pct_start, div_factor, final_div_factor } => {
                let initial = max_lr / div_factor;
                let min = initial / final_div_factor;
                let phases = [
                    (pct_start * *total_steps as f64 - 1.0, initial, *max_lr),
                    (*total_steps as f64 - 1.0, *max_lr, min),
                ];
                let step = t as f64;
                let mut start = 0.0;
                for (i, &(end, from, to)) in phases.iter().enumerate() {
                    if step <= end || i == phases.len() - 1 {
                        let pct = (step - start) / (end - start);
                        return to + (from - to) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
                    }
                    start = end;
                }
                unreachable!("the last phase always returns")
            }
            LrSchedule::Linear { start_factor, end_factor, total_iters } => {
                let done = t.min(*total_iters) as f64 / *total_iters as f64;
                base * (start_factor + (end_factor - start_factor) * done)
            }
        }
    }
}

/// Applies a schedule to an optimizer's groups, like a `torch.optim.lr_scheduler` object:
/// construction sets the step-0 rate; `step()` after each `optimizer.step()` advances it.
#[derive(Debug, Clone)]
pub struct Scheduler {
    schedule: LrSchedule,
    steps: usize,
}

impl Scheduler {
    /// Starts `schedule` on `optimizer` (sets every group's rate for step 0).
    pub fn new(schedule: LrSchedule, optimizer: &mut Optimizer) -> Result<Scheduler> {
        schedule.validate()?;
        let s = Scheduler { schedule, steps: 0 };
        s.apply(optimizer);
        Ok(s)
    }

    fn apply(&self, optimizer: &mut Optimizer) {
        let bases: Vec<f64> = optimizer.groups().iter().map(|g| g.initial_lr).collect();
        for (i, base) in bases.into_iter().enumerate() {
            optimizer.set_lr(i, self.schedule.lr_at(base, self.steps));
        }
    }

    /// Advances one step and sets the new rates.
    pub fn step(&mut self, optimizer: &mut Optimizer) {
        self.steps += 1;
        self.apply(optimizer);
    }

    /// Steps taken so far (what a checkpoint must keep).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Restores the step count from a checkpoint and sets the matching rates.
    pub fn set_steps(&mut self, steps: usize, optimizer: &mut Optimizer) {
        self.steps = steps;
        self.apply(optimizer);
    }

    /// The schedule.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }
}
