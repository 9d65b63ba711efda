//! Shape arithmetic shared by the ops: numpy broadcasting and dimension checks.

use crate::error::{mismatch, Result, TensorError};

/// The numpy broadcast of two shapes: dimensions are aligned from the right, and a dimension of
/// size 1 stretches to match the other.
pub fn broadcast_shapes(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Vec<usize>> {
    let rank = lhs.len().max(rhs.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let l = if i < rank - lhs.len() { 1 } else { lhs[i - (rank - lhs.len())] };
        let r = if i < rank - rhs.len() { 1 } else { rhs[i - (rank - rhs.len())] };
        out[i] = match (l, r) {
            (a, b) if a == b => a,
            (1, b) => b,
            (a, 1) => a,
            _ => return Err(mismatch(op, lhs, rhs)),
        };
    }
    Ok(out)
}

/// Checks that `dim` indexes a tensor of rank `rank`.
pub fn check_dim(op: &'static str, dim: usize, rank: usize) -> Result<()> {
    if dim < rank {
        Ok(())
    } else {
        Err(TensorError::DimOutOfRange { op, dim, rank })
    }
}

/// The number of elements of a shape, or an error when it overflows `usize` — or when the
/// product of its non-zero dimensions exceeds `isize::MAX`, which ndarray refuses even for an
/// empty array (a shape such as `[0, 2^63]` holds no elements but is not a valid array shape).
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    let overflow =
        || TensorError::InvalidShape { op, shape: shape.to_vec(), msg: "the number of elements overflows".into() };
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(overflow)?;
    Ok(if shape.contains(&0) { 0 } else { nonzero })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes("t", &[2, 1, 4], &[3, 1]).unwrap(), vec![2, 3, 4]);
        assert_eq!(broadcast_shapes("t", &[], &[5]).unwrap(), vec![5]);
        assert!(broadcast_shapes("t", &[2, 3], &[4]).is_err());
    }
}
