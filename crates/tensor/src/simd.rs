//! Which vector instructions the hand-written kernels are compiled for, chosen at run time in
//! one place.
//!
//! Every hand-written host kernel (the Winograd transforms, the direct grouped convolution, the
//! small products, batch norm's per-channel kernels, the data crate's resize) is written once as
//! plain Rust, an `#[inline(always)]` function with a `const FMA: bool` parameter, and
//! [`multiversion!`](crate::multiversion)
//! makes its entry point: one copy compiled for each level — AVX-512 (F/BW/CD/DQ/VL), AVX2 +
//! FMA, portable — so the compiler vectorises each for its instructions, and a call picks the
//! copy of [`simd_level`]. (A closure passed to a dispatching function would be one function
//! shared by the three contexts, compiled once without their features: the ResNeXt convolution
//! ran ten times slower that way.)
//!
//! What wins is measured, per kernel: on an AVX-512 Xeon (2 cores) the AVX-512 copies of the
//! Winograd transforms, the direct grouped convolution and the small products — code written
//! around 8-lane blocks — made `infer-resnet18-b1`, `infer-resnet50-b1`, `infer-resnext50-b1`
//! and `kernels-small-step` 6-19% slower than their AVX2 copies, so those kernels stop at AVX2
//! (`up to Avx2`); the resize's integer loop takes AVX-512, and so do batch norm's kernels
//! (measured only against the portable code they replaced, whose f64 sums ran two lanes wide).
//! Kernels laid out for 16 lanes replace some of them on AVX-512: the packed products of
//! prepared convs (`kernels::packed`), and the direct grouped convolution's flattened-plane
//! kernel (`kernels::direct`, ResNeXt's grouped 3x3 convs 1.7-2.9x faster than its AVX2 copy).
//!
//! The level can be lowered, never raised: by `RESNET_SIMD=portable|avx2|avx512` in the
//! environment (read once), or by [`set_simd_level`] (tests run every kernel at every level the
//! machine has, against the f64 oracle). The large products go through the `gemm` crate, which
//! picks its own kernels.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A set of vector instructions, from the narrowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Whatever the build's baseline target has (SSE2 on x86-64), no FMA.
    Portable,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F/BW/CD/DQ/VL with AVX2 and FMA (x86-64-v4).
    Avx512,
}

impl SimdLevel {
    /// Whether fused multiply-adds are single instructions at this level (below it,
    /// `f32::mul_add` is a slow library call, so kernels multiply and add instead).
    pub fn has_fma(self) -> bool {
        self >= SimdLevel::Avx2
    }

    fn parse(name: &str) -> Option<SimdLevel> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "none" => Some(SimdLevel::Portable),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx-512" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        })
    }
}

/// The widest level this CPU runs.
pub fn detected_simd_level() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let v3 = has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2") && has!("lzcnt") && has!("movbe");
            if v3 && has!("avx512f") && has!("avx512bw") && has!("avx512cd") && has!("avx512dq") && has!("avx512vl") {
                return SimdLevel::Avx512;
            }
            if v3 {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Portable
    })
}

/// `RESNET_SIMD`'s cap, read once (an unknown value is reported once and ignored).
fn environment_cap() -> Option<SimdLevel> {
    static CAP: OnceLock<Option<SimdLevel>> = OnceLock::new();
    *CAP.get_or_init(|| {
        let value = std::env::var("RESNET_SIMD").ok()?;
        let level = SimdLevel::parse(&value);
        if level.is_none() {
            eprintln!("RESNET_SIMD={value:?} is not portable, avx2 or avx512; ignored");
        }
        level
    })
}

/// [`set_simd_level`]'s cap; `u8::MAX` for none.
static API_CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// Caps the level the kernels use (`None`: no cap beyond `RESNET_SIMD`'s). For tests and
/// benchmarks; the cap is process-wide.
pub fn set_simd_level(cap: Option<SimdLevel>) {
    API_CAP.store(cap.map_or(u8::MAX, |l| l as u8), Ordering::Relaxed);
}

/// The level the kernels use now: the detected one, lowered by the caps.
pub fn simd_level() -> SimdLevel {
    let api = match API_CAP.load(Ordering::Relaxed) {
        0 => Some(SimdLevel::Portable),
        1 => Some(SimdLevel::Avx2),
        2 => Some(SimdLevel::Avx512),
        _ => None,
    };
    [Some(detected_simd_level()), environment_cap(), api].into_iter().flatten().min().unwrap_or(SimdLevel::Portable)
}

/// Every level this machine can run, from the narrowest (what a test covers).
pub fn available_simd_levels() -> Vec<SimdLevel> {
    [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= detected_simd_level())
        .collect()
}

/// Defines `fn $name(args)` as the entry point of the `#[inline(always)]` kernel `$impl`, which
/// takes the same arguments and, last among its const parameters, `const FMA: bool` (whether
/// `mul_add` is one instruction). The entry calls a copy of `$impl` compiled for
/// [`simd_level`](crate::simd::simd_level): `#[target_feature]` AVX-512 or AVX2 + FMA copies
/// with `FMA = true`, or the portable one with `FMA = false`. `= $impl, up to Avx2;` caps the
/// level for a kernel whose AVX-512 copy measured slower than its AVX2 one.
///
/// ```ignore
/// tensor::multiversion! {
///     /// Docs of the entry point.
///     pub(crate) unsafe fn group<const NB: usize>(g: &Geom, out: *mut f32) = group_impl;
/// }
/// ```
#[macro_export]
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis unsafe fn $name:ident $(<$(const $g:ident: $gt:ty),* $(,)?>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $imp:ident;
    ) => {
        $crate::multiversion! {
            $(#[$attr])*
            $vis unsafe fn $name $(<$(const $g: $gt),*>)? ($($arg: $ty),*) $(-> $ret)? = $imp, up to Avx512;
        }
    };
    (
        $(#[$attr:meta])*
        $vis:vis unsafe fn $name:ident $(<$(const $g:ident: $gt:ty),* $(,)?>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $imp:ident, up to $widest:ident;
    ) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name $(<$(const $g: $gt),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,movbe")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4 $(<$(const $g: $gt),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: the caller's contract.
                    #[allow(unused_unsafe)]
                    unsafe { $imp::<$($($g,)*)? true>($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,movbe")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3 $(<$(const $g: $gt),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: the caller's contract.
                    #[allow(unused_unsafe)]
                    unsafe { $imp::<$($($g,)*)? true>($($arg),*) }
                }
                match $crate::simd::simd_level().min($crate::simd::SimdLevel::$widest) {
                    // SAFETY: the level is at most the detected one, whose features these are;
                    // the rest is the caller's contract.
                    $crate::simd::SimdLevel::Avx512 => return unsafe { v4 $(::<$($g),*>)? ($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::SimdLevel::Avx2 => return unsafe { v3 $(::<$($g),*>)? ($($arg),*) },
                    $crate::simd::SimdLevel::Portable => {}
                }
            }
            // SAFETY: the caller's contract.
            #[allow(unused_unsafe)]
            unsafe { $imp::<$($($g,)*)? false>($($arg),*) }
        }
    };
}
