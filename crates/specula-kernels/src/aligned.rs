//! Weight bytes that start on a cache line, and large ones on transparent huge pages.
//!
//! A large `Vec<u8>` from the system allocator usually starts 16 bytes past a page boundary (and
//! small ones anywhere), so where a matrix's bytes began decided whether half of the kernels'
//! 32-byte weight loads straddled two cache lines: the 1.5B's matrices started at 0, 16, 32 or
//! 48 bytes past a line. On a 64-byte boundary no load is split, whatever the allocator does.
//!
//! Every buffer lies on transparent huge pages where the system grants them
//! (`madvise(MADV_HUGEPAGE)` on Linux, before the memory is first written): a decode step streams
//! every weight once, and with 4 KiB pages it takes a TLB miss (a nested page walk in a virtual
//! machine) every 4 KiB, and the hardware prefetchers stop at every 4 KiB boundary. Buffers of
//! 16 MiB or more get 2 MiB-aligned memory of their own; smaller ones are cut, 64-byte aligned,
//! from shared 32 MiB slabs of huge pages (a slab is freed when the last buffer cut from it is),
//! so that a 1.3 MB projection or the last partial 2 MiB of a 7.7 MB one is not left on small
//! pages (they were: 538 MB of the 1.5B's ~1 GB had huge pages, with each buffer given its own
//! aligned memory). Where the system grants no huge pages nothing changes. Measured on this
//! project's host (the 1.5B, two copies in one process, each load order twice): huge pages for
//! the large buffers 0.985x the one-token forward's time (geometric mean); for all of them,
//! padded to whole huge pages (before the slabs), another 0.986x at one token and 0.991x at five.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Bytes per cache line.
const LINE: usize = 64;
/// Bytes of a huge page (x86-64).
const HUGE: usize = 2 << 20;
/// Bytes of a shared slab; buffers of half a slab or more get memory of their own.
const SLAB: usize = 32 << 20;

/// 2 MiB-aligned memory offered for huge pages, freed on drop.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: an owned allocation; what is written to it goes through `AlignedBytes`, one owner per
// byte range.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `size` bytes (a multiple of [`HUGE`]), uninitialised.
    fn new(size: usize) -> Self {
        let Ok(layout) = Layout::from_size_align(size, HUGE) else {
            handle_alloc_error(Layout::new::<u8>())
        };
        // SAFETY: `layout` has a non-zero size.
        let Some(ptr) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        advise_huge(ptr.as_ptr(), size);
        Self { ptr, layout }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The slab small buffers are being cut from, and how many of its bytes are taken.
static SLAB_NOW: Mutex<Option<(Arc<Region>, usize)>> = Mutex::new(None);

/// A zero-initialised byte buffer whose first byte is 64-byte aligned, on huge pages where the
/// system grants them (module docs); derefs to `[u8]`.
pub(crate) struct AlignedBytes {
    ptr: NonNull<u8>,
    len: usize,
    /// The memory it lies in (its own, or a slab shared with other buffers).
    _region: Arc<Region>,
}

// SAFETY: the buffer's bytes are its own, like a `Vec<u8>`'s (a shared slab gives each buffer a
// disjoint range); shared access is read-only.
unsafe impl Send for AlignedBytes {}
// SAFETY: as above.
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        let size = len.max(1).next_multiple_of(LINE);
        let (region, ptr) = if size >= SLAB / 2 {
            let region = Arc::new(Region::new(size.next_multiple_of(HUGE)));
            let ptr = region.ptr;
            (region, ptr)
        } else {
            // A poisoned lock only means another thread panicked while cutting; the slab
            // bookkeeping is a pair written at once, so it is still consistent.
            let mut now = SLAB_NOW.lock().unwrap_or_else(|e| e.into_inner());
            let (slab, used) = match now.take() {
                Some((slab, used)) if used + size <= SLAB => (slab, used),
                _ => (Arc::new(Region::new(SLAB)), 0),
            };
            // SAFETY: `used + size <= SLAB`: the range lies inside the slab.
            let ptr = unsafe { NonNull::new_unchecked(slab.ptr.as_ptr().add(used)) };
            *now = Some((slab.clone(), used + size));
            (slab, ptr)
        };
        // SAFETY: `ptr` starts `size` bytes of the region that no other buffer uses.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size) };
        Self {
            ptr,
            len,
            _region: region,
        }
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
        // SAFETY: as in `deref`, borrowed mutably for as long as `self` is; no other buffer
        // covers these bytes.
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

    /// Buffers keep their bytes and alignment, whether cut from a slab or on their own, and
    /// buffers cut from one slab do not overlap.
    #[test]
    fn aligned_copies_keep_their_bytes() {
        let lens = [
            0,
            1,
            63,
            64,
            65,
            1000,
            HUGE - 1,
            HUGE + 5,
            SLAB / 2 + 3,
            SLAB - 10,
        ];
        let bufs: Vec<(Vec<u8>, AlignedBytes)> = lens
            .iter()
            .map(|&len| {
                let src: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
                let a = AlignedBytes::copy_of(&src);
                (src, a)
            })
            .collect();
        for (src, a) in &bufs {
            assert_eq!(&a[..], &src[..]);
            let align = if a.len() >= SLAB / 2 { HUGE } else { LINE };
            assert_eq!(a.as_ptr() as usize % align, 0);
            let mut b = a.clone();
            if let Some(x) = b.first_mut() {
                *x ^= 1;
            }
            assert_eq!(&a[..], &src[..]);
            assert_eq!(b.as_ptr() as usize % LINE, 0);
        }
        let mut spans: Vec<(usize, usize)> = bufs
            .iter()
            .map(|(_, a)| (a.as_ptr() as usize, a.as_ptr() as usize + a.len()))
            .collect();
        spans.sort();
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "buffers overlap"
        );
    }
}
