//! The `ObjectStore` port (results, checkpoints, large inputs) and its filesystem adapter.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What can go wrong with an object store.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// No object at that key or URI.
    #[error("object not found: {0}")]
    NotFound(String),
    /// The key or URI is not one this store serves.
    #[error("invalid object reference {0:?}: {1}")]
    InvalidRef(String, String),
    /// The backend failed.
    #[error("object store error: {0}")]
    Backend(String),
}

/// Stores blobs by key (`results/<job_id>/<attempt>.jsonl`); every object has a URI the ledger can keep.
pub trait ObjectStore: Send + Sync {
    /// Writes `bytes` at `key` (replacing it); returns the object's URI.
    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<String, ObjectError>> + Send;

    /// Reads an object by the URI `put` returned.
    fn get(&self, uri: &str) -> impl Future<Output = Result<Vec<u8>, ObjectError>> + Send;

    /// A URL a client can download the object from, valid for `expires_in`.
    fn presign_get(
        &self,
        uri: &str,
        expires_in: Duration,
    ) -> impl Future<Output = Result<String, ObjectError>> + Send;
}

/// Objects as files under a root folder; URIs are `file://` URLs of the files.
///
/// A key's first segment is a folder under the root (`results/`, `checkpoints/`, `inputs/`); the
/// rest of the key is one file name in that folder, its `/` written as [`KEY_SEPARATOR`]:
/// `results/<job_id>/<attempt>.jsonl` is the file `results/<job_id>~<attempt>.jsonl`. A folder per
/// job would cost a `mkdir` (a new inode) for every job; the keys stay the logical names and the
/// URIs stay real paths anyone can open. Objects are read by URI, so files of the older nested
/// layout (`results/<job_id>/<attempt>.jsonl`) still read back.
#[derive(Clone, Debug)]
pub struct FsObjectStore {
    root: PathBuf,
}

/// Stands for `/` in the file name of a key below its top folder; keys may not contain it, so the
/// mapping from keys to files is one-to-one.
pub const KEY_SEPARATOR: char = '~';

impl FsObjectStore {
    /// A store rooted at `root` (created if missing). The root is made absolute so URIs are stable.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, ObjectError> {
        let root = root.as_ref();
        std::fs::create_dir_all(root)
            .map_err(|e| ObjectError::Backend(format!("{}: {e}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(|e| ObjectError::Backend(format!("{}: {e}", root.display())))?;
        Ok(FsObjectStore { root })
    }

    /// The file that holds `key` (see the type's docs).
    pub fn path_of_key(&self, key: &str) -> Result<PathBuf, ObjectError> {
        let invalid = |why: &str| ObjectError::InvalidRef(key.to_string(), why.to_string());
        check_relative(key).map_err(&invalid)?;
        if key.contains(KEY_SEPARATOR) {
            return Err(invalid("keys may not contain ~"));
        }
        Ok(match key.split_once('/') {
            Some((folder, rest)) => self
                .root
                .join(folder)
                .join(rest.replace('/', &KEY_SEPARATOR.to_string())),
            None => self.root.join(key),
        })
    }

    fn path_of_uri(&self, uri: &str) -> Result<PathBuf, ObjectError> {
        let invalid = |why: &str| ObjectError::InvalidRef(uri.to_string(), why.to_string());
        let path = uri
            .strip_prefix("file://")
            .ok_or_else(|| invalid("expected a file:// URI"))?;
        let relative = Path::new(path)
            .strip_prefix(&self.root)
            .map_err(|_| invalid("outside this store's root"))?;
        check_relative(&relative.to_string_lossy()).map_err(invalid)?;
        Ok(self.root.join(relative))
    }
}

/// A key (or a path below a root) that cannot leave it: relative, without empty, `.` or `..`
/// segments. Every store checks its keys with this one rule.
pub(crate) fn check_relative(path: &str) -> Result<(), &'static str> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err("keys are relative paths without empty, . or .. parts")
    }
}

