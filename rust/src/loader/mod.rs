//! Loaders turn files into a `Model`. Each parses and validates its format and
//! hands tensors to `Model::set_tensor`; none of them computes.

pub mod gguf;
pub mod gguf_model;
pub mod safetensors;

/// Drop this process's resident pages of `data`, a stretch of `map` already
/// copied out (they stay in the page cache and come back from the file if
/// read again): a loader calls it per tensor so that a load never holds the
/// file and its copy at once. Only whole pages inside `data` are dropped.
pub(crate) fn release(map: &memmap2::Mmap, data: &[u8]) {
    #[cfg(unix)]
    {
        let page = 4096;
        let at = data.as_ptr() as usize - map.as_ptr() as usize;
        let (start, end) = (at.div_ceil(page) * page, (at + data.len()) / page * page);
        if end > start {
            // SAFETY: a read-only private file mapping: dropped pages read
            // back the same bytes from the file; no borrowed slice changes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, data);
}
