//! GGUF, ggml's single-file model format: a parser that trusts nothing in the
//! file, over a read-only memory map, and a writer for GGUF version 3.
//!
//! Layout (all little-endian): magic "GGUF", u32 version, u64 tensor count,
//! u64 metadata count, the metadata key/values, the tensor infos, zero padding
//! up to `general.alignment`, then the tensor data. Each tensor's offset is
//! relative to the start of that data section.
//!
//! Every count, length and offset read from a file is checked against the
//! bytes really there before anything is allocated for it, so a hostile file
//! cannot make the parser panic or reserve memory it merely claims to need.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{
    invalid_argument, invalid_weights, io_error, unsupported, Error, ErrorKind, Result,
};
use crate::tensor::{DType, Mapped, Plain, TensorView};

pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version `GgufWriter` writes.
pub const WRITE_VERSION: u32 = 3;
pub const ALIGNMENT_KEY: &str = "general.alignment";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: usize = 4;
/// Deepest array-of-arrays nesting accepted. Real files use one level; the cap
/// bounds recursion (and so the stack) on hostile input.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// ggml's GGML_MAX_NAME is 64 bytes with the NUL: llama.cpp cannot load longer names.
const MAX_WRITE_NAME: usize = 63;

// Smallest encodings, used to bound claimed counts by the bytes left.
/// Metadata entry: key length (8) + value type (4) + the smallest value (1).
const MIN_KV_BYTES: usize = 13;
/// Tensor info with no dims: name length (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 24;
/// Nested array header: element type (4) + count (8).
const MIN_ARRAY_BYTES: usize = 12;

// ---------------------------------------------------------------------------
// ggml tensor types

/// The ggml tensor types this engine knows the layout of, numbered as in ggml.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
    ];

    /// (ggml number, elements per block, bytes per block, name).
    const fn spec(self) -> (u32, usize, usize, &'static str) {
        match self {
            GgmlType::F32 => (0, 1, 4, "F32"),
            GgmlType::F16 => (1, 1, 2, "F16"),
            GgmlType::Q4_0 => (2, 32, 18, "Q4_0"),
            GgmlType::Q4_1 => (3, 32, 20, "Q4_1"),
            GgmlType::Q5_0 => (6, 32, 22, "Q5_0"),
            GgmlType::Q5_1 => (7, 32, 24, "Q5_1"),
            GgmlType::Q8_0 => (8, 32, 34, "Q8_0"),
            GgmlType::Q8_1 => (9, 32, 36, "Q8_1"),
            GgmlType::Q2_K => (10, 256, 84, "Q2_K"),
            GgmlType::Q3_K => (11, 256, 110, "Q3_K"),
            GgmlType::Q4_K => (12, 256, 144, "Q4_K"),
            GgmlType::Q5_K => (13, 256, 176, "Q5_K"),
            GgmlType::Q6_K => (14, 256, 210, "Q6_K"),
            GgmlType::Q8_K => (15, 256, 292, "Q8_K"),
            GgmlType::I8 => (24, 1, 1, "I8"),
            GgmlType::I16 => (25, 1, 2, "I16"),
            GgmlType::I32 => (26, 1, 4, "I32"),
            GgmlType::I64 => (27, 1, 8, "I64"),
            GgmlType::F64 => (28, 1, 8, "F64"),
            GgmlType::BF16 => (30, 1, 2, "BF16"),
        }
    }

    /// ggml's number for the type (`GGML_TYPE_*`).
    pub fn id(self) -> u32 {
        self.spec().0
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> usize {
        self.spec().1
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.spec().2
    }

    pub fn name(self) -> &'static str {
        self.spec().3
    }

    pub fn from_u32(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// The engine's element type for the plain float types.
    pub fn dtype(self) -> Option<DType> {
        match self {
            GgmlType::F32 => Some(DType::F32),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// Bytes of a tensor with ggml dims `dims` (dims[0] contiguous); None when
    /// dims[0] is not a whole number of blocks or the size overflows.
    pub fn tensor_bytes(self, dims: &[u64]) -> Option<usize> {
        tensor_size(dims, self).ok()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names of ggml types that exist but that this engine cannot read, so the
/// error can say which quantization a file uses.
fn other_ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        29 => "IQ1_M",
        31..=33 => "Q4_0_N_M (removed from ggml)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36..=38 => "IQ4_NL_N_M (removed from ggml)",
        39 => "MXFP4",
        _ => return None,
    })
}

/// Byte size of a tensor, with every step checked: dims come from the file.
fn tensor_size(dims: &[u64], ty: GgmlType) -> std::result::Result<usize, String> {
    if dims.len() > MAX_DIMS {
        return Err(format!(
            "has {} dimensions; GGUF allows at most {MAX_DIMS}",
            dims.len()
        ));
    }
    // ggml keeps dims as int64, so larger values are negative there.
    if let Some(d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
        return Err(format!("dimension {d} is out of range"));
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    let rows = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let numel = rows
        .and_then(|r| r.checked_mul(ne0))
        .filter(|&n| n <= i64::MAX as u64);
    let (Some(rows), Some(_)) = (rows, numel) else {
        return Err(format!("dims {dims:?}: the element count overflows"));
    };
    let bs = ty.block_size() as u64;
    if ne0 % bs != 0 {
        return Err(format!(
            "row length {ne0} is not a multiple of the {ty} block size {bs}"
        ));
    }
    (ne0 / bs)
        .checked_mul(ty.block_bytes() as u64)
        .and_then(|b| b.checked_mul(rows))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("dims {dims:?}: the {ty} byte size overflows"))
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_next_multiple_of(alignment)
}

// ---------------------------------------------------------------------------
// Metadata values

// GGUF metadata value type numbers.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// One metadata value. Arrays are typed (see `MetaArray`) so that a 150k-entry
/// token list is one flat buffer rather than 150k enum values.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one Vec per element type; arrays of arrays may mix types
/// (each inner array carries its own type in the file).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(StrArray),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// A list of strings packed in one buffer: two allocations however many
/// entries (tokenizer vocabularies and merges run to hundreds of thousands).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrArray {
    text: String,
    /// End of each entry in `text`; entry i starts where entry i-1 ends.
    ends: Vec<usize>,
}

