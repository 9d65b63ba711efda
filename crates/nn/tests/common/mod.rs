//! The small network of the PyTorch fixtures (`fixtures/gen_nn_fixtures.py`) and helpers.
#![allow(dead_code)]

use nn::*;
use tensor::{Pool2dParams, Rng, Tensor};

pub fn fixture(name: &str) -> Tensor {
    let path = format!("{}/tests/fixtures/torch/{name}.npy", env!("CARGO_MANIFEST_DIR"));
    tensor::read_npy(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// conv -> bn -> relu -> maxpool -> (conv -> bn) + residual -> relu -> avgpool -> linear.
pub struct Small {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub relu: ReLU,
    pub pool: MaxPool2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    pub avgpool: AdaptiveAvgPool2d,
    pub fc: Linear,
}

impl Small {
    pub fn new(seed: u64) -> Small {
        let mut rng = Rng::seed(seed);
        Small {
            conv1: Conv2dConfig::new(3, 4, 3).padding(1).bias(false).init(&mut rng).unwrap(),
            bn1: BatchNorm2d::new(4),
            relu: ReLU,
            pool: MaxPool2d(Pool2dParams::new(2)),
            conv2: Conv2dConfig::new(4, 4, 3).padding(1).bias(false).init(&mut rng).unwrap(),
            bn2: BatchNorm2d::new(4),
            avgpool: AdaptiveAvgPool2d([1, 1]),
            fc: Linear::new(4, 3, true, &mut rng).unwrap(),
        }
    }

    /// The network with the fixtures' initial weights.
    pub fn from_fixture() -> Small {
        let net = Small::new(0);
        let entries: Vec<(String, Tensor)> =
            net.state_dict().into_iter().map(|(k, _)| (k.clone(), fixture(&format!("init_{k}")))).collect();
        net.load_state_dict(&entries, true).unwrap();
        net
    }
}

impl Module for Small {
    fn type_name(&self) -> &'static str {
        "Small"
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        let h = self.pool.forward(&self.relu.forward(&self.bn1.forward(&self.conv1.forward(x)?)?)?)?;
        let r = self.bn2.forward(&self.conv2.forward(&h)?)?;
        let h = self.relu.forward(&r.add(&h)?)?;
        self.fc.forward(&self.avgpool.forward(&h)?.flatten_from(1)?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("conv1".into(), &self.conv1 as &dyn Module),
            ("bn1".into(), &self.bn1),
            ("relu".into(), &self.relu),
            ("pool".into(), &self.pool),
            ("conv2".into(), &self.conv2),
            ("bn2".into(), &self.bn2),
            ("avgpool".into(), &self.avgpool),
            ("fc".into(), &self.fc),
        ]
    }
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> Result<Vec<usize>> {
        let s = rec.child("conv1", &self.conv1, input)?;
        let s = rec.child("bn1", &self.bn1, &s)?;
        let s = rec.child("relu", &self.relu, &s)?;
        let s = rec.child("pool", &self.pool, &s)?;
        let r = rec.child("conv2", &self.conv2, &s)?;
        let r = rec.child("bn2", &self.bn2, &r)?;
        let s = rec.child("avgpool", &self.avgpool, &r)?;
        rec.child("fc", &self.fc, &[s[0], s[1] * s[2] * s[3]])
    }
}

/// Asserts `max |got - want| <= tol * max(1, max |want|)`.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{what}[{i}]: {a} vs {b} (tolerance {})", tol * scale);
    }
}

/// Peak-free current resident memory in KiB (Linux).
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
