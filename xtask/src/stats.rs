//! Summary statistics of one case's samples, and what they mean per case.

/// Median, extremes and count of a set of timings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

/// `None` for an empty sample set. The median of an even count is the mean of the middle two.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    Some(Summary { median, min: s[0], max: s[n - 1], runs: n })
}

/// GFLOP/s at the median time.
pub fn gflops(flops: Option<f64>, s: &Summary) -> Option<f64> {
    flops.map(|f| f / s.median / 1e9)
}

/// Images per second at the median time.
pub fn images_per_s(images: Option<usize>, s: &Summary) -> Option<f64> {
    images.map(|i| i as f64 / s.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN, 1.0]).unwrap().runs, 1);
    }

    #[test]
    fn throughput_figures() {
        let s = summarize(&[0.5]).unwrap();
        assert_eq!(gflops(Some(1e9), &s), Some(2.0));
        assert_eq!(images_per_s(Some(8), &s), Some(16.0));
        assert_eq!(gflops(None, &s), None);
    }
}
