//! A restricted unpickler: it understands the pickle opcodes and the handful of globals that a
//! PyTorch state dict uses, and refuses everything else. It never calls anything: the allowed
//! globals are recognised by name and their effect (build a dict, describe a tensor view of a
//! storage) is reproduced here.
//!
//! Resources are bounded: lengths are checked against the remaining input before anything is
//! allocated; every object, memo entry and copied argument is charged to a memory budget
//! ([`MAX_HEAP`]), so no sequence of opcodes can make a small pickle allocate without bound;
//! nothing large is copied per opcode (so time stays linear in the input); and tensor ranks,
//! storage keys and the nesting of rebuild calls have limits.

use std::collections::HashMap;

/// Objects live in an arena so that the memo can share them (a dict may be memoized before its
/// items are set, as pickle does).
pub(crate) type Id = usize;

/// The most memory the machine may account for (objects, their contents, memo and stack
/// entries). A state dict of thousands of tensors needs a few megabytes.
pub(crate) const MAX_HEAP: usize = 256 << 20;
/// Deepest nesting of `_rebuild_from_type_v2` calls.
const MAX_DEPTH: usize = 256;
/// Most dimensions of a tensor.
pub(crate) const MAX_RANK: usize = 64;
/// Longest storage key (PyTorch's are decimal numbers).
const MAX_KEY: usize = 1024;
/// Accounted size of a stack, memo or id slot.
const SLOT: usize = 16;

/// Element types of PyTorch storages: the weight files' element types of `tensor`.
pub(crate) use tensor::StoredDType as StorageDType;

/// PyTorch's storage class of each element type (`torch.FloatStorage`, ...).
const STORAGE_CLASSES: [(StorageDType, &str); 10] = [
    (StorageDType::F32, "FloatStorage"),
    (StorageDType::F64, "DoubleStorage"),
    (StorageDType::F16, "HalfStorage"),
    (StorageDType::BF16, "BFloat16Storage"),
    (StorageDType::I64, "LongStorage"),
    (StorageDType::I32, "IntStorage"),
    (StorageDType::I16, "ShortStorage"),
    (StorageDType::I8, "CharStorage"),
    (StorageDType::U8, "ByteStorage"),
    (StorageDType::Bool, "BoolStorage"),
];

fn storage_dtype(class: &str) -> Option<StorageDType> {
    STORAGE_CLASSES.iter().find(|(_, name)| *name == class).map(|(d, _)| *d)
}

/// PyTorch's name of the storage class of `dtype`.
pub(crate) fn storage_class(dtype: StorageDType) -> &'static str {
    STORAGE_CLASSES.iter().find(|(d, _)| *d == dtype).map_or("?", |(_, name)| name)
}

/// The globals a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TensorClass,
    ParameterClass,
    Storage(StorageDType),
}

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") => Global::TensorClass,
        ("torch.nn.parameter", "Parameter") => Global::ParameterClass,
        // `torch.cuda.FloatStorage` & co. name the element type of a tensor saved from a GPU
        // (PyTorch < 1.0); the data is read to the CPU like any other.
        ("torch" | "torch.cuda", storage) => Global::Storage(storage_dtype(storage)?),
        _ => return None,
    })
}

/// A storage named by a persistent id: data lives outside the pickle under `key`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub dtype: StorageDType,
    pub key: String,
    /// Elements the storage claims to hold.
    pub numel: u64,
    /// For legacy storage views: the offset into the root storage.
    pub view_offset: u64,
}

/// A tensor described by the pickle: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
}

impl Obj {
    /// Accounted memory of an object: its slot plus what it owns.
    fn heap_size(&self) -> usize {
        std::mem::size_of::<Obj>()
            + match self {
                Obj::BigInt(b) | Obj::Bytes(b) => b.len(),
                Obj::Str(s) => s.len(),
                Obj::Tuple(v) | Obj::List(v) => v.len() * SLOT,
                Obj::Dict(v) => v.len() * 2 * SLOT,
                Obj::Storage(s) => std::mem::size_of::<StorageRef>() + s.key.len(),
                Obj::Tensor(t) => {
                    std::mem::size_of::<TensorRef>() + t.storage.key.len() + (t.size.len() + t.stride.len()) * 8
                }
                Obj::None | Obj::Bool(_) | Obj::Int(_) | Obj::Float(_) | Obj::Global(_) => 0,
            }
    }
}

/// The parsed pickle: its objects and the root.
pub(crate) struct Unpickled {
    pub objects: Vec<Obj>,
    pub root: Id,
}

