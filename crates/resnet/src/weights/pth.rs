//! PyTorch `.pth` files: the zip container (PyTorch >= 1.6) and the legacy stream of pickles
//! (older files such as `resnet34-333f7ec4.pth`), read through the restricted unpickler.

use super::pickle::{
    storage_class, storage_from_pid, unpickle, Id, Obj, PickleError, StorageDType, TensorRef, Unpickled,
};
use crate::{ResnetError, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tensor::Tensor;

/// The magic number opening a legacy file (`torch.serialization.MAGIC_NUMBER`).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;
/// The most the tensors of a file may copy out of its storages, as a multiple of their size
/// (shared storages are legitimate, e.g. tied weights, but not thousands of copies).
const MAX_COPIES: u64 = 4;
/// Elements that may be copied regardless of [`MAX_COPIES`].
const COPY_SLACK: u64 = 1 << 20;

fn bad(path: &Path, msg: impl Into<String>) -> ResnetError {
    ResnetError::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// Reads the tensors of a `.pth` image: a state dict, or a checkpoint dict wrapping one under
/// `state_dict` or `model`. Non-tensor entries are ignored.
pub(crate) fn read_pth_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes, path)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes, path)
    } else {
        Err(bad(path, "neither a zip archive (PyTorch >= 1.6) nor a legacy PyTorch pickle"))
    }
}

fn read_zip(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(path, format!("not a readable zip archive (truncated or corrupt): {e}")))?;
    // Every entry's raw data range, so storages are sliced straight out of the file image.
    let mut entries: HashMap<String, (usize, usize)> = HashMap::new();
    for i in 0..archive.len() {
        let f = archive.by_index_raw(i).map_err(|e| bad(path, format!("zip entry {i}: {e}")))?;
        let name = f.name().to_string();
        if f.compression() != zip::CompressionMethod::Stored {
            return Err(bad(path, format!("zip entry {name} is compressed; PyTorch stores entries uncompressed")));
        }
        if f.encrypted() {
            return Err(bad(path, format!("zip entry {name} is encrypted; PyTorch never encrypts entries")));
        }
        let start = f
            .data_start()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| bad(path, format!("zip entry {name}: no usable data offset")))?;
        let len = usize::try_from(f.size()).map_err(|_| bad(path, "entry too large"))?;
        if start.checked_add(len).is_none_or(|end| end > bytes.len()) {
            return Err(bad(path, format!("zip entry {name} extends past the end of the file")));
        }
        entries.insert(name, (start, len));
    }
    let pkl_name = entries
        .keys()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min()
        .cloned()
        .ok_or_else(|| bad(path, "the archive has no data.pkl: not a PyTorch file"))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Some(&(s, l)) = entries.get(&format!("{prefix}byteorder")) {
        if &bytes[s..s + l] != b"little" {
            return Err(bad(path, "big-endian PyTorch files are not supported"));
        }
    }
    let (s, l) = entries[&pkl_name];
    let (pickled, _) = unpickle(&bytes[s..s + l], &storage_from_pid).map_err(|e| refused_or_bad(path, e, ""))?;
    collect_tensors(&pickled, path, &|t: &TensorRef| {
        let name = format!("{prefix}data/{}", t.storage.key);
        let &(s, l) = entries
            .get(&name)
            .ok_or_else(|| bad(path, format!("storage {} is missing from the archive", t.storage.key)))?;
        Ok(&bytes[s..s + l])
    })
}

