//! The one place that makes file-system changes durable: a new file is synced and its
//! directory fsync'ed, a removal is followed by a directory fsync. Call sites never open-code
//! these steps, so none can forget the directory sync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// fsync a directory so entries created or removed in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Atomically replace `path` with `contents`: write a temp file, sync it, rename, sync the dir.
pub(crate) fn write_file_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(contents)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).ctx(|| format!("rename {} -> {}", tmp.display(), path.display()))?;
    sync_dir(dir)
}

/// Create a new file holding `header`, durable (file and directory synced) before returning.
pub(crate) fn create_new_durable(path: &Path, header: &[u8]) -> Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    f.write_all(header)
        .ctx(|| format!("write {}", path.display()))?;
    f.sync_all().ctx(|| format!("fsync {}", path.display()))?;
    sync_dir(dir)?;
    Ok(f)
}

/// Remove a file and make the removal durable.
pub(crate) fn remove_durable(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::Error::io(format!("remove {}", path.display()), e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}
