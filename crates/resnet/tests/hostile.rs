//! Hostile and broken weight files: each is refused with a clear error naming the file and what
//! was refused, without running anything, without panicking, in bounded time (a deadline per
//! file, so a hang fails instead of blocking) and bounded memory (a counting allocator measures
//! what each load allocates on its thread).
//!
//! The committed suite lives in `fixtures/hostile/` (written by `fixtures/gen_hostile_pth.py`;
//! [`HOSTILE`] lists each file with the error it must get). Cases that need large inputs to
//! show their effect (a memory amplification, a quadratic copy) are assembled here instead.

mod common;
use common::*;
use resnet::{read_weights, ResnetError};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Counts the bytes each thread holds, and its peak.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = HELD.try_with(|h| {
        let now = h.get() + delta;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const DEADLINE: Duration = Duration::from_secs(10);
const MIB: isize = 1 << 20;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Refused,
    Format,
}

struct Outcome {
    result: Result<usize, (Option<Kind>, String)>,
    peak: isize,
    took: Duration,
}

/// Runs `load` on a thread of its own and waits at most [`DEADLINE`].
fn guarded(what: &str, load: impl FnOnce() -> resnet::Result<resnet::StateDict> + Send + 'static) -> Outcome {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        HELD.with(|h| h.set(0));
        PEAK.with(|p| p.set(0));
        let start = Instant::now();
        let result = load().map(|sd| sd.entries.len()).map_err(|e| {
            let kind = match &e {
                ResnetError::Refused { .. } => Some(Kind::Refused),
                ResnetError::Format { .. } => Some(Kind::Format),
                _ => None,
            };
            (kind, e.to_string())
        });
        let took = start.elapsed();
        let _ = tx.send(Outcome { result, peak: PEAK.with(Cell::get), took });
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {DEADLINE:?} (a hang)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the reader panicked"),
    }
}

fn load_file(path: &Path) -> Outcome {
    let p = path.to_path_buf();
    guarded(&path.display().to_string(), move || read_weights(&p))
}

fn load_pth_bytes(path: &Path) -> Outcome {
    let p = path.to_path_buf();
    let bytes = std::fs::read(path).unwrap();
    guarded(&path.display().to_string(), move || resnet::weights::read_pth_bytes(&bytes, &p))
}

use Kind::{Format, Refused};

