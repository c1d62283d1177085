//! A padding-free BERT encoder for CPU.
//!
//! The sequences of a batch are *packed*: every linear layer (fused Q/K/V, attention output,
//! both feed-forward layers) runs on one `[T, H]` matrix whose `T` rows are the real tokens of
//! all sequences, with no pad rows, and attention runs per sequence over that sequence's own
//! tokens only. A batch of 128 sentences of 12-20 words padded to its longest does 20-30%
//! more work than this, and candle's masked attention more again.
//!
//! The matrix products are our own: weights are repacked at load time into 16-column panels
//! and multiplied by a 6×16 AVX2/FMA register-blocked micro-kernel (a portable kernel is used
//! where AVX2/FMA is missing), with the bias, GELU or the residual add applied as the tile is
//! stored. Work is split over rayon's global pool (`RAYON_NUM_THREADS`), the same pool candle
//! uses. Buffers live in a small pool of [`EncoderScratch`]es held by the model, so steady state
//! allocates nothing per batch here; the pool holds one scratch per concurrent caller.
//!
//! Numerics: f32 throughout; GELU uses erf (|error| < 3e-7) and
//! softmax an `exp` with relative error ~1e-7, so outputs agree with candle's `BertModel`
//! to cosine > 0.99999 (`tests/packed_bert.rs`).
//!
//! Layout: [`kernels`] (GEMM, attention, LayerNorm, element-wise math; std and rayon only),
//! `weights` (loading a checkpoint), [`profile`] (per-operation timers), `pool` (pooling);
//! this file holds the encoder itself.

// Every unsafe operation in an `unsafe fn` of the kernels gets its own block and SAFETY
// argument (`unsafe_op_in_unsafe_fn` is denied at the crate root).

pub mod kernels;
mod pool;
pub mod profile;
mod weights;

use parking_lot::Mutex;

use crate::core::HostStaging;

pub use kernels::{Act, PackedLinear};
pub use pool::pool_packed;

use kernels::{Attention, Isa, ShapeError, Store};

/// Why the packed encoder could not load its weights or encode a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PackedError(pub String);

impl From<String> for PackedError {
    fn from(why: String) -> Self {
        PackedError(why)
    }
}

impl From<&str> for PackedError {
    fn from(why: &str) -> Self {
        PackedError(why.to_owned())
    }
}

impl From<ShapeError> for PackedError {
    fn from(e: ShapeError) -> Self {
        PackedError(e.to_string())
    }
}

/// Shapes and options of a BERT encoder, from `config.json`.
#[derive(Debug, Clone)]
pub struct PackedConfig {
    /// Hidden size `H`.
    pub hidden: usize,
    /// Number of encoder layers.
    pub layers: usize,
    /// Attention heads; they divide `hidden`.
    pub heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate: usize,
    /// Vocabulary size (rows of the word embeddings).
    pub vocab: usize,
    /// Longest sequence the position embeddings cover.
    pub max_position: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Feed-forward activation.
    pub act: Act,
}

impl PackedConfig {
    /// From candle's BERT config.
    pub fn from_bert(c: &candle_transformers::models::bert::Config) -> Self {
        use candle_transformers::models::bert::HiddenAct;
        PackedConfig {
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            max_position: c.max_position_embeddings,
            eps: c.layer_norm_eps as f32,
            act: match c.hidden_act {
                HiddenAct::Gelu => Act::GeluErf,
                HiddenAct::GeluApproximate => Act::GeluTanh,
                HiddenAct::Relu => Act::Relu,
            },
        }
    }
}

struct Layer {
    qkv: PackedLinear,
    attn_out: PackedLinear,
    ln1: (Vec<f32>, Vec<f32>),
    ffn_in: PackedLinear,
    ffn_out: PackedLinear,
    ln2: (Vec<f32>, Vec<f32>),
}

/// Per-call working memory; grows to the largest batch seen, then is reused.
#[derive(Default)]
pub struct EncoderScratch {
    offsets: Vec<usize>,
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    ffn: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// The padding-free encoder: weights repacked for [`kernels::linear`], plus a pool of
/// scratch buffers (one per concurrent caller).
pub struct PackedBert {
    /// Shapes and options the encoder was loaded with.
    pub config: PackedConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    scratch: Mutex<Vec<EncoderScratch>>,
    /// Kernels every operation runs on: [`Isa::detect`] at load, changed only by
    /// [`PackedBert::with_isa`].
    isa: Isa,
}

impl PackedBert {
    /// Runs on the given kernels instead of the detected ones (tests compare the portable and
    /// AVX2/FMA paths this way).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    /// The kernels this encoder runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Encodes the staged batch (only the first `row_tokens[r]` ids of each row are read) and
    /// calls `f(states, offsets)`: `states` is `[T, H]`, sequence `r` is rows
    /// `offsets[r]..offsets[r+1]`.
    pub fn encode<R: Send>(
        &self,
        st: &HostStaging,
        f: impl FnOnce(&[f32], &[usize]) -> R + Send,
    ) -> Result<R, PackedError> {
        let mut scratch = self.scratch.lock().pop().unwrap_or_default();
        // Run on a pool thread: the parallel sections inside then cost no cross-thread wake-up
        // of the caller.
        let result = if rayon::current_thread_index().is_some() {
            self.run(st, &mut scratch, f)
        } else {
            rayon::scope(|_| self.run(st, &mut scratch, f))
        };
        self.scratch.lock().push(scratch);
        result
    }

