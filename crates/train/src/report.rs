//! The per-class report of a classifier on a labelled set: scikit-learn's
//! `classification_report` (precision, recall, F1 and support per class, with macro and
//! support-weighted averages) and `confusion_matrix`, plus top-1 and top-5 accuracy.

use crate::{config_err, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One class's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class name.
    pub class: String,
    /// Of the images predicted as this class, the share that are (0 when none was predicted,
    /// scikit-learn's `zero_division=0`).
    pub precision: f64,
    /// Of the images of this class, the share predicted as it (0 without any).
    pub recall: f64,
    /// The harmonic mean of precision and recall (0 when both are).
    pub f1: f64,
    /// Images of this class.
    pub support: usize,
}

/// Precision, recall and F1 averaged over classes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    /// Mean precision.
    pub precision: f64,
    /// Mean recall.
    pub recall: f64,
    /// Mean F1.
    pub f1: f64,
}

/// A classifier's figures on a labelled set; `report.json` is this, serialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// Per class, in index order.
    pub classes: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`: image counts.
    pub confusion: Vec<Vec<usize>>,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy (top-k, k = the class count, with fewer than 5 classes).
    pub top5: f64,
    /// The unweighted mean over classes (scikit-learn's "macro avg").
    pub macro_avg: Averages,
    /// The mean weighted by support ("weighted avg").
    pub weighted_avg: Averages,
    /// Images evaluated.
    pub images: usize,
}

impl ClassReport {
    /// The report of a confusion matrix (`confusion[true][predicted]`) and the count of images
    /// whose class was among their 5 best scores.
    pub fn new(class_names: &[String], confusion: Vec<Vec<usize>>, top5_hits: usize) -> ClassReport {
        let n = class_names.len();
        let images: usize = confusion.iter().flatten().sum();
        let correct: usize = (0..n).map(|i| confusion[i][i]).sum();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let classes: Vec<ClassMetrics> = (0..n)
            .map(|i| {
                let support: usize = confusion[i].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[i]).sum();
                let (precision, recall) = (ratio(confusion[i][i], predicted), ratio(confusion[i][i], support));
                let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
                ClassMetrics { class: class_names[i].clone(), precision, recall, f1, support }
            })
            .collect();
        let average = |weight: &dyn Fn(&ClassMetrics) -> f64| {
            let total: f64 = classes.iter().map(weight).sum();
            let mean = |f: fn(&ClassMetrics) -> f64| {
                if total == 0.0 {
                    0.0
                } else {
                    classes.iter().map(|c| weight(c) * f(c)).sum::<f64>() / total
                }
            };
            Averages { precision: mean(|c| c.precision), recall: mean(|c| c.recall), f1: mean(|c| c.f1) }
        };
        let macro_avg = average(&|_| 1.0);
        let weighted_avg = average(&|c| c.support as f64);
        ClassReport {
            classes,
            confusion,
            accuracy: ratio(correct, images),
            top5: ratio(top5_hits, images),
            macro_avg,
            weighted_avg,
            images,
        }
    }

    /// Writes `report.json` (this report) and `confusion.png` (its matrix) into `dir`, each
    /// atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| tensor::TensorError::Io { path: dir.to_path_buf(), source })?;
        let json = serde_json::to_string_pretty(self).expect("a report serialises");
        tensor::write_atomic(&dir.join("report.json"), json.as_bytes())?;
        let names: Vec<String> = self.classes.iter().map(|c| c.class.clone()).collect();
        let png = crate::plot::confusion_png(&names, &self.confusion)
            .map_err(|e| config_err(format!("drawing {}: {e}", dir.join("confusion.png").display())))?;
        Ok(tensor::write_atomic(&dir.join("confusion.png"), &png)?)
    }

    /// The table as scikit-learn's `classification_report` prints it, with top-5 accuracy.
    pub fn table(&self) -> String {
        let width = self.classes.iter().map(|c| c.class.chars().count()).max().unwrap_or(0).max("top-5 accuracy".len());
        let mut s = format!("{:>width$} {:>9} {:>9} {:>9} {:>9}\n\n", "", "precision", "recall", "f1-score", "support");
        for c in &self.classes {
            s +=
                &format!("{:>width$} {:>9.4} {:>9.4} {:>9.4} {:>9}\n", c.class, c.precision, c.recall, c.f1, c.support);
        }
        s += "\n";
        s += &format!("{:>width$} {:>9} {:>9} {:>9.4} {:>9}\n", "accuracy", "", "", self.accuracy, self.images);
        s += &format!("{:>width$} {:>9} {:>9} {:>9.4} {:>9}\n", "top-5 accuracy", "", "", self.top5, self.images);
        for (name, a) in [("macro avg", self.macro_avg), ("weighted avg", self.weighted_avg)] {
            s += &format!("{:>width$} {:>9.4} {:>9.4} {:>9.4} {:>9}\n", name, a.precision, a.recall, a.f1, self.images);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scikit-learn 1.2.1 (Debian's python3-sklearn) on y_true = [0,0,0,1,1,2,2,2,2] and
    /// y_pred = [0,1,0,1,1,2,0,2,1]: `classification_report(y_true, y_pred, digits=4)` gives
    ///            precision recall f1-score support
    ///   a          0.6667  0.6667  0.6667      3
    ///   b          0.5000  1.0000  0.6667      2
    ///   c          1.0000  0.5000  0.6667      4
    ///   accuracy                   0.6667      9
    ///   macro avg  0.7222  0.7222  0.6667      9
    ///   weighted avg 0.7778 0.6667 0.6667      9
    #[test]
    fn matches_scikit_learns_classification_report() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (truth, pred) = ([0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 0, 1, 1, 2, 0, 2, 1]);
        let mut confusion = vec![vec![0; 3]; 3];
        for (t, p) in truth.iter().zip(pred) {
            confusion[*t][p] += 1;
        }
        let r = ClassReport::new(&names, confusion, 9);
        let round = |v: f64| (v * 1e4).round() / 1e4;
        let got: Vec<[f64; 3]> = r.classes.iter().map(|c| [c.precision, c.recall, c.f1].map(round)).collect();
        assert_eq!(got, [[0.6667, 0.6667, 0.6667], [0.5, 1.0, 0.6667], [1.0, 0.5, 0.6667]]);
        assert_eq!(r.classes.iter().map(|c| c.support).collect::<Vec<_>>(), [3, 2, 4]);
        assert_eq!(round(r.accuracy), 0.6667);
        assert_eq!([r.macro_avg.precision, r.macro_avg.recall, r.macro_avg.f1].map(round), [0.7222, 0.7222, 0.6667]);
        assert_eq!(
            [r.weighted_avg.precision, r.weighted_avg.recall, r.weighted_avg.f1].map(round),
            [0.7778, 0.6667, 0.6667]
        );
        assert_eq!(r.top5, 1.0);
        let table = r.table();
        let line = table.lines().find(|l| l.trim_start().starts_with("accuracy")).unwrap();
        assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["accuracy", "0.6667", "9"], "{table}");
    }

    #[test]
    fn a_class_never_predicted_or_absent_scores_zero_not_nan() {
        let names: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let r = ClassReport::new(&names, vec![vec![2, 0], vec![0, 0]], 2);
        assert_eq!(
            (r.classes[1].precision, r.classes[1].recall, r.classes[1].f1, r.classes[1].support),
            (0.0, 0.0, 0.0, 0)
        );
        assert_eq!(r.accuracy, 1.0);
        let empty = ClassReport::new(&names, vec![vec![0, 0], vec![0, 0]], 0);
        assert_eq!((empty.accuracy, empty.macro_avg.f1), (0.0, 0.0));
    }
}