impl Unpickled {
    pub fn get(&self, id: Id) -> &Obj {
        &self.objects[id]
    }
}

/// What went wrong, in words; the caller adds the file name.
pub(crate) type Msg = String;

/// Why a pickle was not read.
#[derive(Debug)]
pub(crate) enum PickleError {
    /// It asks for something a state dict never needs (a foreign global, object construction).
    Refused(Msg),
    /// It is truncated, inconsistent or uses an unsupported opcode.
    Malformed(Msg),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    objects: Vec<Obj>,
    stack: Vec<Option<Id>>, // None is a MARK
    memo: HashMap<u64, Id>,
    /// Memory accounted so far (see [`MAX_HEAP`]).
    heap: usize,
    /// Set where the pickle asks for something refused, so the error is classified by cause.
    refused: bool,
    /// Turns a persistent id into an object (a storage); `None` refuses persistent ids.
    persistent: &'a dyn Fn(&Unpickled, Id) -> Result<Obj, Msg>,
}

/// Runs the pickle at the start of `data`; returns the result and the bytes consumed.
pub(crate) fn unpickle(
    data: &[u8],
    persistent: &dyn Fn(&Unpickled, Id) -> Result<Obj, Msg>,
) -> Result<(Unpickled, usize), PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        objects: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
        heap: 0,
        refused: false,
        persistent,
    };
    let root =
        m.run().map_err(|msg| if m.refused { PickleError::Refused(msg) } else { PickleError::Malformed(msg) })?;
    let consumed = m.pos;
    Ok((Unpickled { objects: m.objects, root }, consumed))
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Msg> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            format!(
                "truncated pickle: {n} bytes needed at offset {}, {} available",
                self.pos,
                self.data.len() - self.pos
            )
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Msg> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Msg> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Msg> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Msg> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<String, Msg> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle: unterminated text line")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    /// Accounts for `bytes` more memory, failing past [`MAX_HEAP`].
    fn charge(&mut self, bytes: usize) -> Result<(), Msg> {
        self.heap = self.heap.saturating_add(bytes);
        if self.heap > MAX_HEAP {
            self.refused = true;
            return Err(format!(
                "the pickle needs more than {} MiB of objects to unpickle (a state dict needs a few); refusing it",
                MAX_HEAP >> 20
            ));
        }
        Ok(())
    }
    /// Charges `n` elements of `size` bytes before they are allocated or copied.
    fn charge_items(&mut self, n: usize, size: usize) -> Result<(), Msg> {
        self.charge(n.saturating_mul(size))
    }
    fn alloc(&mut self, o: Obj) -> Result<Id, Msg> {
        self.charge(o.heap_size())?;
        self.objects.push(o);
        Ok(self.objects.len() - 1)
    }
    fn push(&mut self, o: Obj) -> Result<(), Msg> {
        let id = self.alloc(o)?;
        self.push_id(Some(id))
    }
    fn push_id(&mut self, id: Option<Id>) -> Result<(), Msg> {
        self.charge(SLOT)?;
        self.stack.push(id);
        Ok(())
    }
    fn pop(&mut self) -> Result<Id, Msg> {
        match self.stack.pop() {
            Some(Some(id)) => Ok(id),
            Some(None) => Err("unexpected MARK on the stack".into()),
            None => Err("stack underflow".into()),
        }
    }
    fn top(&self) -> Result<Id, Msg> {
        match self.stack.last() {
            Some(Some(id)) => Ok(*id),
            _ => Err("stack underflow".into()),
        }
    }
    /// The items since the last MARK (the mark is removed).
    fn pop_mark(&mut self) -> Result<Vec<Id>, Msg> {
        let at = self.stack.iter().rposition(Option::is_none).ok_or("no MARK on the stack")?;
        let items = self.stack.split_off(at + 1).into_iter().map(|x| x.expect("no marks after the last one")).collect();
        self.stack.pop();
        Ok(items)
    }
    fn memo_put(&mut self, key: u64) -> Result<(), Msg> {
        let id = self.top()?;
        self.charge(2 * SLOT)?;
        self.memo.insert(key, id);
        Ok(())
    }
    fn memo_get(&mut self, key: u64) -> Result<(), Msg> {
        let id = *self.memo.get(&key).ok_or_else(|| format!("memo key {key} was never stored"))?;
        self.push_id(Some(id))
    }
    fn int_from_le(bytes: &[u8]) -> Obj {
        if bytes.len() <= 8 {
            let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
            buf[..bytes.len()].copy_from_slice(bytes);
            Obj::Int(i64::from_le_bytes(buf))
        } else {
            Obj::BigInt(bytes.to_vec())
        }
    }
    fn string(&mut self, n: usize) -> Result<Obj, Msg> {
        self.utf8(n, "a string is not UTF-8")
    }
    /// `n` bytes as a string; `not_utf8` says what was expected when they are not UTF-8.
    fn utf8(&mut self, n: usize, not_utf8: &str) -> Result<Obj, Msg> {
        let b = self.take(n)?;
        Ok(Obj::Str(std::str::from_utf8(b).map_err(|_| not_utf8.to_string())?.to_string()))
    }
    fn bytes(&mut self, n: usize) -> Result<Obj, Msg> {
        Ok(Obj::Bytes(self.take(n)?.to_vec()))
    }
    fn len64(&mut self) -> Result<usize, Msg> {
        usize::try_from(self.u64()?).map_err(|_| "length too large".to_string())
    }

    fn run(&mut self) -> Result<Id, Msg> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.push_id(None)?,
                b')' => self.push(Obj::Tuple(vec![]))?,
                b']' => self.push(Obj::List(vec![]))?,
                b'}' => self.push(Obj::Dict(vec![]))?,
                0x8f => self.push(Obj::List(vec![]))?, // EMPTY_SET, kept as a list
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("DICT with an odd number of items".into());
                    }
                    self.push(Obj::Dict(items.chunks(2).map(|c| (c[0], c[1])).collect()))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.extend_list(l, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.extend_list(l, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let d = self.top()?;
                    self.set_items(d, items.chunks(2).map(|c| (c[0], c[1])).collect())?;
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let k = self.line()?.trim().parse().map_err(|_| "bad PUT index")?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let k = self.line()?.trim().parse().map_err(|_| "bad GET index")?;
                    self.memo_get(k)?;
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Obj::Int(v))?;
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Obj::Int(v))?;
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Obj::Int(v))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Self::int_from_le(&b))?;
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Self::int_from_le(&b))?;
                }
                b'I' | b'L' => {
                    let s = self.line()?;
                    let s = s.trim().trim_end_matches('L');
                    let o = match s {
                        "01" => Obj::Bool(true),
                        "00" => Obj::Bool(false),
                        _ => Obj::Int(s.parse().map_err(|_| format!("bad integer {s:?}"))?),
                    };
                    self.push(o)?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(Obj::Float(v))?;
                }
                b'F' => {
                    let s = self.line()?;
                    self.push(Obj::Float(s.trim().parse().map_err(|_| format!("bad float {s:?}"))?))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let o = self.string(n)?;
                    self.push(o)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let o = self.string(n)?;
                    self.push(o)?;
                }
                0x8d => {
                    let n = self.len64()?;
                    let o = self.string(n)?;
                    self.push(o)?;
                }
                // SHORT_BINSTRING / BINSTRING are Python 2's `str`, which torch.load decodes as
                // UTF-8 (its default `encoding`), so Python-2-era keys are strings;
                // SHORT_BINBYTES / BINBYTES are `bytes`.
                b'U' | b'T' | b'C' | b'B' => {
                    let n = if matches!(op, b'U' | b'C') { self.u8()? as usize } else { self.u32()? as usize };
                    let o = if matches!(op, b'U' | b'T') {
                        self.utf8(n, "a Python 2 string is not UTF-8 (torch.load decodes them as UTF-8)")?
                    } else {
                        self.bytes(n)?
                    };
                    self.push(o)?;
                }
                0x8e => {
                    let n = self.len64()?;
                    let o = self.bytes(n)?;
                    self.push(o)?;
                }
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let g = match (&self.objects[module], &self.objects[name]) {
                        (Obj::Str(m), Obj::Str(n)) => self.resolve_global(m, n),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    };
                    self.push_global(g)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let o = self.reduce(func, args, 0)?;
                    self.push(o)?;
                }
                b'b' => {
                    // BUILD sets an object's state (__setstate__ / __dict__). Nothing a state
                    // dict needs lives there (OrderedDict's `_metadata`, a tensor's hooks), so
                    // the state is dropped rather than applied.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let snapshot = Unpickled { objects: std::mem::take(&mut self.objects), root: pid };
                    let o = (self.persistent)(&snapshot, pid);
                    self.objects = snapshot.objects;
                    self.push(o?)?;
                }
                b'0' => {
                    self.stack.pop().ok_or("stack underflow")?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.push_id(Some(id))?;
                }
                b'P' => return Err("text persistent ids are not used by PyTorch files".into()),
                0x81 | 0x92 | b'o' | b'i' => {
                    self.refused = true;
                    return Err("the pickle constructs an object of an arbitrary class (NEWOBJ/OBJ/INST)".into());
                }
                0x82..=0x84 => {
                    // EXT1/2/4 name a callable through copyreg's extension registry.
                    self.refused = true;
                    return Err("the pickle names a global through copyreg's extension registry (EXT)".into());
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at offset {}", self.pos - 1)),
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), Msg> {
        let g = self.resolve_global(module, name);
        self.push_global(g)
    }

    /// An allowed global, or the refusal naming it.
    fn resolve_global(&self, module: &str, name: &str) -> Result<Global, Msg> {
        let (module, name) = (module.trim(), name.trim());
        allowed_global(module, name).ok_or_else(|| {
            let shown = |s: &str| -> String {
                let mut t: String = s.chars().take(200).flat_map(char::escape_debug).collect();
                if s.chars().count() > 200 {
                    t.push_str("...");
                }
                t
            };
            format!(
                "the pickle names `{}.{}`, which is not part of a tensor state dict; refusing to load it (nothing was executed)",
                shown(module),
                shown(name)
            )
        })
    }

    fn push_global(&mut self, g: Result<Global, Msg>) -> Result<(), Msg> {
        match g {
            Ok(g) => self.push(Obj::Global(g)),
            Err(msg) => {
                self.refused = true;
                Err(msg)
            }
        }
    }

    fn extend_list(&mut self, list: Id, items: Vec<Id>) -> Result<(), Msg> {
        self.charge_items(items.len(), SLOT)?;
        match &mut self.objects[list] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<(Id, Id)>) -> Result<(), Msg> {
        self.charge_items(items.len(), 2 * SLOT)?;
        match &mut self.objects[dict] {
            Obj::Dict(d) => {
                d.extend(items);
                Ok(())
            }
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    /// The items of a tuple, borrowed (arguments are never copied wholesale: a memoized tuple
    /// can be passed to any number of calls).
    fn tuple(&self, id: Id) -> Result<&[Id], Msg> {
        match &self.objects[id] {
            Obj::Tuple(t) => Ok(t),
            other => Err(format!("expected a tuple of arguments, got {}", kind(other))),
        }
    }

    fn uint(&self, id: Id, what: &str) -> Result<u64, Msg> {
        match self.objects[id] {
            Obj::Int(v) if v >= 0 => Ok(v as u64),
            Obj::Int(v) => Err(format!("{what} must be a non-negative integer, got {v}")),
            ref other => Err(format!("{what} must be a non-negative integer, got {}", kind(other))),
        }
    }

    /// A size or stride tuple, at most [`MAX_RANK`] long.
    fn uints(&self, id: Id, what: &str) -> Result<Vec<u64>, Msg> {
        let items = self.tuple(id)?;
        if items.len() > MAX_RANK {
            return Err(format!("{what} has {} dimensions; at most {MAX_RANK} are supported", items.len()));
        }
        items.iter().map(|&i| self.uint(i, what)).collect()
    }

    /// Applies an allowed callable, recognised by name, to its arguments.
    fn reduce(&mut self, func: Id, args: Id, depth: usize) -> Result<Obj, Msg> {
        if depth > MAX_DEPTH {
            return Err("nested rebuild calls too deep".into());
        }
        let g = match self.objects[func] {
            Obj::Global(g) => g,
            ref other => return Err(format!("REDUCE calls {}, which is not an allowed global", kind(other))),
        };
        // No allowed callable takes more than six arguments: only those are looked at.
        let a: Vec<Id> = self.tuple(args)?.iter().take(8).copied().collect();
        match g {
            Global::OrderedDict => match a.as_slice() {
                [] => Ok(Obj::Dict(vec![])),
                // Python 2's OrderedDict.__reduce__: the items as a list of [key, value] pairs.
                &[list] => {
                    let not_pairs = || "OrderedDict built from something other than a list of pairs".to_string();
                    let n = match &self.objects[list] {
                        Obj::List(items) => items.len(),
                        _ => return Err(not_pairs()),
                    };
                    // Charged before the copy: a memoized list may be passed to many calls.
                    self.charge_items(n, 2 * SLOT)?;
                    let Obj::List(items) = &self.objects[list] else { return Err(not_pairs()) };
                    let pairs = items
                        .iter()
                        .map(|&pair| match &self.objects[pair] {
                            Obj::List(kv) | Obj::Tuple(kv) if kv.len() == 2 => Ok((kv[0], kv[1])),
                            other => Err(format!("OrderedDict built from {}, not a [key, value] pair", kind(other))),
                        })
                        .collect::<Result<Vec<_>, Msg>>()?;
                    Ok(Obj::Dict(pairs))
                }
                _ => Err("OrderedDict with more than one constructor argument".into()),
            },
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                if a.len() < 4 {
                    return Err("_rebuild_tensor with too few arguments".into());
                }
                let storage = match &self.objects[a[0]] {
                    Obj::Storage(s) => (**s).clone(),
                    other => return Err(format!("_rebuild_tensor of {}, not a storage", kind(other))),
                };
                let offset = self.uint(a[1], "a storage offset")?;
                let size = self.uints(a[2], "a size")?;
                let stride = self.uints(a[3], "a stride")?;
                if size.len() != stride.len() {
                    return Err(format!("size {size:?} and stride {stride:?} differ in length"));
                }
                Ok(Obj::Tensor(Box::new(TensorRef { storage, offset, size, stride })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                match a.first().map(|&i| &self.objects[i]) {
                    Some(Obj::Tensor(t)) => Ok(Obj::Tensor(t.clone())),
                    Some(other) => Err(format!("_rebuild_parameter of {}, not a tensor", kind(other))),
                    None => Err("_rebuild_parameter without arguments".into()),
                }
            }
            Global::RebuildFromTypeV2 => {
                // (func, new_type, args, state): rebuild with func, ignore the subclass marker.
                if a.len() < 3 {
                    return Err("_rebuild_from_type_v2 with too few arguments".into());
                }
                match self.objects[a[1]] {
                    Obj::Global(Global::TensorClass | Global::ParameterClass) => {}
                    _ => return Err("_rebuild_from_type_v2 of a class other than Tensor or Parameter".into()),
                }
                self.reduce(a[0], a[2], depth + 1)
            }
            Global::TensorClass | Global::ParameterClass | Global::Storage(_) => {
                self.refused = true;
                Err("the pickle calls a tensor or storage class directly".into())
            }
        }
    }
}

/// The persistent-id handler for both formats: `('storage', StorageClass, key, location, numel
/// [, view_metadata])`.
pub(crate) fn storage_from_pid(p: &Unpickled, pid: Id) -> Result<Obj, Msg> {
    let Obj::Tuple(t) = p.get(pid) else { return Err("a persistent id that is not a tuple".into()) };
    let field = |i: usize| t.get(i).map(|&id| p.get(id));
    match field(0) {
        Some(Obj::Str(s)) if s == "storage" => {}
        _ => return Err("a persistent id that is not a storage (the file pickles more than tensors)".into()),
    }
    let dtype = match field(1) {
        Some(Obj::Global(Global::Storage(d))) => *d,
        _ => return Err("a storage of an unknown type".into()),
    };
    let key = match field(2) {
        Some(Obj::Str(s)) if s.len() <= MAX_KEY => s.clone(),
        Some(Obj::Str(s)) => return Err(format!("a storage key of {} bytes (at most {MAX_KEY})", s.len())),
        Some(Obj::Int(i)) => i.to_string(),
        _ => return Err("a storage without a key".into()),
    };
    let numel = match field(4) {
        Some(Obj::Int(n)) if *n >= 0 => *n as u64,
        _ => return Err("a storage without a valid element count".into()),
    };
    // Legacy view metadata: (view_key, offset, view_size).
    let view_offset = match field(5) {
        None | Some(Obj::None) => 0,
        Some(Obj::Tuple(v)) if v.len() == 3 => match p.get(v[1]) {
            Obj::Int(o) if *o >= 0 => *o as u64,
            _ => return Err("a storage view with a bad offset".into()),
        },
        _ => return Err("bad storage view metadata".into()),
    };
    Ok(Obj::Storage(Box::new(StorageRef { dtype, key, numel, view_offset })))
}

/// What an object is, in words, for messages.
fn kind(o: &Obj) -> &'static str {
    match o {
        Obj::None => "None",
        Obj::Bool(_) => "a bool",
        Obj::Int(_) => "an integer",
        Obj::BigInt(_) => "an integer beyond 64 bits",
        Obj::Float(_) => "a float",
        Obj::Str(_) => "a string",
        Obj::Bytes(_) => "bytes",
        Obj::Tuple(_) => "a tuple",
        Obj::List(_) => "a list",
        Obj::Dict(_) => "a dict",
        Obj::Global(_) => "a global",
        Obj::Storage(_) => "a storage",
        Obj::Tensor(_) => "a tensor",
    }
}
