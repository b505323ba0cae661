//! Process-wide ONNX Runtime initialisation.
//!
//! `ort` is built with `load-dynamic`, so the shared library is found at run time. Left to itself
//! `ort` panics on the first API call when no library can be loaded; the daemon must instead say
//! where it looked and exit cleanly, so every model load goes through [`init_onnxruntime`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The versioned file name the wheel ships; the daemon is built against this release.
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.32.0";
/// Where packages install the library that ships with helmetd.
pub const PACKAGED_LIBRARY: &str = "/usr/lib/helmetd/libonnxruntime.so.1.32.0";
/// Bare soname, resolved by the dynamic loader's search path (`LD_LIBRARY_PATH`, ld.so.cache).
pub const SYSTEM_SONAME: &str = "libonnxruntime.so.1";

/// Why ONNX Runtime could not be initialised.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not load the ONNX Runtime library; tried:{}", format_attempts(.0))]
    NotFound(Vec<LoadAttempt>),
    /// The library loaded, so `ort` has pinned it for the life of the process; trying another
    /// file would silently keep using this one.
    #[error("ONNX Runtime loaded from {path} but creating its environment failed: {source}")]
    Environment {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
}

/// One place [`init_onnxruntime`] looked, and why it was not usable.
#[derive(Debug, Clone)]
pub struct LoadAttempt {
    /// Where the candidate came from ("configured", "ORT_DYLIB_PATH", ...).
    pub origin: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

fn format_attempts(attempts: &[LoadAttempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("\n  {} ({}): {}", a.path.display(), a.origin, a.reason))
        .collect()
}

struct Runtime {
    environment: ort::environment::Environment,
    library: PathBuf,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises first-time initialisation: `ort` allows one environment per process, so two
/// threads racing through `build()` would make one of them fail.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime and creates the process's `ort` environment, once.
///
/// Tries, in order: `configured`; `ORT_DYLIB_PATH`; [`ORT_LIBRARY_FILE`] next to the executable;
/// [`PACKAGED_LIBRARY`]; [`SYSTEM_SONAME`]. Returns the path that loaded. Later calls return the
/// first call's result and ignore `configured`, because `ort` cannot unload a library.
pub fn init_onnxruntime(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt.library.clone());
    }
    // A poisoned lock only means another initialiser panicked; the OnceLock is still consistent.
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt.library.clone());
    }

    let mut attempts = Vec::new();
    for (origin, path) in candidates(configured) {
        let builder = match ort::init_from(&path) {
            Ok(builder) => builder,
            Err(e) => {
                attempts.push(LoadAttempt {
                    origin,
                    path,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if missed_an_explicit_choice(&attempts) {
            tracing::warn!(
                library = %path.display(),
                "ONNX Runtime loaded from a fallback location;{}",
                format_attempts(&attempts)
            );
        } else if !attempts.is_empty() {
            // An installed daemon finds no library next to /usr/bin and loads the packaged one:
            // the normal case, not worth a warning on every start.
            tracing::debug!(
                library = %path.display(),
                "ONNX Runtime found after{}",
                format_attempts(&attempts)
            );
        }
        // Microsoft's builds of ONNX Runtime (the PyPI wheel we ship) carry a telemetry client
        // that uploads over HTTPS when it can; a gateway on a site network sends nothing but
        // what its operator configured.
        let environment = builder
            .with_name("helmetd")
            .with_telemetry(false)
            .build()
            .map_err(|source| RuntimeError::Environment {
                path: path.clone(),
                source,
            })?;
        tracing::info!(library = %path.display(), "ONNX Runtime initialised");
        let rt = RUNTIME.get_or_init(|| Runtime {
            environment,
            library: path,
        });
        return Ok(rt.library.clone());
    }
    Err(RuntimeError::NotFound(attempts))
}

/// The environment sessions are created in, once [`init_onnxruntime`] has succeeded.
pub fn environment() -> Option<&'static ort::environment::Environment> {
    RUNTIME.get().map(|rt| &rt.environment)
}

/// Whether a place the operator named (`inference.onnxruntime`, `ORT_DYLIB_PATH`) failed.
fn missed_an_explicit_choice(attempts: &[LoadAttempt]) -> bool {
    attempts
        .iter()
        .any(|a| matches!(a.origin, "configured" | "ORT_DYLIB_PATH"))
}

fn candidates(configured: Option<&Path>) -> Vec<(&'static str, PathBuf)> {
    let mut list = Vec::with_capacity(5);
    if let Some(path) = configured {
        list.push(("configured", path.to_path_buf()));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        list.push(("ORT_DYLIB_PATH", PathBuf::from(path)));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        list.push(("next to the executable", dir.join(ORT_LIBRARY_FILE)));
    }
    list.push(("packaged", PathBuf::from(PACKAGED_LIBRARY)));
    list.push(("system library path", PathBuf::from(SYSTEM_SONAME)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_comes_first_and_soname_last() {
        let list = candidates(Some(Path::new("/opt/ort/lib.so")));
        assert_eq!(list[0], ("configured", PathBuf::from("/opt/ort/lib.so")));
        assert_eq!(
            list.last(),
            Some(&("system library path", PathBuf::from(SYSTEM_SONAME)))
        );
        assert!(list.iter().any(|(_, p)| p == Path::new(PACKAGED_LIBRARY)));
    }

    #[test]
    fn only_a_named_place_that_failed_is_worth_a_warning() {
        let miss = |origin| LoadAttempt {
            origin,
            path: "/x.so".into(),
            reason: "dlopen failed".into(),
        };
        assert!(!missed_an_explicit_choice(&[]));
        assert!(!missed_an_explicit_choice(&[miss(
            "next to the executable"
        )]));
        assert!(missed_an_explicit_choice(&[miss("configured")]));
        assert!(missed_an_explicit_choice(&[
            miss("ORT_DYLIB_PATH"),
            miss("next to the executable")
        ]));
    }

    #[test]
    fn not_found_error_lists_every_attempt() {
        let err = RuntimeError::NotFound(vec![
            LoadAttempt {
                origin: "configured",
                path: "/a.so".into(),
                reason: "dlopen failed".into(),
            },
            LoadAttempt {
                origin: "packaged",
                path: PACKAGED_LIBRARY.into(),
                reason: "dlopen failed".into(),
            },
        ]);
        let text = err.to_string();
        assert!(text.contains("/a.so (configured): dlopen failed"), "{text}");
        assert!(text.contains(PACKAGED_LIBRARY), "{text}");
    }

    #[test]
    fn initialising_twice_returns_the_same_library() {
        let first = init_onnxruntime(None).expect("ORT_DYLIB_PATH is set for cargo test");
        let second = init_onnxruntime(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .expect("second call reuses the first");
        assert_eq!(first, second);
        assert!(environment().is_some());
    }
}