    fn run<R>(
        &self,
        st: &HostStaging,
        sc: &mut EncoderScratch,
        f: impl FnOnce(&[f32], &[usize]) -> R,
    ) -> Result<R, PackedError> {
        let c = &self.config;
        let (h, inter) = (c.hidden, c.intermediate);
        let rows = st.rows;
        sc.offsets.clear();
        sc.offsets.push(0);
        let mut t = 0usize;
        for r in 0..rows {
            let n = st.row_tokens[r] as usize;
            if n > st.seq_len || n > c.max_position {
                return Err(format!(
                    "row {r} has {n} tokens (padded length {}, model limit {})",
                    st.seq_len, c.max_position
                )
                .into());
            }
            if let Some(&bad) = st.ids[r * st.seq_len..r * st.seq_len + n]
                .iter()
                .find(|&&id| id as usize >= c.vocab)
            {
                return Err(
                    format!("token id {bad} is outside the vocabulary ({})", c.vocab).into()
                );
            }
            t += n;
            sc.offsets.push(t);
        }
        // Every operation runs on all T rows, split over the pool's threads. (Running groups
        // of whole sequences through the entire encoder as one task each, with no
        // synchronisation between operations, measured 5-10% slower with 2 threads: each
        // thread then streams all the weights on its own instead of both sharing one
        // layer's weights in L3.)
        let offsets = &sc.offsets[..];
        let hidden = grow(&mut sc.hidden, t * h);
        let qkv = grow(&mut sc.qkv, t * 3 * h);
        let ctx = grow(&mut sc.ctx, t * h);
        let ffn = grow(&mut sc.ffn, t * inter);
        // The buffers were sized for these shapes just above, so no kernel fails here; the
        // errors are passed on rather than unwrapped all the same.
        let shape = PackedError::from;
        let isa = self.isa;
        let mut clock = profile::Clock::start();
        self.embed(st, offsets, hidden).map_err(shape)?;
        clock.lap(profile::Op::Embed);
        for layer in &self.layers {
            kernels::linear(hidden, t, &layer.qkv, qkv, Store::Set(Act::None), true, isa)
                .map_err(shape)?;
            clock.lap(profile::Op::Qkv);
            let at = Attention::new(qkv, offsets, 0, h, c.heads).map_err(shape)?;
            kernels::attention(&at, ctx, true, isa).map_err(shape)?;
            clock.lap(profile::Op::Attention);
            kernels::linear(ctx, t, &layer.attn_out, hidden, Store::Add, true, isa)
                .map_err(shape)?;
            clock.lap(profile::Op::AttnOut);
            kernels::layer_norm(hidden, h, &layer.ln1.0, &layer.ln1.1, c.eps, true, isa)
                .map_err(shape)?;
            clock.lap(profile::Op::LayerNorm);
            kernels::linear(hidden, t, &layer.ffn_in, ffn, Store::Set(c.act), true, isa)
                .map_err(shape)?;
            clock.lap(profile::Op::FfnIn);
            kernels::linear(ffn, t, &layer.ffn_out, hidden, Store::Add, true, isa)
                .map_err(shape)?;
            clock.lap(profile::Op::FfnOut);
            kernels::layer_norm(hidden, h, &layer.ln2.0, &layer.ln2.1, c.eps, true, isa)
                .map_err(shape)?;
            clock.lap(profile::Op::LayerNorm);
        }
        Ok(f(hidden, offsets))
    }

    /// word + position (0..len per sequence) + token type 0, then LayerNorm.
    fn embed(
        &self,
        st: &HostStaging,
        offsets: &[usize],
        hidden: &mut [f32],
    ) -> Result<(), ShapeError> {
        let h = self.config.hidden;
        for r in 0..offsets.len() - 1 {
            let (o, e) = (offsets[r], offsets[r + 1]);
            for (t, dst) in hidden[o * h..e * h].chunks_exact_mut(h).enumerate() {
                let id = st.ids[r * st.seq_len + t] as usize;
                let w = &self.word[id * h..(id + 1) * h];
                let p = &self.position[t * h..(t + 1) * h];
                for (((d, w), p), y) in dst.iter_mut().zip(w).zip(p).zip(&self.token_type0) {
                    *d = w + p + y;
                }
            }
        }
        kernels::layer_norm(
            hidden,
            h,
            &self.emb_ln.0,
            &self.emb_ln.1,
            self.config.eps,
            true,
            self.isa,
        )
    }
}
