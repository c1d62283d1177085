//! The executor of a GPU lane.
//!
//! Per batch of an embedding model, everything is enqueued on the lane's stream without
//! waiting: host-to-device copies of the token ids and row counts straight from the slot's
//! page-locked staging, the mask kernel, candle's BERT encoder, the fused pool + normalise
//! kernel, the device-to-host copy of the `[rows, hidden]` result into the slot's page-locked
//! output, and an event. `submit` returns at once and the lane stages the next batch into the
//! other slot; `collect` waits on the oldest slot's event (the lane thread sleeps: blocking-
//! sync event), never on the whole device.
//!
//! Classifier and tabular models run candle's graph on the lane's stream inside `submit` (their
//! outputs are read with a stream-synchronous copy); only embeddings take the asynchronous path.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream};

use super::kernels::Kernels;
use super::memory::{device_memory, PinnedHostBlock};
use super::GpuError;
use crate::core::EngineStats;
use crate::core::HostStaging;
use crate::core::{BatchCaps, BatchOutput, OutputKind};
use crate::execute::Executor;
use crate::models::bert::BertRunner;
use crate::models::spec::Pooling;
use crate::models::{LoadedModel, ModelError};

/// How often a lane refreshes its device-memory gauge.
const MEMORY_REFRESH: Duration = Duration::from_millis(250);
/// Output width the pinned output blocks are first sized for (grows when a model is wider).
const INITIAL_OUTPUT_WIDTH: usize = 1024;

/// Where a slot's submitted batch stands.
enum Pending {
    /// Nothing submitted.
    Idle,
    /// `rows × width` embeddings arrive in the slot's pinned output when its event fires.
    Device { rows: usize, width: usize },
    /// Computed synchronously inside `submit`.
    Ready(Result<BatchOutput, ModelError>),
}

/// One of the two staging slots: page-locked inputs, page-locked output, completion event.
struct Slot {
    staging: HostStaging,
    out: PinnedHostBlock<f32>,
    done: CudaEvent,
    pending: Pending,
}

/// A model version loaded on this lane's device, for as long as the cache holds the source.
struct Replica {
    source: Weak<LoadedModel>,
    model: LoadedModel,
}

/// Where the lane reports its device memory.
struct MemoryReport {
    stats: Arc<EngineStats>,
    lane: usize,
    last: Option<Instant>,
}

/// The executor of one GPU lane: one stream on one device, two page-locked slots.
pub struct CudaExecutor {
    ordinal: usize,
    stream_index: usize,
    device: Device,
    cuda: CudaDevice,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    slots: [Slot; 2],
    /// The slot the lane stages into next.
    next: usize,
    /// Submitted slots, oldest first.
    submitted: VecDeque<usize>,
    replicas: Vec<Replica>,
    warmup_rows: usize,
    memory: MemoryReport,
}

fn pinned<
    T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Send + Sync + 'static,
>(
    ctx: &Arc<CudaContext>,
    len: usize,
) -> Result<Box<dyn crate::core::PinnedBlock<T>>, GpuError> {
    Ok(Box::new(PinnedHostBlock::<T>::new(ctx, len)?))
}

