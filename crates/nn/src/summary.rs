//! A torchinfo-style summary table: `Layer (type:depth-idx)`, `Output Shape`, `Param #`,
//! `Mult-Adds`, then totals and estimated sizes. Mult-adds follow torchinfo's rule (a conv's
//! weight and bias count once per output position, other layers' once per batch element).

use crate::module::{Module, ModuleExt, ShapeRecorder, SummaryRow};
use crate::Result;

/// Figures of a summary, for callers that want numbers rather than text.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryTotals {
    /// All parameters.
    pub total_params: usize,
    /// Parameters that require grad.
    pub trainable_params: usize,
    /// Mult-adds for the given input.
    pub mult_adds: u64,
    /// Output shape.
    pub output_shape: Vec<usize>,
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rows and totals of a module for an input shape.
pub fn summarize(module: &dyn Module, input: &[usize]) -> Result<(Vec<SummaryRow>, SummaryTotals)> {
    let mut rec = ShapeRecorder::default();
    let output_shape = rec.child("", module, input)?;
    let (total_params, trainable_params) = module.parameter_counts();
    let mult_adds = rec.rows.iter().map(|r| r.macs).sum();
    Ok((rec.rows, SummaryTotals { total_params, trainable_params, mult_adds, output_shape }))
}

/// The table, showing modules down to `depth` (torchinfo's default is 3).
pub fn summary(module: &dyn Module, input: &[usize], depth: usize) -> Result<String> {
    let (rows, totals) = summarize(module, input)?;
    let width = 96;
    let rule = "=".repeat(width);
    let mut out = String::new();
    out += &format!(
        "{rule}\n{:<40}{:<25}{:<15}{:>16}\n{rule}\n",
        "Layer (type:depth-idx)", "Output Shape", "Param #", "Mult-Adds"
    );
    // Whether each row has a shown descendant (then its own counts are "--", as torchinfo does).
    let shown = |r: &SummaryRow| r.depth <= depth;
    for (i, r) in rows.iter().enumerate().filter(|(_, r)| shown(r)) {
        let has_shown_children = rows.get(i + 1).is_some_and(|n| n.depth == r.depth + 1 && shown(n));
        let mut label = String::new();
        if r.depth > 0 {
            for _ in 1..r.depth {
                label += "│    ";
            }
            label += &format!("└─{}: {}-{}", r.type_name, r.depth, r.index);
        } else {
            label += r.type_name;
        }
        if r.depth > 0 && label.starts_with("└─") {
            label = format!("├─{}", &label["└─".len()..]);
        }
        let params = if has_shown_children {
            if r.own_params > 0 {
                thousands(r.own_params as u64)
            } else {
                "--".into()
            }
        } else if r.total_params > 0 {
            thousands(r.total_params as u64)
        } else {
            "--".into()
        };
        let subtree_macs: u64 =
            rows[i..].iter().take_while(|n| n.depth > r.depth || std::ptr::eq(*n, r)).map(|n| n.macs).sum();
        let macs = if has_shown_children { r.macs } else { subtree_macs };
        let macs = if macs > 0 { thousands(macs) } else { "--".into() };
        let shape = format!("{:?}", r.output_shape);
        out += &format!("{:<40}{:<25}{:<15}{:>16}\n", label, shape, params, macs);
    }
    let bytes_in = input.iter().product::<usize>() as f64 * 4.0;
    let leaf_out: f64 =
        rows.iter().filter(|r| r.is_leaf).map(|r| r.output_shape.iter().product::<usize>() as f64 * 4.0).sum();
    let params_bytes = totals.total_params as f64 * 4.0;
    let mb = |b: f64| b / 1e6;
    out += &format!("{rule}\n");
    out += &format!("Total params: {}\n", thousands(totals.total_params as u64));
    out += &format!("Trainable params: {}\n", thousands(totals.trainable_params as u64));
    out += &format!("Non-trainable params: {}\n", thousands((totals.total_params - totals.trainable_params) as u64));
    let (unit, div) = if totals.mult_adds >= 1_000_000_000 { ("G", 1e9) } else { ("M", 1e6) };
    out += &format!("Total mult-adds ({unit}): {:.2}\n", totals.mult_adds as f64 / div);
    out += &format!("{rule}\n");
    out += &format!("Input size (MB): {:.2}\n", mb(bytes_in));
    out += &format!("Forward/backward pass size (MB): {:.2}\n", mb(2.0 * leaf_out));
    out += &format!("Params size (MB): {:.2}\n", mb(params_bytes));
    out += &format!("Estimated Total Size (MB): {:.2}\n", mb(bytes_in + 2.0 * leaf_out + params_bytes));
    out += &format!("{rule}\n");
    Ok(out)
}
