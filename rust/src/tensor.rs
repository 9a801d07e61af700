//! Tensor storage types and borrowed views of raw tensor bytes (from a mapped
//! file or a caller's buffer), with conversion to the float32 the kernels use.

use half::{bf16, f16};

use crate::error::{invalid_weights, Result};

/// Element types, numbered as in the C ABI (`pyffi_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

/// Little-endian tensor bytes with their type and shape; alignment is not assumed.
pub struct TensorView<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Checked element count (shapes come from untrusted files).
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Convert into `out`, whose length must equal the element count.
    pub fn to_f32(&self, out: &mut [f32]) -> Result<()> {
        let n = self
            .numel()
            .ok_or_else(|| invalid_weights(format!("shape {:?} overflows", self.shape)))?;
        let expected = n.checked_mul(self.dtype.size());
        if expected != Some(self.data.len()) || out.len() != n {
            return Err(invalid_weights(format!(
                "{} tensor of shape {:?} needs {} bytes but {} were given",
                self.dtype.name(),
                self.shape,
                n.saturating_mul(self.dtype.size()),
                self.data.len()
            )));
        }
        match self.dtype {
            DType::F32 => {
                for (o, b) in out.iter_mut().zip(self.data.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            DType::F16 => {
                for (o, b) in out.iter_mut().zip(self.data.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            DType::BF16 => {
                for (o, b) in out.iter_mut().zip(self.data.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
        Ok(())
    }
}

/// A zero-filled float32 buffer whose allocation failure is an error, not an
/// abort. Pages come from the OS lazily, so untouched parts cost no memory.
pub fn zeroed_f32(n: usize) -> Result<Vec<f32>> {
    zeroed(n)
}

/// `n` float16 zeros, allocated the same way as `zeroed_f32`.
pub fn zeroed_f16(n: usize) -> Result<Vec<half::f16>> {
    zeroed(n)
}

/// Ask the kernel to back `len` bytes at `ptr` (a fresh, untouched heap
/// block, or a file's mapping) with 2 MiB pages where it can: a weight matrix
/// then costs one page fault per 2 MiB instead of per 4 KiB when filled, and
/// decode's sweeps over the weights miss the TLB far less. Only whole aligned
/// 2 MiB ranges inside the block are advised; a refusal changes nothing but
/// speed.
pub fn hint_huge_pages<T>(ptr: *const T, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).div_ceil(HUGE) * HUGE;
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside one live allocation or mapping of
            // ours; advice does not change its contents or validity.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// An empty Vec with room for `n` values, on huge pages where possible.
pub fn weight_buffer<T>(n: usize) -> Vec<T> {
    let v = Vec::with_capacity(n);
    hint_huge_pages(v.as_ptr(), n * std::mem::size_of::<T>());
    v
}

/// Types whose all-zero bit pattern is the value zero.
trait ZeroBits {}
impl ZeroBits for f32 {}
impl ZeroBits for half::f16 {}

fn zeroed<T: ZeroBits>(n: usize) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| {
        crate::error::invalid_argument(format!("buffer of {n} values is too large"))
    })?;
    // SAFETY: layout has non-zero size; a non-null result is a zeroed block of
    // n values of T (all-zero bits are 0.0 for every ZeroBits type), owned by
    // the Vec from here on.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut T;
        if !p.is_null() {
            hint_huge_pages(p, layout.size());
        }
        if p.is_null() {
            return Err(crate::error::invalid_argument(format!(
                "out of memory allocating {} MiB",
                layout.size() >> 20
            )));
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
}

/// The little-endian bytes of `values`: borrowed (no copy) on little-endian
/// hosts, converted on others.
pub fn f32_le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: f32 has no padding and any byte is a valid u8; the length
        // covers exactly the values' memory.
        std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(values.as_ptr() as *const u8, values.len() * 4)
        })
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The values of a weight matrix: a buffer of its own, or a stretch of a
/// file's memory mapping read in place (a GGUF matrix that needs no
/// reordering: no copy, no fresh pages to fault in at load, and the page
/// cache's pages shared with every process that maps the same file).
pub enum Store<T: 'static> {
    Owned(Vec<T>),
    Mapped(Mapped<T>),
}

impl<T> std::ops::Deref for Store<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Store::Owned(v) => v,
            Store::Mapped(m) => m,
        }
    }
}

impl<T> From<Vec<T>> for Store<T> {
    fn from(v: Vec<T>) -> Store<T> {
        Store::Owned(v)
    }
}

impl<T> Store<T> {
    pub fn is_mapped(&self) -> bool {
        matches!(self, Store::Mapped(_))
    }
}

/// Values whose every bit pattern is valid, read straight from a file's
/// little-endian bytes.
pub trait Plain: Copy + 'static {}
impl Plain for u8 {}
impl Plain for half::f16 {}

/// `len` values of `T` inside a read-only file mapping, which they keep alive.
pub struct Mapped<T: 'static> {
    /// Held, never read: the values live as long as the mapping does.
    _map: std::sync::Arc<memmap2::Mmap>,
    ptr: *const T,
    len: usize,
}

// SAFETY: the values lie inside `_map`, a read-only mapping owned (shared) by
// this value and never written through; sharing reads across threads is sound.
unsafe impl<T: Sync> Send for Mapped<T> {}
unsafe impl<T: Sync> Sync for Mapped<T> {}

impl<T: Plain> Mapped<T> {
    /// `bytes` as values of `T` in place, if they lie inside `map`, are
    /// aligned for `T` and hold a whole number of them (on a little-endian
    /// host, where the file's byte order is the machine's); else None.
    pub fn new(map: &std::sync::Arc<memmap2::Mmap>, bytes: &[u8]) -> Option<Mapped<T>> {
        let (start, end) = (map.as_ptr() as usize, map.as_ptr() as usize + map.len());
        let p = bytes.as_ptr() as usize;
        let size = std::mem::size_of::<T>();
        let inside = p >= start && p + bytes.len() <= end;
        let fits = p % std::mem::align_of::<T>() == 0 && bytes.len() % size == 0;
        (cfg!(target_endian = "little") && inside && fits).then(|| Mapped {
            _map: std::sync::Arc::clone(map),
            ptr: bytes.as_ptr() as *const T,
            len: bytes.len() / size,
        })
    }
}

impl<T> std::ops::Deref for Mapped<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `new` checked that ptr..ptr+len lies inside the mapping held
        // in `self._map` and is aligned for T, whose every bit pattern is valid.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
