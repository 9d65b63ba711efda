//! The benchmark cases. `cargo xtask bench` runs this binary once per case and reads one JSON
//! line per case from its standard output:
//! `{"name", "samples": [seconds...], "flops", "images", "peak_rss_mb"}` (null where a figure
//! does not apply). Statistics, tables and PyTorch ratios are the xtask's business.
//!
//! ```text
//! bench-cases [--device D] --list            # the case names this build can run on D
//! bench-cases [--device D] [--quick] NAME... # run the named cases
//! bench-cases --write-predict-inputs DIR     # predict-cold-resnet50's weights and photo
//! ```
//! On a GPU device (`wgpu`, `cuda`; a build with that feature) only the model cases run, plus
//! `infer-resnet50-b64` and `train-resnet50-b64`; each timed run ends by reading a result back,
//! so the time covers the kernels, not just their launch.
//! `torch_cases.py` beside this crate is PyTorch's side, with the same names and output.

// The same allocator as the `resnet` binary, so the cases measure what users run.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same position in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the kernel: a training step frees and reallocates the same
/// gigabyte of activations each time, and mimalloc's default (purge after 10 ms) made the
/// kernel zero those pages again every step (a quarter of `train-resnet50-b8`'s time).
fn keep_freed_pages() {
    // SAFETY: setting an option is allowed at any time; it affects only later purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

mod data_cases;
#[cfg(feature = "mpi")]
mod ddp_cases;
mod model_cases;

use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tensor::{conv2d, conv2d_backward_input, conv2d_backward_weight, Conv2dParams, Rng, Tensor};

/// A runnable case: its name and a function that prepares inputs and returns the timed closure
/// with its flop and image counts.
struct Case {
    name: String,
    prepare: Box<dyn Fn() -> Prepared>,
}

struct Prepared {
    run: Box<dyn FnMut()>,
    flops: Option<f64>,
    images: Option<usize>,
}

/// A conv layer shape of ResNet-50 (or ResNeXt-50 for the grouped one), square kernels.
#[derive(Clone, Copy)]
struct ConvShape {
    tag: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    size: usize,
}

const fn shape(
    tag: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    size: usize,
) -> ConvShape {
    ConvShape { tag, cin, cout, k, stride, padding: k / 2, groups, size }
}

/// The shapes named by the tensor issue, at batch [`CONV_BATCH`]. Keep in step with torch_cases.py.
const CONV_SHAPES: &[ConvShape] = &[
    shape("7x7s2-3to64-224", 3, 64, 7, 2, 1, 224),
    shape("3x3-64to64-56", 64, 64, 3, 1, 1, 56),
    shape("1x1-256to64-56", 256, 64, 1, 1, 1, 56),
    shape("3x3-256to256-14", 256, 256, 3, 1, 1, 14),
    shape("3x3g32-128to128-56", 128, 128, 3, 1, 32, 56),
];
const CONV_BATCH: usize = 8;

static DEVICE: OnceLock<tensor::Device> = OnceLock::new();

/// This process's rank in a data-parallel case: only rank 0 prints the result, and every rank
/// times the same number of steps (each step waits for the others, so a time-based count
/// would leave one rank waiting forever for a step the others never take).
static RANK: AtomicUsize = AtomicUsize::new(usize::MAX);

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn set_reporting_rank(rank: usize) {
    RANK.store(rank, Ordering::Relaxed);
}

fn is_distributed() -> bool {
    RANK.load(Ordering::Relaxed) != usize::MAX
}

/// The device the cases run on (`--device`, default the host).
pub(crate) fn device() -> tensor::Device {
    DEVICE.get().copied().unwrap_or_default()
}

fn cases() -> Vec<Case> {
    let mut v = vec![Case { name: "peak".into(), prepare: Box::new(peak_case) }];
    if device().is_gpu() {
        // The host's peak stays (the runner reports it); the rest are the model cases.
        v.extend(model_cases::cases());
        return v;
    }
    for n in [1024usize, 2048] {
        v.push(Case {
            name: format!("matmul-{n}"),
            prepare: Box::new(move || {
                let mut rng = Rng::seed(1);
                let a = Tensor::randn(&[n, n], &mut rng);
                let b = Tensor::randn(&[n, n], &mut rng);
                Prepared {
                    run: Box::new(move || {
                        std::hint::black_box(a.matmul(&b).expect("matmul"));
                    }),
                    flops: Some(2.0 * (n * n * n) as f64),
                    images: None,
                }
            }),
        });
    }
    for &ConvShape { tag, cin, cout, k, stride: s, padding: pad, groups, size } in CONV_SHAPES {
        for pass in ["fwd", "bwd-input", "bwd-weight"] {
            v.push(Case {
                name: format!("conv-{tag}-{pass}"),
                prepare: Box::new(move || {
                    let mut rng = Rng::seed(2);
                    let p = Conv2dParams::new().stride(s).padding(pad).groups(groups);
                    let xs = [CONV_BATCH, cin, size, size];
                    let ws = [cout, cin / groups, k, k];
                    let x = Tensor::randn(&xs, &mut rng);
                    let w = Tensor::randn(&ws, &mut rng);
                    let macs = tensor::conv2d_macs(&xs, &ws, p).expect("valid shape");
                    let ys = tensor::conv2d_output_shape(&xs, &ws, p).expect("valid shape");
                    let gy = Tensor::randn(&ys, &mut rng);
                    let run: Box<dyn FnMut()> = match pass {
                        "fwd" => Box::new(move || {
                            std::hint::black_box(conv2d(&x, &w, None, p).expect("conv"));
                        }),
                        "bwd-input" => Box::new(move || {
                            std::hint::black_box(conv2d_backward_input(&gy, &w, &xs, p).expect("conv"));
                        }),
                        _ => Box::new(move || {
                            std::hint::black_box(conv2d_backward_weight(&x, &gy, &ws, p).expect("conv"));
                        }),
                    };
                    Prepared { run, flops: Some(2.0 * macs as f64), images: Some(CONV_BATCH) }
                }),
            });
        }
    }
    v.extend(model_cases::cases());
    #[cfg(feature = "mpi")]
    v.extend(ddp_cases::cases());
    v.extend(data_cases::cases());
    v.push(Case { name: "autograd-small-step".into(), prepare: Box::new(|| small_step(true)) });
    v.push(Case { name: "kernels-small-step".into(), prepare: Box::new(|| small_step(false)) });
    v
}

/// The nn crate's test network (conv-bn-relu-maxpool, conv-bn + residual, relu, avgpool,
/// linear, cross-entropy) at 16 channels, batch 16, 32x32: forward and backward, either through
/// the autograd or by calling the same tensor kernels directly (the autograd's overhead is the
/// ratio of the two).
fn small_step(autograd: bool) -> Prepared {
    use nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2dConfig, CrossEntropyLoss, Linear, MaxPool2d, Module, Var};
    use tensor::Pool2dParams;
    const B: usize = 16;
    let mut rng = Rng::seed(3);
    let conv1 = Conv2dConfig::new(3, 16, 3).padding(1).bias(false).init(&mut rng).expect("valid");
    let conv2 = Conv2dConfig::new(16, 16, 3).padding(1).bias(false).init(&mut rng).expect("valid");
    let (bn1, bn2) = (BatchNorm2d::new(16), BatchNorm2d::new(16));
    let fc = Linear::new(16, 10, true, &mut rng).expect("valid");
    let pool = MaxPool2d(Pool2dParams::new(2));
    let x = Tensor::randn(&[B, 3, 32, 32], &mut rng);
    let y = Tensor::from_vec_i64((0..B as i64).map(|i| i % 10).collect(), &[B]).expect("sized");
    let flops = None;
    let run: Box<dyn FnMut()> = if autograd {
        let xv = Var::constant(x);
        Box::new(move || {
            let h = pool.forward(&bn1.forward(&conv1.forward(&xv).unwrap()).unwrap().relu().unwrap()).unwrap();
            let r = bn2.forward(&conv2.forward(&h).unwrap()).unwrap();
            let h = r.add(&h).unwrap().relu().unwrap();
            let p = AdaptiveAvgPool2d([1, 1]).forward(&h).unwrap().flatten_from(1).unwrap();
            let loss = CrossEntropyLoss::default().forward(&fc.forward(&p).unwrap(), &y).unwrap();
            loss.backward().unwrap();
            for p in [&conv1.weight, &conv2.weight, &fc.weight] {
                p.zero_grad();
            }
        })
    } else {
        let (w1, w2) = (conv1.weight.value(), conv2.weight.value());
        let (fw, fb) = (fc.weight.value(), fc.bias.as_ref().expect("bias").value());
        let g16 = Tensor::ones(&[16]);
        let b16 = Tensor::zeros(&[16]);
        Box::new(move || {
            use tensor::*;
            let p1 = Conv2dParams::new().padding(1);
            // Forward.
            let c1 = conv2d(&x, &w1, None, p1).unwrap();
            let n1 = batch_norm_train(&c1, Some(&g16), Some(&b16), None, 0.1, 1e-5).unwrap();
            let r1 = n1.output.relu().unwrap();
            let (h, idx) = max_pool2d(&r1, Pool2dParams::new(2)).unwrap();
            let c2 = conv2d(&h, &w2, None, p1).unwrap();
            let n2 = batch_norm_train(&c2, Some(&g16), Some(&b16), None, 0.1, 1e-5).unwrap();
            let s = n2.output.add(&h).unwrap().relu().unwrap();
            let pooled = adaptive_avg_pool2d(&s, [1, 1]).unwrap().reshape(&[B, 16]).unwrap();
            let logits = pooled.matmul(&fw.t().unwrap()).unwrap().add(&fb).unwrap();
            let probs = logits.softmax(1).unwrap();
            // Backward: (softmax - onehot) / B, then back through every layer.
            let mut d = probs.to_vec_f32().unwrap();
            for (i, t) in y.to_vec_i64().unwrap().iter().enumerate() {
                d[i * 10 + *t as usize] -= 1.0;
            }
            let dl = Tensor::from_vec(d, &[B, 10]).unwrap().mul_scalar(1.0 / B as f32).unwrap();
            let _dfw = dl.t().unwrap().matmul(&pooled).unwrap();
            let _dfb = dl.sum(&[0], false).unwrap();
            let dp = dl.matmul(&fw).unwrap().reshape(&[B, 16, 1, 1]).unwrap();
            let ds = adaptive_avg_pool2d_backward(&dp, s.shape()).unwrap();
            let ds = ds.mul(&s.map("mask", |v| if v > 0.0 { 1.0 } else { 0.0 }).unwrap()).unwrap();
            let g2 = batch_norm_train_backward(&ds, &c2, Some(&g16), &n2.mean, &n2.invstd).unwrap();
            let _dw2 = conv2d_backward_weight(&h, &g2.input, w2.shape(), p1).unwrap();
            let dh = conv2d_backward_input(&g2.input, &w2, h.shape(), p1).unwrap().add(&ds).unwrap();
            let dr1 = max_pool2d_backward(&dh, &idx, r1.shape()).unwrap();
            let dr1 = dr1.mul(&r1.map("mask", |v| if v > 0.0 { 1.0 } else { 0.0 }).unwrap()).unwrap();
            let g1 = batch_norm_train_backward(&dr1, &c1, Some(&g16), &n1.mean, &n1.invstd).unwrap();
            std::hint::black_box(conv2d_backward_weight(&x, &g1.input, w1.shape(), p1).unwrap());
        })
    };
    Prepared { run, flops, images: Some(B) }
}

