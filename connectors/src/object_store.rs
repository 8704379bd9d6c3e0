//! The object store holding raw Parquet partitions and batch views. The embedded default is
//! `object_store`'s `LocalFileSystem` under the data directory; S3 and HDFS plug in behind the
//! same `ObjectStore` trait.

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Opens the local object store rooted at `root`, creating the folder.
pub fn open_local(root: &Path) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    std::fs::create_dir_all(root).map_err(|source| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    })?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(root)?))
}

/// Writes `body` as the new object `path`, only if no object is there (so two writers cannot
/// both win it), then points `pointer` at it: how manifests and catalogs publish a
/// generation atomically. `Ok(false)` when `path` was taken; errors name the object.
pub async fn publish_generation(
    store: &dyn ObjectStore,
    path: &str,
    body: Vec<u8>,
    pointer: &str,
) -> Result<bool, (String, object_store::Error)> {
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(&ObjectPath::from(path), body.into(), create)
        .await
    {
        Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
        result => result.map_err(|source| (path.to_owned(), source))?,
    };
    store
        .put(
            &ObjectPath::from(pointer),
            PutPayload::from(path.as_bytes().to_vec()),
        )
        .await
        .map_err(|source| (pointer.to_owned(), source))?;
    Ok(true)
}

/// The bytes of `path`, none when there is no such object.
pub async fn get_optional(
    store: &dyn ObjectStore,
    path: &str,
) -> Result<Option<bytes::Bytes>, object_store::Error> {
    let result = match store.get(&ObjectPath::from(path)).await {
        Ok(object) => object.bytes().await,
        Err(err) => Err(err),
    };
    match result {
        Ok(bytes) => Ok(Some(bytes)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
