//! CPU reference implementations of Sluice's own CUDA kernels (`kernels/*.cu`).
//!
//! Every kernel has one here; `tests/gpu_kernels.rs` runs both on random batches and compares
//! them, and the unit tests below pin the references down on every build (CPU builds too).

pub use crate::models::bert::pool_rows;

/// `[rows, seq]` attention mask (1 for the first `row_tokens[r]` positions of row `r`, 0 for
/// padding) and all-zero token type ids. Reference of `kernels/batch_mask.cu`.
pub fn mask_from_lengths(row_tokens: &[u32], seq: usize, mask: &mut [u32], type_ids: &mut [u32]) {
    for (r, &n) in row_tokens.iter().enumerate() {
        let row = &mut mask[r * seq..(r + 1) * seq];
        for (t, m) in row.iter_mut().enumerate() {
            *m = u32::from(t < n as usize);
        }
    }
    type_ids[..row_tokens.len() * seq].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HostStaging;
    use crate::models::spec::Pooling;

    #[test]
    fn mask_from_lengths_matches_the_staged_mask() {
        let lens = [3u32, 1, 5, 0];
        let seq = 5;
        let mut st = HostStaging::default();
        st.begin_text(lens.len(), seq, 0);
        for (r, &n) in lens.iter().enumerate() {
            st.set_row_len(r, n as usize);
        }
        let mut mask = vec![9u32; lens.len() * seq];
        let mut types = vec![9u32; lens.len() * seq];
        mask_from_lengths(&lens, seq, &mut mask, &mut types);
        assert_eq!(mask, &*st.mask);
        assert!(types.iter().all(|&t| t == 0));
    }

    #[test]
    fn pool_reference_handles_empty_and_full_rows() {
        // 2 rows, seq 2, hidden 2: row 0 has no tokens (pools position 0), row 1 is full.
        let states = [3.0, 4.0, 100.0, 100.0, 1.0, 1.0, 3.0, 3.0];
        let mut out = [0f32; 4];
        pool_rows(&states, &[0, 2], 2, 2, Pooling::Mean, true, &mut out);
        assert_eq!(out[..2], [0.6, 0.8]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((out[2] - s).abs() < 1e-6 && (out[3] - s).abs() < 1e-6, "{out:?}");
        // An all-zero row stays zero instead of dividing by zero.
        pool_rows(&[0.0; 4], &[2], 2, 2, Pooling::Mean, true, &mut out[..2]);
        assert_eq!(out[..2], [0.0, 0.0]);
    }
}
