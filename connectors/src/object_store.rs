//! The object store holding raw Parquet partitions and batch views. The embedded default is
//! `object_store`'s `LocalFileSystem` under the data directory; S3 and HDFS plug in behind the
//! same `ObjectStore` trait.

use std::path::Path;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

/// Opens the local object store rooted at `root`, creating the folder.
pub fn open_local(root: &Path) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    std::fs::create_dir_all(root).map_err(|source| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    })?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(root)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn stores_and_lists_objects_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_local(&dir.path().join("objects")).unwrap();
        let path = ObjectPath::from("raw/events/dt=2026-11-22/hour=16/part-00000-1-2.parquet");
        store
            .put(&path, PutPayload::from_static(b"bytes"))
            .await
            .unwrap();
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.as_ref(), b"bytes");
        assert!(
            dir.path()
                .join("objects/raw/events/dt=2026-11-22/hour=16")
                .is_dir()
        );
    }
}