/// The machine's f32 multiply-add peak: independent FMA chains on every thread.
fn peak_case() -> Prepared {
    const ITERS: usize = 20_000_000;
    let threads = rayon::current_num_threads();
    let (flops_per_iter, kernel): (f64, fn(usize) -> f32) = fma::kernel();
    Prepared {
        run: Box::new(move || {
            let s: f32 = rayon::broadcast(|_| kernel(ITERS)).iter().sum();
            std::hint::black_box(s);
        }),
        flops: Some(flops_per_iter * (ITERS * threads) as f64),
        images: None,
    }
}

mod fma {
    /// Flops per loop iteration and the loop, chosen for this CPU.
    pub fn kernel() -> (f64, fn(usize) -> f32) {
        #[cfg(target_arch = "x86_64")]
        {
            // The widest vectors the CPU has: on an AVX-512 CPU the AVX2 loop reaches half the
            // peak, which made "% peak" read twice too high there.
            if is_x86_feature_detected!("avx512f") {
                return (ACC as f64 * 16.0 * 2.0, |n| unsafe { avx512_fma(n) });
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return (ACC as f64 * 8.0 * 2.0, |n| unsafe { avx2_fma(n) });
            }
        }
        (ACC as f64 * 2.0, scalar)
    }

    const ACC: usize = 12;

