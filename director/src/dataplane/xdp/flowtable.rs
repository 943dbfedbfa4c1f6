//! The flow table from user space: the XDP program's array of buckets of
//! [`FlowEntry`] ways and its tag array (tag words, one `u32` per bucket,
//! two to an 8-byte array element: a byte per way; then occupancy bits,
//! one per bucket, set with an atomic OR), both mapped into the daemon's memory (the maps are
//! `BPF_F_MMAPABLE`), so imports and scans read and write them in place
//! instead of one system call per entry.
//!
//! Entries are written without a lock by the program on every CPU and by
//! the daemon: every read goes through [`FlowEntry::checks`], which fails
//! for a way half-written by two writers at once (such a way counts as
//! absent: its flow is placed again). A way is free when its tag is 0.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{Array, IterableMap as _, MapData};
use director_common::{FLOW_WAYS, FlowEntry, FlowKey, flow_buckets, flow_table_hash, flow_tag};

use super::XdpError;

/// A shared mapping of a mappable array's values.
struct Mapping<T> {
    base: NonNull<T>,
    len: usize,
}

impl<T> Mapping<T> {
    fn new<V: aya::Pod>(map: &Array<MapData, V>, len: usize) -> Result<Mapping<T>, XdpError> {
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: a shared mapping of the map's value area, which the
        // kernel sizes (a mappable array); checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.map().fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XdpError::Link(format!(
                "cannot map the flow table: {}",
                std::io::Error::last_os_error()
            )));
        }
        let base = NonNull::new(ptr.cast::<T>())
            .ok_or_else(|| XdpError::Link("the flow table mapped at 0".into()))?;
        Ok(Mapping { base, len })
    }

    fn at(&self, index: u32) -> *mut T {
        assert!((index as usize) < self.len, "flow table index out of range");
        // SAFETY: index < len: inside the mapping.
        unsafe { self.base.as_ptr().add(index as usize) }
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.len * std::mem::size_of::<T>(),
            )
        };
    }
}

/// The program's flow table, mapped.
pub struct FlowTable {
    entries: Mapping<FlowEntry>,
    /// The tag array as `u32` words: a tag word per bucket, then (from
    /// `occupancy`, in words) the occupancy bits.
    tags: Mapping<u32>,
    /// The first word of the occupancy bits.
    occupancy: u32,
    seed: u32,
    /// The maps' handles (the mappings hold the maps too).
    _maps: (Array<MapData, FlowEntry>, Array<MapData, u64>),
}

// SAFETY: the mappings are shared memory that every access reads or writes
// with volatile operations, whole entries checked; no Rust reference into
// them is ever handed out.
unsafe impl Send for FlowTable {}
// SAFETY: as above.
unsafe impl Sync for FlowTable {}

impl FlowTable {
    /// Maps the flow table `flows` of `entries` entries and its tag words
    /// `tags`, hashed with `seed`.
    pub fn map(
        flows: Array<MapData, FlowEntry>,
        tags: Array<MapData, u64>,
        entries: u32,
        seed: u32,
    ) -> Result<FlowTable, XdpError> {
        let buckets = entries / FLOW_WAYS;
        Ok(FlowTable {
            entries: Mapping::new(&flows, entries as usize)?,
            // u32 words, two to each 8-byte element.
            tags: Mapping::new(
                &tags,
                2 * director_common::flow_tag_array_elements(buckets) as usize,
            )?,
            occupancy: 2 * director_common::flow_tag_elements(buckets),
            seed,
            _maps: (flows, tags),
        })
    }

    /// Entries (ways) in the table.
    pub fn entries(&self) -> u32 {
        self.entries.len as u32
    }

    /// The hash seed the table's entries were placed with.
    pub fn seed(&self) -> u32 {
        self.seed
    }

    fn read(&self, index: u32) -> FlowEntry {
        // SAFETY: inside the mapping; a volatile copy (the program may be
        // writing it).
        unsafe { self.entries.at(index).read_volatile() }
    }

    fn write(&self, index: u32, entry: FlowEntry) {
        // SAFETY: as in `read`.
        unsafe { self.entries.at(index).write_volatile(entry) }
    }

    /// The tag word of the bucket at `first`.
    fn tag_word(&self, first: u32) -> u32 {
        // SAFETY: as in `read`.
        unsafe { self.tags.at(first / FLOW_WAYS).read_volatile() }
    }

    /// Sets one byte of the tag word of the bucket at `first` (the program
    /// may be writing the others).
    fn set_tag(&self, first: u32, byte: u32, value: u8) {
        debug_assert!(byte < FLOW_WAYS);
        // SAFETY: as in `read`; a byte inside the word.
        unsafe {
            self.tags
                .at(first / FLOW_WAYS)
                .cast::<u8>()
                .add(byte as usize)
                .write_volatile(value)
        }
    }

    /// The occupancy bit of the bucket at `first`: its word (the
    /// program's 64-bit elements seen as little-endian halves) and mask.
    fn occupancy_bit(&self, first: u32) -> (&AtomicU32, u32) {
        let bucket = first / FLOW_WAYS;
        // SAFETY: inside the mapping, 4-aligned; every CPU's program and
        // the daemon only OR into it atomically or read it.
        let word = unsafe { AtomicU32::from_ptr(self.tags.at(self.occupancy + bucket / 32)) };
        (word, 1 << (bucket % 32))
    }

    /// Marks the bucket at `first` occupied (an atomic OR: the program may
    /// be setting the word's other bits).
    fn occupy(&self, first: u32) {
        let (word, bit) = self.occupancy_bit(first);
        word.fetch_or(bit, Ordering::Relaxed);
    }

