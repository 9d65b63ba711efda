//! Optimizers with `torch.optim`'s update rules, step for step: SGD (momentum, dampening,
//! Nesterov, weight decay), Adam (bias correction, L2 weight decay added to the gradient) and
//! AdamW (decoupled weight decay). Parameters live in groups with their own learning rate and
//! weight decay; the per-parameter state can be saved and restored to resume training.

use crate::autograd::Var;
use crate::{NnError, Result};
use tensor::{AdamStep, DType, SgdStep, Tensor};

/// The update rule and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// `torch.optim.SGD`.
    Sgd {
        /// Momentum factor (0: plain SGD).
        momentum: f64,
        /// Dampening of the momentum.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// `torch.optim.Adam` (weight decay is added to the gradient).
    Adam {
        /// `(beta1, beta2)`.
        betas: (f64, f64),
        /// Added to the denominator.
        eps: f64,
    },
    /// `torch.optim.AdamW` (weight decay shrinks the parameters directly).
    AdamW {
        /// `(beta1, beta2)`.
        betas: (f64, f64),
        /// Added to the denominator.
        eps: f64,
    },
}

impl Method {
    /// SGD with momentum (dampening 0, not Nesterov).
    pub fn sgd(momentum: f64) -> Method {
        Method::Sgd { momentum, dampening: 0.0, nesterov: false }
    }
    /// Adam with PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8).
    pub fn adam() -> Method {
        Method::Adam { betas: (0.9, 0.999), eps: 1e-8 }
    }
    /// AdamW with PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8).
    pub fn adamw() -> Method {
        Method::AdamW { betas: (0.9, 0.999), eps: 1e-8 }
    }
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        match *self {
            Method::Sgd { momentum, dampening, nesterov } => {
                if momentum < 0.0 {
                    return bad(format!("invalid momentum {momentum}"));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return bad("Nesterov momentum requires a momentum and zero dampening".into());
                }
            }
            Method::Adam { betas: (b1, b2), eps } | Method::AdamW { betas: (b1, b2), eps } => {
                if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
                    return bad(format!("invalid betas ({b1}, {b2}): each must be in [0, 1)"));
                }
                if eps < 0.0 {
                    return bad(format!("invalid eps {eps}"));
                }
            }
        }
        Ok(())
    }
}

/// Parameters sharing a learning rate and weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// The parameters.
    pub params: Vec<Var>,
    /// Current learning rate (schedulers change it).
    pub lr: f64,
    /// The learning rate the group was created with (schedulers scale from it).
    pub initial_lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

#[derive(Debug, Clone, Default)]
struct ParamState {
    step: u64,
    /// SGD's momentum buffer, or Adam's first moment (on the parameter's device).
    first: Option<Tensor>,
    /// Adam's second moment.
    second: Option<Tensor>,
}

/// An optimizer over parameter groups.
#[derive(Debug, Clone)]
pub struct Optimizer {
    method: Method,
    groups: Vec<ParamGroup>,
    state: Vec<Vec<ParamState>>,
}

impl Optimizer {
    /// An optimizer with one group. Frozen parameters (not requiring grad) are left out, like
    /// `filter(lambda p: p.requires_grad, net.parameters())`.
    pub fn new(method: Method, params: Vec<Var>, lr: f64, weight_decay: f64) -> Result<Optimizer> {
        method.validate()?;
        let mut o = Optimizer { method, groups: Vec::new(), state: Vec::new() };
        o.add_param_group(params, lr, weight_decay)?;
        Ok(o)
    }

    /// Adds a group with its own learning rate (e.g. a smaller one for the backbone).
    pub fn add_param_group(&mut self, params: Vec<Var>, lr: f64, weight_decay: f64) -> Result<()> {
        if !(lr >= 0.0 && lr.is_finite() && weight_decay >= 0.0 && weight_decay.is_finite()) {
            return Err(NnError::Config(format!("invalid learning rate {lr} or weight decay {weight_decay}")));
        }
        let params: Vec<Var> = params.into_iter().filter(Var::requires_grad).collect();
        self.state.push(vec![ParamState::default(); params.len()]);
        self.groups.push(ParamGroup { params, lr, initial_lr: lr, weight_decay });
        Ok(())
    }

    /// The groups (to read or set learning rates).
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Sets the learning rate of group `g`.
    pub fn set_lr(&mut self, g: usize, lr: f64) {
        if let Some(group) = self.groups.get_mut(g) {
            group.lr = lr;
        }
    }

    /// The learning rate of the first group.
    pub fn lr(&self) -> f64 {
        self.groups.first().map_or(0.0, |g| g.lr)
    }