/// Every committed hostile file, the kind of error it must get and words the message must hold.
/// `ok.pth` and `legacy_ok.pth` are the well-formed controls the others are mutated from.
const HOSTILE: &[(&str, Kind, &str)] = &[
    // Globals that would run code, wherever they appear.
    ("os_system.pth", Refused, "names `os.system`"),
    ("posix_system_legacy.pth", Refused, "names `posix.system`"),
    ("subprocess_popen.pth", Refused, "names `subprocess.Popen`"),
    ("builtins_eval.pth", Refused, "names `__builtin__.eval`"),
    ("builtins_exec.pth", Refused, "names `builtins.exec`"),
    ("builtins_getattr.pth", Refused, "names `builtins.getattr`"),
    ("nested_reduce_in_state_dict.pth", Refused, "names `__builtin__.eval`"),
    ("nested_reduce_in_rebuild_args.pth", Refused, "names `os.system`"),
    ("copyreg_reconstructor.pth", Refused, "names `copyreg._reconstructor`"),
    ("nested_torch_load.pth", Refused, "names `torch.storage._load_from_bytes`"),
    ("stack_global_system.pth", Refused, "names `os.system`"),
    ("legacy_evil_sys_info.pth", Refused, "system info: the pickle names `posix.system`"),
    ("ext_opcode.pth", Refused, "extension registry (EXT)"),
    ("newobj.pth", Refused, "constructs an object of an arbitrary class"),
    ("obj_opcode.pth", Refused, "constructs an object of an arbitrary class"),
    ("inst_opcode.pth", Refused, "constructs an object of an arbitrary class"),
    ("storage_class_call.pth", Refused, "calls a tensor or storage class directly"),
    // Allowed globals called with the wrong arguments.
    ("wrong_args_storage_is_str.pth", Format, "_rebuild_tensor of a string, not a storage"),
    ("wrong_args_size_is_str.pth", Format, "a size must be a non-negative integer, got a string"),
    ("wrong_args_size_is_list.pth", Format, "expected a tuple of arguments, got a list"),
    ("wrong_args_too_few.pth", Format, "_rebuild_tensor with too few arguments"),
    ("wrong_args_ordered_dict.pth", Format, "OrderedDict built from a tuple, not a [key, value] pair"),
    ("ordered_dict_two_args.pth", Format, "OrderedDict with more than one constructor argument"),
    ("wrong_args_parameter.pth", Format, "_rebuild_parameter of None, not a tensor"),
    ("wrong_args_from_type.pth", Format, "REDUCE calls a string, which is not an allowed global"),
    ("from_type_not_tensor_class.pth", Format, "a class other than Tensor or Parameter"),
    ("reduce_of_a_string.pth", Format, "REDUCE calls a string"),
    ("persistent_id_not_storage.pth", Format, "a persistent id that is not a storage"),
    // Nesting, memo and stack tricks.
    ("deep_tuples.pth", Format, "does not hold a dict of tensors"),
    ("deep_marks.pth", Format, "unexpected MARK"),
    ("deep_rebuild_from_type.pth", Format, "nested rebuild calls too deep"),
    ("memo_get_missing.pth", Format, "memo key 7 was never stored"),
    ("memo_get_missing_long.pth", Format, "memo key 4294967295 was never stored"),
    ("memo_recursive.pth", Format, "holds no tensors"),
    ("stack_underflow.pth", Format, "stack underflow"),
    ("pop_mark_without_mark.pth", Format, "no MARK on the stack"),
    ("unterminated_string.pth", Format, "2147483647 bytes needed at offset 7, 3 available"),
    ("unterminated_line.pth", Format, "unterminated text line"),
    ("no_stop.pth", Format, "truncated pickle"),
    ("unknown_opcode.pth", Format, "unsupported pickle opcode 0xff"),
    ("protocol_99.pth", Format, "unsupported pickle protocol 99"),
    ("long_storage_key.pth", Format, "a storage key of 2000 bytes"),
    // Claimed sizes, shapes, strides and offsets.
    ("storage_claims_1e12.pth", Format, "tensor w: its storage claims 1000000000000 elements but holds 6"),
    ("view_of_1e12_elements.pth", Format, "tensor w: its storage claims 1000000000000 elements but holds 6"),
    ("expand_1e12.pth", Format, "tensor w: it claims 1000000000000 elements from a storage of 6"),
    ("shape_negative.pth", Format, "a size must be a non-negative integer, got -1"),
    ("stride_negative.pth", Format, "a stride must be a non-negative integer, got -3"),
    ("offset_negative.pth", Format, "a storage offset must be a non-negative integer, got -1"),
    ("storage_numel_negative.pth", Format, "a storage without a valid element count"),
    (
        "shape_overflow.pth",
        Format,
        "tensor w: the element count of size [4294967296, 4294967296, 4294967296] overflows",
    ),
    ("stride_overflow.pth", Format, "tensor w: the strides overflow"),
    ("offset_overflow.pth", Format, "(offset 9223372036854775807, size [2, 3], stride [3, 1]) reads past its storage"),
    ("zero_dim_huge_shape.pth", Format, "tensor w: from_vec: the number of elements overflows"),
    ("offset_past_data.pth", Format, "(offset 100, size [2, 3], stride [3, 1]) reads past its storage of 6"),
    ("storage_bigger_than_data.pth", Format, "tensor w: its storage claims 6 elements but holds 3"),
    ("view_needs_more_than_storage.pth", Format, "(offset 0, size [2, 3], stride [4, 1]) reads past its storage"),
    ("size_stride_rank_differ.pth", Format, "size [2, 3] and stride [1] differ in length"),
    ("rank_100.pth", Format, "a size has 100 dimensions; at most 64"),
    ("big_int_size.pth", Format, "a size must be a non-negative integer, got an integer beyond 64 bits"),
    ("dtype_conflict.pth", Format, "tensor b: storage 0 is used both as a FloatStorage and as a LongStorage"),
    ("duplicate_key.pth", Format, "the state dict sets w twice"),
    ("shared_storage_bomb.pth", Format, "from storages of 8192: more than 4 times the data"),
    // The zip container.
    ("truncated_zip.pth", Format, "not a readable zip archive"),
    ("missing_data_file.pth", Format, "storage 0 is missing from the archive"),
    ("missing_data_pkl.pth", Format, "the archive has no data.pkl"),
    ("big_endian.pth", Format, "big-endian PyTorch files are not supported"),
    ("zip_bomb.pth", Format, "zip entry archive/data.pkl is compressed"),
    ("zip_entry_claims_4gib.pth", Format, "zip entry archive/data/0 extends past the end of the file"),
    ("zip_claims_65535_entries.pth", Format, "not a readable zip archive"),
    ("compressed_entry.pth", Format, "zip entry archive/data.pkl is compressed"),
    ("not_a_weight_file.pth", Format, "neither a zip archive (PyTorch >= 1.6) nor a legacy PyTorch pickle"),
    ("empty.pth", Format, "neither a zip archive"),
    // The legacy container.
    (
        "legacy_storage_claims_1e12.pth",
        Format,
        "storage 0 claims 1000000000000 elements of 4 bytes, more than the 24 bytes",
    ),
    ("legacy_length_wraps.pth", Format, "storage 0 claims 4611686018427387903 elements of 4 bytes"),
    ("legacy_truncated_storage.pth", Format, "storage 0 claims 6 elements of 4 bytes, more than the 10 bytes"),
    ("legacy_missing_storage.pth", Format, "storage 0 has no data in the file"),
    ("legacy_unused_storage.pth", Format, "storage 9 is not used by any tensor"),
    ("legacy_wrong_magic.pth", Format, "wrong magic number"),
    ("legacy_wrong_protocol.pth", Format, "unsupported legacy protocol version"),
    ("legacy_big_endian.pth", Format, "big-endian PyTorch files are not supported"),
    ("legacy_keys_not_a_list.pth", Format, "the storage key list is not a list"),
    ("legacy_dtype_conflict.pth", Format, "storage 0 is used both as a FloatStorage and as a LongStorage"),
    // safetensors (through the same entry point).
    ("header_len_huge.safetensors", Format, "header too large"),
    ("shape_overflow.safetensors", Format, "overflow computing buffer size"),
    ("offsets_past_data.safetensors", Format, "invalid shape, data type, or offset"),
    ("zero_dim_huge_shape.safetensors", Format, "tensor w: from_vec: the number of elements overflows"),
    ("truncated_header.safetensors", Format, "invalid header length"),
];

