//! A pickle virtual machine for PyTorch checkpoints: runs the program of a `torch.save`
//! `data.pkl` far enough to rebuild dicts, lists and tensor references (storages are read by
//! [`crate::model::pth`]).
//!
//! Hand-written because libtorch's loader (`tch::Tensor::loadz_multi`, i.e.
//! `torch::jit::_load_parameters`) refuses the `OrderedDict` that `state_dict()` returns
//! ("Expected GenericDict but got None", tried on the golden `mgvit_tiny.pth`), and the Rust
//! readers of torch pickles either bring a second tensor library (candle-core) or are
//! unmaintained. A checkpoint needs only the ~45 opcodes of protocols 2–5 handled here; other
//! objects (argparse namespaces, optimizer states) are kept opaque.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tch::Kind;

/// A storage a tensor views: `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub kind: Kind,
    pub numel: i64,
}

/// A tensor rebuilt by `torch._utils._rebuild_tensor_v2`: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// The unpickled objects. Lists and dicts are shared (`Rc`) because the pickle memo refers to
/// the same object that later opcodes fill.
// Some payloads (floats, bytes, object names) are only ever shown through `Debug`, when a
// pickle holds something the loader does not use; they are kept for those messages.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global {
        module: String,
        name: String,
    },
    Storage(StorageRef),
    Tensor(TensorRef),
    /// Anything else a REDUCE / NEWOBJ builds (namespaces, optimizer classes, …).
    Object(String),
}

impl Value {
    fn dict() -> Value {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a dict as (string key, value); non-string keys are skipped.
    pub fn dict_entries(&self) -> Option<Vec<(String, Value)>> {
        match self {
            Value::Dict(d) => Some(
                d.borrow()
                    .iter()
                    .filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v.clone())))
                    .collect(),
            ),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    fn int_tuple(&self) -> Option<Vec<i64>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_int).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_int).collect(),
            _ => None,
        }
    }
}

type PResult<T> = std::result::Result<T, String>;

/// Runs a pickle program; the error says which opcode or byte failed.
pub fn unpickle(data: &[u8]) -> PResult<Value> {
    Unpickler::new(data).run()
}

