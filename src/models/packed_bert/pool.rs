//! Pooling of packed token states into one row per sequence.

/// Pools packed states (`[T, H]`, sequence `r` = rows `offsets[r]..offsets[r+1]`) into
/// `out[rows, H]`: mean of the sequence's rows or its first (`[CLS]`) row, then optional L2
/// normalisation (eps 1e-12). A sequence without tokens gives zeros.
pub fn pool_packed(
    states: &[f32],
    offsets: &[usize],
    hidden: usize,
    mean: bool,
    normalize: bool,
    out: &mut [f32],
) {
    for (r, dst) in out.chunks_exact_mut(hidden).take(offsets.len() - 1).enumerate() {
        let (o, e) = (offsets[r], offsets[r + 1]);
        dst.fill(0.0);
        if e == o {
            continue;
        }
        if mean {
            for src in states[o * hidden..e * hidden].chunks_exact(hidden) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += *s;
                }
            }
            let inv = 1.0 / (e - o) as f32;
            dst.iter_mut().for_each(|d| *d *= inv);
        } else {
            dst.copy_from_slice(&states[o * hidden..(o + 1) * hidden]);
        }
        if normalize {
            let norm = dst.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            dst.iter_mut().for_each(|d| *d /= norm);
        }
    }
}