fn read_legacy(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Unpickled> {
        let (p, used) =
            unpickle(&bytes[pos..], &storage_from_pid).map_err(|e| refused_or_bad(path, e, &format!("{what}: ")))?;
        pos += used;
        Ok(p)
    };
    let magic = next("magic number")?;
    let magic_ok = match magic.get(magic.root) {
        Obj::BigInt(b) => b.as_slice() == LEGACY_MAGIC,
        _ => false,
    };
    if !magic_ok {
        return Err(bad(path, "not a PyTorch file (wrong magic number)"));
    }
    let proto = next("protocol version")?;
    if proto.get(proto.root) != &Obj::Int(LEGACY_PROTOCOL) {
        return Err(bad(path, "unsupported legacy protocol version"));
    }
    let sys_info = next("system info")?;
    if let Obj::Dict(items) = sys_info.get(sys_info.root) {
        for &(k, v) in items {
            if sys_info.get(k) == &Obj::Str("little_endian".into()) && sys_info.get(v) == &Obj::Bool(false) {
                return Err(bad(path, "big-endian PyTorch files are not supported"));
            }
        }
    }
    let main = next("state dict")?;
    let keys = next("storage keys")?;
    let Obj::List(key_ids) = keys.get(keys.root) else {
        return Err(bad(path, "the storage key list is not a list"));
    };
    // Element sizes of the storages, from the persistent ids the state dict used.
    let mut dtypes: HashMap<String, StorageDType> = HashMap::new();
    for o in &main.objects {
        if let Obj::Storage(s) = o {
            check_dtype(&mut dtypes, &s.key, s.dtype).map_err(|m| bad(path, m))?;
        }
    }
    let mut storages: HashMap<String, (usize, usize)> = HashMap::new();
    for &k in key_ids {
        let key = match keys.get(k) {
            Obj::Str(s) => s.clone(),
            _ => return Err(bad(path, "a storage key is not a string")),
        };
        let elem =
            dtypes.get(&key).ok_or_else(|| bad(path, format!("storage {key} is not used by any tensor")))?.size();
        let header = bytes.get(pos..pos + 8).ok_or_else(|| bad(path, format!("truncated before storage {key}")))?;
        let count = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        let start = pos + 8;
        let len = count
            .checked_mul(elem as u64)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= bytes.len() - start)
            .ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "storage {key} claims {count} elements of {elem} bytes, more than the {} bytes left in the file",
                        bytes.len() - start
                    ),
                )
            })?;
        storages.insert(key, (start, len));
        pos = start + len;
    }
    collect_tensors(&main, path, &|t: &TensorRef| {
        let &(s, l) = storages
            .get(&t.storage.key)
            .ok_or_else(|| bad(path, format!("storage {} has no data in the file", t.storage.key)))?;
        Ok(&bytes[s..s + l])
    })
}

fn refused_or_bad(path: &Path, e: PickleError, what: &str) -> ResnetError {
    match e {
        PickleError::Refused(msg) => ResnetError::Refused { path: path.to_path_buf(), msg: format!("{what}{msg}") },
        PickleError::Malformed(msg) => bad(path, format!("unreadable pickle: {what}{msg}")),
    }
}

/// Finds the state dict (the root, or `root["state_dict"]` / `root["model"]`) and turns each
/// tensor entry into a [`Tensor`].
fn collect_tensors<'b>(
    p: &Unpickled,
    path: &Path,
    data_of: &dyn Fn(&TensorRef) -> Result<&'b [u8]>,
) -> Result<Vec<(String, Tensor)>> {
    let entries = |id: Id| -> Option<&Vec<(Id, Id)>> {
        match p.get(id) {
            Obj::Dict(d) => Some(d),
            _ => None,
        }
    };
    let root = entries(p.root).ok_or_else(|| bad(path, "the file does not hold a dict of tensors"))?;
    let key_of = |id: Id| match p.get(id) {
        Obj::Str(s) => Some(s.as_str()),
        _ => None,
    };
    let wrapped = root
        .iter()
        .find(|(k, v)| matches!(key_of(*k), Some("state_dict" | "model")) && entries(*v).is_some())
        .map(|(_, v)| *v);
    let dict = entries(wrapped.unwrap_or(p.root)).expect("checked above");
    let mut out = Vec::new();
    let mut dtypes: HashMap<String, StorageDType> = HashMap::new();
    let mut keys: HashSet<&str> = HashSet::new();
    // Elements of the distinct storages referenced, and of the views copied out of them.
    let (mut stored, mut copied) = (0u64, 0u64);
    for &(k, v) in dict {
        let Obj::Tensor(t) = p.get(v) else { continue };
        let key = key_of(k).ok_or_else(|| bad(path, "a state-dict key is not a string"))?;
        if !keys.insert(key) {
            return Err(bad(path, format!("the state dict sets {key} twice")));
        }
        let key = key.to_string();
        if !dtypes.contains_key(&t.storage.key) {
            stored = stored.saturating_add(t.storage.numel);
        }
        check_dtype(&mut dtypes, &t.storage.key, t.storage.dtype)
            .map_err(|m| bad(path, format!("tensor {key}: {m}")))?;
        // Views may share a storage (tied weights), but a file whose tensors would copy its
        // data out many times over is a decompression bomb built from shared storages.
        let numel = t
            .size
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(path, format!("tensor {key}: the element count of size {:?} overflows", t.size)))?;
        // (A view larger than its storage is refused by `materialize`, before any copy.)
        if numel <= t.storage.numel {
            copied = copied.saturating_add(numel);
        }
        if copied > MAX_COPIES.saturating_mul(stored).saturating_add(COPY_SLACK) {
            return Err(bad(
                path,
                format!(
                    "at tensor {key}, the views would copy out {copied} elements from storages of {stored}: more than {MAX_COPIES} times the data; refusing (shared-storage bomb)"
                ),
            ));
        }
        let tensor = materialize(t, data_of(t)?).map_err(|m| bad(path, format!("tensor {key}: {m}")))?;
        out.push((key, tensor));
    }
    if out.is_empty() && !dict.is_empty() {
        return Err(bad(path, "the dict holds no tensors"));
    }
    Ok(out)
}

