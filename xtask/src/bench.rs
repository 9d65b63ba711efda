//! `cargo xtask bench`: runs the benchmark cases, ours and PyTorch's, and reports them.
//!
//! Each case runs in a fresh process (`bench-cases NAME`, `torch_cases.py NAME`), so its peak
//! memory is its own; with `--vs-torch` PyTorch's run of a case follows ours directly, so both
//! see the same machine load. Both sides are pinned to the same thread count.

use crate::stats::{gflops, images_per_s, summarize, Summary};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Timed by the runner as whole processes (`resnet predict` against `torch_cases.py --predict`):
/// loading the weights, preparing the model and classifying one JPEG, start-up included.
const PREDICT_COLD: &str = "predict-cold-resnet50";

/// Data-parallel cases: run under `mpirun -np 2`, the threads split between the processes.
const DDP_PREFIX: &str = "ddp-";
const DDP_PROCESSES: usize = 2;

/// Conv shapes of the tensor issue (tags as in benches/src/main.rs).
const CONV_TAGS: &[&str] =
    &["7x7s2-3to64-224", "3x3-64to64-56", "1x1-256to64-56", "3x3-256to256-14", "3x3g32-128to128-56"];

/// The stable case names, in report order. A name whose code does not exist yet is reported as
/// "not available".
pub fn canonical_cases() -> Vec<String> {
    let mut v: Vec<String> = ["peak", "matmul-1024", "matmul-2048"].iter().map(|s| s.to_string()).collect();
    for tag in CONV_TAGS {
        for pass in ["fwd", "bwd-input", "bwd-weight"] {
            v.push(format!("conv-{tag}-{pass}"));
        }
    }
    for name in [
        "infer-resnet18-b1",
        "infer-resnet50-b1",
        "infer-resnet50-b8",
        "infer-resnext50-b1",
        "train-resnet18-b16",
        "train-resnet50-b8",
        "train-resnet18-b64-64px",
        "ddp-train-resnet18-b64-64px",
        "data-train-b32",
        "data-eval-b32",
        "load-resnet50",
        "predict-cold-resnet50",
        "autograd-small-step",
        "kernels-small-step",
    ] {
        v.push(name.to_string());
    }
    v
}

pub const USAGE: &str = "usage: cargo xtask bench [options]

Builds the benchmark cases in release and runs each in its own process (so peak memory is per
case), optionally interleaved with PyTorch's equivalent, and prints medians, throughput and ratios.

options:
  --filter PATTERN   only cases whose name contains PATTERN (a glob with *, several comma-separated)
  --json FILE        also write the results as JSON
  --vs-torch         run PyTorch's equivalent of each case in the same run (needs a Python with torch)
  --python PATH      the Python for --vs-torch (default: python3)
  --quick            fewer repetitions (a smoke run)
  --threads N        threads on both sides (default: all cores)
  --rounds N         run each case (and its PyTorch, frozen-PyTorch and ONNX Runtime
                     counterparts) N times, interleaved; medians of the rounds' medians, and their
                     spread (default: 3 with --vs-torch and 1 without)
  --device D         cpu (default), wgpu or cuda: build the cases with that GPU feature

With --vs-torch the inference cases also run PyTorch frozen (jit.freeze + optimize_for_inference)
and ONNX Runtime (the model exported by torch.onnx; intra_op_num_threads = the thread count): the
comparators that prepare their model as ours does; `vs prepared` is our time over the best of
them. predict-cold-resnet50 times `resnet predict` on one JPEG as a whole process against the same
in Python.

The ddp-* cases run under `mpirun -np 2` (Open MPI: openmpi-bin and libopenmpi-dev), each
process with half the threads; they are not available without Open MPI.";

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub filter: Option<String>,
    pub json: Option<PathBuf>,
    pub vs_torch: bool,
    pub quick: bool,
    pub threads: usize,
    pub python: Option<String>,
    /// `cpu` (default), `wgpu` or `cuda`: the bench cases are built with that feature.
    pub device: String,
    /// Interleaved rounds per case (`None`: 3 with `--vs-torch`, else 1).
    pub rounds: Option<usize>,
}

impl Options {
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.vs_torch { 3 } else { 1 })
    }
}

pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let default_threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut o = Options {
        filter: None,
        json: None,
        vs_torch: false,
        quick: false,
        threads: default_threads,
        python: None,
        device: "cpu".into(),
        rounds: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--filter" => o.filter = Some(value("--filter")?),
            "--json" => o.json = Some(PathBuf::from(value("--json")?)),
            "--vs-torch" => o.vs_torch = true,
            "--quick" => o.quick = true,
            "--threads" => {
                let v = value("--threads")?;
                o.threads = v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| format!("bad thread count {v}"))?;
            }
            "--python" => o.python = Some(value("--python")?),
            "--rounds" => {
                let v = value("--rounds")?;
                o.rounds =
                    Some(v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| format!("bad round count {v}"))?);
            }
            "--device" => {
                o.device = value("--device")?;
                if !["cpu", "wgpu", "cuda"].contains(&o.device.as_str()) {
                    return Err(format!("unknown device {}: cpu, wgpu or cuda", o.device));
                }
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// A filter is a substring, or a glob when it contains `*`. Several may be given, comma-separated.
pub fn matches(filter: Option<&str>, name: &str) -> bool {
    let Some(filter) = filter else { return true };
    filter.split(',').map(str::trim).filter(|f| !f.is_empty()).any(|f| {
        if f.contains('*') {
            glob(f, name)
        } else {
            name.contains(f)
        }
    })
}

fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    rest.is_empty()
}

/// The cases to report: the canonical ones plus any extra the binary offers, filtered.
pub fn select(available: &[String], filter: Option<&str>) -> Vec<(String, bool)> {
    let mut names = canonical_cases();
    for a in available {
        if !names.contains(a) {
            names.push(a.clone());
        }
    }
    names.into_iter().filter(|n| matches(filter, n)).map(|n| (n.clone(), available.contains(&n))).collect()
}

/// One case's raw output line.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub name: String,
    pub samples: Vec<f64>,
    pub flops: Option<f64>,
    pub images: Option<usize>,
    pub peak_rss_mb: Option<f64>,
}

pub fn parse_raw(line: &str) -> Result<Raw, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad case output {line:?}: {e}"))?;
    let name = v["name"].as_str().ok_or("case output without a name")?.to_string();
    let samples =
        v["samples"].as_array().ok_or("case output without samples")?.iter().filter_map(Value::as_f64).collect();
    Ok(Raw {
        name,
        samples,
        flops: v["flops"].as_f64(),
        images: v["images"].as_u64().map(|i| i as usize),
        peak_rss_mb: v["peak_rss_mb"].as_f64(),
    })
}

/// What the report says of one case. With several rounds each summary is over the rounds'
/// medians (its min and max are their spread).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub name: String,
    pub ours: Option<(Summary, Raw)>,
    pub torch: Option<Summary>,
    /// PyTorch frozen (`torch.jit.freeze` + `optimize_for_inference`), for inference cases.
    pub frozen: Option<Summary>,
    /// ONNX Runtime on the model torch.onnx exported, for inference cases.
    pub ort: Option<Summary>,
    /// PyTorch eager's peak memory, net of `import torch`.
    pub torch_peak_mb: Option<f64>,
    pub rounds: usize,
}

