// Fused masked mean pooling (or [CLS] pooling) + L2 normalisation of BERT token states.
//
// CPU reference: `pool_rows` in src/models/bert.rs (tests/gpu_kernels.rs compares the two).
// Replaces candle's op sequence mask -> to_dtype -> broadcast_mul -> sum(1) -> div(count) ->
// sqr -> sum_keepdim -> sqrt -> maximum(eps) -> broadcast_div: one launch, one pass over the
// real tokens only, instead of ~9 launches over the padded [rows, seq, hidden] tensor.
//
// states:     [rows, seq, hidden] f32, row-major, contiguous
// row_tokens: [rows] real tokens per row (the first row_tokens[r] positions are real)
// out:        [rows, hidden] f32
// One block per row; blockDim.x is a multiple of 32 (<= 1024); threads stride over hidden.
// A row with 0 tokens pools its first position (as the reference does); counts above `seq`
// are clamped to `seq`.
extern "C" __global__ void pool_normalize_f32(
    const float* __restrict__ states,
    const unsigned int* __restrict__ row_tokens,
    float* __restrict__ out,
    int seq,
    int hidden,
    int mean,
    int normalize)
{
    const int r = blockIdx.x;
    const float* base = states + (size_t)r * (size_t)seq * (size_t)hidden;
    float* dst = out + (size_t)r * (size_t)hidden;
    int n = (int)row_tokens[r];
    if (n < 1) n = 1;
    if (n > seq) n = seq;
    const int count = mean ? n : 1;
    const float inv = 1.0f / (float)count;

    float sq = 0.0f;
    for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < count; ++t) {
            acc += base[(size_t)t * hidden + h];
        }
        acc *= inv;
        dst[h] = acc;
        sq += acc * acc;
    }
    if (!normalize) {
        return;  // uniform across the block: no thread is left at the barriers below
    }

    // Block-wide sum of squares: warp shuffles, then one warp over the per-warp partials.
    __shared__ float partial[32];
    for (int off = 16; off > 0; off >>= 1) {
        sq += __shfl_down_sync(0xffffffffu, sq, off);
    }
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) {
        partial[warp] = sq;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = (blockDim.x + 31) >> 5;
        float v = lane < warps ? partial[lane] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) {
            v += __shfl_down_sync(0xffffffffu, v, off);
        }
        if (lane == 0) {
            partial[0] = v;
        }
    }
    __syncthreads();
    const float norm = fmaxf(sqrtf(partial[0]), 1e-12f);
    for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
        dst[h] = dst[h] / norm;
    }
}