    fn scalar(n: usize) -> f32 {
        let mut acc = [0f32; ACC];
        let (a, b) = (std::hint::black_box(0.999f32), std::hint::black_box(0.001f32));
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
        acc.iter().sum()
    }

    /// Twelve independent 8-wide FMA chains: enough to cover the FMA latency on both ports.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_fma(n: usize) -> f32 {
        use std::arch::x86_64::*;
        let a = _mm256_set1_ps(std::hint::black_box(0.999));
        let b = _mm256_set1_ps(std::hint::black_box(0.001));
        let mut acc = [_mm256_setzero_ps(); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0f32; 8];
        let mut s = _mm256_setzero_ps();
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    /// The same with 16-wide AVX-512 FMAs.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_fma(n: usize) -> f32 {
        use std::arch::x86_64::*;
        let a = _mm512_set1_ps(std::hint::black_box(0.999));
        let b = _mm512_set1_ps(std::hint::black_box(0.001));
        let mut acc = [_mm512_setzero_ps(); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }
}

/// Runs `f` after warm-up until both a minimum count and a minimum time are reached (the count
/// alone in a data-parallel case).
fn measure(f: &mut dyn FnMut(), quick: bool) -> Vec<f64> {
    let (warmup, min_runs, min_time, max_time) = if quick {
        (1, 3, Duration::from_millis(200), Duration::from_secs(5))
    } else {
        (2, 10, Duration::from_secs(2), Duration::from_secs(30))
    };
    for _ in 0..warmup {
        f();
    }
    let start = Instant::now();
    let mut samples = Vec::new();
    let fixed = is_distributed();
    while samples.len() < min_runs || (!fixed && start.elapsed() < min_time && samples.len() < 1000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
        if !fixed && start.elapsed() > max_time && samples.len() >= min_runs {
            break;
        }
    }
    samples
}