/// Records the element type a storage is used with; one storage read as two types is refused
/// (PyTorch never writes that: a storage has one type).
fn check_dtype(
    seen: &mut HashMap<String, StorageDType>,
    key: &str,
    dtype: StorageDType,
) -> std::result::Result<(), String> {
    match seen.get(key) {
        Some(&d) if d != dtype => {
            Err(format!("storage {key} is used both as a {} and as a {}", storage_class(d), storage_class(dtype)))
        }
        Some(_) => Ok(()),
        None => {
            seen.insert(key.to_string(), dtype);
            Ok(())
        }
    }
}

/// Copies a strided view of raw storage bytes into a tensor (floats to f32, integers to i64).
fn materialize(t: &TensorRef, data: &[u8]) -> std::result::Result<Tensor, String> {
    let elem = t.storage.dtype.size();
    let available = (data.len() / elem) as u64;
    if t.storage.numel > available {
        return Err(format!("its storage claims {} elements but holds {available}", t.storage.numel));
    }
    let dims: Vec<usize> = t
        .size
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| "a dimension is too large".to_string()))
        .collect::<std::result::Result<_, _>>()?;
    let numel = t.size.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or("the element count overflows")?;
    let start = t.storage.view_offset.checked_add(t.offset).ok_or("the offset overflows")?;
    if numel > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(start, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?))
            .ok_or("the strides overflow")?;
        if last >= t.storage.numel {
            return Err(format!(
                "its view (offset {start}, size {:?}, stride {:?}) reads past its storage of {} elements",
                t.size, t.stride, t.storage.numel
            ));
        }
        if numel > t.storage.numel {
            return Err(format!("it claims {numel} elements from a storage of {}", t.storage.numel));
        }
    }
    let index = |flat: u64| -> usize {
        let mut rem = flat;
        let mut at = start;
        for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
            at += (rem % d) * s;
            rem /= d;
        }
        at as usize
    };
    let contiguous = {
        let mut expected = 1u64;
        let mut ok = true;
        for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
            if d > 1 && s != expected {
                ok = false;
            }
            // Saturating: an empty view may have huge dimensions beside its zero.
            expected = expected.saturating_mul(d);
        }
        ok
    };
    // The view's elements as one run of bytes: a slice of the storage when contiguous, a
    // gathered copy otherwise; then one statically dispatched conversion per dtype.
    let gathered: Vec<u8>;
    let bytes: &[u8] = if numel == 0 {
        // An empty view's offset is not checked against the storage: read nothing.
        &[]
    } else if contiguous {
        &data[start as usize * elem..(start + numel) as usize * elem]
    } else {
        gathered = (0..numel).map(index).flat_map(|i| data[i * elem..(i + 1) * elem].iter().copied()).collect();
        &gathered
    };
    let tensor = t.storage.dtype.decode(bytes, &dims);
    debug_assert!(t.storage.dtype.is_float() || tensor.as_ref().is_ok_and(|t| t.dtype() == tensor::DType::I64));
    tensor.map_err(|e| e.to_string())
}
