//! The catalog a deployment runs with: tenants, registries, views and keys. Seeded once from
//! the config (or the demo tenant and its keys) into the object store, where governance
//! changes it; every process loads it from there and follows its changes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tally_connectors::catalog::{CatalogHandle, CatalogStore};
use tally_model::key::{ConfiguredKey, check_secret};
use tally_model::tenant::{DEMO_TENANT, Scope};
use tally_model::{ApiKey, Catalog, Config};

use crate::settings;

const DEMO_KEYS_FILE: &str = "demo-keys.txt";
/// How often a process looks for catalog changes made elsewhere.
const CATALOG_POLL: Duration = Duration::from_secs(2);

/// The saved catalog (seeding it on first use), its store, and the demo keys if the demo
/// tenant was seeded.
pub fn load(config: &Config) -> anyhow::Result<(CatalogHandle, CatalogStore, Option<DemoKeys>)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to load the catalog")?
        .block_on(load_async(config))
}

/// [`load`], on the caller's runtime.
pub async fn load_async(
    config: &Config,
) -> anyhow::Result<(CatalogHandle, CatalogStore, Option<DemoKeys>)> {
    let store = CatalogStore::new(settings::objects(config)?);
    let (seed, demo_keys) = seed(config)?;
    let stored = match store.load().await.context("loading the catalog")? {
        Some(stored) => stored,
        None => {
            let stored = store
                .save(&seed, 0)
                .await
                .context("saving the first catalog")?;
            tracing::info!("catalog seeded from the config");
            stored
        }
    };
    if !config.tenants.is_empty() && stored.catalog.tenants != seed.tenants {
        tracing::warn!(
            generation = stored.generation,
            "the config's tenants differ from the saved catalog, which governance owns; the saved one is used"
        );
    }
    if let Some(keys) = &demo_keys
        && stored
            .catalog
            .key(&keys.write, tally_model::time::now_millis())
            .is_none()
    {
        tracing::warn!(
            "the demo keys of the config or demo-keys.txt are not in the saved catalog; manage keys with /v1/governance/keys"
        );
    }
    let handle = CatalogHandle::new(stored.catalog, stored.generation);
    Ok((handle, store, demo_keys))
}

/// Takes catalog changes saved by other processes, until aborted.
pub async fn follow(store: CatalogStore, handle: CatalogHandle) {
    let mut ticks = tokio::time::interval(CATALOG_POLL);
    loop {
        ticks.tick().await;
        match store.load().await {
            Ok(Some(stored)) => {
                let generation = stored.generation;
                if handle.offer(stored) {
                    tracing::info!(generation, "catalog changed elsewhere; now in use");
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "could not read the catalog"),
        }
    }
}

/// The catalog: the tenants the config declares, or the demo tenant (and its keys).
fn seed(config: &Config) -> anyhow::Result<(Catalog, Option<DemoKeys>)> {
    if !config.tenants.is_empty() {
        let keys = config
            .api_keys
            .iter()
            .map(ConfiguredKey::to_api_key)
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        let catalog = Catalog::new(config.tenants.clone(), keys).map_err(|problems| {
            anyhow::anyhow!(
                "the config's tenants are inconsistent:\n  {}",
                problems.messages().join("\n  ")
            )
        })?;
        return Ok((catalog, None));
    }
    if !config.api_keys.is_empty() {
        bail!(
            "the config declares [[api_key]]s but no [tenant.<name>]; declare the tenants they name"
        );
    }
    let keys = demo_keys(config)?;
    let mut catalog = Catalog::demo(&keys.write, &keys.read);
    let admin = ApiKey::new(
        &keys.admin,
        DEMO_TENANT,
        "demo-admin",
        vec![Scope::Read, Scope::Admin],
    );
    catalog.keys.insert(admin.secret_sha256.clone(), admin);
    Ok((catalog, Some(keys)))
}

/// The demo tenant's keys and where they are saved.
pub struct DemoKeys {
    /// Sends events.
    pub write: String,
    /// Queries.
    pub read: String,
    /// Changes the registry, views and keys.
    pub admin: String,
    /// The file they are saved in.
    pub saved_in: std::path::PathBuf,
}

/// The demo keys: from the config (`TALLY_DEMO_*_KEY`), else from the data directory, else new;
/// always saved so that a restart keeps them.
fn demo_keys(config: &Config) -> anyhow::Result<DemoKeys> {
    let path = config.data_dir.join(DEMO_KEYS_FILE);
    let saved = std::fs::read_to_string(&path).unwrap_or_default();
    let saved_key = |name: &str| {
        saved
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let pick = |configured: &str, name: &str| match configured {
        "" => saved_key(name).unwrap_or_else(tally_serving::governance::new_secret),
        key => key.to_owned(),
    };
    let keys = DemoKeys {
        write: pick(&config.demo.write_key, "write_key"),
        read: pick(&config.demo.read_key, "read_key"),
        admin: pick(&config.demo.admin_key, "admin_key"),
        saved_in: path,
    };
    for (secret, variable) in [
        (&keys.write, "TALLY_DEMO_WRITE_KEY"),
        (&keys.read, "TALLY_DEMO_READ_KEY"),
        (&keys.admin, "TALLY_DEMO_ADMIN_KEY"),
    ] {
        check_secret(
            &format!("the demo key of {variable} (or {DEMO_KEYS_FILE})"),
            secret,
        )
        .map_err(anyhow::Error::msg)?;
    }
    if keys.write == keys.read || keys.write == keys.admin || keys.read == keys.admin {
        bail!(
            "the demo write, read and admin keys must differ (TALLY_DEMO_WRITE_KEY, TALLY_DEMO_READ_KEY, TALLY_DEMO_ADMIN_KEY)"
        );
    }
    save_demo_keys(&keys.saved_in, &keys)?;
    Ok(keys)
}

fn save_demo_keys(path: &Path, keys: &DemoKeys) -> anyhow::Result<()> {
    let text = format!(
        "write_key={}\nread_key={}\nadmin_key={}\n",
        keys.write, keys.read, keys.admin
    );
    // Commands that keep nothing else in the data directory (`tally batch schedule`, say)
    // may be the first to use it.
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("saving demo keys to {}", path.display()))
}
