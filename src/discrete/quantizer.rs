//! The vector quantiser of VQ-VAE (van den Oord et al. 2017), with the
//! exponential-moving-average codebook of Razavi et al. (2019) and restarts of dead codes.

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::Rng;

use crate::error::{Error, elements, ensure};
use crate::noise::NoiseSource;

/// How the codebook learns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CodebookUpdate {
    /// By gradient descent on the codebook loss ‖sg(z_e) − e‖² (van den Oord et al. 2017,
    /// eq. 3): the codebook is an ordinary parameter the optimiser moves.
    Gradient,
    /// By exponential moving averages (van den Oord et al. 2017, appendix A.1; Razavi et
    /// al. 2019, eqs. 4–6), applied by [`VectorQuantizer::update`] after each training
    /// step; the codebook loss is left out of the objective.
    Ema {
        /// γ in (0, 1): 0.99 in both papers.
        decay: f64,
        /// ε > 0 of the Laplace smoothing of the counts: 1e-5 as in Sonnet.
        epsilon: f64,
    },
}

impl CodebookUpdate {
    /// The EMA update with γ = 0.99 and ε = 1e-5.
    pub fn ema() -> Self {
        CodebookUpdate::Ema {
            decay: 0.99,
            epsilon: 1e-5,
        }
    }
}

/// What happens to codes no encoder output selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadCodes {
    /// They stay where they are.
    Keep,
    /// A code unused for `after_steps` consecutive calls of [`VectorQuantizer::update`]
    /// is reset to an encoder output of the current batch, drawn uniformly from the
    /// crate's seeded [`NoiseSource`] (the restart of Dhariwal et al. 2020, Jukebox).
    Restart {
        /// Consecutive unused steps before a restart (> 0).
        after_steps: usize,
    },
}

/// Configuration of a [`VectorQuantizer`].
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuantizerConfig {
    /// K, the number of codes (> 0).
    pub codes: usize,
    /// D, the width of each code and of the encoder output's channel axis (> 0).
    pub dim: usize,
    /// β, the weight of the commitment loss (finite, ≥ 0): 0.25 as in van den Oord et al.
    pub beta: f64,
    /// Gradient or EMA codebook.
    pub update: CodebookUpdate,
    /// Restart of dead codes.
    pub dead_codes: DeadCodes,
}

impl VectorQuantizerConfig {
    /// K codes of width D; β = 0.25, the gradient codebook, dead codes kept.
    pub fn new(codes: usize, dim: usize) -> Self {
        Self {
            codes,
            dim,
            beta: 0.25,
            update: CodebookUpdate::Gradient,
            dead_codes: DeadCodes::Keep,
        }
    }

    /// Sets β.
    #[must_use]
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the codebook update.
    #[must_use]
    pub fn with_update(mut self, update: CodebookUpdate) -> Self {
        self.update = update;
        self
    }

    /// Sets what happens to dead codes.
    #[must_use]
    pub fn with_dead_codes(mut self, dead_codes: DeadCodes) -> Self {
        self.dead_codes = dead_codes;
        self
    }

    /// Checks every rule; [`VectorQuantizer::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        const C: &str = "VectorQuantizerConfig";
        ensure(self.codes > 0, C, "codes", self.codes, "must be > 0")?;
        ensure(self.dim > 0, C, "dim", self.dim, "must be > 0")?;
        ensure(
            elements(&[self.codes, self.dim]).is_some(),
            C,
            "codes",
            self.codes,
            "codes × dim must be at most 2^60",
        )?;
        ensure(
            self.beta.is_finite() && self.beta >= 0.0,
            C,
            "beta",
            self.beta,
            "must be finite and ≥ 0",
        )?;
        if let CodebookUpdate::Ema { decay, epsilon } = self.update {
            ensure(
                decay > 0.0 && decay < 1.0,
                C,
                "update.decay",
                decay,
                "must be in (0, 1)",
            )?;
            ensure(
                epsilon.is_finite() && epsilon > 0.0,
                C,
                "update.epsilon",
                epsilon,
                "must be finite and > 0",
            )?;
        }
        if let DeadCodes::Restart { after_steps } = self.dead_codes {
            ensure(
                after_steps > 0,
                C,
                "dead_codes.after_steps",
                after_steps,
                "must be > 0",
            )?;
        }
        Ok(())
    }
}

