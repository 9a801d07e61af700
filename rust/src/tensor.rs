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

    /// The element count, checked against the size of the data.
    pub fn checked_len(&self) -> Result<usize> {
        let n = self
            .numel()
            .ok_or_else(|| invalid_weights(format!("shape {:?} overflows", self.shape)))?;
        if n.checked_mul(self.dtype.size()) != Some(self.data.len()) {
            return Err(invalid_weights(format!(
                "{} tensor of shape {:?} needs {} bytes but {} were given",
                self.dtype.name(),
                self.shape,
                n.saturating_mul(self.dtype.size()),
                self.data.len()
            )));
        }
        Ok(n)
    }

    /// Convert into `out`, whose length must equal the element count.
    pub fn to_f32(&self, out: &mut [f32]) -> Result<()> {
        let n = self.checked_len()?;
        if out.len() != n {
            return Err(invalid_weights(format!(
                "{} tensor of shape {:?} has {n} values, not the {} expected",
                self.dtype.name(),
                self.shape,
                out.len()
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

/// `n` bfloat16 zeros, allocated the same way as `zeroed_f32`.
pub fn zeroed_bf16(n: usize) -> Result<Vec<half::bf16>> {
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

/// Types whose all-zero bit pattern is the value zero.
pub(crate) trait ZeroBits: Copy + 'static {}
impl ZeroBits for u8 {}
impl ZeroBits for f32 {}
impl ZeroBits for half::f16 {}
impl ZeroBits for half::bf16 {}

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

/// Memory for one model's weight matrices: a stretch of address space
/// reserved at once (pages come as they are written), aligned to 2 MiB and
/// advised onto 2 MiB pages, that hands out buffers end to end. A matrix in
/// an allocation of its own keeps its unaligned ends on 4 KiB pages (over a
/// third of a 1B model's weights), which decode reads more slowly; laid end
/// to end, the matrices share their pages, and at most the last one is part
/// full. Lives as long as the last buffer in it.
pub(crate) struct WeightArena {
    map: std::sync::Arc<AnonMap>,
    used: std::cell::Cell<usize>,
}

/// An anonymous mapping, unmapped when dropped.
struct AnonMap {
    raw: *mut u8,
    raw_len: usize,
    /// The first 2 MiB boundary in it, and the bytes from there on.
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; the buffers cut from it are disjoint,
// each written only through its own `&mut`.
unsafe impl Send for AnonMap {}
unsafe impl Sync for AnonMap {}

impl Drop for AnonMap {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: raw..raw+raw_len is the mapping `WeightArena::new` made,
        // and no buffer points into it any more (each holds this map).
        unsafe {
            libc::munmap(self.raw as *mut libc::c_void, self.raw_len);
        }
    }
}

const HUGE_PAGE: usize = 2 << 20;

impl WeightArena {
    /// Room for `capacity` bytes of matrices; None where no anonymous
    /// mapping can be made (the buffers then come from the heap).
    #[cfg(unix)]
    pub fn new(capacity: usize) -> Option<WeightArena> {
        let raw_len = capacity.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh private anonymous mapping; checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                raw_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let raw = raw as *mut u8;
        let skip = (raw as usize).next_multiple_of(HUGE_PAGE) - raw as usize;
        // SAFETY: skip < HUGE_PAGE, inside the mapping.
        let base = unsafe { raw.add(skip) };
        hint_huge_pages(base, capacity);
        Some(WeightArena {
            map: std::sync::Arc::new(AnonMap {
                raw,
                raw_len,
                base,
                len: capacity,
            }),
            used: std::cell::Cell::new(0),
        })
    }

    #[cfg(not(unix))]
    pub fn new(_capacity: usize) -> Option<WeightArena> {
        None
    }

    /// `n` zeros of `T`, 64-byte aligned, if they fit.
    fn take<T: ZeroBits>(&self, n: usize) -> Option<ArenaBuf<T>> {
        let bytes = n.checked_mul(std::mem::size_of::<T>())?;
        let at = self
            .used
            .get()
            .next_multiple_of(64.max(std::mem::align_of::<T>()));
        let end = at.checked_add(bytes)?;
        if end > self.map.len {
            return None;
        }
        self.used.set(end);
        Some(ArenaBuf {
            _map: std::sync::Arc::clone(&self.map),
            // SAFETY: at..end lies inside the mapping, aligned for T.
            ptr: unsafe { self.map.base.add(at) } as *mut T,
            len: n,
        })
    }
}

thread_local! {
    /// The arena `weight_buffer` takes from on this thread, if any.
    static ARENA: std::cell::RefCell<Option<WeightArena>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` with its `weight_buffer`s laid end to end in one `WeightArena`
/// of `capacity` bytes (those that do not fit come from the heap).
pub(crate) fn with_weight_arena<R>(capacity: usize, f: impl FnOnce() -> R) -> R {
    let outer = ARENA.with(|a| a.replace(WeightArena::new(capacity)));
    // Put the outer arena back even if `f` panics.
    struct Restore(Option<WeightArena>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ARENA.with(|a| *a.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(outer);
    f()
}

/// Memory for a weight matrix that lasts as long as the model: `n` zeros,
/// from the current `with_weight_arena` where there is one and it has room,
/// else from the heap (on huge pages where possible).
pub(crate) fn weight_buffer<T: ZeroBits>(n: usize) -> Result<Buffer<T>> {
    let from_arena = ARENA.with(|a| a.borrow().as_ref().and_then(|a| a.take(n)));
    Ok(match from_arena {
        Some(b) => Buffer::Arena(b),
        None => Buffer::Heap(zeroed(n)?),
    })
}

/// A buffer of values: a Vec, or a stretch of a `WeightArena`.
pub enum Buffer<T: 'static> {
    Heap(Vec<T>),
    Arena(ArenaBuf<T>),
}

/// `len` values inside a `WeightArena`'s mapping, which they keep alive.
pub struct ArenaBuf<T: 'static> {
    _map: std::sync::Arc<AnonMap>,
    ptr: *mut T,
    len: usize,
}

// SAFETY: the values are this buffer's alone (the arena never hands out a
// byte twice); they move and are shared as a Vec's would be.
unsafe impl<T: Send> Send for ArenaBuf<T> {}
unsafe impl<T: Sync> Sync for ArenaBuf<T> {}

impl<T> std::ops::Deref for Buffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Buffer::Heap(v) => v,
            // SAFETY: ptr..ptr+len is this buffer's, aligned, zeroed at the
            // start (a valid T: ZeroBits) and written only as T since.
            Buffer::Arena(b) => unsafe { std::slice::from_raw_parts(b.ptr, b.len) },
        }
    }
}

impl<T> std::ops::DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Buffer::Heap(v) => v,
            // SAFETY: as for Deref; `&mut self` makes the borrow exclusive.
            Buffer::Arena(b) => unsafe { std::slice::from_raw_parts_mut(b.ptr, b.len) },
        }
    }
}

impl<T> From<Vec<T>> for Buffer<T> {
    fn from(v: Vec<T>) -> Buffer<T> {
        Buffer::Heap(v)
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
    Owned(Buffer<T>),
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
        Store::Owned(Buffer::Heap(v))
    }
}

impl<T> From<Buffer<T>> for Store<T> {
    fn from(b: Buffer<T>) -> Store<T> {
        Store::Owned(b)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn is_arena<T>(b: &Buffer<T>) -> bool {
        matches!(b, Buffer::Arena(_))
    }

    #[test]
    fn weight_buffers_lie_end_to_end_in_the_arena_until_it_is_full() {
        let (a, b, c, d) = with_weight_arena(1 << 20, || {
            let a = weight_buffer::<u8>(1000).unwrap();
            let b = weight_buffer::<half::f16>(3000).unwrap();
            let c = weight_buffer::<f32>(100_000).unwrap(); // 400 KB more
            let d = weight_buffer::<u8>(1 << 20).unwrap(); // no room left
            (a, b, c, d)
        });
        assert!(is_arena(&a) && is_arena(&b) && is_arena(&c));
        assert!(
            !is_arena(&d),
            "a buffer past the arena's room comes from the heap"
        );
        // Zeroed, 64-byte aligned, in order, not overlapping.
        assert!(a.iter().all(|&v| v == 0) && b.iter().all(|v| v.to_f32() == 0.0));
        assert!(c.iter().all(|&v| v == 0.0) && d.iter().all(|&v| v == 0));
        let (pa, pb, pc) = (
            a.as_ptr() as usize,
            b.as_ptr() as usize,
            c.as_ptr() as usize,
        );
        assert_eq!(pa % (2 << 20), 0, "the arena starts on a 2 MiB boundary");
        assert!(pb % 64 == 0 && pc % 64 == 0);
        assert!(pa + 1000 <= pb && pb + 6000 <= pc && pc - pb < 6000 + 64);
        // Outside the scope, buffers come from the heap again.
        assert!(!is_arena(&weight_buffer::<u8>(10).unwrap()));
    }

    #[test]
    fn arena_buffers_are_written_and_read_as_their_own_and_outlive_the_scope() {
        let mut bufs: Vec<Buffer<f32>> = with_weight_arena(1 << 16, || {
            (0..4).map(|_| weight_buffer(1000).unwrap()).collect()
        });
        for (i, b) in bufs.iter_mut().enumerate() {
            b.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = (i * 1000 + j) as f32);
        }
        // Dropping some leaves the others intact (the mapping lives on).
        let kept = bufs.split_off(2);
        drop(bufs);
        for (i, b) in kept.iter().enumerate() {
            assert!(b
                .iter()
                .enumerate()
                .all(|(j, &v)| v == ((i + 2) * 1000 + j) as f32));
        }
    }

    #[test]
    fn nested_arenas_restore_the_outer_one() {
        with_weight_arena(1 << 16, || {
            let outer = weight_buffer::<u8>(100).unwrap();
            let inner = with_weight_arena(1 << 16, || weight_buffer::<u8>(100).unwrap());
            let again = weight_buffer::<u8>(100).unwrap();
            assert!(is_arena(&outer) && is_arena(&inner) && is_arena(&again));
            // `again` follows `outer` in the outer arena.
            assert_eq!(again.as_ptr() as usize, outer.as_ptr() as usize + 128);
        });
    }
}