/// The pickle virtual machine: a value stack, a stack of MARK positions and the memo.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("unterminated text line")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> PResult<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }

    fn pop(&mut self) -> PResult<Value> {
        if self.marks.last().is_some_and(|m| *m >= self.stack.len()) {
            return Err("stack underflow at a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&mut self) -> PResult<&mut Value> {
        self.stack.last_mut().ok_or_else(|| "empty stack".into())
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let m = self.marks.pop().ok_or("no MARK")?;
        if m > self.stack.len() {
            return Err("MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, i: u32) -> PResult<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("memo entry {i} is missing"))
    }

    fn run(mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.u64()?; // FRAME size
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::dict()),
                b']' => self
                    .stack
                    .push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                0x8f => self
                    .stack
                    .push(Value::List(Rc::new(RefCell::new(Vec::new())))), // EMPTY_SET
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v));
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack
                        .push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        0
                    } else if n <= 8 {
                        let mut buf = if b[n - 1] & 0x80 != 0 {
                            [0xff; 8]
                        } else {
                            [0; 8]
                        };
                        buf[..n].copy_from_slice(b);
                        i64::from_le_bytes(buf)
                    } else {
                        i64::MAX // only used by opaque objects (e.g. random states)
                    };
                    self.stack.push(Value::Int(v));
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let v = match l.trim_end_matches('L') {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| format!("bad INT {l}"))?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack.push(Value::Float(
                        l.parse().map_err(|_| format!("bad FLOAT {l}"))?,
                    ));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'V' => {
                    let l = self.line()?;
                    self.stack.push(Value::Str(l));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("stack underflow in TUPLEn".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Value::dict();
                    set_items(&d, items)?;
                    self.stack.push(d);
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().push(v);
                    }
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?.clone();
                    set_items(&d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?.clone();
                    set_items(&d, items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.stack.push(Value::Global { module, name })
                        }
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = reduce(cls, args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = reduce(cls, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD sets an object's state (an OrderedDict's `_metadata`, a namespace's
                    // fields): nothing a state dict needs.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'P' => return Err("text persistent ids (protocol 0) are not supported".into()),
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'p' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| format!("bad PUT {l}"))?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'g' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| format!("bad GET {l}"))?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

fn set_items(d: &Value, items: Vec<Value>) -> PResult<()> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    if let Value::Dict(d) = d {
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
    }
    // Items set on an opaque object (a defaultdict subclass, …) are dropped.
    Ok(())
}

/// `callable(*args)` for the few callables a checkpoint's structure depends on.
fn reduce(callable: Value, args: Value) -> PResult<Value> {
    let Value::Global { module, name } = &callable else {
        return Ok(Value::Object("call of a non-global".into()));
    };
    let args: Vec<Value> = match &args {
        Value::Tuple(t) => t.as_ref().clone(),
        _ => Vec::new(),
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") | ("collections", "defaultdict") | ("builtins", "dict") => {
            Value::dict()
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor_v3") => {
            let bad = || format!("{name} with unexpected arguments");
            let storage = match args.first() {
                Some(Value::Storage(s)) => s.clone(),
                _ => return Err(bad()),
            };
            let offset = args.get(1).and_then(Value::as_int).ok_or_else(bad)?;
            let size = args.get(2).and_then(Value::int_tuple).ok_or_else(bad)?;
            let stride = args.get(3).and_then(Value::int_tuple).ok_or_else(bad)?;
            if size.len() != stride.len() {
                return Err(bad());
            }
            Value::Tensor(TensorRef {
                storage,
                offset,
                size,
                stride,
            })
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => {
            args.into_iter().next().ok_or("parameter without data")?
        }
        _ => Value::Object(format!("{module}.{name}")),
    })
}

/// torch.save's persistent ids: `('storage', <storage type>, key, location, numel)`.
fn persistent_load(pid: Value) -> PResult<Value> {
    let Value::Tuple(t) = &pid else {
        return Err("persistent id is not a tuple".into());
    };
    if t.first().and_then(Value::as_str) != Some("storage") || t.len() < 5 {
        return Err("persistent id is not a storage".into());
    }
    let kind = match &t[1] {
        Value::Global { name, .. } => {
            storage_kind(name).ok_or_else(|| format!("unsupported storage type {name}"))?
        }
        _ => return Err("storage type is not a global".into()),
    };
    let key = t[2]
        .as_str()
        .ok_or("storage key is not a string")?
        .to_string();
    let numel = t[4].as_int().ok_or("storage size is not an integer")?;
    Ok(Value::Storage(StorageRef { key, kind, numel }))
}

/// The tensor kind of a pickled `torch.*Storage` class name.
pub(crate) fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps(OrderedDict(a=1, b=[2.5, 'x']), protocol=2)`, hand-assembled.
    #[test]
    fn unpickles_nested_containers_and_memo() {
        let mut p: Vec<u8> = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)R");
        p.extend(b"q\x01(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b]q\x02(G");
        p.extend(2.5f64.to_be_bytes());
        p.extend(b"X\x01\x00\x00\x00xeX\x01\x00\x00\x00ch\x02u.");
        let v = Unpickler::new(&p).run().unwrap();
        let e = v.dict_entries().unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].0, "a");
        assert!(matches!(e[0].1, Value::Int(1)));
        // `c` is the memoised list `b`, filled after it was memoised.
        match &e[2].1 {
            Value::List(l) => assert_eq!(l.borrow().len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_or_unknown_programs_are_errors() {
        assert!(Unpickler::new(&[0x80, 2, b'X', 9, 0]).run().is_err());
        assert!(Unpickler::new(&[0x80, 2, 0xff])
            .run()
            .unwrap_err()
            .contains("0xff"));
        assert!(Unpickler::new(b".").run().is_err());
    }
}