/// Peak resident memory of this process (Linux's VmHWM), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    keep_freed_pages();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--device") {
        let name = args.get(i + 1).cloned().unwrap_or_default();
        match tensor::Device::parse(&name) {
            Ok(d) => {
                let _ = DEVICE.set(d);
            }
            Err(e) => {
                eprintln!("bench-cases: {e}");
                std::process::exit(2);
            }
        }
        args.drain(i..(i + 2).min(args.len()));
    }
    if let Some(i) = args.iter().position(|a| a == "--write-predict-inputs") {
        let Some(dir) = args.get(i + 1) else {
            eprintln!("bench-cases: --write-predict-inputs needs a folder");
            std::process::exit(2);
        };
        model_cases::write_predict_inputs(std::path::Path::new(dir));
        return;
    }
    let all = cases();
    if args.iter().any(|a| a == "--list") {
        all.iter().for_each(|c| println!("{}", c.name));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    for name in names {
        let Some(case) = all.iter().find(|c| &c.name == name) else {
            eprintln!("bench-cases: unknown case {name}");
            std::process::exit(2);
        };
        let mut prepared = (case.prepare)();
        let samples = measure(&mut prepared.run, quick);
        let line = json!({
            "name": case.name,
            "samples": samples,
            "flops": prepared.flops,
            "images": prepared.images,
            "peak_rss_mb": peak_rss_mb(),
        });
        if RANK.load(Ordering::Relaxed) == 0 || !is_distributed() {
            println!("{line}");
        }
    }
}
