//! The object store holding raw Parquet partitions, batch views and the catalog, opened from
//! a URL: a local folder (the embedded default, `object_store`'s `LocalFileSystem`), S3 or any
//! S3-compatible server (`object_store`'s `AmazonS3`), or HDFS (`hdfs-native`). Everything
//! above this module sees only the `ObjectStore` trait.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hdfs_native_object_store::HdfsObjectStoreBuilder;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};
use thiserror::Error;

/// Why an object store could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is malformed or names a scheme Tally has no store for.
    #[error("object store URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store refused its settings or could not be set up.
    #[error("opening the object store at {url}")]
    Store {
        /// The URL as given.
        url: String,
        /// The store's own error.
        source: object_store::Error,
    },
}

/// Opens the store at `url`:
///
/// - a path or `file:///path`: a folder on this machine, created if missing;
/// - `s3://bucket[/prefix]`: S3 or an S3-compatible server. Settings come from the standard
///   `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...), then from
///   `options` by `object_store`'s names (`aws_endpoint`, `aws_allow_http`, ...), plus
///   `max_retries` and `retry_timeout_secs` (how long a request is retried before it fails:
///   3 minutes by default);
/// - `hdfs://namenode:port[/prefix]` (or a name service, `hdfs://ns/prefix`): HDFS, with
///   `options` as Hadoop properties over those of `HADOOP_CONF_DIR`.
///
/// Objects live under the prefix, so several deployments can share a bucket.
pub fn open(
    url: &str,
    options: &BTreeMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let invalid = |reason: String| OpenError::Url {
        url: url.to_owned(),
        reason,
    };
    let store_error = |source| OpenError::Store {
        url: url.to_owned(),
        source,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return open_local(Path::new(url)).map_err(store_error);
    };
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let store: Arc<dyn ObjectStore> = match scheme {
        "file" if authority.is_empty() => {
            return open_local(Path::new(&format!("/{prefix}"))).map_err(store_error);
        }
        "file" => {
            return Err(invalid(
                "a file URL takes an absolute path, as in file:///var/lib/tally/objects".into(),
            ));
        }
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(format!("s3://{authority}"));
            let mut retry = RetryConfig::default();
            for (key, value) in options {
                let number = || {
                    value.parse::<u64>().map_err(|_| {
                        invalid(format!("{key} must be a whole number, not {value:?}"))
                    })
                };
                match key.as_str() {
                    "max_retries" => retry.max_retries = number()? as usize,
                    "retry_timeout_secs" => retry.retry_timeout = Duration::from_secs(number()?),
                    _ => {
                        let key: AmazonS3ConfigKey = key
                            .parse()
                            .map_err(|_| invalid(format!("{key:?} is not an S3 setting")))?;
                        builder = builder.with_config(key, value);
                    }
                }
            }
            Arc::new(builder.with_retry(retry).build().map_err(store_error)?)
        }
        "hdfs" | "viewfs" => Arc::new(
            HdfsObjectStoreBuilder::new()
                .with_url(format!("{scheme}://{authority}"))
                .with_config(options.clone())
                .with_io_runtime(hdfs_io_runtime().map_err(store_error)?)
                .build()
                .map_err(store_error)?,
        ),
        _ => {
            return Err(invalid(format!(
                "unknown scheme {scheme:?}; use a path, file://, s3:// or hdfs://"
            )));
        }
    };
    Ok(if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    })
}

/// The local object store's folder under a data directory, used when `objects.url` is empty.
pub fn local_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("objects")
}

/// Opens the object store the config names (`objects.url` with `objects.options`), by
/// default the [`local_dir`] of the data directory.
pub fn open_configured(
    objects: &tally_model::config::ObjectsConfig,
    data_dir: &Path,
) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let url = match objects.url.as_str() {
        "" => local_dir(data_dir).display().to_string(),
        url => url.to_owned(),
    };
    open(&url, &objects.options)
}

/// Opens the local object store rooted at `root`, creating the folder.
pub fn open_local(root: &Path) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    std::fs::create_dir_all(root).map_err(|source| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    })?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(root)?))
}

