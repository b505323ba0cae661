//! The CPU features that decide which INT8 kernels ONNX Runtime runs.
//!
//! ONNX Runtime's MLAS picks its quantized-GEMM and convolution kernels from CPUID at start-up:
//! on x86-64 with AVX-512 VNNI or AVX-VNNI it multiplies u8·s8 into 32-bit sums, while AVX2 and
//! AVX-512BW without VNNI add pairs of products into a *saturating* 16-bit sum first. A model whose
//! weights use the full s8 range therefore scores differently on the two families (issue #22);
//! the shipped little model keeps its weights in [-64, 64] so that it does not. Figures taken on
//! two machines are comparable only when they say which family ran, so `check-config`, `/status`
//! and every benchmark's RESULT line carry this.

use serde::{Deserialize, Serialize};

/// What this CPU offers ONNX Runtime's INT8 kernels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFeatures {
    /// `std::env::consts::ARCH`.
    pub arch: String,
    /// The features that change MLAS's INT8 kernel choice, in a fixed order.
    pub features: Vec<String>,
    /// The kernel family MLAS selects for u8·s8 products: `avx512-vnni`, `avx-vnni`,
    /// `avx512bw` and `avx2` (both saturating 16-bit pair sums), `sse`, `neon-dot`, `neon`.
    pub int8_kernels: String,
}

impl CpuFeatures {
    /// The features of the CPU this process runs on.
    pub fn detect() -> Self {
        let features = detected_features();
        let int8_kernels = int8_kernel_family(&features).to_string();
        Self {
            arch: std::env::consts::ARCH.to_string(),
            features: features.iter().map(|f| f.to_string()).collect(),
            int8_kernels,
        }
    }

    /// `x86_64 avx2,avx512bw,avx512_vnni (INT8 kernels: avx512-vnni)`.
    pub fn summary(&self) -> String {
        let features = if self.features.is_empty() {
            "-".to_string()
        } else {
            self.features.join(",")
        };
        format!(
            "{} {features} (INT8 kernels: {})",
            self.arch, self.int8_kernels
        )
    }

    /// The `key=value` pair a benchmark's RESULT line ends with.
    pub fn result_field(&self) -> String {
        format!("int8_kernels={}", self.int8_kernels)
    }
}

#[cfg(target_arch = "x86_64")]
fn detected_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    if std::arch::is_x86_feature_detected!("avx2") {
        found.push("avx2");
    }
    if std::arch::is_x86_feature_detected!("avx512bw") {
        found.push("avx512bw");
    }
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        found.push("avx512_vnni");
    }
    if std::arch::is_x86_feature_detected!("avxvnni") {
        found.push("avx_vnni");
    }
    found
}

#[cfg(target_arch = "aarch64")]
fn detected_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        found.push("dotprod");
    }
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        found.push("i8mm");
    }
    found
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detected_features() -> Vec<&'static str> {
    Vec::new()
}

/// MLAS's preference order: VNNI when present, else the widest saturating kernel.
fn int8_kernel_family(features: &[&str]) -> &'static str {
    let has = |f: &str| features.contains(&f);
    match std::env::consts::ARCH {
        "x86_64" if has("avx512_vnni") && has("avx512bw") => "avx512-vnni",
        "x86_64" if has("avx_vnni") => "avx-vnni",
        "x86_64" if has("avx512bw") => "avx512bw",
        "x86_64" if has("avx2") => "avx2",
        "x86_64" => "sse",
        "aarch64" if has("dotprod") => "neon-dot",
        "aarch64" => "neon",
        _ => "generic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn kernel_family_follows_mlas_preference() {
        assert_eq!(
            int8_kernel_family(&["avx2", "avx512bw", "avx512_vnni"]),
            "avx512-vnni"
        );
        assert_eq!(int8_kernel_family(&["avx2", "avx_vnni"]), "avx-vnni");
        assert_eq!(int8_kernel_family(&["avx2", "avx512bw"]), "avx512bw");
        assert_eq!(int8_kernel_family(&["avx2"]), "avx2");
        assert_eq!(int8_kernel_family(&[]), "sse");
    }

    #[test]
    fn detect_names_a_family_and_reads_back() {
        let cpu = CpuFeatures::detect();
        assert_eq!(cpu.arch, std::env::consts::ARCH);
        assert!(!cpu.int8_kernels.is_empty());
        assert!(cpu.summary().contains(&cpu.int8_kernels));
        let json = serde_json::to_string(&cpu).unwrap();
        assert_eq!(serde_json::from_str::<CpuFeatures>(&json).unwrap(), cpu);
    }
}
