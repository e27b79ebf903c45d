//! One core's provided-buffer ring (io_uring `IORING_REGISTER_PBUF_RING`): a fixed pool of
//! receive buffers shared by every connection of the core, so an idle connection holds no read
//! buffer at all. The kernel picks a buffer per receive; we hand it back after the shard has
//! consumed the bytes. Owns the ring memory and the buffers; knows nothing of connections.
//! The load generator (`bench::sys`) uses the same pool for its own receives.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    buffers: Box<[u8]>,
    buffer_bytes: usize,
    entries: u16,
    tail: u16,
}

// SAFETY: `ring` is an allocation owned by this value alone (like a `Box`); nothing else holds
// the pointer, so moving the owner to another thread before use (the load generator builds its
// rings before spawning the threads that run them) is sound. It is not `Sync`.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Allocates `entries` buffers of `buffer_bytes` and registers them as group `group`.
    pub fn new(
        uring: &IoUring,
        entries: u16,
        buffer_bytes: usize,
        group: u16,
    ) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two() && entries <= 32768);
        let ring_layout =
            Layout::from_size_align(usize::from(entries) * size_of::<BufRingEntry>(), 4096)
                .map_err(|error| io::Error::other(error.to_string()))?;
        // SAFETY: the layout has a non-zero size (entries >= 1) and a valid power-of-two alignment.
        let ring = unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        if ring.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"));
        }
        let mut buffers = vec![0u8; usize::from(entries) * buffer_bytes].into_boxed_slice();
        // The kernel hands buffers out in ring order, so every page is in use after the first
        // few hundred receives anyway: commit them now, so the process's resident size at start
        // already includes this fixed per-core pool (it is not a per-connection cost).
        for page in buffers.chunks_mut(4096) {
            page[0] = 1;
        }
        let mut buf_ring = BufRing {
            ring,
            ring_layout,
            buffers,
            buffer_bytes,
            entries,
            tail: 0,
        };
        // SAFETY: `ring` is page-aligned, zeroed, sized for `entries` entries, and lives (in
        // `self`) until after the io_uring instance is dropped: `CoreLoop` declares the ring
        // before the buffers so it is dropped first.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, entries, group, 0)?;
        }
        for bid in 0..entries {
            buf_ring.push(bid);
        }
        buf_ring.publish();
        Ok(buf_ring)
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buffer_bytes);
        let start = usize::from(bid) * self.buffer_bytes;
        &self.buffers[start..start + len]
    }

    /// Queues buffer `bid` for reuse; visible to the kernel after `publish`.
    pub fn push(&mut self, bid: u16) {
        assert!(bid < self.entries);
        let index = usize::from(self.tail & (self.entries - 1));
        let addr = self.buffers[usize::from(bid) * self.buffer_bytes..].as_ptr() as u64;
        // SAFETY: `index < entries`, so the entry is inside the ring allocation, and the kernel
        // does not read entries at or past the published tail, so we may write this one.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: `ring` points to the first entry of the registered ring; the tail field lives in
        // its `resv` slot and is only ever written by us, atomically, with Release ordering so
        // the entry writes above are visible before the kernel sees the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout; the io_uring instance that used it
        // was dropped before us (field order in `CoreLoop`).
        unsafe { dealloc(self.ring.cast(), self.ring_layout) };
    }
}
