// Attention mask and token type ids of a text batch, built on the device from the staged
// per-row token counts.
//
// CPU reference: `mask_from_lengths` in src/execute/reference.rs (tests/gpu_kernels.rs
// compares the two). Candle's BERT takes `[rows, seq]` u32 ids, type ids and mask: the ids
// are copied from the pinned staging slot as they are; this kernel replaces the host-to-device
// copy of the mask (rows * seq * 4 bytes) and candle's `zeros_like` for the type ids with one
// launch that reads `rows` counts.
//
// row_tokens: [rows]; mask, type_ids: [rows, seq] u32 (mask[r, t] = t < row_tokens[r]).
extern "C" __global__ void batch_mask_u32(
    const unsigned int* __restrict__ row_tokens,
    unsigned int* __restrict__ mask,
    unsigned int* __restrict__ type_ids,
    int rows,
    int seq)
{
    const size_t total = (size_t)rows * (size_t)seq;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const size_t r = i / (size_t)seq;
        const unsigned int t = (unsigned int)(i - r * (size_t)seq);
        mask[i] = t < row_tokens[r] ? 1u : 0u;
        type_ids[i] = 0u;
    }
}
