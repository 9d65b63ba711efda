//! `.npy` reading and writing: round trips, numpy's own files (the PyTorch fixtures), Fortran
//! order, and broken files refused with errors naming the file.

mod common;
use tensor::*;

#[test]
fn round_trip_f32_and_i64() {
    let dir = std::env::temp_dir().join(format!("npy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = Tensor::arange(0.0, 6.0, 1.0).unwrap().reshape(&[2, 3]).unwrap().transpose(0, 1).unwrap();
    write_npy(dir.join("a.npy"), &a).unwrap();
    let b = read_npy(dir.join("a.npy")).unwrap();
    assert_eq!(b.shape(), &[3, 2]);
    assert_eq!(b.to_vec_f32().unwrap(), a.to_vec_f32().unwrap());
    let i = Tensor::from_vec_i64(vec![-1, 5, 1 << 40], &[3]).unwrap();
    write_npy(dir.join("i.npy"), &i).unwrap();
    assert_eq!(read_npy(dir.join("i.npy")).unwrap().to_vec_i64().unwrap(), vec![-1, 5, 1 << 40]);
    write_npy(dir.join("s.npy"), &Tensor::scalar(2.5)).unwrap();
    assert_eq!(read_npy(dir.join("s.npy")).unwrap().shape(), &[] as &[usize]);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn header_is_64_byte_aligned_like_numpy() {
    let bytes = npy_bytes(&Tensor::zeros(&[2, 2])).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    assert_eq!(bytes.len(), 10 + hlen + 16);
}

#[test]
fn reads_files_written_by_numpy() {
    let idx = common::fixture("maxpool_k3s2p1_idx");
    assert_eq!(idx.dtype(), DType::I64);
    assert_eq!(idx.shape(), &[2, 3, 5, 4]);
}

fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(header.len() as u16).to_le_bytes());
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn fortran_order_and_other_dtypes() {
    // A 2x3 Fortran array [[0,1,2],[3,4,5]] stored column by column as f64.
    let data: Vec<u8> = [0.0f64, 3.0, 1.0, 4.0, 2.0, 5.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = read_npy_bytes(
        &with_header("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n", &data),
        "f.npy".as_ref(),
    )
    .unwrap();
    assert_eq!(t.to_vec_f32().unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let data: Vec<u8> = [7i32, -8].iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = read_npy_bytes(
        &with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }\n", &data),
        "i.npy".as_ref(),
    )
    .unwrap();
    assert_eq!(t.to_vec_i64().unwrap(), vec![7, -8]);
}

#[test]
fn broken_files_are_errors_naming_the_file() {
    let p: &std::path::Path = "bad.npy".as_ref();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"PK\x03\x04".to_vec(), "magic"),
        (with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n", &[0; 12]), "needs 16 bytes"),
        (with_header("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }\n", &[0; 8]), "unsupported dtype"),
        (
            with_header(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }\n",
                &[],
            ),
            "overflow",
        ),
        (with_header("{'descr': '<f4', 'shape': (1,), }\n", &[0; 4]), "fortran_order"),
        (b"\x93NUMPY\x01\x00\xff\x00{".to_vec(), "truncated"),
    ];
    for (bytes, why) in cases {
        let e = read_npy_bytes(&bytes, p).unwrap_err().to_string();
        assert!(e.contains("bad.npy") && e.contains(why), "expected '{why}' in: {e}");
    }
    let e = read_npy("/nonexistent/x.npy").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/x.npy"), "{e}");
}

/// A shape with a zero holds no elements, but no array can take `(0, 2**62, 2**62)`: ndarray
/// refuses a product of the other dimensions above `isize::MAX`. It used to be accepted by the
/// element count (zero) and then panic building the array; it is an error now, in `.npy` files
/// and in `Tensor::from_vec` (which the weight readers use).
#[test]
fn empty_shapes_no_array_can_take_are_errors() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4611686018427387904), }\n";
    let e = read_npy_bytes(&with_header(header, b""), "z.npy".as_ref()).unwrap_err().to_string();
    assert!(e.contains("z.npy") && e.contains("overflows"), "{e}");
    assert!(Tensor::from_vec(vec![], &[0, 1 << 62, 1 << 62]).is_err());
    assert!(Tensor::from_vec_i64(vec![], &[1 << 63, 0]).is_err());
    assert!(Tensor::from_vec(vec![], &[0, 1 << 40]).unwrap().shape() == [0, 1 << 40]);
    assert!(Tensor::zeros(&[0, 3]).reshape(&[0, usize::MAX]).is_err());
}
