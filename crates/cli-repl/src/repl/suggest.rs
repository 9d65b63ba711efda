//! "Did you mean" suggestions: the closest candidate by edit distance.

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions), on chars.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo. A
/// case-insensitive match always wins (`ResNet18` -> `resnet18`).
pub(crate) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lower = word.to_lowercase();
    // Roughly Python 3.12's rule: about one edit per three characters.
    let allowed = (word.chars().count() + 1) / 3;
    let allowed = allowed.max(1);
    // Ranked by distance ignoring case, then with case (`resnet5` is nearer `resnet50` than
    // `ResNet`), then by name so the choice is stable.
    let mut best: Option<(usize, usize, &str)> = None;
    for c in candidates {
        if c == word {
            continue;
        }
        let d = if c.to_lowercase() == lower { 0 } else { distance(&lower, &c.to_lowercase()) };
        // Never suggest a name sharing nothing with the word (`x` -> `F`).
        if d > allowed || d >= word.chars().count() {
            continue;
        }
        let key = (d, distance(word, c), c);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map(|(_, _, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos() {
        assert_eq!(suggest("resnet5", ["ResNet", "resnet18", "resnet50", "resnet152"]).as_deref(), Some("resnet50"));
        assert_eq!(suggest("sofmax", ["softmax", "log_softmax"]).as_deref(), Some("softmax"));
        assert_eq!(suggest("ResNet18", ["resnet18"]).as_deref(), Some("resnet18"));
        assert_eq!(suggest("zzzzzz", ["softmax"]), None);
    }
}