/// An object store operation that failed, with the object it was about.
#[derive(Debug, thiserror::Error)]
#[error("object store, at {path}: {source}")]
pub struct ObjectError {
    /// The object or prefix.
    pub path: String,
    /// The cause.
    pub source: object_store::Error,
}

impl ObjectError {
    /// `source`, about `path`.
    pub fn at(path: &str, source: object_store::Error) -> Self {
        ObjectError {
            path: path.to_owned(),
            source,
        }
    }
}

/// Writes `body` as the new object `path`, only if no object is there (so two writers cannot
/// both win it), then points `pointer` at it: how manifests and catalogs publish a
/// generation atomically. `Ok(false)` when `path` was taken; errors name the object.
pub async fn publish_generation(
    store: &dyn ObjectStore,
    path: &str,
    body: Vec<u8>,
    pointer: &str,
) -> Result<bool, ObjectError> {
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(&ObjectPath::from(path), body.into(), create)
        .await
    {
        Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
        result => result.map_err(|source| ObjectError::at(path, source))?,
    };
    store
        .put(
            &ObjectPath::from(pointer),
            PutPayload::from(path.as_bytes().to_vec()),
        )
        .await
        .map_err(|source| ObjectError::at(pointer, source))?;
    Ok(true)
}

/// The generation `pointer` names, rolled forward: the path of the newest published
/// generation, `path_of(n)` being generation `n`'s object. A writer that created the next
/// generation's object and stopped before it swapped `pointer` leaves a complete object that
/// nothing names, and every later writer would be refused that generation for good; so the
/// generations after the named one are followed while they exist, and `pointer` is swapped to
/// the last, as their writer meant to. None while nothing was ever published. Two callers may
/// race to swap it; one that looked a moment earlier may point it back a generation, until
/// the next call rolls it forward again.
pub async fn rolled_forward(
    store: &dyn ObjectStore,
    pointer: &str,
    path_of: impl Fn(u64) -> String,
) -> Result<Option<String>, ObjectError> {
    let named = get_optional(store, pointer)
        .await
        .map_err(|source| ObjectError::at(pointer, source))?
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
    let mut generation = named.as_deref().map_or(0, generation_in);
    let mut newest = named.clone();
    loop {
        let next = path_of(generation.saturating_add(1));
        match store.head(&ObjectPath::from(next.as_str())).await {
            Ok(_) => {
                generation = generation.saturating_add(1);
                newest = Some(next);
            }
            Err(object_store::Error::NotFound { .. }) => break,
            Err(source) => return Err(ObjectError::at(&next, source)),
        }
    }
    if let Some(path) = newest.as_ref().filter(|path| Some(*path) != named.as_ref()) {
        tracing::warn!(
            pointer,
            path = path.as_str(),
            "a generation was published without its pointer (its writer stopped); pointing to it"
        );
        store
            .put(
                &ObjectPath::from(pointer),
                PutPayload::from(path.as_bytes().to_vec()),
            )
            .await
            .map_err(|source| ObjectError::at(pointer, source))?;
    }
    Ok(newest)
}