impl StrArray {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.text[s..e])
    }

    pub fn to_vec(&self) -> Vec<&str> {
        self.iter().collect()
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut out = StrArray::new();
        for s in iter {
            out.push(s.as_ref());
        }
        out
    }
}

impl MetaValue {
    /// The GGUF value type number.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => T_U8,
            MetaValue::I8(_) => T_I8,
            MetaValue::U16(_) => T_U16,
            MetaValue::I16(_) => T_I16,
            MetaValue::U32(_) => T_U32,
            MetaValue::I32(_) => T_I32,
            MetaValue::F32(_) => T_F32,
            MetaValue::Bool(_) => T_BOOL,
            MetaValue::Str(_) => T_STR,
            MetaValue::Array(_) => T_ARRAY,
            MetaValue::U64(_) => T_U64,
            MetaValue::I64(_) => T_I64,
            MetaValue::F64(_) => T_F64,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer type, when the value is non-negative (converters disagree
    /// on u32 vs i32 vs u64 for counts and token ids).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// f32, f64 or any integer (a 64-bit integer may round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetaArray {
    /// The GGUF value type number of the elements.
    pub fn elem_type_id(&self) -> u32 {
        match self {
            MetaArray::U8(_) => T_U8,
            MetaArray::I8(_) => T_I8,
            MetaArray::U16(_) => T_U16,
            MetaArray::I16(_) => T_I16,
            MetaArray::U32(_) => T_U32,
            MetaArray::I32(_) => T_I32,
            MetaArray::F32(_) => T_F32,
            MetaArray::Bool(_) => T_BOOL,
            MetaArray::Str(_) => T_STR,
            MetaArray::Array(_) => T_ARRAY,
            MetaArray::U64(_) => T_U64,
            MetaArray::I64(_) => T_I64,
            MetaArray::F64(_) => T_F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nesting depth: 1 for an array of scalars or strings.
    pub fn depth(&self) -> usize {
        match self {
            MetaArray::Array(v) => 1 + v.iter().map(MetaArray::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    pub fn as_strs(&self) -> Option<&StrArray> {
        match self {
            MetaArray::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            MetaArray::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            MetaArray::I32(v) => Some(v),
            _ => None,
        }
    }
}

macro_rules! meta_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for MetaValue {
            fn from(x: $t) -> Self { MetaValue::$v(x) }
        }
        impl From<Vec<$t>> for MetaArray {
            fn from(x: Vec<$t>) -> Self { MetaArray::$v(x) }
        }
        impl From<Vec<$t>> for MetaValue {
            fn from(x: Vec<$t>) -> Self { MetaValue::Array(MetaArray::$v(x)) }
        }
    )*};
}
meta_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
           bool => Bool, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        MetaValue::Str(s.to_string())
    }
}
impl From<String> for MetaValue {
    fn from(s: String) -> Self {
        MetaValue::Str(s)
    }
}
impl From<StrArray> for MetaValue {
    fn from(s: StrArray) -> Self {
        MetaValue::Array(MetaArray::Str(s))
    }
}
impl From<Vec<&str>> for MetaValue {
    fn from(v: Vec<&str>) -> Self {
        MetaValue::Array(MetaArray::Str(v.into_iter().collect()))
    }
}
impl From<Vec<String>> for MetaValue {
    fn from(v: Vec<String>) -> Self {
        MetaValue::Array(MetaArray::Str(v.into_iter().collect()))
    }
}
impl From<MetaArray> for MetaValue {
    fn from(a: MetaArray) -> Self {
        MetaValue::Array(a)
    }
}
impl From<Vec<MetaArray>> for MetaValue {
    fn from(v: Vec<MetaArray>) -> Self {
        MetaValue::Array(MetaArray::Array(v))
    }
}

// ---------------------------------------------------------------------------
// Parsing

/// A tensor as the file describes it, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        // Cannot overflow: checked (<= i64::MAX) when the file was parsed.
        self.dims.iter().product()
    }

    /// Row-major shape, outermost first (dims reversed), as `TensorView` uses.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// Bounds-checked little-endian reader that knows what it is reading, so