    /// The key's table hash and its two buckets' first entries.
    fn buckets(&self, key: &FlowKey) -> (u64, u32, u32) {
        let hash = flow_table_hash(key, self.seed);
        let (b1, b2) = flow_buckets(hash, self.entries() / FLOW_WAYS);
        (hash, b1, b2)
    }

    /// The way of the bucket at `first` holding `key` (checked or not),
    /// and whether the bucket is full.
    fn find_in(&self, key: &FlowKey, first: u32) -> (Option<(u32, FlowEntry)>, bool) {
        for i in first..first + FLOW_WAYS {
            let e = self.read(i);
            if e.key.protocol == 0 {
                return (None, false);
            }
            if e.key.same(key) {
                return (Some((i, e)), false);
            }
        }
        (None, true)
    }

    /// The way holding `key`: in its first bucket, or in its second when
    /// the first is full (as the program looks).
    fn find(&self, key: &FlowKey, b1: u32, b2: u32) -> Option<(u32, FlowEntry)> {
        match self.find_in(key, b1) {
            (None, true) => self.find_in(key, b2).0,
            (found, _) => found,
        }
    }

    /// The entry of `key`, if the table holds one (and it checks).
    pub fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
        let (hash, b1, b2) = self.buckets(key);
        self.find(key, b1, b2)
            .map(|(_, e)| e)
            .filter(|e| e.checks(hash as u32))
    }

    /// Records `key` on real server `backend` unless the table holds it
    /// already (never overriding what the program decided; a peer's flow,
    /// `from_peer`, replaces what a peer said before, which it may have
    /// placed again since): in the way holding its key, else a free way of
    /// its first bucket, else of its second; never over another flow.
    /// Returns whether it was recorded.
    pub fn insert_new(
        &self,
        key: &FlowKey,
        backend: u16,
        service: u16,
        generation: u32,
        atime: u64,
        from_peer: bool,
    ) -> bool {
        let (hash, b1, b2) = self.buckets(key);
        let mut entry = FlowEntry::new(*key, hash as u32, backend, service, generation, atime);
        entry.from_peer = u8::from(from_peer);
        let free = |first: u32| {
            let t = self.tag_word(first);
            (0..FLOW_WAYS).find(|w| (t >> (8 * w)) as u8 == 0)
        };
        let index = match self.find(key, b1, b2) {
            // (A closing connection's entry gives way: the peer has the
            // 5-tuple open.)
            Some((index, e)) => {
                // A peer's later word on a flow the peer placed again.
                let renewed = from_peer
                    && e.from_peer != 0
                    && (e.backend, e.service, e.generation) != (backend, service, generation);
                if e.checks(hash as u32) && e.closed == 0 && !renewed {
                    return false;
                }
                index
            }
            None => match free(b1) {
                Some(w) => b1 + w,
                None => match free(b2) {
                    Some(w) => b2 + w,
                    // Both buckets are full: the flows the program
                    // recorded stay.
                    None => return false,
                },
            },
        };
        self.write(index, entry);
        let first = index - index % FLOW_WAYS;
        self.set_tag(first, index % FLOW_WAYS, flow_tag(hash));
        self.occupy(first);
        true
    }

    /// Every entry that checks.
    pub fn iter(&self) -> impl Iterator<Item = FlowEntry> + '_ {
        (0..self.entries()).filter_map(|i| {
            let e = self.read(i);
            (e.key.protocol != 0 && e.checks(flow_table_hash(&e.key, self.seed) as u32))
                .then_some(e)
        })
    }

    /// Whether the bucket at `first` has its occupancy bit set.
    fn occupied(&self, first: u32) -> bool {
        let (word, bit) = self.occupancy_bit(first);
        word.load(Ordering::Relaxed) & bit != 0
    }

    /// Buckets whose tag word or occupancy bit disagrees with their ways
    /// (a tag not 0 exactly for an empty way, the occupancy bit not set
    /// exactly when a way is taken): 0 for a consistent table.
    pub fn tag_mismatches(&self) -> usize {
        (0..self.entries())
            .step_by(FLOW_WAYS as usize)
            .filter(|&first| {
                let word = self.tag_word(first);
                let ways: Vec<bool> = (first..first + FLOW_WAYS)
                    .map(|i| self.read(i).key.protocol != 0)
                    .collect();
                let tags_agree = ways
                    .iter()
                    .enumerate()
                    .all(|(w, taken)| ((word >> (8 * w)) as u8 != 0) == *taken);
                let occupied = self.occupied(first);
                !tags_agree || occupied != ways.iter().any(|t| *t)
            })
            .count()
    }

    /// Zeroes the tag array (tag words and occupancy bits), as a tag
    /// array re-created beside an adopted table is: for tests of
    /// [`FlowTable::rebuild_tags`].
    pub fn clear_tags(&self) {
        for word in 0..self.tags.len as u32 {
            // SAFETY: as in `read`.
            unsafe { self.tags.at(word).write_volatile(0) }
        }
    }

    /// Writes every bucket's tag word and occupancy bit from its entries
    /// (a tag array that was not kept with the entries: re-created beside
    /// an adopted table).
    pub fn rebuild_tags(&self) {
        for i in 0..self.entries() {
            let e = self.read(i);
            let first = i - i % FLOW_WAYS;
            if e.key.protocol == 0 {
                self.set_tag(first, i % FLOW_WAYS, 0);
            } else {
                self.set_tag(
                    first,
                    i % FLOW_WAYS,
                    flow_tag(flow_table_hash(&e.key, self.seed)),
                );
                self.occupy(first);
            }
        }
    }
}
