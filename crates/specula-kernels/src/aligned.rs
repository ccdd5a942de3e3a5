//! Weight bytes that start on a cache line, and large ones on transparent huge pages.
//!
//! A large `Vec<u8>` from the system allocator usually starts 16 bytes past a page boundary (and
//! small ones anywhere), so where a matrix's bytes began decided whether half of the kernels'
//! 32-byte weight loads straddled two cache lines: the 1.5B's matrices started at 0, 16, 32 or
//! 48 bytes past a line. On a 64-byte boundary no load is split, whatever the allocator does.
//!
//! Buffers of 2 MiB or more are aligned to 2 MiB and offered to the kernel for transparent huge
//! pages (`madvise(MADV_HUGEPAGE)` on Linux, before they are first written): a decode step streams
//! every weight once, and with 4 KiB pages it takes a TLB miss (a nested page walk in a virtual
//! machine) every 4 KiB. Where the system grants no huge pages nothing changes. Measured on this
//! project's host (the 1.5B's one-token forward, two copies of the model in one process, each
//! load order twice): 0.95-1.03x per run, 0.985x as the geometric mean; small, but the weights
//! are the one large thing every step streams.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Bytes per cache line.
const LINE: usize = 64;
/// Bytes of a huge page (x86-64).
const HUGE: usize = 2 << 20;

/// A zero-initialised byte buffer whose first byte is 64-byte aligned (2 MiB aligned and on
/// huge pages where possible when it is that large); derefs to `[u8]`.
pub(crate) struct AlignedBytes {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer is owned, like a `Vec<u8>`; shared access is read-only.
unsafe impl Send for AlignedBytes {}
// SAFETY: as above.
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        // Whole lines; a large buffer starts on a huge page (its last partial one, if any,
        // stays in small pages rather than pinning a whole huge page of padding).
        let align = if len >= HUGE { HUGE } else { LINE };
        let size = len.max(1).next_multiple_of(LINE);
        let Ok(layout) = Layout::from_size_align(size, align) else {
            handle_alloc_error(Layout::new::<u8>())
        };
        // SAFETY: `layout` has a non-zero size.
        let Some(ptr) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        if align == HUGE {
            advise_huge(ptr.as_ptr(), size);
        }
        // SAFETY: `ptr` holds `size` writable bytes.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size) };
        Self { ptr, len, layout }
    }

    /// A copy of `bytes`.
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        let mut out = Self::zeroed(bytes.len());
        out.copy_from_slice(bytes);
        out
    }
}

/// Asks Linux for transparent huge pages over `size` bytes at `ptr` (2 MiB aligned); a hint
/// (without THP, or with it disabled, the call fails and nothing changes).
#[cfg(target_os = "linux")]
fn advise_huge(ptr: *mut u8, size: usize) {
    // SAFETY: the range is one live allocation of ours; MADV_HUGEPAGE changes no contents.
    unsafe { libc::madvise(ptr.cast(), size, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_ptr: *mut u8, _size: usize) {}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        Self::copy_of(self)
    }
}

impl Deref for AlignedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` holds at least `len` initialised bytes, borrowed for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably for as long as `self` is.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_copies_keep_their_bytes() {
        for len in [0, 1, 63, 64, 65, 1000, HUGE - 1, HUGE + 5] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut a = AlignedBytes::copy_of(&src);
            assert_eq!(&a[..], &src[..]);
            let align = if len >= HUGE { HUGE } else { LINE };
            assert_eq!(a.as_ptr() as usize % align, 0);
            let b = a.clone();
            if let Some(x) = a.first_mut() {
                *x ^= 1;
            }
            assert_eq!(&b[..], &src[..]);
            assert_eq!(b.as_ptr() as usize % align, 0);
        }
    }
}
