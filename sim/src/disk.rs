//! redb on turmoil's simulated disk.
//!
//! Writes stay pending until `sync_data`; `Sim::crash` discards what is pending, so an
//! acknowledged write that was never synced is really lost. A crash drops the node's
//! tasks before it discards, and dropping redb's `Database` commits: the harness fences
//! the backend first, so a crashed node can write nothing more.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use turmoil::fs::shim::std::fs::{self as simfs, File, OpenOptions};

#[derive(Debug)]
pub struct SimDisk {
    file: File,
    fence: Arc<AtomicBool>,
}

/// Trips a [`SimDisk`]: from then on every operation fails.
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<AtomicBool>);

impl Fence {
    pub fn trip(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl SimDisk {
    /// Opens or creates `dir/name` on the current host's disk. A new file's directory
    /// entry is synced, as the real store does.
    pub fn open(dir: &Path, name: &str) -> io::Result<(SimDisk, Fence)> {
        simfs::create_dir_all(dir)?;
        let path = dir.join(name);
        let created = !simfs::exists(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if created {
            file.sync_all()?;
            simfs::sync_dir(dir)?;
        }
        let fence = Fence::default();
        Ok((
            SimDisk {
                file,
                fence: fence.0.clone(),
            },
            fence,
        ))
    }

    fn check(&self) -> io::Result<()> {
        if self.fence.load(Ordering::SeqCst) {
            return Err(io::Error::other("the host crashed"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        self.check()?;
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.check()?;
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.file.write_all_at(data, offset)
    }
}
