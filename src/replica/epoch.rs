//! The highest epoch this node has seen, persisted in `{storage.dir}/replication/epoch` so that
//! a restart never goes back to an older term (a node that saw epoch N never acknowledges or
//! follows anything of an epoch below N). Written with the classic dance (temporary file,
//! fsync, rename, directory fsync) so a crash leaves the old or the new value, never a torn one.
//! It owns that one file and nothing else.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "epoch";
/// The file holds one decimal number and a newline.
const FILE_BYTES_MAX: u64 = 64;

/// The directory under the data directory holding replication state (`divergent/` too).
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("replication")
}

/// The persisted epoch; None when the file does not exist (a new node).
///
/// # Errors
///
/// The file exists but cannot be read or does not hold a number: the node must not guess.
pub fn load(data_dir: &Path) -> io::Result<Option<u64>> {
    let path = dir(data_dir).join(FILE_NAME);
    match fs::metadata(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
        Ok(meta) if meta.len() > FILE_BYTES_MAX => {
            return Err(io::Error::other(format!(
                "{}: {} bytes, not an epoch",
                path.display(),
                meta.len()
            )));
        }
        Ok(_) => {}
    }
    let text = fs::read_to_string(&path)?;
    text.trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|error| io::Error::other(format!("{}: not an epoch: {error}", path.display())))
}

/// Persists `epoch` (durable when this returns).
///
/// # Errors
///
/// Any IO error: the caller must not act in the new epoch.
pub fn store(data_dir: &Path, epoch: u64) -> io::Result<()> {
    let dir = dir(data_dir);
    fs::create_dir_all(&dir)?;
    let temporary = dir.join("epoch.tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(format!("{epoch}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, dir.join(FILE_NAME))?;
    fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_and_refuses_garbage() {
        let data = std::env::temp_dir().join(format!("ringcast-epoch-{}", std::process::id()));
        let _ = fs::remove_dir_all(&data);
        assert_eq!(load(&data).unwrap(), None, "a new node has none");
        store(&data, 7).unwrap();
        assert_eq!(load(&data).unwrap(), Some(7));
        store(&data, 8).unwrap();
        assert_eq!(load(&data).unwrap(), Some(8));
        fs::write(dir(&data).join(FILE_NAME), "seven\n").unwrap();
        assert!(load(&data).is_err(), "a node must not guess its epoch");
        let _ = fs::remove_dir_all(&data);
    }
}