/// The well-formed controls.
const CONTROLS: [&str; 2] = ["ok.pth", "legacy_ok.pth"];

/// What one load of a committed hostile file may allocate.
const MAX_PEAK: isize = 16 * MIB;

fn check_refused(name: &str, o: &Outcome, kind: Kind, words: &str) {
    let path = dir().join(name);
    match &o.result {
        Ok(n) => panic!("{name}: accepted ({n} tensors) but must be refused"),
        Err((k, msg)) => {
            assert_eq!(*k, Some(kind), "{name}: wrong kind of error: {msg}");
            assert!(msg.starts_with(&path.display().to_string()), "{name}: the error must name the file: {msg}");
            assert!(msg.contains(words), "{name}: expected `{words}` in: {msg}");
        }
    }
    assert!(o.peak < MAX_PEAK, "{name}: allocated {} KiB at the peak", o.peak / 1024);
}

#[test]
fn every_committed_hostile_file_is_refused_quickly_and_cheaply() {
    let mut listed: Vec<&str> = HOSTILE.iter().map(|h| h.0).chain(CONTROLS).collect();
    listed.sort();
    let mut present: Vec<String> =
        std::fs::read_dir(dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    present.sort();
    assert_eq!(present, listed, "fixtures/hostile/ and HOSTILE must list the same files (rerun the generator?)");
    for &(name, kind, words) in HOSTILE {
        let path = dir().join(name);
        let o = load_file(&path);
        check_refused(name, &o, kind, words);
        // The .pth reader itself (what `read_weights` dispatches to) says the same.
        if name.ends_with(".pth") {
            let direct = load_pth_bytes(&path);
            check_refused(name, &direct, kind, words);
        }
    }
    for name in CONTROLS {
        let o = load_file(&dir().join(name));
        assert_eq!(o.result, Ok(1), "{name}");
    }
}

/// A pickle that makes the unpickler copy one memoized tensor over and over
/// (`_rebuild_parameter(t)` needs no new input but makes a new object) would grow without
/// bound; the memory budget refuses it.
#[test]
fn memory_amplification_is_refused_within_the_budget() {
    let rank = 64;
    let mut p = Pickle::new()
        .global("torch._utils", "_rebuild_parameter")
        .op(b"q\x00")
        .global("torch._utils", "_rebuild_tensor_v2")
        .mark()
        .storage("FloatStorage", &"k".repeat(1000), 1)
        .int(0)
        .mark();
    for _ in 0..rank {
        p = p.op(b"K\x01");
    }
    p = p.tuple().mark();
    for _ in 0..rank {
        p = p.op(b"K\x01");
    }
    // (tensor,) memoized as 1; then `_rebuild_parameter(*memo[1])`, popped, 200,000 times.
    p = p.tuple().op(b"\x89").global("collections", "OrderedDict").op(b")").reduce().tuple().reduce().op(b"\x85q\x01");
    let body = b"h\x00h\x01R0".repeat(200_000);
    let pickle = p.op(&body).op(b"}").stop();
    let path = temp_file("amplification.pth", &zip_pth(&pickle, &[]));
    let o = load_file(&path);
    match &o.result {
        Err((Some(Kind::Refused), msg)) => assert!(msg.contains("MiB of objects"), "{msg}"),
        other => panic!("amplification: {other:?}"),
    }
    assert!(o.peak < 320 * MIB, "amplification: allocated {} MiB", o.peak / MIB);
}

/// Python 2's OrderedDict is rebuilt from a list of pairs: one memoized list of 100,000 pairs
/// passed to 20,000 calls would build 64 GB of dicts; the budget stops it first.
#[test]
fn ordered_dicts_from_a_reused_list_of_pairs_stay_within_the_budget() {
    let p = Pickle::new()
        .global("collections", "OrderedDict")
        .op(b"q\x00")
        .op(b"K\x01K\x02\x86q\x01") // the pair (1, 2), memoized as 1
        .op(b"]")
        .mark()
        .op(&b"h\x01".repeat(100_000))
        .op(b"e\x85q\x02"); // ([pair] * 100,000,) memoized as 2
    let pickle = p.op(&b"h\x00h\x02R0".repeat(20_000)).op(b"}").stop();
    let o = load_file(&temp_file("pairs_amplification.pth", &zip_pth(&pickle, &[])));
    match &o.result {
        Err((Some(Kind::Refused), msg)) => assert!(msg.contains("MiB of objects"), "{msg}"),
        other => panic!("pairs amplification: {other:?}"),
    }
    assert!(o.peak < 320 * MIB, "pairs amplification: allocated {} MiB", o.peak / MIB);
    assert!(o.took < Duration::from_secs(5), "took {:?}", o.took);
}

/// Calls that take a memoized tuple of 200,000 arguments, again and again, must not copy it
/// each time (that was quadratic: 320 GB copied for a pickle of 1.4 MB).
#[test]
fn reusing_a_huge_argument_tuple_is_not_quadratic() {
    // args = (tensor, None, None, ... 200,000 times), memoized as 1.
    let mut p = Pickle::new()
        .global("torch._utils", "_rebuild_parameter")
        .op(b"q\x00")
        .mark()
        .tensor("0", 1, 0, &[1], &[1])
        .op(b"N")
        .op(b"2")
        .op(&b"2".repeat(200_000))
        .tuple()
        .op(b"q\x01");
    // `_rebuild_parameter(*args)`, popped, 200,000 times.
    p = p.op(&b"h\x00h\x01R0".repeat(200_000));
    let pickle = p.op(b"}").stop();
    let o = load_file(&temp_file("quadratic.pth", &zip_pth(&pickle, &[])));
    assert_eq!(o.result, Ok(0));
    assert!(o.took < Duration::from_secs(5), "took {:?}", o.took);
}

fn load_err(name: &str, bytes: &[u8]) -> String {
    let path = temp_file(name, bytes);
    let e = read_weights(&path).expect_err("must be refused").to_string();
    assert!(e.contains(name), "the error must name the file: {e}");
    e
}

/// A valid one-tensor state dict `{"w": tensor}` as a zip `.pth`, its storage all zeros.
fn valid(numel: i64, offset: i64, size: &[i64], stride: &[i64], data_floats: usize) -> Vec<u8> {
    with_storage(numel, offset, size, stride, &vec![0.0; data_floats])
}

/// `{"w": tensor}` viewing the given f32 storage.
fn with_storage(numel: i64, offset: i64, size: &[i64], stride: &[i64], storage: &[f32]) -> Vec<u8> {
    let pickle = Pickle::new()
        .global("collections", "OrderedDict")
        .op(b")")
        .reduce()
        .str("w")
        .tensor("0", numel, offset, size, stride)
        .op(b"s")
        .stop();
    zip_pth(&pickle, &[("0", storage.iter().flat_map(|v| v.to_le_bytes()).collect())])
}

#[test]
fn a_well_formed_crafted_file_loads() {
    let path = temp_file("ok.pth", &valid(6, 0, &[2, 3], &[3, 1], 6));
    let sd = read_weights(&path).unwrap();
    assert_eq!(sd.entries[0].0, "w");
    assert_eq!(sd.entries[0].1.shape(), &[2, 3]);
    // A transposed (strided) view is gathered correctly.
    let storage = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let path = temp_file("t.pth", &with_storage(7, 1, &[3, 2], &[1, 3], &storage));
    let t = &read_weights(&path).unwrap().entries[0].1;
    assert_eq!(t.shape(), &[3, 2]);
    assert_eq!(t.to_vec_f32().unwrap(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // A contiguous view from an offset is the storage's run of elements.
    let path = temp_file("c.pth", &with_storage(7, 3, &[2, 2], &[2, 1], &storage));
    assert_eq!(read_weights(&path).unwrap().entries[0].1.to_vec_f32().unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
    // An empty view reads nothing, whatever its offset.
    let path = temp_file("e.pth", &with_storage(7, 100, &[0, 3], &[3, 1], &storage));
    assert_eq!(read_weights(&path).unwrap().entries[0].1.shape(), &[0, 3]);
}

#[test]
fn globals_that_would_run_code_are_refused() {
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
        ("builtins", "getattr"),
        ("torch", "load"),
    ] {
        let pickle = Pickle::new().global(module, name).mark().str("echo pwned").tuple().reduce().stop();
        let e = load_err(&format!("evil_{name}.pth"), &zip_pth(&pickle, &[]));
        assert!(e.contains(&format!("{module}.{name}")) && e.contains("refusing"), "{e}");
        // The same in a legacy-format stream.
        let e = load_err(&format!("evil_legacy_{name}.pth"), &pickle);
        assert!(e.contains(&format!("{module}.{name}")), "{e}");
    }
}

#[test]
fn object_construction_opcodes_are_refused() {
    let pickle = Pickle::new().global("collections", "OrderedDict").op(b")").op(b"\x81").stop();
    let e = load_err("newobj.pth", &zip_pth(&pickle, &[]));
    assert!(e.contains("arbitrary class"), "{e}");
}

#[test]
fn broken_archives_and_views_are_errors() {
    let good = std::fs::read(fixture_path("resnet18.pth")).unwrap();
    let e = load_err("truncated.pth", &good[..good.len() / 2]);
    assert!(e.contains("zip"), "{e}");
    let e = load_err("offset.pth", &valid(6, 4, &[2, 3], &[3, 1], 6));
    assert!(e.contains("reads past its storage"), "{e}");
    let e = load_err("huge.pth", &valid(1_000_000_000_000, 0, &[1_000_000, 1_000_000], &[1_000_000, 1], 6));
    assert!(e.contains("claims 1000000000000 elements but holds 6"), "{e}");
    let e = load_err("broadcast.pth", &valid(6, 0, &[1_000_000_000_000], &[0], 6));
    assert!(e.contains("claims 1000000000000 elements from a storage of 6"), "{e}");
    let e = load_err("negative.pth", &valid(6, -1, &[2, 3], &[3, 1], 6));
    assert!(e.contains("non-negative"), "{e}");
    let e = load_err("overflow.pth", &valid(6, 0, &[2, 3], &[i64::MAX, 1], 6));
    assert!(e.contains("overflow") || e.contains("past its storage"), "{e}");
    let e = load_err(
        "missing-storage.pth",
        &zip_pth(
            &Pickle::new()
                .global("collections", "OrderedDict")
                .op(b")")
                .reduce()
                .str("w")
                .tensor("7", 6, 0, &[6], &[1])
                .op(b"s")
                .stop(),
            &[],
        ),
    );
    assert!(e.contains("storage 7 is missing"), "{e}");
    let e = load_err("text.pth", b"this is not a weight file at all");
    assert!(e.contains("neither"), "{e}");
    let e = load_err("empty.safetensors", b"");
    assert!(!e.is_empty());
    let e = load_err("memo.pth", &zip_pth(&Pickle::new().op(b"h\x05").stop(), &[]));
    assert!(e.contains("memo"), "{e}");
    let e = load_err("underflow.pth", &zip_pth(&Pickle::new().op(b"s").stop(), &[]));
    assert!(e.contains("underflow"), "{e}");
    let e = load_err("unterminated.pth", &zip_pth(&Pickle::new().op(b"X\xff\xff\xff\x7f").stop(), &[]));
    assert!(e.contains("truncated"), "{e}");
    let missing = read_weights("/nonexistent/w.pth").unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/w.pth"), "{missing}");
}

#[test]
fn a_self_referencing_memo_does_not_hang() {
    // d = {}; d["x"] = d  (a dict containing itself): no tensors, so it is refused, quickly.
    let pickle = Pickle::new().op(b"}q\x00").str("x").op(b"h\x00s").stop();
    let e = load_err("recursive.pth", &zip_pth(&pickle, &[]));
    assert!(e.contains("no tensors"), "{e}");
}