impl CaseResult {
    /// A case that did not run.
    pub fn missing(name: String) -> CaseResult {
        CaseResult { name, ours: None, torch: None, frozen: None, ort: None, torch_peak_mb: None, rounds: 0 }
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.ours.as_ref()?.0.median / self.torch?.median)
    }

    /// Our time over the best prepared comparator's (frozen PyTorch, ONNX Runtime).
    fn ratio_vs_prepared(&self) -> Option<f64> {
        let best = [self.frozen, self.ort].into_iter().flatten().map(|s| s.median).reduce(f64::min)?;
        Some(self.ours.as_ref()?.0.median / best)
    }

    pub fn to_json(&self) -> Value {
        let (s, raw) = match &self.ours {
            Some((s, r)) => (Some(s), Some(r)),
            None => (None, None),
        };
        json!({
            "name": self.name,
            "status": if s.is_some() { "ok" } else { "not available" },
            "median_s": s.map(|s| s.median),
            "min_s": s.map(|s| s.min),
            "max_s": s.map(|s| s.max),
            "runs": s.map(|s| s.runs),
            "images_per_s": s.and_then(|s| images_per_s(raw?.images, s)),
            "gflops": s.and_then(|s| gflops(raw?.flops, s)),
            "peak_rss_mb": raw.and_then(|r| r.peak_rss_mb),
            "torch_median_s": self.torch.map(|t| t.median),
            "torch_min_s": self.torch.map(|t| t.min),
            "torch_max_s": self.torch.map(|t| t.max),
            "torch_peak_rss_mb": self.torch_peak_mb,
            "ratio_vs_torch": self.ratio(),
            "frozen_median_s": self.frozen.map(|t| t.median),
            "ort_median_s": self.ort.map(|t| t.median),
            "ratio_vs_prepared": self.ratio_vs_prepared(),
            "rounds": self.rounds,
        })
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

/// A median, and with several rounds the spread of the rounds' medians.
fn fmt_spread(s: &Summary, rounds: usize) -> String {
    if rounds > 1 {
        let unit = |v: f64| if s.median >= 1.0 { format!("{v:.2}") } else { format!("{:.1}", v * 1e3) };
        format!("{} ({}-{})", fmt_time(s.median), unit(s.min), unit(s.max))
    } else {
        fmt_time(s.median)
    }
}

/// The human-readable table. `peak` is the measured f32 peak in GFLOP/s, if known.
pub fn table(results: &[CaseResult], peak: Option<f64>, with_torch: bool) -> String {
    let mut header = vec!["case", "median", "images/s", "GFLOP/s", "% peak", "peak MB"];
    let prepared = results.iter().any(|r| r.frozen.is_some() || r.ort.is_some());
    if with_torch {
        header.extend(["torch median", "ratio", "torch MB"]);
        if prepared {
            header.extend(["frozen", "ORT", "vs prepared"]);
        }
    }
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for r in results {
        let mut row = vec![r.name.clone()];
        match &r.ours {
            None => {
                row.push("not available".into());
                row.extend(std::iter::repeat_n(String::new(), header.len() - 2));
            }
            Some((s, raw)) => {
                let g = gflops(raw.flops, s);
                row.push(fmt_spread(s, r.rounds));
                row.push(fmt_opt(images_per_s(raw.images, s), |v| format!("{v:.1}")));
                row.push(fmt_opt(g, |v| format!("{v:.1}")));
                let pct = if r.name == "peak" { None } else { g.zip(peak).map(|(g, p)| 100.0 * g / p) };
                row.push(fmt_opt(pct, |v| format!("{v:.0}%")));
                row.push(fmt_opt(raw.peak_rss_mb, |v| format!("{v:.0}")));
                if with_torch {
                    row.push(r.torch.map(|t| fmt_spread(&t, r.rounds)).unwrap_or_else(|| "-".into()));
                    row.push(fmt_opt(r.ratio(), |v| format!("{v:.2}x")));
                    row.push(fmt_opt(r.torch_peak_mb, |v| format!("{v:.0}")));
                    if prepared {
                        row.push(r.frozen.map(|t| fmt_spread(&t, r.rounds)).unwrap_or_else(|| "-".into()));
                        row.push(r.ort.map(|t| fmt_spread(&t, r.rounds)).unwrap_or_else(|| "-".into()));
                        row.push(fmt_opt(r.ratio_vs_prepared(), |v| format!("{v:.2}x")));
                    }
                }
            }
        }
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.len())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| if c == 0 { format!("{s:<w$}", w = widths[c]) } else { format!("{s:>w$}", w = widths[c]) })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    out
}

pub fn report_json(machine: Value, threads: usize, results: &[CaseResult]) -> Value {
    json!({ "machine": machine, "threads": threads, "cases": results.iter().map(CaseResult::to_json).collect::<Vec<_>>() })
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run_lines(cmd: &mut Command) -> Result<Vec<String>, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect())
}

/// Builds the `resnet` binary in release (for `predict-cold-resnet50`) and returns its path.
fn build_resnet_binary() -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "resnet"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the resnet binary failed".into());
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    Ok(target.join("release").join("resnet"))
}

