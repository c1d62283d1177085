//! Sluice's own CUDA kernels: `kernels/*.cu`, embedded in the binary and compiled with NVRTC
//! for the lane's device when the lane starts (so one binary serves any supported GPU). Each
//! has a CPU reference in `execute::reference` and a comparison test in `tests/gpu_kernels.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use super::GpuError;

/// `kernels/pool_normalize.cu`: fused masked mean (or CLS) pooling + L2 normalisation.
pub const POOL_NORMALIZE_SRC: &str = include_str!("../../../kernels/pool_normalize.cu");
/// `kernels/batch_mask.cu`: attention mask and type ids from per-row token counts.
pub const BATCH_MASK_SRC: &str = include_str!("../../../kernels/batch_mask.cu");

/// The compiled kernels of one context.
pub struct Kernels {
    pool_normalize: CudaFunction,
    batch_mask: CudaFunction,
    /// NVRTC compile + module load time of both kernels.
    pub compile_time: Duration,
    /// The `--gpu-architecture` they were compiled for (`None`: NVRTC's default).
    pub arch: Option<&'static str>,
}

/// NVRTC's virtual architecture for a compute capability (PTX, JIT-compiled by the driver).
fn arch_for(major: i32, minor: i32) -> Option<&'static str> {
    Some(match (major, minor) {
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ => return None,
    })
}

fn invalid(what: &str) -> GpuError {
    GpuError::Other(format!("kernel launch with bad sizes: {what}"))
}

/// `(file stem, source, entry point)` of every kernel.
const KERNELS: [(&str, &str, &str); 2] = [
    ("pool_normalize", POOL_NORMALIZE_SRC, "pool_normalize_f32"),
    ("batch_mask", BATCH_MASK_SRC, "batch_mask_u32"),
];

/// Compiles every kernel to PTX for `arch` (e.g. `compute_90`; `None`: NVRTC's default)
/// without loading it: needs NVRTC only, no device. Returns `(entry point, PTX)` pairs.
pub fn compile_ptx(arch: Option<&'static str>) -> Result<Vec<(&'static str, Ptx)>, GpuError> {
    KERNELS
        .iter()
        .map(|&(name, src, func)| {
            let opts =
                CompileOptions { arch, name: Some(format!("{name}.cu")), ..Default::default() };
            let ptx = compile_ptx_with_opts(src, opts)
                .map_err(|e| GpuError::Compile { kernel: name, reason: e.to_string() })?;
            Ok((func, ptx))
        })
        .collect()
}

impl Kernels {
    /// Compiles and loads the kernels for the device of `ctx`.
    pub fn compile(ctx: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let started = Instant::now();
        let (major, minor) = ctx.compute_capability()?;
        let arch = arch_for(major, minor);
        let mut funcs = Vec::with_capacity(KERNELS.len());
        for (func, ptx) in compile_ptx(arch)? {
            funcs.push(ctx.load_module(ptx)?.load_function(func)?);
        }
        let [pool_normalize, batch_mask]: [CudaFunction; 2] =
            funcs.try_into().map_err(|_| GpuError::Other("kernel count".into()))?;
        Ok(Kernels { pool_normalize, batch_mask, compile_time: started.elapsed(), arch })
    }

    /// Pools `[rows, seq, hidden]` `states` into `out[..rows * hidden]` (see
    /// `kernels/pool_normalize.cu`; reference `pool_rows`). Asynchronous on `stream`.
    #[allow(clippy::too_many_arguments)]
    pub fn pool_normalize(
        &self,
        stream: &Arc<CudaStream>,
        states: &CudaView<'_, f32>,
        row_tokens: &CudaView<'_, u32>,
        out: &mut CudaSlice<f32>,
        (rows, seq, hidden): (usize, usize, usize),
        mean: bool,
        normalize: bool,
    ) -> Result<(), GpuError> {
        if states.len() < rows * seq * hidden
            || row_tokens.len() < rows
            || out.len() < rows * hidden
        {
            return Err(invalid("pool_normalize"));
        }
        if rows == 0 || hidden == 0 {
            return Ok(());
        }
        let threads = hidden.div_ceil(32).clamp(1, 8) as u32 * 32;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (seq, hidden, mean, normalize) =
            (seq as i32, hidden as i32, i32::from(mean), i32::from(normalize));
        let mut launch = stream.launch_builder(&self.pool_normalize);
        launch
            .arg(states)
            .arg(row_tokens)
            .arg(out)
            .arg(&seq)
            .arg(&hidden)
            .arg(&mean)
            .arg(&normalize);
        // SAFETY: the argument list matches the kernel's signature and the sizes were checked
        // above: the kernel reads rows*seq*hidden states and rows counts, writes rows*hidden.
        unsafe { launch.launch(cfg) }.map(|_| ()).map_err(GpuError::from)
    }

    /// Writes the `[rows, seq]` mask and zero type ids of a batch from its per-row token
    /// counts (see `kernels/batch_mask.cu`; reference `mask_from_lengths`). Asynchronous.
    pub fn batch_mask(
        &self,
        stream: &Arc<CudaStream>,
        row_tokens: &CudaView<'_, u32>,
        mask: &mut CudaSlice<u32>,
        type_ids: &mut CudaSlice<u32>,
        (rows, seq): (usize, usize),
    ) -> Result<(), GpuError> {
        let n = rows * seq;
        if row_tokens.len() < rows || mask.len() < n || type_ids.len() < n {
            return Err(invalid("batch_mask"));
        }
        if n == 0 {
            return Ok(());
        }
        let threads = 256u32;
        let blocks = n.div_ceil(threads as usize).min(65_535) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows, seq) = (rows as i32, seq as i32);
        let mut launch = stream.launch_builder(&self.batch_mask);
        launch.arg(row_tokens).arg(mask).arg(type_ids).arg(&rows).arg(&seq);
        // SAFETY: matches the kernel's signature; it writes rows*seq elements of each output,
        // whose sizes were checked above.
        unsafe { launch.launch(cfg) }.map(|_| ()).map_err(GpuError::from)
    }
}
