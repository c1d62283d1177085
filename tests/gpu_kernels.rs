//! Sluice's CUDA kernels against their CPU references (`sluice::execute::reference`), on
//! random batches with padding, empty rows and full rows. Needs a build with `--features
//! cuda` and a GPU; elsewhere every test prints why it skips and passes.

#[cfg(not(feature = "cuda"))]
#[test]
fn needs_the_cuda_feature() {
    eprintln!("skipping: built without the `cuda` feature (run `cargo test --features cuda --test gpu_kernels`)");
}

#[cfg(feature = "cuda")]
#[path = "common/testkit.rs"]
mod testkit;

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::Arc;

    use crate::testkit::{SeededRng, SeededRngExt};
    use cudarc::driver::{CudaContext, CudaStream};
    use sluice::execute::cuda::{device_count, Kernels};
    use sluice::execute::reference::{mask_from_lengths, pool_rows};
    use sluice::models::spec::Pooling;

    /// The first GPU's context and a stream on it, or `None` (with the reason printed) when this
    /// machine has no usable CUDA driver or device.
    fn gpu() -> Option<(Arc<CudaContext>, Arc<CudaStream>)> {
        match device_count() {
            Ok(0) => {
                eprintln!("skipping: no CUDA device (the driver reports none)");
                None
            }
            Err(e) => {
                eprintln!("skipping: no CUDA device ({e})");
                None
            }
            Ok(_) => {
                let ctx = CudaContext::new(0).expect("a device the driver lists opens");
                let stream = ctx.new_stream().expect("stream");
                Some((ctx, stream))
            }
        }
    }

    /// Random row lengths in `0..=seq`, forcing an empty row and a full row in every batch.
    fn lengths(rng: &mut SeededRng, rows: usize, seq: usize) -> Vec<u32> {
        let mut lens: Vec<u32> = (0..rows).map(|_| rng.below(seq as u64 + 1) as u32).collect();
        lens[0] = 0;
        if rows > 1 {
            lens[rows - 1] = seq as u32;
        }
        lens
    }

    /// Runs without a GPU too: NVRTC needs no device or driver.
    #[test]
    fn kernels_compile_with_nvrtc() {
        for arch in [Some("compute_75"), Some("compute_90")] {
            let ptx = sluice::execute::cuda::kernels::compile_ptx(arch)
                .unwrap_or_else(|e| panic!("{arch:?}: {e}"));
            for (func, p) in &ptx {
                let text = p.to_src();
                assert!(
                    text.contains(&format!(".entry {func}")),
                    "{func} missing from the PTX for {arch:?}"
                );
            }
            println!("NVRTC compiled {} kernels for {arch:?}", ptx.len());
        }
    }

    #[test]
    fn pool_normalize_matches_the_cpu_reference() {
        let Some((ctx, stream)) = gpu() else { return };
        let kernels = Kernels::compile(&ctx).expect("NVRTC compiles the kernels");
        let mut rng = SeededRng::new(7);
        for &(rows, seq, hidden) in
            &[(1, 2, 8), (3, 7, 384), (17, 33, 1000), (64, 128, 384), (5, 256, 768)]
        {
            let states = rng.normal_vec(rows * seq * hidden, 1.0);
            let lens = lengths(&mut rng, rows, seq);
            let d_states = stream.clone_htod(&states).unwrap();
            let d_lens = stream.clone_htod(&lens).unwrap();
            for pooling in [Pooling::Mean, Pooling::Cls] {
                for normalize in [false, true] {
                    let mut d_out = stream.alloc_zeros::<f32>(rows * hidden).unwrap();
                    kernels
                        .pool_normalize(
                            &stream,
                            &d_states.slice(..),
                            &d_lens.slice(..),
                            &mut d_out,
                            (rows, seq, hidden),
                            pooling == Pooling::Mean,
                            normalize,
                        )
                        .unwrap();
                    let got = stream.clone_dtoh(&d_out).unwrap();
                    let mut want = vec![0f32; rows * hidden];
                    pool_rows(&states, &lens, seq, hidden, pooling, normalize, &mut want);
                    let worst =
                        got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    println!("pool {rows}x{seq}x{hidden} {pooling:?} normalize={normalize}: max |gpu - cpu| = {worst:e}");
                    assert!(
                        worst <= 1e-5,
                        "{rows}x{seq}x{hidden} {pooling:?} normalize={normalize}: max diff {worst}"
                    );
                }
            }
        }
    }

    #[test]
    fn batch_mask_matches_the_cpu_reference() {
        let Some((ctx, stream)) = gpu() else { return };
        let kernels = Kernels::compile(&ctx).expect("NVRTC compiles the kernels");
        let mut rng = SeededRng::new(11);
        for &(rows, seq) in &[(1, 2), (4, 9), (64, 128), (300, 512)] {
            let lens = lengths(&mut rng, rows, seq);
            let d_lens = stream.clone_htod(&lens).unwrap();
            let mut d_mask = stream.alloc_zeros::<u32>(rows * seq).unwrap();
            let mut d_types = stream.clone_htod(&vec![7u32; rows * seq]).unwrap();
            kernels
                .batch_mask(&stream, &d_lens.slice(..), &mut d_mask, &mut d_types, (rows, seq))
                .unwrap();
            let (mut mask, mut types) = (vec![9u32; rows * seq], vec![9u32; rows * seq]);
            mask_from_lengths(&lens, seq, &mut mask, &mut types);
            assert_eq!(stream.clone_dtoh(&d_mask).unwrap(), mask, "{rows}x{seq}");
            assert_eq!(stream.clone_dtoh(&d_types).unwrap(), types, "{rows}x{seq}");
        }
    }

    #[test]
    fn kernels_reject_buffers_too_small_for_the_shape() {
        let Some((ctx, stream)) = gpu() else { return };
        let kernels = Kernels::compile(&ctx).expect("NVRTC compiles the kernels");
        let states = stream.alloc_zeros::<f32>(10).unwrap();
        let lens = stream.alloc_zeros::<u32>(2).unwrap();
        let mut out = stream.alloc_zeros::<f32>(8).unwrap();
        assert!(kernels
            .pool_normalize(
                &stream,
                &states.slice(..),
                &lens.slice(..),
                &mut out,
                (2, 2, 4),
                true,
                true
            )
            .is_err());
    }
}