/// One pass of a batch through a [`VectorQuantizer`].
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The quantised output with the straight-through gradient:
    /// z_q = sg(e_k) + (z_e − sg(z_e)). Its value is exactly the selected code; its
    /// gradient with respect to z_e is the identity. The shape of z_e.
    pub z_q: Tensor,
    /// The selected code of each position: `(N,)` for `(N, D)` inputs, `(N, H, W)` for
    /// `(N, D, H, W)`, `u32`.
    pub codes: Tensor,
    /// ‖sg(z_e) − e‖² per example (summed over positions and channels), `(N,)`: the loss
    /// that moves the codebook (gradient update only).
    pub codebook_loss: Tensor,
    /// ‖z_e − sg(e)‖² per example, `(N,)`, before β.
    pub commitment_loss: Tensor,
    /// What the quantiser adds to the objective per example, `(N,)`: codebook loss
    /// (gradient update only) + β · commitment loss.
    pub loss: Tensor,
    /// How many times each code was selected, `(K,)` on the host.
    pub counts: Vec<u32>,
    /// The encoder outputs as rows, `(N·H·W, D)` (or `(N, D)`), detached: what
    /// [`VectorQuantizer::update`] averages.
    pub inputs: Tensor,
    /// The selected code of each row of `inputs`, on the host.
    pub indices: Vec<u32>,
}

impl Quantized {
    /// Codes selected at least once in this batch.
    pub fn usage(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }

    /// exp(H(p̄)), p̄ the average one-hot assignment of the batch: K when every code is
    /// used equally, 1 when one code takes everything.
    pub fn perplexity(&self) -> f64 {
        perplexity(&self.counts)
    }
}