/// The generation number of a generation's object: the digits before its `.json`.
fn generation_in(path: &str) -> u64 {
    let stem = path.strip_suffix(".json").unwrap_or(path);
    let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    stem[stem.len() - digits..].parse().unwrap_or(0)
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

/// The runtime every HDFS client of the process does its IO on. Left to itself, `hdfs-native`
/// spawns its connection tasks on whichever runtime calls it, so a command's runtime shutting
/// down cancels them under the next call (a panic in its connection code), and a client first
/// used outside a runtime makes one of its own that panics when dropped inside another. This
/// one lives as long as the process and is never dropped.
fn hdfs_io_runtime() -> Result<tokio::runtime::Handle, object_store::Error> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime.handle().clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tally-hdfs-io")
        .enable_all()
        .build()
        .map_err(|source| object_store::Error::Generic {
            store: "HDFS",
            source: Box::new(source),
        })?;
    // The runtime of a caller that lost a race is dropped on a thread of its own: dropping
    // one inside an async context panics.
    if let Err(spare) = RUNTIME.set(runtime) {
        std::thread::spawn(move || drop(spare));
    }
    Ok(RUNTIME.get().expect("set just now").handle().clone())
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::testing::{S3Bucket, hdfs_uri};

    /// What the layers rely on: objects round-trip and list by prefix, create-only writes
    /// refuse a taken name, and a published generation is read through its pointer.
    async fn serves_the_layers(store: Arc<dyn ObjectStore>) {
        let raw = ObjectPath::from("raw/events/dt=2026-11-22/hour=16/part-00000-1-2.parquet");
        store
            .put(&raw, PutPayload::from_static(b"rows"))
            .await
            .unwrap();
        let bytes = store.get(&raw).await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.as_ref(), b"rows");
        let listed: Vec<_> = store
            .list(Some(&ObjectPath::from("raw/events")))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, [raw.to_string()]);

        assert_eq!(
            get_optional(&*store, "manifest/current").await.unwrap(),
            None
        );
        let first =
            publish_generation(&*store, "manifest/g-1", b"one".to_vec(), "manifest/current");
        assert!(first.await.unwrap());
        let taken =
            publish_generation(&*store, "manifest/g-1", b"two".to_vec(), "manifest/current");
        assert!(
            !taken.await.unwrap(),
            "a taken generation must not be overwritten"
        );
        let pointer = get_optional(&*store, "manifest/current").await.unwrap();
        assert_eq!(pointer.as_deref(), Some(&b"manifest/g-1"[..]));
        let generation = get_optional(&*store, "manifest/g-1").await.unwrap();
        assert_eq!(generation.as_deref(), Some(&b"one"[..]));

        store.delete(&raw).await.unwrap();
        assert_eq!(get_optional(&*store, raw.as_ref()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_local_folder_serves_the_layers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        serves_the_layers(open(root.to_str().unwrap(), &BTreeMap::new()).unwrap()).await;
        assert!(root.join("manifest/g-1").is_file());
        let url = format!("file://{}", dir.path().join("other").display());
        serves_the_layers(open(&url, &BTreeMap::new()).unwrap()).await;
    }

    #[tokio::test]
    async fn an_s3_server_serves_the_layers() {
        let test = "connectors::object_store::an_s3_server_serves_the_layers";
        let Some(bucket) = S3Bucket::create(test) else {
            return;
        };
        serves_the_layers(open(&bucket.url, &bucket.options).unwrap()).await;
    }

    #[tokio::test]
    async fn an_s3_server_refuses_a_wrong_secret() {
        let test = "connectors::object_store::an_s3_server_refuses_a_wrong_secret";
        let Some(bucket) = S3Bucket::create(test) else {
            return;
        };
        let mut options = bucket.options.clone();
        let secret = options
            .get_mut("aws_secret_access_key")
            .expect("the test bed's bucket has keys");
        secret.push_str("-wrong");
        let store = open(&bucket.url, &options).unwrap();
        let error = store
            .put(&ObjectPath::from("x"), PutPayload::from_static(b"x"))
            .await
            .expect_err("a wrong secret must be refused")
            .to_string();
        assert!(error.contains("SignatureDoesNotMatch"), "{error}");
        let listed: Result<Vec<_>, _> = store.list(None).try_collect().await;
        assert!(listed.is_err(), "reads are refused too");
    }

    #[tokio::test]
    async fn hdfs_serves_the_layers() {
        let test = "connectors::object_store::hdfs_serves_the_layers";
        let Some(uri) = hdfs_uri(test) else {
            return;
        };
        serves_the_layers(open(&uri, &BTreeMap::new()).unwrap()).await;
    }

    #[test]
    fn urls_it_cannot_open_say_why() {
        let options = BTreeMap::new();
        let error = open("gs://bucket", &options).err().unwrap().to_string();
        assert!(error.contains("unknown scheme \"gs\""), "{error}");
        let error = open("file://host/path", &options)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("absolute path"), "{error}");
        let options = BTreeMap::from([("aws_colour".to_owned(), "blue".to_owned())]);
        let error = open("s3://bucket", &options).err().unwrap().to_string();
        assert!(
            error.contains("\"aws_colour\" is not an S3 setting"),
            "{error}"
        );
    }
}