/// Writes the object at `path`. A new object is written in place: nobody can name it before `put`
/// returns its URI, so nobody reads it half written, and a crash mid-write leaves a file that no
/// record points to and that the next `put` of the key replaces. An existing object is replaced
/// through a temporary file and a rename, so its readers see the old bytes or the new ones. The
/// folder is created only when a write finds it missing: checking first would cost a system call
/// every time.
fn write_object(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    let created = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            create()
        }
        other => other,
    };
    match created {
        Ok(mut file) => file.write_all(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => replace(path, bytes),
        Err(e) => Err(e),
    }
}

/// Replaces the object at `path` through a temporary file and a rename.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // No key maps to a name with two separators in a row, so this never overwrites an object.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!("{KEY_SEPARATOR}{KEY_SEPARATOR}partial"));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Objects up to this size are written on the calling thread. Writing a small file (no fsync)
/// only copies it into the page cache, which costs less than handing it to the blocking pool and
/// waking the task again; larger objects go to the blocking pool.
pub const INLINE_WRITE_MAX: usize = 16 * 1024;

impl ObjectStore for FsObjectStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, ObjectError> {
        let path = self.path_of_key(key)?;
        let failed =
            |e: &dyn std::fmt::Display| ObjectError::Backend(format!("{}: {e}", path.display()));
        if bytes.len() <= INLINE_WRITE_MAX {
            write_object(&path, &bytes).map_err(|e| failed(&e))?;
        } else {
            // One trip to the blocking pool for the whole write, not one per file operation.
            let written = path.clone();
            tokio::task::spawn_blocking(move || write_object(&written, &bytes))
                .await
                .map_err(|e| failed(&e))?
                .map_err(|e| failed(&e))?;
        }
        Ok(format!("file://{}", path.display()))
    }

    async fn get(&self, uri: &str) -> Result<Vec<u8>, ObjectError> {
        let path = self.path_of_uri(uri)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ObjectError::NotFound(uri.to_string()))
            }
            Err(e) => Err(ObjectError::Backend(format!("{}: {e}", path.display()))),
        }
    }

    async fn presign_get(&self, uri: &str, _expires_in: Duration) -> Result<String, ObjectError> {
        // A local file needs no signature: the URL is the file itself, checked to exist.
        let path = self.path_of_uri(uri)?;
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(ObjectError::NotFound(uri.to_string()));
        }
        Ok(uri.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FsObjectStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FsObjectStore::new(dir.path()).expect("store");
        (dir, store)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_put_object_reads_back_by_its_uri() {
        let (_dir, store) = store();
        let uri = store
            .put("results/j/1.jsonl", b"{}\n".to_vec())
            .await
            .expect("put");
        assert_eq!(store.get(&uri).await.expect("get"), b"{}\n");
        assert_eq!(
            store
                .presign_get(&uri, Duration::from_secs(60))
                .await
                .expect("presign"),
            uri
        );
    }

    #[tokio::test]
    async fn objects_of_many_jobs_share_one_folder_and_leave_no_temporary_files() {
        let (_dir, store) = store();
        for job in ["a", "b", "c"] {
            let uri = store
                .put(&format!("results/{job}/1.jsonl"), job.as_bytes().to_vec())
                .await
                .expect("put");
            let path = store.root.join(format!("results/{job}~1.jsonl"));
            assert_eq!(uri, format!("file://{}", path.display()));
            assert_eq!(std::fs::read(&path).expect("the file"), job.as_bytes());
        }
        assert_eq!(names(&store.root), ["results"]);
        assert_eq!(
            names(&store.root.join("results")),
            ["a~1.jsonl", "b~1.jsonl", "c~1.jsonl"],
            "no folder per job, no temporary file left"
        );
    }

    #[tokio::test]
    async fn a_large_object_is_written_off_the_async_threads_and_reads_back() {
        let (_dir, store) = store();
        let big: Vec<u8> = (0..INLINE_WRITE_MAX * 3).map(|i| (i % 251) as u8).collect();
        let uri = store
            .put("results/big/1.jsonl", big.clone())
            .await
            .expect("put");
        assert_eq!(store.get(&uri).await.expect("get"), big);
    }

    #[tokio::test]
    async fn a_put_replaces_the_object() {
        let (_dir, store) = store();
        let first = store.put("k/x", b"old".to_vec()).await.expect("put");
        let second = store.put("k/x", b"new".to_vec()).await.expect("put");
        assert_eq!(first, second);
        assert_eq!(store.get(&second).await.expect("get"), b"new");
    }

    #[tokio::test]
    async fn a_file_left_half_written_by_a_crash_is_replaced_by_the_next_put() {
        let (_dir, store) = store();
        let path = store.path_of_key("results/j/1.jsonl").expect("path");
        std::fs::create_dir_all(path.parent().expect("folder")).expect("mkdir");
        std::fs::write(&path, b"{\"id\":\"half").expect("a torn file");
        let uri = store
            .put("results/j/1.jsonl", b"{\"id\":\"whole\"}\n".to_vec())
            .await
            .expect("put");
        assert_eq!(store.get(&uri).await.expect("get"), b"{\"id\":\"whole\"}\n");
        assert_eq!(names(&store.root.join("results")), ["j~1.jsonl"]);
    }

    #[tokio::test]
    async fn a_top_folder_removed_after_start_is_created_again() {
        let (_dir, store) = store();
        store.put("results/a/1.jsonl", vec![1]).await.expect("put");
        std::fs::remove_dir_all(store.root.join("results")).expect("remove");
        let uri = store.put("results/b/1.jsonl", vec![2]).await.expect("put");
        assert_eq!(store.get(&uri).await.expect("get"), [2]);
    }

    #[tokio::test]
    async fn objects_of_the_nested_layout_still_read_back() {
        let (_dir, store) = store();
        let path = store.root.join("results/job/1.jsonl");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"old layout").expect("write");
        let uri = format!("file://{}", path.display());
        assert_eq!(store.get(&uri).await.expect("get"), b"old layout");
        assert_eq!(
            store
                .presign_get(&uri, Duration::from_secs(1))
                .await
                .expect("presign"),
            uri
        );
    }

    #[tokio::test]
    async fn a_failing_disk_is_a_backend_error() {
        let (_dir, store) = store();
        // A file where the folder should be: the write cannot create its folder.
        std::fs::write(store.root.join("results"), b"not a folder").expect("write");
        for size in [1, INLINE_WRITE_MAX + 1] {
            assert!(
                matches!(
                    store.put("results/a/1.jsonl", vec![1; size]).await,
                    Err(ObjectError::Backend(_))
                ),
                "{size} bytes"
            );
        }
    }

    #[tokio::test]
    async fn keys_that_escape_the_root_or_break_the_layout_are_refused() {
        let (_dir, store) = store();
        for key in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "",
            "a/../../b",
            "results/a~b/1",
        ] {
            assert!(
                matches!(
                    store.put(key, vec![]).await,
                    Err(ObjectError::InvalidRef(..))
                ),
                "{key}"
            );
        }
        for uri in [
            "file:///etc/passwd",
            "s3://b/k",
            &format!("file://{}/results/../../x", store.root.display()),
        ] {
            assert!(
                matches!(store.get(uri).await, Err(ObjectError::InvalidRef(..))),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_object_is_not_found() {
        let (_dir, store) = store();
        let uri = format!("file://{}/nope", store.root.display());
        assert!(matches!(
            store.get(&uri).await,
            Err(ObjectError::NotFound(_))
        ));
        assert!(matches!(
            store.presign_get(&uri, Duration::from_secs(1)).await,
            Err(ObjectError::NotFound(_))
        ));
    }
}