/// Wall times of `runs` runs of `cmd` (after one untimed run that warms the file cache).
fn time_processes(mut cmd: impl FnMut() -> Command, runs: usize) -> Result<Vec<f64>, String> {
    let mut samples = Vec::new();
    for i in 0..=runs {
        let mut c = cmd();
        let t = std::time::Instant::now();
        let out = c.output().map_err(|e| format!("cannot run {c:?}: {e}"))?;
        let elapsed = t.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        if i > 0 {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

fn build_cases(device: &str, with_mpi: bool) -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "--release", "--quiet", "-p", "bench-cases"];
    if device != "cpu" {
        args.extend(["--features", device]);
    } else if with_mpi {
        args.extend(["--features", "mpi"]);
    }
    let status =
        Command::new(cargo).args(&args).current_dir(&root).status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the benchmark cases failed".into());
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    Ok(target.join("release").join("bench-cases"))
}

/// A Python that imports torch and torchvision: `--python`, `$BENCH_PYTHON`, `python3`, then
/// the system's `/usr/bin/python3` (where Debian's python3-torch lives).
fn find_torch_python(explicit: Option<&str>) -> Option<String> {
    let env = std::env::var("BENCH_PYTHON").ok();
    let candidates: Vec<String> = match explicit {
        Some(p) => vec![p.to_string()],
        None => env.into_iter().chain(["python3".to_string(), "/usr/bin/python3".to_string()]).collect(),
    };
    candidates.into_iter().find(|py| {
        Command::new(py).args(["-c", "import torch, torchvision"]).output().map(|o| o.status.success()).unwrap_or(false)
    })
}

/// The widest SIMD extension the CPU reports (the `flags` of Linux's /proc/cpuinfo).
fn widest_vector_extension() -> Option<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    Some(if has("avx512f") {
        "AVX-512"
    } else if has("avx2") {
        "AVX2"
    } else if has("avx") {
        "AVX"
    } else {
        "SSE"
    })
}

fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string())
    })
}