impl CudaExecutor {
    /// Opens device `ordinal` with a new stream, compiles the kernels and allocates two
    /// page-locked slots sized for `rows` rows and `tokens` padded tokens. `lane` is the
    /// lane's index in `stats` (for the memory gauge). Call it on the lane's own thread.
    pub fn new(
        ordinal: usize,
        stream_index: usize,
        caps: BatchCaps,
        stats: Arc<EngineStats>,
        lane: usize,
    ) -> Result<Self, GpuError> {
        let (rows, tokens) = (caps.max_rows, caps.max_tokens);
        let cuda = CudaDevice::new_with_stream(ordinal)
            // First line only: candle appends a backtrace when RUST_BACKTRACE is set.
            .map_err(|e| {
                GpuError::Other(format!(
                    "cannot open CUDA device {ordinal} (is a driver and that device present?): {}",
                    first_line(&e)
                ))
            })?;
        let stream = cuda.cuda_stream();
        let ctx = stream.context().clone();
        let kernels = Kernels::compile(&ctx)?;
        let slot = || -> Result<Slot, GpuError> {
            let staging = HostStaging::pinned(
                pinned(&ctx, tokens)?,
                pinned(&ctx, tokens)?,
                pinned(&ctx, rows)?,
                pinned(&ctx, rows * 64)?,
            );
            Ok(Slot {
                staging,
                out: PinnedHostBlock::new(&ctx, rows * INITIAL_OUTPUT_WIDTH)?,
                // Blocking sync: a waiting lane thread sleeps instead of spinning a core.
                done: ctx.new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))?,
                pending: Pending::Idle,
            })
        };
        let slots = [slot()?, slot()?];
        tracing::info!(
            device = ordinal,
            stream = stream_index,
            compile_ms = kernels.compile_time.as_millis() as u64,
            arch = kernels.arch.unwrap_or("default"),
            "CUDA lane ready"
        );
        let mut exec = CudaExecutor {
            ordinal,
            stream_index,
            device: Device::Cuda(cuda.clone()),
            cuda,
            stream,
            ctx,
            kernels,
            slots,
            next: 0,
            submitted: VecDeque::with_capacity(2),
            replicas: Vec::new(),
            warmup_rows: rows.clamp(1, 8),
            memory: MemoryReport { stats, lane, last: None },
        };
        exec.refresh_memory();
        Ok(exec)
    }

    /// The compiled kernels (benchmarks time them).
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The candle device of this lane (its own stream).
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn refresh_memory(&mut self) {
        let m = &mut self.memory;
        if m.last.is_some_and(|t| t.elapsed() < MEMORY_REFRESH) {
            return;
        }
        m.last = Some(Instant::now());
        match device_memory(&self.ctx) {
            Ok((free, total)) => {
                if let Some(g) = m.stats.lane_memory.get(m.lane) {
                    g.set(self.ordinal, free, total);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cuMemGetInfo failed"),
        }
    }

    /// This lane's replica of `model`, loading (and warming up) one on first use. Replicas
    /// whose source the cache has let go of are dropped here, freeing their device memory.
    fn replica(&mut self, model: &Arc<LoadedModel>) -> Result<usize, ModelError> {
        self.replicas.retain(|r| r.source.strong_count() > 0);
        if let Some(i) =
            self.replicas.iter().position(|r| std::ptr::eq(r.source.as_ptr(), Arc::as_ptr(model)))
        {
            return Ok(i);
        }
        let started = Instant::now();
        let mut replica = LoadedModel::load(&model.name, &model.version, &model.dir, &self.device)?;
        replica.warm_up(self.warmup_rows)?;
        tracing::info!(model = %model.name, version = %model.version, device = self.ordinal, stream = self.stream_index, ms = started.elapsed().as_millis() as u64, "model replica loaded on GPU lane");
        self.replicas.push(Replica { source: Arc::downgrade(model), model: replica });
        self.refresh_memory();
        Ok(self.replicas.len() - 1)
    }
}

fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Wraps a device buffer as a `[rows, seq]` tensor of the lane's device (no copy).
fn tensor_of(slice: CudaSlice<u32>, cuda: &CudaDevice, shape: (usize, usize)) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, cuda.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// Enqueues one embedding batch on `stream` (see the module docs). Returns its output shape.
fn enqueue_embedding(
    stream: &Arc<CudaStream>,
    cuda: &CudaDevice,
    kernels: &Kernels,
    slot: &mut Slot,
    bert: &BertRunner,
    pooling: Pooling,
    normalize: bool,
) -> Result<(usize, usize), GpuError> {
    let ctx = stream.context().clone();
    let st = &slot.staging;
    let (rows, seq, hidden) = (st.rows, st.seq_len, bert.hidden());
    let n = rows * seq;
    if st.ids.len() < n || st.row_tokens.len() < rows {
        return Err(GpuError::Other(format!(
            "staging holds {} ids and {} rows for a {rows}x{seq} batch",
            st.ids.len(),
            st.row_tokens.len()
        )));
    }
    // SAFETY: uninitialised device memory, fully overwritten by the copy right below, which
    // is ordered before any read because both run on this stream.
    let mut ids = unsafe { stream.alloc::<u32>(n) }?;
    // SAFETY: as for `ids`: overwritten by the copy below, on this stream, before any read.
    let mut lens = unsafe { stream.alloc::<u32>(rows) }?;
    // Asynchronous: the sources are page-locked, so these return before the copies finish;
    // the slot is not staged again before its event has fired.
    stream.memcpy_htod(&st.ids[..n], &mut ids)?;
    stream.memcpy_htod(&st.row_tokens[..rows], &mut lens)?;
    // SAFETY: `batch_mask` writes all `rows * seq` elements of both before BERT reads them
    // (same stream).
    let mut mask = unsafe { stream.alloc::<u32>(n) }?;
    // SAFETY: as for `mask`.
    let mut types = unsafe { stream.alloc::<u32>(n) }?;
    kernels.batch_mask(stream, &lens.slice(..), &mut mask, &mut types, (rows, seq))?;
    let states = bert
        .encode_states(
            &tensor_of(ids, cuda, (rows, seq)),
            &tensor_of(types, cuda, (rows, seq)),
            &tensor_of(mask, cuda, (rows, seq)),
        )
        .map_err(|e| GpuError::Other(e.to_string()))?
        .contiguous()?;
    // SAFETY: the pool kernel writes every one of the `rows * hidden` outputs before the
    // copy back to the host reads them (same stream).
    let mut out = unsafe { stream.alloc::<f32>(rows * hidden) }?;
    {
        let (storage, layout) = states.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else {
            return Err(GpuError::Other("encoder output is not on the GPU".into()));
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(GpuError::Other("encoder output is not contiguous".into()));
        };
        let states_view = cs.as_cuda_slice::<f32>()?.slice(start..end);
        kernels.pool_normalize(
            stream,
            &states_view,
            &lens.slice(..),
            &mut out,
            (rows, seq, hidden),
            matches!(pooling, Pooling::Mean),
            normalize,
        )?;
    }
    if slot.out.len() < rows * hidden {
        slot.out = PinnedHostBlock::new(&ctx, rows * hidden)?;
    }
    let dst = &mut crate::core::PinnedBlock::as_mut_slice(&mut slot.out)[..rows * hidden];
    stream.memcpy_dtoh(&out, dst)?;
    slot.done.record(stream)?;
    Ok((rows, hidden))
}

impl Executor for CudaExecutor {
    fn describe(&self) -> String {
        format!("cuda:{}/stream{}", self.ordinal, self.stream_index)
    }

    fn depth(&self) -> usize {
        2
    }

    fn staging(&mut self) -> &mut HostStaging {
        let slot = &mut self.slots[self.next];
        if matches!(slot.pending, Pending::Device { .. }) {
            // The lane collects a slot before staging into it again; should that ever not
            // hold, wait for the copies out of it rather than race them.
            if let Err(e) = slot.done.synchronize() {
                tracing::warn!(error = %e, "waiting on a busy staging slot failed");
            }
        }
        &mut slot.staging
    }

    fn submit(&mut self, model: &Arc<LoadedModel>) -> Result<(), ModelError> {
        let idx = self.next;
        if self.slots[idx].staging.rows == 0 {
            return Err(ModelError::Inference("empty batch".into()));
        }
        let r = self.replica(model)?;
        let replica = &self.replicas[r].model;
        let slot = &mut self.slots[idx];
        let head = replica.bert().and_then(|b| b.embedding_head().map(|h| (b, h)));
        slot.pending = match head {
            Some((bert, (pooling, normalize))) if slot.staging.seq_len > 0 => {
                match enqueue_embedding(
                    &self.stream,
                    &self.cuda,
                    &self.kernels,
                    slot,
                    bert,
                    pooling,
                    normalize,
                ) {
                    Ok((rows, width)) => Pending::Device { rows, width },
                    Err(e) => {
                        // Some copies out of this slot may already be queued: let them finish
                        // (this stream only) before the lane re-stages the slot for a retry.
                        if let Err(sync) = self.stream.synchronize() {
                            tracing::warn!(error = %sync, "stream synchronize after a failed submit");
                        }
                        return Err(e.into());
                    }
                }
            }
            _ => Pending::Ready(replica.forward(&slot.staging)),
        };
        self.submitted.push_back(idx);
        self.next = (idx + 1) % self.slots.len();
        Ok(())
    }

    fn collect(&mut self) -> Result<BatchOutput, ModelError> {
        let Some(idx) = self.submitted.pop_front() else {
            return Err(ModelError::Inference("collect without a submitted batch".into()));
        };
        let slot = &mut self.slots[idx];
        let result = match std::mem::replace(&mut slot.pending, Pending::Idle) {
            Pending::Idle => Err(ModelError::Inference("collect of an idle slot".into())),
            Pending::Ready(r) => r,
            Pending::Device { rows, width } => match slot.done.synchronize() {
                Ok(()) => {
                    let data =
                        crate::core::PinnedBlock::as_slice(&slot.out)[..rows * width].to_vec();
                    Ok(BatchOutput { data, width, kind: OutputKind::Embedding })
                }
                Err(e) => Err(GpuError::from(e).into()),
            },
        };
        self.refresh_memory();
        result
    }
}

impl Drop for CudaExecutor {
    fn drop(&mut self) {
        // Pinned blocks and device buffers must outlive the work queued on them.
        if let Err(e) = self.stream.synchronize() {
            tracing::warn!(error = %e, "stream synchronize at lane shutdown");
        }
    }
}
