//! One process at a time on a data directory or SQLite database: a second server on the
//! same files would rename the node under the first, and a restore under a running server
//! would leave it writing to a deleted file. The lock is the kernel's (`flock`), so it
//! ends with the process however the process ends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Someone else holds the lock, or it cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is in use by another Syncstead process ({holder}); stop it first", .path.display())]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {}: {source}{}", .path.display(), access_hint(.path, .source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to do about a file this process may not use: empty unless `e` is a permission
/// error. Names the owner of the file (or of the nearest directory above it that can be
/// looked at) against the user the process runs as, the usual cause after a first start
/// as root or a restore by another user.
pub fn access_hint(path: &Path, e: &std::io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    if e.kind() != std::io::ErrorKind::PermissionDenied && e.raw_os_error() != Some(30) {
        return String::new();
    }
    if e.raw_os_error() == Some(30) {
        return " (the file system is mounted read-only: remount it read-write, or point data_dir elsewhere)".into();
    }
    // /proc/self belongs to the user the process runs as.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let found = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| std::fs::metadata(p).ok().map(|m| (p, m)));
    match (me, found) {
        (Some(me), Some((p, m))) if m.uid() != me => format!(
            " ({} belongs to {}, but syncstead runs as {}: run syncstead as {} (e.g. sudo -u {} syncstead …), \
             or give the data directory to this user with chown -R)",
            p.display(),
            user_name(m.uid()),
            user_name(me),
            user_name(m.uid()),
            user_name(m.uid()),
        ),
        (_, Some((p, m))) => format!(
            " ({} has mode {:o}: its owner needs read and write access, e.g. chmod u+rw)",
            p.display(),
            m.mode() & 0o7777
        ),
        _ => String::new(),
    }
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    pub path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock file at `path` (created 0600), or says who holds it.
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "pid unknown".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(InstanceLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file of a SQLite database: beside it, named after it.
    pub fn sqlite_path(db: &Path) -> PathBuf {
        beside(db, ".lock")
    }
}

/// The file named like `db` with `suffix` appended (`-wal`, `-shm`, `.lock`).
pub(crate) fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Creates `dir` (and its missing parents) readable by its owner only: it holds the
/// database, its backups and the master secret.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = InstanceLock::acquire(&path).unwrap();
        let err = InstanceLock::acquire(&path).unwrap_err();
        assert!(
            err.to_string().contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(InstanceLock::acquire(&path).is_ok());
    }
}
