//! SGD with momentum and cosine annealing, as PyTorch's `SGD` + `CosineAnnealingLR` that the
//! reference uses. Written here rather than using tch's optimiser because resume needs the
//! momentum buffers saved in the checkpoint, and tch does not expose its optimiser state.

use std::collections::BTreeMap;

use tch::{no_grad, Tensor};

/// One parameter the optimiser updates, with its name (checkpoint key) and whether weight decay
/// applies (the reference's "decay" group; biases and 1-D tensors are "no decay").
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
}

pub struct Sgd {
    params: Vec<Param>,
    momentum: f64,
    weight_decay: f64,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(params: Vec<Param>, momentum: f64, weight_decay: f64) -> Self {
        Self {
            params,
            momentum,
            weight_decay,
            buffers: BTreeMap::new(),
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One step with learning rate `lr`: d = g + wd·p (decay group), buf = m·buf + d (buf = d at
    /// the first step), p -= lr·buf — PyTorch's SGD with dampening 0, no Nesterov.
    pub fn step(&mut self, lr: f64) {
        no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if p.decay && self.weight_decay != 0.0 {
                    &g + &p.tensor * self.weight_decay
                } else {
                    g.copy()
                };
                if self.momentum != 0.0 {
                    let buf = match self.buffers.get_mut(&p.name) {
                        Some(buf) => {
                            let _ = buf.g_mul_scalar_(self.momentum).g_add_(&d);
                            buf
                        }
                        None => self.buffers.entry(p.name.clone()).or_insert(d.copy()),
                    };
                    d = buf.shallow_clone();
                }
                let _ = p.tensor.g_sub_(&(d * lr));
            }
        });
    }

    /// The momentum buffers, keyed by parameter name (for the checkpoint).
    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
    pub fn load_state(&mut self, buffers: BTreeMap<String, Tensor>) {
        self.buffers = buffers;
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }
}

/// Cosine annealing from `lr` to `lr·1e-3` over `epochs` (the learning rate used in `epoch`,
/// counted from 0), as `CosineAnnealingLR(T_max=epochs, eta_min=lr*1e-3)` stepped once per epoch.
pub fn cosine_lr(lr: f64, epoch: usize, epochs: usize) -> f64 {
    let eta_min = lr * 1e-3;
    eta_min
        + (lr - eta_min) * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos()) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn sgd_matches_the_pytorch_update_rule() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = Sgd::new(
            vec![Param {
                name: "w".into(),
                tensor: p.shallow_clone(),
                decay: true,
            }],
            0.9,
            0.1,
        );
        // loss = sum(p^2) -> grad 2p
        for _ in 0..2 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.5);
        }
        // step 1: d = 2p + 0.1p = 2.1p; buf = d; p1 = p - 0.5*2.1p = -0.05p
        // step 2: d = 2.1*p1; buf = 0.9*2.1p + 2.1*p1; p2 = p1 - 0.5*buf
        let p0 = [1.0f64, -2.0];
        for (i, &x0) in p0.iter().enumerate() {
            let p1 = -0.05 * x0;
            let buf = 0.9 * 2.1 * x0 + 2.1 * p1;
            let p2 = p1 - 0.5 * buf;
            assert!((p.double_value(&[i as i64]) - p2).abs() < 1e-5);
        }
        assert_eq!(opt.state().len(), 1);
    }

    #[test]
    fn cosine_schedule_ends_near_eta_min() {
        assert!((cosine_lr(0.003, 0, 50) - 0.003).abs() < 1e-12);
        let mid = cosine_lr(0.003, 25, 50);
        assert!((mid - (0.003 + 0.003e-3) / 2.0).abs() < 1e-9);
        assert!(cosine_lr(0.003, 49, 50) < 0.0001);
    }
}