/// every error says where.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    origin: &'a str,
    /// What is being read ("metadata entry 3 'general.name'"), for messages.
    place: String,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn fail_at(&self, at: usize, msg: impl fmt::Display) -> Error {
        invalid_weights(format!(
            "{}: {msg} (in {}, at byte {at})",
            self.origin, self.place
        ))
    }

    fn fail(&self, msg: impl fmt::Display) -> Error {
        self.fail_at(self.pos, msg)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(invalid_weights(format!(
                "{}: truncated at byte {} in {}: {n} bytes needed, {} left",
                self.origin,
                self.pos,
                self.place,
                self.left()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    /// A u64 count of items taking at least `min_each` bytes each: rejected
    /// unless that many could fit in what is left, so it can size allocations.
    fn count(&mut self, min_each: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let room = self.left() / min_each.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= room => Ok(n),
            _ => Err(self.fail_at(
                at,
                format!(
                    "{what} {n} runs past the end of the file ({} bytes left)",
                    self.left()
                ),
            )),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.count(1, "string length")?;
        self.take(n)
    }

    /// A key or tensor name: identifiers must be exact, so invalid UTF-8 is an error.
    fn name(&mut self, what: &str) -> Result<&'a str> {
        let at = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.fail_at(at, format!("{what} is not valid UTF-8")))
    }

    /// A string value. Invalid UTF-8 (seen in some converted vocabularies)
    /// becomes U+FFFD rather than making the whole file unreadable.
    fn text(&mut self) -> Result<Cow<'a, str>> {
        Ok(String::from_utf8_lossy(self.bytes()?))
    }

    fn bool(&mut self) -> Result<bool> {
        match self.fixed::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.fail_at(self.pos - 1, format!("bool value {b} is neither 0 nor 1"))),
        }
    }

    fn value(&mut self, ty: u32) -> Result<MetaValue> {
        Ok(match ty {
            T_U8 => MetaValue::U8(u8::from_le_bytes(self.fixed()?)),
            T_I8 => MetaValue::I8(i8::from_le_bytes(self.fixed()?)),
            T_U16 => MetaValue::U16(u16::from_le_bytes(self.fixed()?)),
            T_I16 => MetaValue::I16(i16::from_le_bytes(self.fixed()?)),
            T_U32 => MetaValue::U32(u32::from_le_bytes(self.fixed()?)),
            T_I32 => MetaValue::I32(i32::from_le_bytes(self.fixed()?)),
            T_F32 => MetaValue::F32(f32::from_le_bytes(self.fixed()?)),
            T_BOOL => MetaValue::Bool(self.bool()?),
            T_STR => MetaValue::Str(self.text()?.into_owned()),
            T_ARRAY => MetaValue::Array(self.array(1)?),
            T_U64 => MetaValue::U64(u64::from_le_bytes(self.fixed()?)),
            T_I64 => MetaValue::I64(i64::from_le_bytes(self.fixed()?)),
            T_F64 => MetaValue::F64(f64::from_le_bytes(self.fixed()?)),
            _ => {
                return Err(self.fail_at(self.pos - 4, format!("unknown metadata value type {ty}")))
            }
        })
    }

    /// An array header and elements; `depth` is 1 for a top-level array.
    fn array(&mut self, depth: usize) -> Result<MetaArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.fail(format!(
                "arrays are nested more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        let ty = self.u32()?;
        let min_each = match ty {
            T_U8 | T_I8 | T_BOOL => 1,
            T_U16 | T_I16 => 2,
            T_U32 | T_I32 | T_F32 => 4,
            T_U64 | T_I64 | T_F64 | T_STR => 8,
            T_ARRAY => MIN_ARRAY_BYTES,
            _ => return Err(self.fail_at(self.pos - 4, format!("unknown array element type {ty}"))),
        };
        let n = self.count(min_each, "array element count")?;
        // Fixed-size elements: `count` proved n * size bytes are there.
        macro_rules! nums {
            ($variant:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let raw = self.take(n * W)?;
                MetaArray::$variant(
                    raw.chunks_exact(W)
                        .map(|c| {
                            let mut a = [0u8; W];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            T_U8 => MetaArray::U8(self.take(n)?.to_vec()),
            T_I8 => nums!(I8, i8),
            T_U16 => nums!(U16, u16),
            T_I16 => nums!(I16, i16),
            T_U32 => nums!(U32, u32),
            T_I32 => nums!(I32, i32),
            T_F32 => nums!(F32, f32),
            T_U64 => nums!(U64, u64),
            T_I64 => nums!(I64, i64),
            T_F64 => nums!(F64, f64),
            T_BOOL => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool()?);
                }
                MetaArray::Bool(v)
            }
            T_STR => {
                // n <= bytes left / 8, so `ends` is at most the file's size.
                let mut s = StrArray {
                    text: String::new(),
                    ends: Vec::with_capacity(n),
                };
                for _ in 0..n {
                    let t = self.text()?;
                    s.push(&t);
                }
                MetaArray::Str(s)
            }
            _ => {
                // An inner array is 5x bigger in memory than its 12-byte
                // header, so grow with what is read, not with the claim.
                let mut v = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    v.push(self.array(depth + 1)?);
                }
                MetaArray::Array(v)
            }
        })
    }
}

