//! `cfg(gpu)`: set when any GPU runtime feature is on, so the code names one condition.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(gpu)");
    if std::env::var_os("CARGO_FEATURE_WGPU").is_some() || std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo::rustc-cfg=gpu");
    }
}
