//! The `ObjectStore` port (results, checkpoints, large inputs) and its filesystem adapter.

use std::future::Future;
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

/// Objects as files under a root folder; URIs are `file://` URLs.
#[derive(Clone, Debug)]
pub struct FsObjectStore {
    root: PathBuf,
}

impl FsObjectStore {
    /// A store rooted at `root` (created on first write). The root is made absolute so URIs are stable.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, ObjectError> {
        let root = root.as_ref();
        std::fs::create_dir_all(root)
            .map_err(|e| ObjectError::Backend(format!("{}: {e}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(|e| ObjectError::Backend(format!("{}: {e}", root.display())))?;
        Ok(FsObjectStore { root })
    }

    fn path_of_key(&self, key: &str) -> Result<PathBuf, ObjectError> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !ok {
            return Err(ObjectError::InvalidRef(
                key.to_string(),
                "keys are relative paths without . or ..".into(),
            ));
        }
        Ok(self.root.join(key))
    }

    fn path_of_uri(&self, uri: &str) -> Result<PathBuf, ObjectError> {
        let path = uri.strip_prefix("file://").ok_or_else(|| {
            ObjectError::InvalidRef(uri.to_string(), "expected a file:// URI".into())
        })?;
        let key = Path::new(path).strip_prefix(&self.root).map_err(|_| {
            ObjectError::InvalidRef(uri.to_string(), "outside this store's root".into())
        })?;
        self.path_of_key(&key.to_string_lossy())
    }
}

impl ObjectStore for FsObjectStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, ObjectError> {
        let path = self.path_of_key(key)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| ObjectError::Backend(format!("{}: {e}", dir.display())))?;
        }
        // Write then rename, so a reader never sees half an object.
        let tmp = path.with_extension("partial");
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| ObjectError::Backend(format!("{}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| ObjectError::Backend(format!("{}: {e}", path.display())))?;
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

    #[tokio::test]
    async fn a_put_object_reads_back_by_its_uri() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path()).unwrap();
        let uri = store
            .put("results/j/1.jsonl", b"{}\n".to_vec())
            .await
            .unwrap();
        assert_eq!(store.get(&uri).await.unwrap(), b"{}\n");
        assert_eq!(
            store
                .presign_get(&uri, Duration::from_secs(60))
                .await
                .unwrap(),
            uri
        );
    }

    #[tokio::test]
    async fn keys_that_escape_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path()).unwrap();
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(
                matches!(
                    store.put(key, vec![]).await,
                    Err(ObjectError::InvalidRef(..))
                ),
                "{key}"
            );
        }
        assert!(matches!(
            store.get("file:///etc/passwd").await,
            Err(ObjectError::InvalidRef(..))
        ));
        assert!(matches!(
            store.get("s3://b/k").await,
            Err(ObjectError::InvalidRef(..))
        ));
    }

    #[tokio::test]
    async fn a_missing_object_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::new(dir.path()).unwrap();
        let uri = format!("file://{}/nope", store.root.display());
        assert!(matches!(
            store.get(&uri).await,
            Err(ObjectError::NotFound(_))
        ));
    }
}