/// exp(−Σ_k p_k ln p_k) with p_k = counts_k / Σ counts (1 for an empty batch).
pub fn perplexity(counts: &[u32]) -> f64 {
    let total: f64 = counts.iter().map(|&c| f64::from(c)).sum();
    if total == 0.0 {
        return 1.0;
    }
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / total;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

/// The vector quantiser of VQ-VAE (van den Oord et al. 2017): each D-vector z_e of the
/// encoder output is replaced by its nearest code
///
/// k = argmin_j ‖z_e − e_j‖²,   z_q = e_k,
///
/// ties going to the **lowest index** j. The gradient is passed straight through
/// (∂L/∂z_e = ∂L/∂z_q), and the objective gains the codebook loss ‖sg(z_e) − e_k‖² and
/// the commitment loss β‖z_e − sg(e_k)‖² (eq. 3), summed over positions and channels per
/// example.
///
/// With [`CodebookUpdate::Ema`] the codebook follows moving averages instead (Razavi et
/// al. 2019, eqs. 4–6): with n_i the count of code i in the batch and s_i the sum of the
/// z_e assigned to it,
///
/// N_i ← γ N_i + (1 − γ) n_i,   m_i ← γ m_i + (1 − γ) s_i,
/// Ñ_i = (N_i + ε) / (Σ_j N_j + K ε) · Σ_j N_j   (Laplace smoothing),   e_i = m_i / Ñ_i.
///
/// # Tensor names
/// `codebook` `(K, D)` (initialised U(±1/K), as the reference implementations do);
/// with EMA `ema_count` `(K,)` and `ema_sum` `(K, D)`; with dead-code restarts
/// `idle_steps` `(K,)`. All live in the `VarBuilder`'s store, so checkpoints save and
/// restore the EMA state with the weights. A fresh EMA state (all counts 0, as a store
/// creates it) starts as N_i = 1, m_i = e_i, so that an unused code stays in place
/// instead of being divided by ε. The buffers get no gradient, so an optimiser over the
/// whole store leaves them alone.
///
/// # Shapes
/// z_e is `(N, D)` (an MLP encoder) or `(N, D, H, W)` (a convolutional one; the channel
/// axis is quantised at every position).
#[derive(Debug, Clone)]
pub struct VectorQuantizer {
    config: VectorQuantizerConfig,
    codebook: Tensor,
    ema: Option<(Tensor, Tensor)>,
    idle: Option<Tensor>,
}

impl VectorQuantizer {
    /// A quantiser with `config`, its tensors created under `vb`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config (a codebook of size 0 among them);
    /// candle's if the tensors cannot be created or have another shape in the store.
    pub fn new(config: &VectorQuantizerConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let (k, d) = (config.codes, config.dim);
        let bound = 1.0 / k as f64;
        let codebook = vb.get_with_hints(
            (k, d),
            "codebook",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let ema = match config.update {
            CodebookUpdate::Gradient => None,
            CodebookUpdate::Ema { .. } => {
                let count = vb.get_with_hints(k, "ema_count", Init::Const(0.0))?;
                let sum = vb.get_with_hints((k, d), "ema_sum", Init::Const(0.0))?;
                let fresh = count
                    .abs()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    == 0.0;
                if fresh {
                    count.slice_set(&count.ones_like()?, 0, 0)?;
                    sum.slice_set(&codebook.detach().copy()?, 0, 0)?;
                }
                Some((count, sum))
            }
        };
        let idle = match config.dead_codes {
            DeadCodes::Keep => None,
            DeadCodes::Restart { .. } => {
                Some(vb.get_with_hints(k, "idle_steps", Init::Const(0.0))?)
            }
        };
        Ok(Self {
            config: config.clone(),
            codebook,
            ema,
            idle,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VectorQuantizerConfig {
        &self.config
    }

    /// The codebook e, `(K, D)`.
    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    /// The EMA state (N `(K,)`, m `(K, D)`), if the codebook follows moving averages.
    pub fn ema_state(&self) -> Option<(&Tensor, &Tensor)> {
        self.ema.as_ref().map(|(n, m)| (n, m))
    }

    /// Consecutive unused steps of each code `(K,)`, if dead codes are restarted.
    pub fn idle_steps(&self) -> Option<&Tensor> {
        self.idle.as_ref()
    }

    /// The encoder output as rows of width D, and the shape of the codes.
    fn rows(&self, z_e: &Tensor) -> candle_core::Result<(Tensor, Vec<usize>)> {
        let d = self.config.dim;
        match z_e.dims() {
            &[n, c] if c == d => Ok((z_e.clone(), vec![n])),
            &[n, c, h, w] if c == d => Ok((
                z_e.permute((0, 2, 3, 1))?
                    .contiguous()?
                    .reshape((n * h * w, d))?,
                vec![n, h, w],
            )),
            dims => Err(Error::shape(
                "VectorQuantizer::quantize",
                format!("z_e of shape (N, {d}) or (N, {d}, H, W)"),
                dims,
            )
            .into()),
        }
    }

    /// Rows `(M, D)` back to the layout of codes of shape `code_shape`.
    fn unrows(&self, rows: &Tensor, code_shape: &[usize]) -> candle_core::Result<Tensor> {
        match *code_shape {
            [n, h, w] => rows
                .reshape((n, h, w, self.config.dim))?
                .permute((0, 3, 1, 2))?
                .contiguous(),
            _ => Ok(rows.clone()),
        }
    }

    /// The nearest code of each row of `rows` `(M, D)`, ties to the lowest index.
    ///
    /// ‖z − e_j‖² is computed as ‖z‖² − 2 z·e_j + ‖e_j‖², one matrix product.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn nearest(&self, rows: &Tensor) -> candle_core::Result<Vec<u32>> {
        let rows = rows.detach();
        let codebook = self.codebook.detach();
        let distances = rows
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_sub(&(rows.matmul(&codebook.t()?)? * 2.0)?)?
            .broadcast_add(&codebook.sqr()?.sum(1)?.unsqueeze(0)?)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        Ok(distances
            .iter()
            .map(|row| {
                let mut best = 0usize;
                for (j, &v) in row.iter().enumerate() {
                    // Strictly smaller: a tie keeps the lower index.
                    if v < row[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect())
    }

    /// The codes `codes` as vectors: `(N,)` → `(N, D)`, `(N, H, W)` → `(N, D, H, W)`.
    ///
    /// # Errors
    /// If `codes` has another rank, or an index ≥ K.
    pub fn embed(&self, codes: &Tensor) -> candle_core::Result<Tensor> {
        let shape = codes.dims().to_vec();
        if shape.len() != 1 && shape.len() != 3 {
            return Err(Error::shape(
                "VectorQuantizer::embed",
                "codes of shape (N,) or (N, H, W)",
                &shape,
            )
            .into());
        }
        let flat = codes.flatten_all()?.to_dtype(DType::U32)?;
        let rows = self.codebook.detach().index_select(&flat, 0)?;
        self.unrows(&rows, &shape)
    }

    /// Quantises a batch: nearest codes, the straight-through output, the losses and the
    /// counts. Changes nothing; [`update`](Self::update) applies the EMA and restarts.
    ///
    /// # Shapes
    /// `z_e`: `(N, D)` or `(N, D, H, W)` → `z_q` of the same shape, `codes` `(N,)` or
    /// `(N, H, W)`, losses `(N,)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if the channel axis of `z_e` is not D.
    pub fn quantize(&self, z_e: &Tensor) -> candle_core::Result<Quantized> {
        let (rows, code_shape) = self.rows(z_e)?;
        let indices = self.nearest(&rows)?;
        let mut counts = vec![0u32; self.config.codes];
        for &i in &indices {
            counts[i as usize] += 1;
        }
        let ids = Tensor::from_vec(indices.clone(), indices.len(), z_e.device())?;
        let selected = self.codebook.index_select(&ids, 0)?;
        let q = self.unrows(&selected, &code_shape)?;
        let z_q = (q.detach() + (z_e - z_e.detach())?)?;
        let per_example = |t: Tensor| -> candle_core::Result<Tensor> {
            if t.rank() == 1 {
                Ok(t)
            } else {
                t.flatten_from(1)?.sum(D::Minus1)
            }
        };
        let codebook_loss = per_example((z_e.detach() - &q)?.sqr()?)?;
        let commitment_loss = per_example((z_e - q.detach())?.sqr()?)?;
        let weighted = (&commitment_loss * self.config.beta)?;
        let loss = match self.config.update {
            CodebookUpdate::Gradient => (&codebook_loss + weighted)?,
            CodebookUpdate::Ema { .. } => weighted,
        };
        let codes = ids.reshape(code_shape)?;
        Ok(Quantized {
            z_q,
            codes,
            codebook_loss,
            commitment_loss,
            loss,
            counts,
            inputs: rows.detach(),
            indices,
        })
    }

    /// The training-time update after a step on `quantized` (the output of
    /// [`quantize`](Self::quantize) on this batch): the EMA codebook update (with
    /// [`CodebookUpdate::Ema`]), then the restart of codes unused for
    /// `after_steps` consecutive updates (with [`DeadCodes::Restart`]), each reset to a row
    /// of `quantized.inputs` drawn from `noise` (and, with EMA, N_i = 1, m_i = the row).
    /// With neither it does nothing and draws nothing.
    ///
    /// # Errors
    /// If `quantized` does not come from a quantiser of this K and D.
    pub fn update(
        &self,
        quantized: &Quantized,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<()> {
        let (k, d) = (self.config.codes, self.config.dim);
        if quantized.counts.len() != k || quantized.inputs.dims().get(1) != Some(&d) {
            return Err(Error::shape(
                "VectorQuantizer::update",
                format!("a Quantized of {k} codes of width {d}"),
                quantized.inputs.dims(),
            )
            .into());
        }
        if self.ema.is_none() && self.idle.is_none() {
            return Ok(());
        }
        let dtype = self.codebook.dtype();
        let device = self.codebook.device().clone();
        let inputs = host_rows(&quantized.inputs)?;
        let mut codebook = host_rows(&self.codebook)?;
        let mut ema = match &self.ema {
            Some((count, sum)) => Some((host_vec(count)?, host_rows(sum)?)),
            None => None,
        };
        if let (Some((count, sum)), CodebookUpdate::Ema { decay, epsilon }) =
            (ema.as_mut(), self.config.update)
        {
            let mut batch_sum = vec![vec![0f64; d]; k];
            for (row, &i) in inputs.iter().zip(&quantized.indices) {
                for (s, &v) in batch_sum[i as usize].iter_mut().zip(row) {
                    *s += v;
                }
            }
            for i in 0..k {
                count[i] = decay * count[i] + (1.0 - decay) * f64::from(quantized.counts[i]);
                for (m, &s) in sum[i].iter_mut().zip(&batch_sum[i]) {
                    *m = decay * *m + (1.0 - decay) * s;
                }
            }
            let total: f64 = count.iter().sum();
            for i in 0..k {
                let smoothed = (count[i] + epsilon) / (total + k as f64 * epsilon) * total;
                for (e, &m) in codebook[i].iter_mut().zip(&sum[i]) {
                    *e = m / smoothed;
                }
            }
        }
        let mut idle = match &self.idle {
            Some(t) => Some(host_vec(t)?),
            None => None,
        };
        if let (Some(idle), DeadCodes::Restart { after_steps }) =
            (idle.as_mut(), self.config.dead_codes)
        {
            for i in 0..k {
                idle[i] = if quantized.counts[i] > 0 {
                    0.0
                } else {
                    idle[i] + 1.0
                };
                if idle[i] >= after_steps as f64 && !inputs.is_empty() {
                    let j = noise.rng().random_range(0..inputs.len());
                    codebook[i].clone_from(&inputs[j]);
                    if let Some((count, sum)) = ema.as_mut() {
                        count[i] = 1.0;
                        sum[i].clone_from(&inputs[j]);
                    }
                    idle[i] = 0.0;
                }
            }
        }
        let write = |target: &Tensor, values: Vec<f64>| -> candle_core::Result<()> {
            let t = Tensor::from_vec(values, target.shape(), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(&device)?;
            target.slice_set(&t, 0, 0)
        };
        write(&self.codebook, codebook.into_iter().flatten().collect())?;
        if let (Some((count_t, sum_t)), Some((count, sum))) = (&self.ema, ema) {
            write(count_t, count)?;
            write(sum_t, sum.into_iter().flatten().collect())?;
        }
        if let (Some(idle_t), Some(idle)) = (&self.idle, idle) {
            write(idle_t, idle)?;
        }
        Ok(())
    }
}

fn host_rows(t: &Tensor) -> candle_core::Result<Vec<Vec<f64>>> {
    t.to_dtype(DType::F64)?.to_vec2::<f64>()
}

fn host_vec(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.to_vec1::<f64>()
}
