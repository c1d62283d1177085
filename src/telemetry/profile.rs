//! The sampling profiler behind `SLUICE_PROFILE_SVG` (cargo feature `profiling`): samples every
//! thread of the process at [`FREQUENCY_HZ`] and writes a flame graph when the guard drops.
//! Without the feature, setting the variable only logs that this build cannot profile.

/// Environment variable naming the flame graph file.
pub const ENV: &str = "SLUICE_PROFILE_SVG";
/// Samples per second per thread (an odd rate, so as not to beat against periodic work).
pub const FREQUENCY_HZ: i32 = 997;

/// A running profile; writes its flame graph when dropped.
pub struct Profile {
    #[cfg(feature = "profiling")]
    inner: Option<(pprof::ProfilerGuard<'static>, std::path::PathBuf)>,
}

/// Starts profiling if `SLUICE_PROFILE_SVG` is set.
pub fn from_env() -> Profile {
    let path = std::env::var_os(ENV).filter(|p| !p.is_empty());
    #[cfg(feature = "profiling")]
    {
        let inner = path.and_then(|p| {
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(FREQUENCY_HZ)
                // Only the unwinder itself (a signal inside it would deadlock the backtrace) and
                // the vDSO (wrong unwind tables) are skipped: samples in libc (malloc, memcpy,
                // futex waits) are where per-record costs hide.
                .blocklist(&["libgcc", "vdso"])
                .build();
            match guard {
                Ok(g) => {
                    tracing::warn!(file = ?p, "profiling this run ({FREQUENCY_HZ} Hz); the flame graph is written at exit");
                    Some((g, std::path::PathBuf::from(p)))
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not start the profiler");
                    None
                }
            }
        });
        Profile { inner }
    }
    #[cfg(not(feature = "profiling"))]
    {
        if let Some(p) = path {
            tracing::error!(file = ?p, "{ENV} is set but this build has no profiler (cargo feature `profiling`)");
        }
        Profile {}
    }
}

#[cfg(feature = "profiling")]
impl Drop for Profile {
    fn drop(&mut self) {
        let Some((guard, path)) = self.inner.take() else { return };
        let written = guard.report().build().map_err(|e| e.to_string()).and_then(|report| {
            let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
            report.flamegraph(file).map_err(|e| e.to_string())
        });
        match written {
            Ok(()) => eprintln!("profile: flame graph written to {}", path.display()),
            Err(e) => eprintln!("profile: could not write {}: {e}", path.display()),
        }
    }
}