fn machine_info(peak: Option<f64>, versions: &Value) -> Value {
    let cpu = cpu_model();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "cpu": cpu,
        "logical_cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "vector_extension": widest_vector_extension(),
        "peak_gflops": peak,
        "python_side": versions,
        "date": civil_date(now / 86_400),
    })
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Whether Open MPI's launcher is installed (its headers come with it in `libopenmpi-dev`).
fn have_mpirun() -> bool {
    Command::new("mpirun").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

pub fn run(o: &Options) -> Result<(), String> {
    let want_ddp = o.device == "cpu"
        && canonical_cases().iter().any(|n| n.starts_with(DDP_PREFIX) && matches(o.filter.as_deref(), n));
    let with_mpi = want_ddp && have_mpirun();
    if want_ddp && !with_mpi {
        eprintln!("the ddp-* cases need Open MPI (mpirun, libopenmpi-dev): not available here");
    }
    let bin = build_cases(&o.device, with_mpi)?;
    let threads = o.threads.to_string();
    let threads_per_process = (o.threads / DDP_PROCESSES).max(1).to_string();
    // PyTorch's side runs on CUDA against either of our GPU devices.
    let torch_device = if o.device == "cpu" { "cpu" } else { "cuda" };
    let rounds = o.rounds();
    let process_runs = if o.quick { 2 } else { 5 };
    let predict_dir = std::env::temp_dir().join("resnet-rs-predict-cold");
    let (weights, photo) = (predict_dir.join("resnet50.safetensors"), predict_dir.join("photo.jpg"));
    let want_predict = o.device == "cpu" && matches(o.filter.as_deref(), PREDICT_COLD);
    let resnet_bin = if want_predict {
        let b = build_resnet_binary()?;
        run_lines(Command::new(&bin).arg("--write-predict-inputs").arg(&predict_dir))?;
        Some(b)
    } else {
        None
    };
    let ours = |name: &str| -> Result<Raw, String> {
        if name == PREDICT_COLD {
            let resnet = resnet_bin.as_ref().ok_or("the resnet binary was not built")?;
            let samples = time_processes(
                || {
                    let mut c = Command::new(resnet);
                    c.env("RAYON_NUM_THREADS", &threads).args(["predict", "--arch", "resnet50", "--weights"]);
                    c.arg(&weights).arg(&photo);
                    c
                },
                process_runs,
            )?;
            return Ok(Raw { name: name.into(), samples, flops: None, images: Some(1), peak_rss_mb: None });
        }
        let mut cmd = if name.starts_with(DDP_PREFIX) {
            let mut cmd = Command::new("mpirun");
            cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", &DDP_PROCESSES.to_string()]);
            cmd.args(["-x", &format!("RAYON_NUM_THREADS={threads_per_process}")]).arg(&bin);
            cmd
        } else {
            let mut cmd = Command::new(&bin);
            cmd.env("RAYON_NUM_THREADS", &threads);
            cmd
        };
        cmd.args(["--device", &o.device]).arg(name);
        if o.quick {
            cmd.arg("--quick");
        }
        let lines = run_lines(&mut cmd)?;
        parse_raw(lines.last().ok_or_else(|| format!("case {name} printed nothing"))?)
    };
    let mut available = run_lines(Command::new(&bin).args(["--device", &o.device, "--list"]))?;
    if o.device == "cpu" {
        available.push(PREDICT_COLD.to_string());
    }
    let selected = if o.device == "cpu" {
        select(&available, o.filter.as_deref())
    } else {
        // A GPU run reports what the GPU build offers (the model cases), nothing missing.
        available.iter().filter(|n| matches(o.filter.as_deref(), n)).map(|n| (n.clone(), true)).collect()
    };
    if selected.is_empty() {
        return Err(format!("no case matches {:?}; the cases are: {}", o.filter, canonical_cases().join(", ")));
    }

    let script = workspace_root().join("benches").join("torch_cases.py");
    let torch = if o.vs_torch {
        match find_torch_python(o.python.as_deref()) {
            Some(py) => {
                let names = run_lines(Command::new(&py).arg(&script).args(["--device", torch_device, "--list"]))?;
                let versions = run_lines(Command::new(&py).arg(&script).arg("--versions"))?;
                let versions: Value = versions.last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
                eprintln!("PyTorch side: {py} {} ({versions})", script.display());
                Some((py, names, versions))
            }
            None => {
                eprintln!(
                    "--vs-torch: no Python with torch and torchvision found (set BENCH_PYTHON); running ours alone"
                );
                None
            }
        }
    } else {
        None
    };
    let torch_case = |name: &str| -> Result<Option<(Summary, Option<f64>)>, String> {
        let Some((py, names, _)) = &torch else { return Ok(None) };
        if !names.iter().any(|n| n == name) {
            return Ok(None);
        }
        if name == PREDICT_COLD {
            let samples = time_processes(
                || {
                    let mut c = Command::new(py);
                    c.arg(&script).arg("--predict").arg(&weights).arg(&photo);
                    c.env("OMP_NUM_THREADS", &threads).env("MKL_NUM_THREADS", &threads);
                    c
                },
                process_runs,
            )?;
            return Ok(summarize(&samples).map(|s| (s, None)));
        }
        let mut cmd = Command::new(py);
        cmd.arg(&script).args(["--threads", &threads, "--device", torch_device]).arg(name);
        cmd.env("OMP_NUM_THREADS", &threads).env("MKL_NUM_THREADS", &threads).env("OPENBLAS_NUM_THREADS", &threads);
        if o.quick {
            cmd.arg("--quick");
        }
        let lines = run_lines(&mut cmd)?;
        let raw = parse_raw(lines.last().ok_or_else(|| format!("torch case {name} printed nothing"))?)?;
        Ok(summarize(&raw.samples).map(|s| (s, raw.peak_rss_mb)))
    };

    // The peak is measured first: every GFLOP/s figure is also shown as a share of it.
    let peak_raw = ours("peak")?;
    let peak = summarize(&peak_raw.samples).and_then(|s| gflops(peak_raw.flops, &s));
    eprintln!("threads: {threads}; measured f32 peak: {}", fmt_opt(peak, |p| format!("{p:.1} GFLOP/s")));

    let versions = torch.as_ref().map(|t| t.2.clone()).unwrap_or(Value::Null);
    let mut results = Vec::new();
    for (name, is_available) in selected {
        let result = if !is_available {
            CaseResult::missing(name)
        } else {
            // Ours, PyTorch eager, frozen and ONNX Runtime one after the other, round after
            // round, so that all see the same machine load.
            let case_rounds = if name == "peak" { 1 } else { rounds };
            let (mut mine, mut last_raw) = (Vec::new(), None);
            let mut theirs: [Vec<f64>; 3] = Default::default();
            let mut torch_peak_mb: Option<f64> = None;
            for _ in 0..case_rounds {
                let raw = if name == "peak" { peak_raw.clone() } else { ours(&name)? };
                mine.push(summarize(&raw.samples).ok_or_else(|| format!("case {name} returned no samples"))?);
                last_raw = Some(raw);
                for (side, prefix) in theirs.iter_mut().zip(["", "frozen:", "ort:"]) {
                    if let Some((s, peak)) = torch_case(&format!("{prefix}{name}"))? {
                        side.push(s.median);
                        if prefix.is_empty() {
                            torch_peak_mb = [peak, torch_peak_mb].into_iter().flatten().reduce(f64::max);
                        }
                    }
                }
            }
            let raw = last_raw.ok_or_else(|| format!("case {name} did not run"))?;
            let summary = if case_rounds == 1 {
                mine[0]
            } else {
                summarize(&mine.iter().map(|s| s.median).collect::<Vec<_>>()).expect("rounds ran")
            };
            let [torch_s, frozen, ort] = theirs.map(|v| summarize(&v));
            CaseResult {
                name,
                ours: Some((summary, raw)),
                torch: torch_s,
                frozen,
                ort,
                torch_peak_mb,
                rounds: case_rounds,
            }
        };
        eprintln!("{}", table(std::slice::from_ref(&result), peak, torch.is_some()).lines().nth(2).unwrap_or_default());
        results.push(result);
    }
    println!(
        "CPU: {} (widest vector extension: {}); {threads} threads; {rounds} round(s){}",
        cpu_model().unwrap_or_else(|| "unknown".into()),
        widest_vector_extension().unwrap_or("unknown"),
        if versions.is_null() { String::new() } else { format!("; Python side: {versions}") }
    );
    println!("{}", table(&results, peak, torch.is_some()));
    if let Some(path) = &o.json {
        let report = report_json(machine_info(peak, &versions), o.threads, &results);
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&s(&["--filter", "conv", "--quick", "--vs-torch", "--threads", "3", "--json", "x.json"]))
            .unwrap();
        assert_eq!(o.filter.as_deref(), Some("conv"));
        assert!(o.quick && o.vs_torch);
        assert_eq!(o.threads, 3);
        assert_eq!(o.json, Some(PathBuf::from("x.json")));
        assert!(parse_args(&s(&["--threads", "0"])).is_err());
        assert!(parse_args(&s(&["--filter"])).is_err());
        assert_eq!(parse_args(&s(&["--device", "cuda"])).unwrap().device, "cuda");
        assert_eq!(parse_args(&s(&[])).unwrap().device, "cpu");
        assert!(parse_args(&s(&["--device", "tpu"])).is_err());
        assert!(parse_args(&s(&["--bogus"])).is_err());
    }

    #[test]
    fn every_option_the_usage_lists_is_accepted() {
        let flags: Vec<&str> = USAGE.split_whitespace().filter(|w| w.starts_with("--")).collect();
        assert!(flags.len() >= 7, "{flags:?}");
        for flag in flags {
            let value = match flag {
                "--threads" | "--rounds" => "2",
                "--device" => "cpu",
                _ => "x",
            };
            let alone = parse_args(&s(&[flag]));
            let with_value = parse_args(&s(&[flag, value]));
            assert!(alone.is_ok() || with_value.is_ok(), "{flag}: {alone:?} / {with_value:?}");
        }
        assert!(crate::wants_help(&s(&["--filter", "x", "--help"])));
        assert!(crate::wants_help(&s(&["-h"])));
        assert!(!crate::wants_help(&s(&["--filter", "help-me"])));
        assert!(!crate::wants_help(&s(&["--filter", "help"])));
        assert!(crate::wants_help(&s(&["help"])));
    }

    #[test]
    fn filters_are_substrings_globs_or_lists() {
        assert!(matches(None, "anything"));
        assert!(matches(Some("matmul"), "matmul-1024"));
        assert!(!matches(Some("matmul"), "peak"));
        assert!(matches(Some("conv-*-fwd"), "conv-3x3-64to64-56-fwd"));
        assert!(!matches(Some("conv-*-fwd"), "conv-3x3-64to64-56-bwd-input"));
        assert!(matches(Some("*1024"), "matmul-1024"));
        assert!(matches(Some("peak,matmul-2048"), "matmul-2048"));
        assert!(!matches(Some("conv-*"), "xconv-1"));
    }

    #[test]
    fn selection_marks_missing_cases_unavailable() {
        let sel = select(&s(&["peak", "matmul-1024", "extra-case"]), Some("matmul,extra,infer-resnet50-b1"));
        assert_eq!(
            sel,
            vec![
                ("matmul-1024".to_string(), true),
                ("matmul-2048".to_string(), false),
                ("infer-resnet50-b1".to_string(), false),
                ("extra-case".to_string(), true)
            ]
        );
        assert!(canonical_cases().iter().filter(|c| c.starts_with("conv-")).count() == 15);
    }

    fn result(name: &str, median: f64, torch: Option<f64>) -> CaseResult {
        let raw = Raw {
            name: name.into(),
            samples: vec![median],
            flops: Some(2e9),
            images: Some(8),
            peak_rss_mb: Some(12.5),
        };
        let sum = summarize(&raw.samples).unwrap();
        CaseResult {
            name: name.into(),
            ours: Some((sum, raw)),
            torch: torch.map(|t| summarize(&[t]).unwrap()),
            frozen: None,
            ort: None,
            torch_peak_mb: Some(100.0),
            rounds: 1,
        }
    }

    #[test]
    fn json_has_every_field_with_nulls_where_missing() {
        let r = result("conv-x", 0.5, Some(1.0));
        let j = r.to_json();
        assert_eq!(j["median_s"], 0.5);
        assert_eq!(j["gflops"], 4.0);
        assert_eq!(j["images_per_s"], 16.0);
        assert_eq!(j["ratio_vs_torch"], 0.5);
        assert_eq!(j["torch_median_s"], 1.0);
        let missing = CaseResult::missing("infer-resnet50-b1".into()).to_json();
        for k in [
            "median_s",
            "min_s",
            "max_s",
            "runs",
            "images_per_s",
            "gflops",
            "peak_rss_mb",
            "torch_median_s",
            "ratio_vs_torch",
            "frozen_median_s",
            "ort_median_s",
            "ratio_vs_prepared",
        ] {
            assert!(missing[k].is_null(), "{k}");
        }
        assert_eq!(missing["status"], "not available");
        let report = report_json(json!({"cpu": "x"}), 2, &[r]);
        assert_eq!(report["threads"], 2);
        assert_eq!(report["cases"][0]["name"], "conv-x");
    }

    #[test]
    fn table_shows_ratio_and_percent_of_peak() {
        let t = table(&[result("conv-x", 0.5, Some(1.0)), CaseResult::missing("infer-y".into())], Some(8.0), true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("case") && lines[0].contains("ratio"));
        assert!(lines[2].contains("500.00 ms") && lines[2].contains("50%") && lines[2].contains("0.50x"), "{t}");
        assert!(lines[3].contains("not available"));
    }

    #[test]
    fn prepared_comparators_and_round_spreads() {
        let mut r = result("infer-resnet50-b1", 0.05, Some(0.06));
        r.rounds = 3;
        r.ours = r.ours.map(|(_, raw)| (summarize(&[0.05, 0.048, 0.055]).unwrap(), raw));
        r.frozen = summarize(&[0.045]);
        r.ort = summarize(&[0.04]);
        let t = table(&[r.clone()], None, true);
        assert!(t.lines().next().unwrap().contains("vs prepared"), "{t}");
        let row = t.lines().nth(2).unwrap();
        assert!(row.contains("50.00 ms (48.0-55.0)") && row.contains("1.25x"), "{t}");
        assert_eq!(r.to_json()["ratio_vs_prepared"], 1.25);
        let o = parse_args(&s(&["--rounds", "4"])).unwrap();
        assert_eq!((o.rounds(), parse_args(&s(&["--vs-torch"])).unwrap().rounds()), (4, 3));
        assert!(parse_args(&s(&["--rounds", "0"])).is_err());
    }

    #[test]
    fn raw_lines_parse() {
        let r =
            parse_raw(r#"{"name":"peak","samples":[0.1,0.2],"flops":1e9,"images":null,"peak_rss_mb":3.5}"#).unwrap();
        assert_eq!(r.samples, vec![0.1, 0.2]);
        assert_eq!(r.images, None);
        assert!(parse_raw("not json").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_000), "2024-10-04");
    }
}
