//! Naive reference implementations in f64: direct loops that read like the definitions. They
//! are the oracle every fast kernel is tested against, and the functions that finite
//! differences are taken of. Not for production use: they are slow on purpose.

use crate::{Conv2dParams, Pool2dParams};

/// `[m, k] x [k, n]`, row-major.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    out
}

/// Convolution straight from its definition; returns the output and its shape.
pub fn conv2d(
    x: &[f64],
    xs: [usize; 4],
    w: &[f64],
    ws: [usize; 4],
    bias: Option<&[f64]>,
    p: Conv2dParams,
) -> (Vec<f64>, [usize; 4]) {
    let [n, cin, h, wd] = xs;
    let [cout, cin_g, kh, kw] = ws;
    let g = p.groups;
    let cout_g = cout / g;
    let oh = (h + 2 * p.padding[0] - p.dilation[0] * (kh - 1) - 1) / p.stride[0] + 1;
    let ow = (wd + 2 * p.padding[1] - p.dilation[1] * (kw - 1) - 1) / p.stride[1] + 1;
    let mut out = vec![0.0; n * cout * oh * ow];
    for ni in 0..n {
        for co in 0..cout {
            let grp = co / cout_g;
            for y in 0..oh {
                for x_ in 0..ow {
                    let mut s = bias.map_or(0.0, |b| b[co]);
                    for ci in 0..cin_g {
                        let c = grp * cin_g + ci;
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = (y * p.stride[0] + ki * p.dilation[0]) as isize - p.padding[0] as isize;
                                let ix = (x_ * p.stride[1] + kj * p.dilation[1]) as isize - p.padding[1] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    s += x[((ni * cin + c) * h + iy as usize) * wd + ix as usize]
                                        * w[((co * cin_g + ci) * kh + ki) * kw + kj];
                                }
                            }
                        }
                    }
                    out[((ni * cout + co) * oh + y) * ow + x_] = s;
                }
            }
        }
    }
    (out, [n, cout, oh, ow])
}

fn pool_out(size: usize, k: usize, s: usize, pad: usize, ceil: bool) -> usize {
    let span = size + 2 * pad - k;
    let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
    if ceil && (o - 1) * s >= size + pad {
        o -= 1;
    }
    o
}

/// Max pooling: values, flat in-plane indices of the maxima, output shape.
pub fn max_pool2d(x: &[f64], xs: [usize; 4], p: Pool2dParams) -> (Vec<f64>, Vec<i64>, [usize; 4]) {
    let [n, c, h, w] = xs;
    let oh = pool_out(h, p.kernel[0], p.stride[0], p.padding[0], p.ceil_mode);
    let ow = pool_out(w, p.kernel[1], p.stride[1], p.padding[1], p.ceil_mode);
    let mut vals = Vec::new();
    let mut idx = Vec::new();
    for pl in 0..n * c {
        for y in 0..oh {
            for x_ in 0..ow {
                let mut best = f64::NEG_INFINITY;
                let mut bi = -1i64;
                for ki in 0..p.kernel[0] {
                    for kj in 0..p.kernel[1] {
                        let iy = (y * p.stride[0] + ki) as isize - p.padding[0] as isize;
                        let ix = (x_ * p.stride[1] + kj) as isize - p.padding[1] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            let v = x[pl * h * w + iy as usize * w + ix as usize];
                            if v > best || bi < 0 || (v.is_nan() && !best.is_nan()) {
                                best = v;
                                bi = (iy as usize * w + ix as usize) as i64;
                            }
                        }
                    }
                }
                vals.push(best);
                idx.push(bi);
            }
        }
    }
    (vals, idx, [n, c, oh, ow])
}

/// Average pooling with PyTorch's divisor rule.
pub fn avg_pool2d(x: &[f64], xs: [usize; 4], p: Pool2dParams, count_include_pad: bool) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, w] = xs;
    let oh = pool_out(h, p.kernel[0], p.stride[0], p.padding[0], p.ceil_mode);
    let ow = pool_out(w, p.kernel[1], p.stride[1], p.padding[1], p.ceil_mode);
    let mut out = Vec::new();
    for pl in 0..n * c {
        for y in 0..oh {
            for x_ in 0..ow {
                let (mut s, mut inside, mut padded) = (0.0, 0usize, 0usize);
                for ki in 0..p.kernel[0] {
                    for kj in 0..p.kernel[1] {
                        let iy = (y * p.stride[0] + ki) as isize - p.padding[0] as isize;
                        let ix = (x_ * p.stride[1] + kj) as isize - p.padding[1] as isize;
                        // Positions in the padded image count; positions past it (ceil mode) do not.
                        if iy < (h + p.padding[0]) as isize && ix < (w + p.padding[1]) as isize {
                            padded += 1;
                        }
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            s += x[pl * h * w + iy as usize * w + ix as usize];
                            inside += 1;
                        }
                    }
                }
                let div = if count_include_pad { padded } else { inside };
                out.push(s / div.max(1) as f64);
            }
        }
    }
    (out, [n, c, oh, ow])
}

/// Adaptive average pooling with PyTorch's floor/ceil windows.
pub fn adaptive_avg_pool2d(x: &[f64], xs: [usize; 4], out: [usize; 2]) -> Vec<f64> {
    let [n, c, h, w] = xs;
    let mut v = Vec::new();
    for pl in 0..n * c {
        for i in 0..out[0] {
            let (h0, h1) = ((i * h) / out[0], ((i + 1) * h).div_ceil(out[0]));
            for j in 0..out[1] {
                let (w0, w1) = ((j * w) / out[1], ((j + 1) * w).div_ceil(out[1]));
                let mut s = 0.0;
                for y in h0..h1 {
                    for x_ in w0..w1 {
                        s += x[pl * h * w + y * w + x_];
                    }
                }
                v.push(s / ((h1 - h0) * (w1 - w0)) as f64);
            }
        }
    }
    v
}

/// Training-mode batch norm output (batch statistics, biased variance).
pub fn batch_norm_train(x: &[f64], shape: &[usize], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let (n, c, s) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
    let mut out = vec![0.0; x.len()];
    for ci in 0..c {
        let vals: Vec<f64> = (0..n).flat_map(|ni| (0..s).map(move |k| (ni * c + ci) * s + k)).map(|i| x[i]).collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64;
        for ni in 0..n {
            for k in 0..s {
                let i = (ni * c + ci) * s + k;
                out[i] = (x[i] - m) / (var + eps).sqrt() * gamma[ci] + beta[ci];
            }
        }
    }
    out
}