/// Everything read from the header, independent of where the bytes live.
struct Parsed {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

fn parse(buf: &[u8], origin: &str) -> Result<Parsed> {
    if buf.len() < 4 || buf[..4] != MAGIC {
        return Err(invalid_weights(format!(
            "{origin}: not a GGUF file (it does not start with \"GGUF\")"
        )));
    }
    let mut r = Reader {
        buf,
        pos: 4,
        origin,
        place: "the header".to_string(),
    };
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(unsupported(format!(
                "{origin}: GGUF version 1 (2023, 32-bit counts) is not supported; convert the model again with current llama.cpp tools"
            )))
        }
        // A big-endian file's version reads byte-swapped here.
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(unsupported(format!("{origin}: big-endian GGUF files are not supported")))
        }
        v => return Err(unsupported(format!("{origin}: GGUF version {v} is not supported (versions 2 and 3 are)"))),
    }
    let count_at = r.pos;
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // Both claims together must fit in the rest of the file (u128: no overflow).
    let need =
        n_kv as u128 * MIN_KV_BYTES as u128 + n_tensors as u128 * MIN_TENSOR_INFO_BYTES as u128;
    if need > r.left() as u128 {
        return Err(r.fail_at(
            count_at,
            format!(
                "{n_tensors} tensors and {n_kv} metadata entries cannot fit in the {} bytes left",
                r.left()
            ),
        ));
    }
    let (n_tensors, n_kv) = (n_tensors as usize, n_kv as usize);

    let mut metadata = Vec::with_capacity(n_kv.min(256));
    let mut keys = HashMap::new();
    for i in 0..n_kv {
        r.place = format!("metadata entry {i}");
        let at = r.pos;
        let key = r.name("metadata key")?.to_string();
        r.place = format!("metadata entry {i} '{key}'");
        let ty = r.u32()?;
        let value = r.value(ty)?;
        if let Some(j) = keys.insert(key.clone(), i) {
            return Err(r.fail_at(
                at,
                format!("duplicate metadata key '{key}' (also entry {j})"),
            ));
        }
        metadata.push((key, value));
    }

    let alignment = match keys.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => match metadata[i].1.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            // Not the value itself: a hostile file could make it a huge array.
            Some(a) => {
                return Err(invalid_weights(format!(
                    "{origin}: {ALIGNMENT_KEY} is {a}; it must be a power of two"
                )))
            }
            None => {
                return Err(invalid_weights(format!(
                "{origin}: {ALIGNMENT_KEY} has value type {}; it must be an integer power of two",
                metadata[i].1.type_id()
            )))
            }
        },
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(1024));
    let mut by_name = HashMap::new();
    for i in 0..n_tensors {
        r.place = format!("tensor info {i}");
        let at = r.pos;
        let name = r.name("tensor name")?.to_string();
        r.place = format!("tensor info {i} '{name}'");
        let n_dims = r.u32()?;
        if n_dims as usize > MAX_DIMS {
            return Err(r.fail_at(
                r.pos - 4,
                format!("{n_dims} dimensions; GGUF allows at most {MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let ty = r.u32()?;
        let Some(ggml_type) = GgmlType::from_u32(ty) else {
            let known = other_ggml_type_name(ty)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            return Err(unsupported(format!(
                "{origin}: tensor '{name}' has ggml type {ty}{known}, which pyffi does not support"
            )));
        };
        let offset = r.u64()?;
        let n_bytes = tensor_size(&dims, ggml_type).map_err(|m| r.fail(m))?;
        if offset % alignment != 0 {
            return Err(r.fail(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if let Some(j) = by_name.insert(name.clone(), i) {
            return Err(r.fail_at(
                at,
                format!("duplicate tensor name '{name}' (also tensor info {j})"),
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    // Vocab-only files may end right after the infos, without padding, so a
    // data section past the end is only wrong if a tensor lies in it.
    let data_offset = align_up(r.pos as u64, alignment).ok_or_else(|| {
        invalid_weights(format!(
            "{origin}: alignment {alignment} overflows the data offset"
        ))
    })?;
    let file_len = buf.len() as u64;
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        match start.and_then(|s| s.checked_add(t.n_bytes as u64)) {
            Some(end) if end <= file_len => t.offset += data_offset,
            _ => {
                return Err(invalid_weights(format!(
                "{origin}: tensor '{}' ({} bytes at data offset {}) runs past the end of the file ({file_len} bytes)",
                t.name, t.n_bytes, t.offset
            )))
            }
        }
    }
    Ok(Parsed {
        version,
        metadata,
        keys,
        tensors,
        by_name,
        alignment,
        data_offset,
    })
}

enum Backing {
    /// Shared with the matrices that read their values in place.
    Map(Arc<Mmap>),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the mapping and is handed out as
/// borrowed slices.
pub struct Gguf {
    backing: Backing,
    origin: String,
    parsed: Parsed,
}

impl fmt::Debug for Gguf {
    // Not derived: the metadata can hold hundreds of thousands of strings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("origin", &self.origin)
            .field("version", &self.parsed.version)
            .field("metadata_entries", &self.parsed.metadata.len())
            .field("tensors", &self.parsed.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Drop this process's resident pages of a tensor's data (they stay in
    /// the page cache and come back from the file if read again): a loader
    /// that has copied a tensor calls it so the load never holds the file
    /// and its copy at once. Only whole pages inside the tensor are dropped.
    pub fn release(&self, info: &TensorInfo) {
        if let Backing::Map(m) = &self.backing {
            super::release(m, self.tensor_data(info));
        }
    }

    /// Consecutive stretches of this file's tensor data (as `tensor_data`
    /// hands them out), lying end to end, as one run of values read in place
    /// from the mapping, which they keep alive; None when the file is not
    /// mapped, the stretches are not adjacent in it, or they cannot be
    /// viewed as `T`.
    pub fn in_place<T: Plain>(&self, pieces: &[&[u8]]) -> Option<Mapped<T>> {
        let Backing::Map(m) = &self.backing else {
            return None;
        };
        let base = m.as_ptr() as usize;
        let start = (pieces.first()?.as_ptr() as usize).checked_sub(base)?;
        let mut end = start;
        for p in pieces {
            if p.as_ptr() as usize != base.checked_add(end)? {
                return None;
            }
            end = end.checked_add(p.len())?;
        }
        Mapped::new(m, m.get(start..end)?)
    }

    /// Map and parse a file. Missing file -> NotFound; malformed ->
    /// InvalidWeights; valid but not supported -> Unsupported.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let meta = file.metadata().map_err(|e| io_error(path, e))?;
        if !meta.is_file() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: not a file", path.display()),
            ));
        }
        let backing = if meta.len() == 0 {
            // Mapping an empty file fails on some systems; parse reports it.
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the mapping is read-only; a file truncated or rewritten
            // underneath us is the usual mmap caveat.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
            // Weights read in place then fault in 2 MiB at a time where the
            // page cache holds the file in 2 MiB folios.
            crate::tensor::hint_huge_pages(map.as_ptr(), map.len());
            Backing::Map(Arc::new(map))
        };
        Self::from_backing(backing, path.display().to_string())
    }

    /// Parse bytes held in memory (they are copied). Errors name "GGUF bytes".
    pub fn parse_bytes(bytes: &[u8]) -> Result<Gguf> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parse bytes held in memory, taking ownership of them.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Gguf> {
        Self::from_backing(Backing::Owned(bytes), "GGUF bytes".to_string())
    }

    fn from_backing(backing: Backing, origin: String) -> Result<Gguf> {
        let parsed = parse(backing.bytes(), &origin)?;
        Ok(Gguf {
            backing,
            origin,
            parsed,
        })
    }

    /// The path (or "GGUF bytes"), as used in error messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    pub fn alignment(&self) -> u64 {
        self.parsed.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.parsed.data_offset
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.parsed.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.parsed
            .keys
            .get(key)
            .map(|&i| &self.parsed.metadata[i].1)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Any integer type with a non-negative value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// Any integer type whose value fits in i64.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// f32, f64 or any integer.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_array(&self, key: &str) -> Option<&MetaArray> {
        self.get(key)?.as_array()
    }

    /// A string array as borrowed strings (one Vec of pointers).
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        Some(self.get_strs(key)?.to_vec())
    }

    /// A string array without any allocation.
    pub fn get_strs(&self, key: &str) -> Option<&StrArray> {
        self.get_array(key)?.as_strs()
    }

    /// An array of f32 exactly (tokenizer.ggml.scores).
    pub fn get_f32_array(&self, key: &str) -> Option<&[f32]> {
        self.get_array(key)?.as_f32s()
    }

    /// An array of i32 exactly (tokenizer.ggml.token_type).
    pub fn get_i32_array(&self, key: &str) -> Option<&[i32]> {
        self.get_array(key)?.as_i32s()
    }

    /// `general.architecture` ("llama", "qwen2", ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.parsed.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.parsed
            .by_name
            .get(name)
            .map(|&i| &self.parsed.tensors[i])
    }

    /// The tensor's bytes, borrowed from the mapping. Infos from this file
    /// always lie inside it; one from another file yields an empty slice
    /// rather than a panic.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = usize::try_from(info.offset)
            .ok()
            .and_then(|s| Some(s..s.checked_add(info.n_bytes)?));
        range.and_then(|r| self.bytes().get(r)).unwrap_or(&[])
    }

    /// An F32/F16/BF16 tensor as a `TensorView` (shape outermost first).
    pub fn tensor_view(&self, info: &TensorInfo) -> Result<TensorView<'_>> {
        let dtype = info.ggml_type.dtype().ok_or_else(|| {
            unsupported(format!(
                "{}: tensor '{}' is {}, not a plain float type",
                self.origin, info.name, info.ggml_type
            ))
        })?;
        Ok(TensorView {
            dtype,
            shape: info.shape(),
            data: self.tensor_data(info),
        })
    }
}

// ---------------------------------------------------------------------------
// Writing

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF v3 file. Everything is validated when added, so writing
/// cannot produce a file this module (or llama.cpp) would reject.
/// Tensor data may be borrowed (`&[u8]`) or handed over (`Vec<u8>`).
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, MetaValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    alignment: Option<u64>,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(a) => put_array(out, a),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &MetaArray) {
    put_u32(out, a.elem_type_id());
    put_u64(out, a.len() as u64);
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetaArray::U8(v) => out.extend_from_slice(v),
        MetaArray::I8(v) => each!(v),
        MetaArray::U16(v) => each!(v),
        MetaArray::I16(v) => each!(v),
        MetaArray::U32(v) => each!(v),
        MetaArray::I32(v) => each!(v),
        MetaArray::F32(v) => each!(v),
        MetaArray::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        MetaArray::Str(v) => v.iter().for_each(|s| put_str(out, s)),
        MetaArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
        MetaArray::U64(v) => each!(v),
        MetaArray::I64(v) => each!(v),
        MetaArray::F64(v) => each!(v),
    }
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a metadata entry. `general.alignment` must be a u32 power of two
    /// (llama.cpp reads it as u32) and sets the alignment used for the data.
    pub fn add_kv(&mut self, key: &str, value: impl Into<MetaValue>) -> Result<()> {
        let value = value.into();
        if self.keys.contains(key) {
            return Err(invalid_argument(format!(
                "GGUF metadata key '{key}' added twice"
            )));
        }
        if key == ALIGNMENT_KEY {
            match value {
                MetaValue::U32(a) if a.is_power_of_two() => self.alignment = Some(a.into()),
                _ => {
                    return Err(invalid_argument(format!(
                        "{ALIGNMENT_KEY} must be a u32 power of two, not {value:?}"
                    )))
                }
            }
        }
        if let MetaValue::Array(a) = &value {
            if a.depth() > MAX_ARRAY_DEPTH {
                return Err(invalid_argument(format!(
                    "GGUF metadata '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep"
                )));
            }
        }
        self.keys.insert(key.to_string());
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Add a tensor with ggml dims (dims[0] contiguous); `data` must be
    /// exactly the size those dims and type need.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ggml_type: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let data = data.into();
        if name.len() > MAX_WRITE_NAME {
            return Err(invalid_argument(format!(
                "GGUF tensor name '{name}' is longer than ggml's {MAX_WRITE_NAME} bytes"
            )));
        }
        if self.names.contains(name) {
            return Err(invalid_argument(format!(
                "GGUF tensor '{name}' added twice"
            )));
        }
        let need = tensor_size(dims, ggml_type)
            .map_err(|m| invalid_argument(format!("GGUF tensor '{name}': {m}")))?;
        if data.len() != need {
            return Err(invalid_argument(format!(
                "GGUF tensor '{name}': {ggml_type} {dims:?} needs {need} bytes, got {}",
                data.len()
            )));
        }
        self.names.insert(name.to_string());
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        Ok(())
    }

    pub fn alignment(&self) -> u64 {
        self.alignment.unwrap_or(DEFAULT_ALIGNMENT)
    }

    fn padding(&self, len: u64) -> usize {
        // Sizes here are of in-memory buffers, far from u64::MAX.
        (len.next_multiple_of(self.alignment()) - len) as usize
    }

    /// Header, metadata, tensor infos and the padding before the data.
    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, WRITE_VERSION);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_u32(&mut out, value.type_id());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            t.dims.iter().for_each(|&d| put_u64(&mut out, d));
            put_u32(&mut out, t.ggml_type.id());
            put_u64(&mut out, offset);
            let len = t.data.len() as u64;
            offset += len + self.padding(len) as u64;
        }
        let pad = self.padding(out.len() as u64);
        out.resize(out.len() + pad, 0);
        out
    }

    /// Stream the file to `w`; each tensor's data is padded to the alignment.
    pub fn write_to<W: Write>(&self, mut w: W) -> std::io::Result<()> {
        w.write_all(&self.header())?;
        // In chunks: an alignment may be up to 2^31 bytes.
        let zeros = [0u8; 4096];
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let mut pad = self.padding(t.data.len() as u64);
            while pad > 0 {
                let n = pad.min(zeros.len());
                w.write_all(&zeros[..n])?;
                pad -= n;
            }
        }
        w.flush()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len() + self.padding(t.data.len() as u64), 0);
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let file = File::create(path).map_err(|e| io_error(path, e))?;
        self.write_to(BufWriter::new(file))
            .map_err(|e| io_error(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_type_table_matches_ggml() {
        let expect = [
            (0, 1, 4),
            (1, 1, 2),
            (2, 32, 18),
            (3, 32, 20),
            (6, 32, 22),
            (7, 32, 24),
            (8, 32, 34),
            (9, 32, 36),
            (10, 256, 84),
            (11, 256, 110),
            (12, 256, 144),
            (13, 256, 176),
            (14, 256, 210),
            (15, 256, 292),
            (24, 1, 1),
            (25, 1, 2),
            (26, 1, 4),
            (27, 1, 8),
            (28, 1, 8),
            (30, 1, 2),
        ];
        for (t, (id, bs, bb)) in GgmlType::ALL.iter().zip(expect) {
            assert_eq!(
                (t.id(), t.block_size(), t.block_bytes()),
                (id, bs, bb),
                "{t}"
            );
            assert_eq!(GgmlType::from_u32(id), Some(*t));
        }
        let names: HashSet<_> = GgmlType::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), GgmlType::ALL.len());
        for id in [4, 5, 16, 23, 29, 31, 99, u32::MAX] {
            assert_eq!(GgmlType::from_u32(id), None);
        }
    }

    #[test]
    fn tensor_sizes_are_checked() {
        assert_eq!(tensor_size(&[256, 3], GgmlType::Q4_K), Ok(3 * 144));
        assert_eq!(tensor_size(&[64, 2, 3], GgmlType::Q8_0), Ok(2 * 34 * 6));
        assert_eq!(tensor_size(&[5], GgmlType::F16), Ok(10));
        assert_eq!(tensor_size(&[], GgmlType::F32), Ok(4));
        assert_eq!(tensor_size(&[0, 7], GgmlType::F32), Ok(0));
        assert!(tensor_size(&[33], GgmlType::Q8_0).is_err());
        assert!(tensor_size(&[1 << 32, 1 << 32], GgmlType::F32).is_err());
        assert!(tensor_size(&[0, u64::MAX], GgmlType::F32).is_err());
        assert!(tensor_size(&[1 << 62, 1], GgmlType::F64).is_err());
        assert!(tensor_size(&[1, 1, 1, 1, 1], GgmlType::F32).is_err());
    }

    #[test]
    fn str_array_packs_strings() {
        let s: StrArray = ["a", "", "héllo"].into_iter().collect();
        assert_eq!(s.len(), 3);
        assert_eq!(s.to_vec(), vec!["a", "", "héllo"]);
        assert_eq!(s.get(2), Some("héllo"));
        assert_eq!(s.get(3), None);
        assert!(StrArray::new().iter().next().is_none());
    }

    #[test]
    fn integer_getters_convert_across_types() {
        assert_eq!(MetaValue::I32(5).as_u64(), Some(5));
        assert_eq!(MetaValue::I32(-5).as_u64(), None);
        assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(MetaValue::U8(7).as_f64(), Some(7.0));
        assert_eq!(MetaValue::F32(0.5).as_f64(), Some(0.5));
        assert_eq!(MetaValue::F32(0.5).as_u64(), None);
        assert_eq!(MetaValue::Bool(true).as_u64(), None);
    }

    #[test]
    fn writer_output_parses_back() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama").unwrap();
        w.add_kv("x.ints", vec![1i32, -2, 3]).unwrap();
        w.add_tensor("t", &[3], GgmlType::F32, vec![0u8; 12])
            .unwrap();
        let g = Gguf::from_vec(w.to_bytes()).unwrap();
        assert_eq!(g.version(), WRITE_VERSION);
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get_i32_array("x.ints"), Some(&[1, -2, 3][..]));
        let t = g.tensor("t").unwrap();
        assert_eq!(t.offset % 32, 0);
        assert_eq!(g.tensor_data(t), &[0u8; 12]);
        assert_eq!(g.bytes().len() % 32, 0);
    }

    #[test]
    fn reader_counts_are_bounded_by_bytes_left() {
        let mut buf = Vec::new();
        put_u64(&mut buf, 2);
        buf.extend_from_slice(&[0; 23]);
        let mut r = Reader {
            buf: &buf,
            pos: 0,
            origin: "t",
            place: "test".into(),
        };
        // 2 items of 8 bytes fit in 23 bytes; 2 of 12 do not.
        assert_eq!(r.count(8, "n").unwrap(), 2);
        r.pos = 0;
        assert!(r.count(12, "n").is_err());
    }
}
