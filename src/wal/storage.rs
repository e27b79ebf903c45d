//! The storage seam of the write-ahead log: the `Storage` trait (exactly the file operations the
//! WAL uses) and its three implementations. `FsStorage` is the real one (std files, and
//! `fallocate(2)` through rustix). `MemStorage` keeps files in memory and models what a crash
//! keeps: written bytes sit in a "page cache" until `sync_data` makes them durable, names
//! until `sync_dir`; `power_loss()` keeps only what was durable, a process crash keeps
//! everything written. `FaultyStorage` wraps another storage and injects the faults the WAL
//! must survive: ENOSPC on create/preallocate and on write, EIO on write or sync, and torn
//! writes (a prefix reaches the disk, then the "process" is dead). Faults are armed explicitly
//! or drawn from a seeded schedule, so every failure is reproducible from its seed.
//!
//! Nothing here interprets the bytes: segments and records are `segment.rs` and `record.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The file operations of the WAL. Paths are whole paths; a stream's files live in one
/// directory. Every method reports failure as an `io::Error` and never panics on one.
pub trait Storage: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir` (not subdirectories), in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The names of the subdirectories of `dir`, in no particular order.
    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new file (an existing one is an error) and reserves `preallocate` bytes for
    /// it, which read as zeros. The flag is false when the filesystem cannot reserve space
    /// (the file is then created without it).
    fn create(&self, path: &Path, preallocate: u64) -> io::Result<(Box<dyn StorageFile>, bool)>;
    /// Opens an existing file for writing at offsets (and syncing).
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// The whole file. Callers check `len` against their bound first.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `len` bytes from `offset` (fewer at the end of the file).
    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Opens an existing file for reading at offsets, kept open by a reader that comes back
    /// to the same file often (a tail of the segment being written). Like an open descriptor,
    /// it keeps reading the file it opened even after the name is removed or replaced.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageRead>>;
    /// Cuts the file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of a `Storage`.
pub trait StorageFile: Send + fmt::Debug {
    /// Writes all of `bytes` at `offset`, or fails (having written any prefix of them).
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Reserves space up to `len` bytes (zeros past the current end); false when the
    /// filesystem cannot reserve space.
    fn allocate(&mut self, len: u64) -> io::Result<bool>;
    /// The file's descriptor, when it is a real file (an event loop may then sync it without
    /// blocking, `WalWriter::begin_external_sync`); None for simulated files.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// A file of a `Storage` open for reading.
pub trait StorageRead: Send + fmt::Debug {
    /// Fills `buf` from `offset`; returns how many bytes were read (fewer than `buf.len()`
    /// only at the end of the file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// Whether an error means the disk (or quota) is full.
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

// ---------------------------------------------------------------------------------------------
// Real files.

/// Real files through `std::fs`, with `fallocate(2)` for preallocation.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

#[derive(Debug)]
struct FsFile(File);

/// Reserves `[0, len)` of `file` (mode 0: the size grows to `len`; the new space reads as
/// zeros). `Ok(false)` when the filesystem does not support it.
fn fallocate(file: &File, len: u64) -> io::Result<bool> {
    use rustix::fs::FallocateFlags;
    loop {
        match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, len) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path, preallocate: u64) -> io::Result<(Box<dyn StorageFile>, bool)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let preallocated = preallocate == 0 || fallocate(&file, preallocate)?;
        Ok((Box::new(FsFile(file)), preallocated))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(FsFile(file)))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = File::open(path)?;
        let available = file.metadata()?.len().saturating_sub(offset);
        let mut bytes = vec![0; len.min(usize::try_from(available).unwrap_or(usize::MAX))];
        file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageRead>> {
        Ok(Box::new(FsRead(File::open(path)?)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl StorageFile for FsFile {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        fallocate(&self.0, len)
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.0.as_raw_fd())
    }
}

#[derive(Debug)]
struct FsRead(File);

impl StorageRead for FsRead {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.0.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }
}

// ---------------------------------------------------------------------------------------------
// In memory, with a page cache.

/// Files in memory with the durability of a real disk: see the module docs. Clones share the
/// same files (a test keeps one to crash and inspect the "disk").
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    dirs: BTreeSet<PathBuf>,
    inodes: Vec<Inode>,
    /// The names as the running process sees them.
    names: BTreeMap<PathBuf, usize>,
    /// The names as of each directory's last `sync_dir`.
    durable_names: BTreeMap<PathBuf, usize>,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    /// What reads see (the page cache).
    data: Vec<u8>,
    /// What survives a power loss.
    durable: Vec<u8>,
}

#[derive(Debug)]
struct MemFile {
    state: Arc<Mutex<MemState>>,
    inode: usize,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// The file named `path`, open (reads and writes go to its inode, whatever its name
    /// becomes).
    fn file(&self, path: &Path) -> io::Result<MemFile> {
        let state = self.state();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(MemFile {
            state: Arc::clone(&self.state),
            inode,
        })
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().expect("no panics while the lock is held")
    }

    /// A power loss: every file goes back to its last synced bytes, every directory to its
    /// last synced entries. Open handles must not be used afterwards (the process is gone).
    pub fn power_loss(&self) {
        let mut state = self.state();
        state.names = state.durable_names.clone();
        for inode in &mut state.inodes {
            inode.data = inode.durable.clone();
        }
    }

    /// A power loss after the kernel wrote back some of the unsynced pages, in any order: each
    /// file keeps its synced bytes plus a choice (by `seed`) of the 4 KiB pages written since,
    /// and either its written or its synced length. Directories keep their synced entries.
    pub fn power_loss_reordered(&self, seed: u64) {
        const PAGE: usize = 4096;
        let mut rng = seed | 1;
        let mut coin = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng & 1 == 1
        };
        let mut state = self.state();
        state.names = state.durable_names.clone();
        for inode in &mut state.inodes {
            let len = if coin() {
                inode.data.len()
            } else {
                inode.durable.len()
            };
            let mut bytes = inode.durable.clone();
            bytes.resize(len, 0);
            for start in (0..len).step_by(PAGE) {
                let end = (start + PAGE).min(len).min(inode.data.len());
                if start < end && inode.data[start..end] != bytes[start..end] && coin() {
                    bytes[start..end].copy_from_slice(&inode.data[start..end]);
                }
            }
            inode.data = bytes.clone();
            inode.durable = bytes;
        }
    }

    /// A process crash (kill -9): the kernel keeps everything written, so nothing changes.
    /// Present so tests say which crash they mean.
    pub fn process_crash(&self) {}

    /// The current bytes of a file (what a reader would see now).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state();
        let inode = *state.names.get(path)?;
        Some(state.inodes[inode].data.clone())
    }

    /// Overwrites a file's bytes, durably (to damage a segment in tests).
    pub fn set_contents(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.state();
        let inode = *state.names.get(path).expect("an existing file");
        state.inodes[inode].data = bytes.clone();
        state.inodes[inode].durable = bytes;
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }

    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state();
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .dirs
            .iter()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }

    fn create(&self, path: &Path, preallocate: u64) -> io::Result<(Box<dyn StorageFile>, bool)> {
        let mut state = self.state();
        if !path.parent().is_some_and(|dir| state.dirs.contains(dir)) {
            return Err(not_found(path));
        }
        if state.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let inode = state.inodes.len();
        state.inodes.push(Inode {
            data: vec![0; usize::try_from(preallocate).expect("a test-sized file")],
            durable: Vec::new(),
        });
        state.names.insert(path.to_path_buf(), inode);
        let file = MemFile {
            state: Arc::clone(&self.state),
            inode,
        };
        Ok((Box::new(file), true))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(self.file(path)?))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let state = self.state();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(state.inodes[inode].data.len() as u64)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.contents(path).ok_or_else(|| not_found(path))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageRead>> {
        Ok(Box::new(self.file(path)?))
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.file(path)?;
        let state = file.state();
        let data = &state.inodes[file.inode].data;
        let (start, end) = span(data.len(), offset, len);
        Ok(data[start..end].to_vec())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.state();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = &mut state.inodes[inode];
        inode
            .data
            .resize(usize::try_from(len).expect("a test-sized file"), 0);
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        let state = &mut *state;
        state
            .durable_names
            .retain(|path, _| path.parent() != Some(dir));
        for (path, inode) in &state.names {
            if path.parent() == Some(dir) {
                state.durable_names.insert(path.clone(), *inode);
            }
        }
        Ok(())
    }
}

impl MemFile {
    fn state(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().expect("no panics while the lock is held")
    }
}

/// The bytes `len` bytes from `offset` cover in a file of `size` bytes (fewer at the end of
/// the file, none past it).
fn span(size: usize, offset: u64, len: usize) -> (usize, usize) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(size);
    (start, start.saturating_add(len).min(size))
}

impl StorageRead for MemFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let state = self.state();
        let data = &state.inodes[self.inode].data;
        let (start, end) = span(data.len(), offset, buf.len());
        buf[..end - start].copy_from_slice(&data[start..end]);
        Ok(end - start)
    }
}

impl StorageFile for MemFile {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        let data = &mut state.inodes[self.inode].data;
        let start = usize::try_from(offset).expect("a test-sized file");
        if data.len() < start + bytes.len() {
            data.resize(start + bytes.len(), 0);
        }
        data[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.state();
        let inode = &mut state.inodes[self.inode];
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        let mut state = self.state();
        let data = &mut state.inodes[self.inode].data;
        let len = usize::try_from(len).expect("a test-sized file");
        if data.len() < len {
            data.resize(len, 0);
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Fault injection.

/// A fault `FaultyStorage` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Creating or preallocating a file fails with ENOSPC until `clear_no_space` (a full disk).
    NoSpace,
    /// Writes fail with ENOSPC too until `clear_no_space` (a disk filled on a filesystem that
    /// could not preallocate, or by another writer).
    NoSpaceOnWrite,
    /// The next write fails with EIO; nothing of it is written.
    WriteEio,
    /// The next `sync_data` fails with EIO.
    SyncEio,
    /// The next write puts only its first `n` bytes on disk, then the process "dies": that
    /// call and every later one fail, and the test recovers from the inner storage.
    TornWrite(usize),
}

/// Chances (per million calls) of the faults a seeded schedule injects.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultRates {
    pub no_space_per_million: u32,
    pub write_eio_per_million: u32,
    pub sync_eio_per_million: u32,
    pub torn_write_per_million: u32,
}

/// Injects faults into another storage; see the module docs. Clones share the schedule.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Mutex<Faults>>,
}

#[derive(Debug, Default)]
struct Faults {
    no_space: bool,
    no_space_on_write: bool,
    write_eio: bool,
    sync_eio: bool,
    torn_write: Option<usize>,
    /// A torn write happened: the process is dead.
    dead: bool,
    rates: FaultRates,
    /// xorshift64* state of the seeded schedule; 0 = no schedule.
    rng: u64,
    injected: u64,
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn StorageFile>,
    faults: Arc<Mutex<Faults>>,
}

/// A file of a `FaultyStorage` open for reading: reads fail once the "process" is dead.
#[derive(Debug)]
struct FaultyRead {
    inner: Box<dyn StorageRead>,
    faults: Arc<Mutex<Faults>>,
}

impl StorageRead for FaultyRead {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.faults
            .lock()
            .expect("no panics while the lock is held")
            .alive()?;
        self.inner.read_at(offset, buf)
    }
}

fn error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn dead() -> io::Error {
    io::Error::other("the process crashed (torn write injected)")
}

impl Faults {
    /// One draw of the seeded schedule: true with `per_million` chance.
    fn chance(&mut self, per_million: u32) -> bool {
        if self.rng == 0 || per_million == 0 {
            return false;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let draw = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        draw % 1_000_000 < u64::from(per_million)
    }

    fn no_space_now(&mut self) -> bool {
        let rate = self.rates.no_space_per_million;
        self.no_space || self.chance(rate)
    }

    fn alive(&self) -> io::Result<()> {
        if self.dead { Err(dead()) } else { Ok(()) }
    }
}

impl FaultyStorage {
    /// Wraps `inner` with no fault armed.
    pub fn new(inner: Arc<dyn Storage>) -> FaultyStorage {
        FaultyStorage {
            inner,
            faults: Arc::new(Mutex::new(Faults::default())),
        }
    }

    /// Wraps `inner` with faults drawn from `rates` by a generator seeded with `seed`.
    pub fn seeded(inner: Arc<dyn Storage>, seed: u64, rates: FaultRates) -> FaultyStorage {
        let storage = FaultyStorage::new(inner);
        {
            let mut faults = storage.faults();
            faults.rates = rates;
            faults.rng = seed | 1;
        }
        storage
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .expect("no panics while the lock is held")
    }

    pub fn arm(&self, fault: Fault) {
        let mut faults = self.faults();
        match fault {
            Fault::NoSpace => faults.no_space = true,
            Fault::NoSpaceOnWrite => {
                faults.no_space = true;
                faults.no_space_on_write = true;
            }
            Fault::WriteEio => faults.write_eio = true,
            Fault::SyncEio => faults.sync_eio = true,
            Fault::TornWrite(n) => faults.torn_write = Some(n),
        }
    }

    /// Space is back.
    pub fn clear_no_space(&self) {
        let mut faults = self.faults();
        faults.no_space = false;
        faults.no_space_on_write = false;
    }

    /// Whether a torn write "killed" the process.
    pub fn is_dead(&self) -> bool {
        self.faults().dead
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.faults().injected
    }

    fn wrap(&self, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(FaultyFile {
            inner: file,
            faults: Arc::clone(&self.faults),
        })
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.faults().alive()?;
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.faults().alive()?;
        self.inner.list(dir)
    }

    fn list_dirs(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.faults().alive()?;
        self.inner.list_dirs(dir)
    }

    fn create(&self, path: &Path, preallocate: u64) -> io::Result<(Box<dyn StorageFile>, bool)> {
        {
            let mut faults = self.faults();
            faults.alive()?;
            if faults.no_space_now() {
                faults.injected += 1;
                return Err(error(libc::ENOSPC));
            }
        }
        let (file, preallocated) = self.inner.create(path, preallocate)?;
        Ok((self.wrap(file), preallocated))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.faults().alive()?;
        Ok(self.wrap(self.inner.open(path)?))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.faults().alive()?;
        self.inner.len(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.faults().alive()?;
        self.inner.read(path)
    }

    fn read_range(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.faults().alive()?;
        self.inner.read_range(path, offset, len)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageRead>> {
        self.faults().alive()?;
        Ok(Box::new(FaultyRead {
            inner: self.inner.open_read(path)?,
            faults: Arc::clone(&self.faults),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.faults().alive()?;
        self.inner.truncate(path, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults().alive()?;
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.faults().alive()?;
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults().alive()?;
        self.inner.sync_dir(dir)
    }
}

impl StorageFile for FaultyFile {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut faults = self
            .faults
            .lock()
            .expect("no panics while the lock is held");
        faults.alive()?;
        let rates = faults.rates;
        if faults.no_space_on_write {
            faults.injected += 1;
            return Err(error(libc::ENOSPC));
        }
        if std::mem::take(&mut faults.write_eio) || faults.chance(rates.write_eio_per_million) {
            faults.injected += 1;
            return Err(error(libc::EIO));
        }
        let torn = match faults.torn_write.take() {
            Some(n) => Some(n),
            None if faults.chance(rates.torn_write_per_million) => {
                Some(faults.rng as usize % bytes.len().max(1))
            }
            None => None,
        };
        if let Some(n) = torn {
            faults.injected += 1;
            faults.dead = true;
            self.inner.write_at(offset, &bytes[..n.min(bytes.len())])?;
            return Err(dead());
        }
        drop(faults);
        self.inner.write_at(offset, bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut faults = self
            .faults
            .lock()
            .expect("no panics while the lock is held");
        faults.alive()?;
        let rate = faults.rates.sync_eio_per_million;
        if std::mem::take(&mut faults.sync_eio) || faults.chance(rate) {
            faults.injected += 1;
            return Err(error(libc::EIO));
        }
        drop(faults);
        self.inner.sync_data()
    }

    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        let mut faults = self
            .faults
            .lock()
            .expect("no panics while the lock is held");
        faults.alive()?;
        if faults.no_space_now() {
            faults.injected += 1;
            return Err(error(libc::ENOSPC));
        }
        drop(faults);
        self.inner.allocate(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_storage_keeps_only_synced_bytes_and_names_over_a_power_loss() {
        let storage = MemStorage::new();
        let dir = Path::new("/wal/core-0");
        storage.create_dir_all(dir).unwrap();
        let (mut synced, _) = storage.create(&dir.join("a"), 8).unwrap();
        synced.write_at(0, b"durable").unwrap();
        synced.sync_data().unwrap();
        storage.sync_dir(dir).unwrap();
        synced.write_at(7, b"+cache").unwrap();
        let (mut unsynced, _) = storage.create(&dir.join("b"), 0).unwrap();
        unsynced.write_at(0, b"x").unwrap();
        unsynced.sync_data().unwrap();
        storage.process_crash();
        assert_eq!(storage.read(&dir.join("a")).unwrap(), b"durable+cache");
        storage.power_loss();
        assert_eq!(storage.read(&dir.join("a")).unwrap(), b"durable\0");
        assert!(
            storage.read(&dir.join("b")).is_err(),
            "its name was never synced"
        );
        assert_eq!(storage.list(dir).unwrap(), ["a"]);
    }

    #[test]
    fn faults_are_injected_once_or_until_cleared() {
        let memory = MemStorage::new();
        let storage = FaultyStorage::new(Arc::new(memory.clone()));
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        storage.arm(Fault::NoSpace);
        assert!(is_no_space(
            &storage.create(&dir.join("f"), 10).unwrap_err()
        ));
        storage.clear_no_space();
        let (mut file, _) = storage.create(&dir.join("f"), 10).unwrap();
        storage.arm(Fault::WriteEio);
        assert_eq!(
            file.write_at(0, b"a").unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        file.write_at(0, b"a").unwrap();
        storage.arm(Fault::SyncEio);
        assert!(file.sync_data().is_err());
        file.sync_data().unwrap();
        storage.arm(Fault::TornWrite(2));
        assert!(file.write_at(1, b"bcdef").is_err());
        assert!(storage.is_dead());
        assert!(
            storage.list(dir).is_err(),
            "a dead process does nothing more"
        );
        assert_eq!(&memory.read(&dir.join("f")).unwrap()[..4], b"abc\0");
        assert_eq!(storage.injected(), 4);
    }

    #[test]
    fn fs_storage_preallocates_zeros() {
        let dir = std::env::temp_dir().join(format!("ringcast-storage-{}", std::process::id()));
        let storage = FsStorage;
        storage.create_dir_all(&dir).unwrap();
        let path = dir.join("seg");
        let _ = storage.remove(&path);
        let (mut file, _) = storage.create(&path, 4096).unwrap();
        assert_eq!(storage.len(&path).unwrap(), 4096);
        file.write_at(10, b"abc").unwrap();
        file.sync_data().unwrap();
        assert_eq!(storage.read_range(&path, 9, 5).unwrap(), b"\0abc\0");
        assert!(
            storage.create(&path, 0).is_err(),
            "create never replaces a file"
        );
        storage.truncate(&path, 12).unwrap();
        assert_eq!(storage.read(&path).unwrap().len(), 12);
        open_read_reads_like_a_descriptor(&storage, &path);
        storage.sync_dir(&dir).unwrap();
        let _ = std::fs::remove_dir(&dir);
    }

    /// `open_read` on a 12-byte file of zeros ending in "ab": a read fills what the file has and
    /// says how much (short at the end), and the open file still reads after its name is
    /// removed, as a descriptor does. Removes the file.
    fn open_read_reads_like_a_descriptor(storage: &dyn Storage, path: &Path) {
        let reader = storage.open_read(path).unwrap();
        let mut buf = [7_u8; 8];
        assert_eq!(reader.read_at(8, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"\0\0ab");
        storage.remove(path).unwrap();
        assert_eq!(reader.read_at(11, &mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'b');
        assert_eq!(reader.read_at(12, &mut buf).unwrap(), 0);
        assert_eq!(
            storage.open_read(path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn mem_storage_open_read_reads_like_a_descriptor() {
        let storage = MemStorage::new();
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let path = dir.join("seg");
        let (mut file, _) = storage.create(&path, 12).unwrap();
        file.write_at(10, b"ab").unwrap();
        open_read_reads_like_a_descriptor(&storage, &path);
    }
}
