//! Weight bytes that start on a cache line.
//!
//! A large `Vec<u8>` from the system allocator usually starts 16 bytes past a page boundary (and
//! small ones anywhere), so where a matrix's bytes began decided whether half of the kernels'
//! 32-byte weight loads straddled two cache lines: the 1.5B's matrices started at 0, 16, 32 or
//! 48 bytes past a line. On a 64-byte boundary no load is split, whatever the allocator does.
//! (On this project's host the difference is below the noise; the point is that a benchmark no
//! longer depends on the allocator's luck.)

use std::fmt;
use std::ops::{Deref, DerefMut};

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; LINE]);

/// Bytes per cache line.
const LINE: usize = 64;

/// A byte buffer whose first byte is 64-byte aligned; derefs to `[u8]`.
#[derive(Clone)]
pub(crate) struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0; LINE]); len.div_ceil(LINE)],
            len,
        }
    }

    /// A copy of `bytes`.
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        let mut out = Self::zeroed(bytes.len());
        out.copy_from_slice(bytes);
        out
    }
}

impl Deref for AlignedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `lines` holds `lines.len() * LINE >= len` initialised bytes (`Line` is plain
        // bytes with no padding), borrowed for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }
}

impl DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably for as long as `self` is.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
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
        for len in [0, 1, 63, 64, 65, 1000] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut a = AlignedBytes::copy_of(&src);
            assert_eq!(&a[..], &src[..]);
            assert_eq!(a.as_ptr() as usize % LINE, 0);
            let b = a.clone();
            if let Some(x) = a.first_mut() {
                *x ^= 1;
            }
            assert_eq!(&b[..], &src[..]);
            assert_eq!(b.as_ptr() as usize % LINE, 0);
        }
    }
}