    /// The update rule.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&self) {
        self.groups.iter().flat_map(|g| &g.params).for_each(Var::zero_grad);
    }

    /// One update of every parameter that has a gradient (`optimizer.step()`).
    pub fn step(&mut self) -> Result<()> {
        for (group, states) in self.groups.iter().zip(self.state.iter_mut()) {
            for (param, state) in group.params.iter().zip(states.iter_mut()) {
                let Some(grad) = param.grad() else { continue };
                let value = param.value();
                if grad.shape() != value.shape() {
                    return Err(NnError::Shape(format!(
                        "optimizer: gradient {:?} does not match parameter {:?}",
                        grad.shape(),
                        value.shape()
                    )));
                }
                let operands = [Some(&grad), state.first.as_ref(), state.second.as_ref()];
                let consistent = value.dtype() == DType::F32
                    && operands.into_iter().flatten().all(|t| t.dtype() == DType::F32 && t.device() == value.device());
                if !consistent {
                    return Err(NnError::Shape(format!(
                        "optimizer: the gradient or state of parameter {:?} is not f32 on its device ({})",
                        value.shape(),
                        value.device()
                    )));
                }
                // The state moves into the step (a host buffer is then updated in place); the
                // checks above are all the step could fail on, so it is not lost to an error.
                let (p, s) = update(self.method, group.lr, group.weight_decay, &value, &grad, std::mem::take(state))?;
                param.set_value(p);
                *state = s;
            }
        }
        Ok(())
    }

    /// The optimizer's state as named tensors (for checkpoints): learning rates, steps and
    /// moment buffers, keyed by group and parameter position.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (gi, (group, states)) in self.groups.iter().zip(&self.state).enumerate() {
            // The f64 learning rate's bits, so a resumed run continues with exactly the same rate.
            out.push((
                format!("group.{gi}.lr_bits"),
                Tensor::from_vec_i64(vec![group.lr.to_bits() as i64], &[1]).expect("1 value"),
            ));
            for (pi, s) in states.iter().enumerate() {
                out.push((
                    format!("state.{gi}.{pi}.step"),
                    Tensor::from_vec_i64(vec![s.step as i64], &[1]).expect("1 value"),
                ));
                for (name, buf) in [("first", &s.first), ("second", &s.second)] {
                    if let Some(b) = buf {
                        out.push((format!("state.{gi}.{pi}.{name}"), b.clone()));
                    }
                }
            }
        }
        out
    }

    /// Saves [`Optimizer::state_dict`] as a safetensors file, atomically (as
    /// `torch.save(optimizer.state_dict(), path)`, in the format this project writes).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        Ok(tensor::write_safetensors(path, &self.state_dict(), &Default::default())?)
    }

    /// Restores a file written by [`Optimizer::save`] into an optimizer built over the same
    /// parameters.
    pub fn load(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let file = tensor::read_safetensors(path.as_ref())?;
        self.load_state_dict(&file.entries).map_err(|e| match e {
            NnError::Config(m) | NnError::Shape(m) => NnError::Config(format!("{}: {m}", path.as_ref().display())),
            other => other,
        })
    }

    /// Restores [`Optimizer::state_dict`] into an optimizer built over the same parameters.
    pub fn load_state_dict(&mut self, entries: &[(String, Tensor)]) -> Result<()> {
        let find = |k: &str| entries.iter().find(|(n, _)| n == k).map(|(_, t)| t);
        let mut state = self.state.clone();
        let mut lrs = Vec::new();
        for (gi, group) in self.groups.iter().enumerate() {
            let lr = match find(&format!("group.{gi}.lr_bits")) {
                Some(t) => f64::from_bits(t.to_vec_i64()?.first().copied().unwrap_or(0) as u64),
                None => return Err(NnError::Config(format!("optimizer state: group {gi} is missing"))),
            };
            lrs.push(lr);
            for (pi, param) in group.params.iter().enumerate() {
                let s = &mut state[gi][pi];
                let step = find(&format!("state.{gi}.{pi}.step"))
                    .ok_or_else(|| NnError::Config(format!("optimizer state: parameter {gi}.{pi} is missing")))?;
                s.step = step.to_vec_i64()?.first().copied().unwrap_or(0).max(0) as u64;
                let value = param.value();
                let shape = value.shape();
                for (name, slot) in [("first", &mut s.first), ("second", &mut s.second)] {
                    *slot = match find(&format!("state.{gi}.{pi}.{name}")) {
                        Some(t) if t.shape() == shape && t.dtype() == DType::F32 => Some(t.to_device(value.device())?),
                        Some(t) => {
                            return Err(NnError::Shape(format!(
                                "optimizer state {gi}.{pi}.{name}: {:?} does not match the parameter {shape:?}",
                                t.shape()
                            )))
                        }
                        None => None,
                    };
                }
            }
        }
        self.state = state;
        for (g, lr) in self.groups.iter_mut().zip(lrs) {
            g.lr = lr;
        }
        Ok(())
    }
}

/// One parameter's update (torch's rules, in f32, scalars in f64 as Python computes them; the
/// fused kernels are tensor's `sgd_step` / `adam_step`, on the parameter's device). Returns the
/// new value and state (the shapes and dtypes were checked: the steps do not fail on them).
fn update(method: Method, lr: f64, wd: f64, p: &Tensor, g: &Tensor, s: ParamState) -> Result<(Tensor, ParamState)> {
    let step = s.step + 1;
    Ok(match method {
        Method::Sgd { momentum, dampening, nesterov } => {
            let h = SgdStep { lr, weight_decay: wd, momentum, dampening, nesterov };
            let (p, buf) = tensor::sgd_step(p, g, s.first, h)?;
            (p, ParamState { step, first: buf, second: None })
        }
        Method::Adam { betas, eps } | Method::AdamW { betas, eps } => {
            let decoupled = matches!(method, Method::AdamW { .. });
            let h = AdamStep { lr, weight_decay: wd, betas, eps, decoupled, step };
            let (p, m, v) = tensor::adam_step(p, g, s.first, s.second, h)?;
            (p, ParamState { step, first: Some(m), second: Some(v) })
        }
    })
}
