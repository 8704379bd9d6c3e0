//! Tenants, the catalog of every tenant and key, and the demo catalog `tally up` starts with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::key::{ApiKey, AuthError, Scope};

use crate::event::Millis;
use crate::key::{bearer_secret, secret_sha256};
use crate::name::{ANY_EVENT_TYPE, check_name};
use crate::problem::{CatalogProblem, CatalogProblems};
use crate::registry::{EventTypeSpec, SourcePolicy, TagKind, TagRegistry, TagSpec};
use crate::view::ViewSpec;

/// The name of the tenant `tally up` creates when the config declares none.
pub const DEMO_TENANT: &str = "demo";
/// The source name of the demo write key.
pub const DEMO_SOURCE: &str = "demo-web";

/// The most views a tenant may have: the speed layer folds every event into each view it
/// covers, and the batch layer recomputes each.
pub const MAX_VIEWS: usize = 100;

/// The most API keys a tenant may have. With the registry's own bounds
/// ([`crate::registry::MAX_ENTRIES`]), they bound the catalog, which every governance change
/// writes whole.
pub const MAX_KEYS: usize = 1_000;

/// The most bytes of JSON one tenant's registry and views may take in the catalog.
pub const MAX_TENANT_BYTES: usize = 1 << 20;

/// One tenant: its governance rules and its views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The tag registry its events are validated against.
    #[serde(default)]
    pub registry: TagRegistry,
    /// The views kept for it.
    #[serde(default, rename = "view")]
    pub views: Vec<ViewSpec>,
}

/// Every tenant and key a Tally deployment knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Tenant name → tenant.
    pub tenants: BTreeMap<String, Tenant>,
    /// The SHA-256 of a key's secret → the key.
    pub keys: BTreeMap<String, ApiKey>,
}

impl Catalog {
    /// Builds a catalog, checking that every key names a known tenant and that each
    /// tenant's registry and views are consistent.
    pub fn new(
        tenants: BTreeMap<String, Tenant>,
        keys: Vec<ApiKey>,
    ) -> Result<Self, CatalogProblems> {
        let mut problems = CatalogProblems::default();
        for name in tenants.keys() {
            if let Err(err) = check_name("tenant", name) {
                problems.push(err);
            }
        }
        for key in &keys {
            if let Err(err) = check_name("key source", &key.source) {
                problems.push(err);
            }
            if !tenants.contains_key(&key.tenant) {
                problems.push(CatalogProblem::UnknownTenant {
                    key: key.source.clone(),
                    tenant: key.tenant.clone(),
                });
            }
        }
        for (name, tenant) in &tenants {
            let mut registry = tenant.registry.check().err().unwrap_or_default();
            let keys = keys.iter().filter(|key| key.tenant == *name).count();
            let bytes = serde_json::to_vec(tenant).map_or(0, |json| json.len());
            for (what, count, max) in [
                ("views", tenant.views.len(), MAX_VIEWS),
                ("keys", keys, MAX_KEYS),
                ("bytes of registry and views", bytes, MAX_TENANT_BYTES),
            ] {
                if count > max {
                    registry.push(CatalogProblem::TooMany { what, count, max });
                }
            }
            let views = tenant
                .views
                .iter()
                .flat_map(|view| view.check(&tenant.registry).err().unwrap_or_default().0);
            for problem in registry.0.into_iter().chain(views) {
                problems.push(CatalogProblem::InTenant {
                    tenant: name.clone(),
                    problem: Box::new(problem),
                });
            }
        }
        problems.into_result()?;
        let keys = keys
            .into_iter()
            .map(|key| (key.secret_sha256.clone(), key))
            .collect();
        Ok(Catalog { tenants, keys })
    }

    /// The key with this secret, if it still works at `now`.
    pub fn key(&self, secret: &str, now: Millis) -> Option<&ApiKey> {
        self.keys
            .get(&secret_sha256(secret))
            .filter(|key| key.live_at(now))
    }

    /// The key of an `Authorization` header's value (`Bearer <secret>`, the scheme in any
    /// case), if it works at `now` and carries `scope`.
    pub fn authorize(
        &self,
        header: Option<&str>,
        scope: Scope,
        now: Millis,
    ) -> Result<&ApiKey, AuthError> {
        let secret = header
            .and_then(bearer_secret)
            .ok_or(AuthError::Missing(scope))?;
        self.authorize_secret(secret, scope, now)
    }

    /// The key whose secret is `secret`, if it works at `now` and carries `scope`: for
    /// senders that carry the key elsewhere than a bearer header (a tracker's body or path).
    pub fn authorize_secret(
        &self,
        secret: &str,
        scope: Scope,
        now: Millis,
    ) -> Result<&ApiKey, AuthError> {
        let key = self.key(secret, now).ok_or(AuthError::Unknown)?;
        if !key.allows(scope) {
            return Err(AuthError::Lacks {
                key: key.source.clone(),
                scope,
            });
        }
        Ok(key)
    }

    /// The demo tenant with one write and one read key.
    pub fn demo(write_key: &str, read_key: &str) -> Catalog {
        Catalog::new(
            BTreeMap::from([(DEMO_TENANT.to_owned(), Tenant::demo())]),
            vec![
                ApiKey::new(write_key, DEMO_TENANT, DEMO_SOURCE, vec![Scope::Write]),
                ApiKey::new(read_key, DEMO_TENANT, "demo-dashboard", vec![Scope::Read]),
            ],
        )
        .expect("the demo catalog is consistent")
    }
}

impl Tenant {
    /// The demo tenant: six event types, a handful of tags, three views.
    pub fn demo() -> Tenant {
        let tag = |kind, aliases: &[&str]| TagSpec {
            kind,
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
        };
        let tags = BTreeMap::from([
            (
                "os_type".to_owned(),
                tag(
                    TagKind::String,
                    &["os", "ostype", "os_name", "context.os.name"],
                ),
            ),
            (
                "country".to_owned(),
                tag(TagKind::String, &["cntry", "country_code"]),
            ),
            ("url".to_owned(), tag(TagKind::String, &["page_url"])),
            ("revenue".to_owned(), tag(TagKind::Number, &["amount"])),
            ("latency_ms".to_owned(), tag(TagKind::Number, &["latency"])),
            (
                "account_number".to_owned(),
                tag(TagKind::String, &["acct_num", "account_no"]),
            ),
        ]);
        let common = ["os_type", "country", "latency_ms"];
        let event_type = |required: &[&str], extra: &[&str]| EventTypeSpec {
            aliases: Vec::new(),
            required: required.iter().map(|t| (*t).to_owned()).collect(),
            optional: common
                .iter()
                .chain(extra)
                .map(|t| (*t).to_owned())
                .collect(),
            retention_days: 395,
        };
        let event_types = BTreeMap::from([
            ("page_view".to_owned(), event_type(&["url"], &[])),
            ("click".to_owned(), event_type(&[], &["url"])),
            (
                "purchase".to_owned(),
                EventTypeSpec {
                    // A tracking plan's name for it, as Segment's e-commerce spec spells it.
                    aliases: vec!["Order Completed".to_owned()],
                    ..event_type(&["revenue"], &["account_number"])
                },
            ),
            ("session_start".to_owned(), event_type(&[], &[])),
            ("session_end".to_owned(), event_type(&[], &[])),
            ("link_clicked".to_owned(), event_type(&["url"], &[])),
        ]);
        let sources = BTreeMap::from([(
            DEMO_SOURCE.to_owned(),
            SourcePolicy {
                event_types: vec![ANY_EVENT_TYPE.to_owned()],
            },
        )]);
        let views = [
            r#"name = "events_by_type"
               events = ["*"]
               dimensions = ["event_type", "os_type"]
               measures = ["count", "uniq(user_id)"]
               granularity = "minute""#,
            r#"name = "revenue_by_country"
               events = ["purchase"]
               dimensions = ["country"]
               measures = ["count", "sum(revenue)", "min(revenue)", "max(revenue)", "uniq(user_id)"]
               granularity = "minute""#,
            r#"name = "latency_by_type"
               events = ["*"]
               dimensions = ["event_type"]
               measures = ["count", "quantiles(latency_ms)"]
               granularity = "minute""#,
        ]
        .map(|text| toml::from_str(text).expect("demo views are valid"));
        Tenant {
            registry: TagRegistry {
                tags,
                event_types,
                sources,
            },
            views: views.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_catalog_is_consistent_and_scoped() {
        let catalog = Catalog::demo("wk", "rk");
        assert!(catalog.key("wk", 0).unwrap().allows(Scope::Write));
        assert!(!catalog.key("rk", 0).unwrap().allows(Scope::Write));
        assert!(catalog.key("nope", 0).is_none());
        assert_eq!(
            catalog
                .authorize(Some("bearer wk"), Scope::Write, 0)
                .map(|k| k.source.as_str()),
            Ok(DEMO_SOURCE),
            "the scheme is case-insensitive"
        );
        assert_eq!(catalog.tenants["demo"].views.len(), 3);
    }

    #[test]
    fn rejects_keys_for_unknown_tenants_and_views_on_undeclared_tags() {
        let demo = Catalog::demo("wk", "rk");
        let mut tenant = demo.tenants["demo"].clone();
        tenant.views[0].dimensions.push("colour".into());
        let key = ApiKey::new("k", "ghost", "s", vec![]);
        let problems = Catalog::new(BTreeMap::from([("demo".into(), tenant)]), vec![key])
            .unwrap_err()
            .messages();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown tenant 'ghost'")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("'colour'")),
            "{problems:?}"
        );
    }

    /// A spec that names a dimension or a measure twice, or has too many, is refused with
    /// what to change (a repeated dimension made every recompute of every tenant fail); so is
    /// a tenant with too many views.
    #[test]
    fn repeated_and_too_many_dimensions_measures_and_views_are_refused() {
        let tenant = Tenant::demo();
        let mut view = tenant.views[0].clone();
        view.dimensions = vec!["os_type".into(), "os_type".into()];
        view.measures.push(crate::Measure::Count);
        let problems = view.check(&tenant.registry).unwrap_err().messages();
        assert_eq!(
            problems,
            [
                "view 'events_by_type': dimension 'os_type' is named twice; name it once",
                "view 'events_by_type': measure 'count' is named twice; name it once",
            ]
        );
        view.dimensions = (0..=crate::view::MAX_DIMENSIONS)
            .map(|i| ["country", "os_type", "url"][i % 3].into())
            .collect();
        let problems = view.check(&tenant.registry).unwrap_err().messages();
        assert!(
            problems[0] == "view 'events_by_type' has 17 dimensions; a view may have at most 16",
            "{problems:?}"
        );
        // A registry that every governance change would write whole, however large.
        let mut aliased = Tenant::demo();
        let os = aliased.registry.tags.get_mut("os_type").unwrap();
        os.aliases = (0..=crate::registry::MAX_ALIASES)
            .map(|i| format!("os_{i}"))
            .collect();
        let tenants = [("demo".to_owned(), aliased)].into();
        let problems = Catalog::new(tenants, Vec::new()).unwrap_err().messages();
        assert!(
            problems[0].contains("tag 'os_type' lists 33 aliases; an entry may list at most 32"),
            "{problems:?}"
        );
        let mut large = Tenant::demo();
        for i in 0..900 {
            let mut spec = large.registry.tags["url"].clone();
            spec.aliases = (0..20)
                .map(|j| format!("{}_{i}_{j}", "a".repeat(50)))
                .collect();
            large.registry.tags.insert(format!("tag_{i}"), spec);
        }
        let tenants = [("demo".to_owned(), large)].into();
        let problems = Catalog::new(tenants, Vec::new()).unwrap_err().messages();
        assert_eq!(
            problems,
            [
                "tenant 'demo': 1106253 bytes of registry and views; a tenant may have at most 1048576"
            ]
        );
        let mut crowded = Tenant::demo();
        crowded.views = (0..=MAX_VIEWS)
            .map(|i| crate::ViewSpec {
                name: format!("view_{i}"),
                ..crowded.views[0].clone()
            })
            .collect();
        let tenants = [("demo".to_owned(), crowded)].into();
        let problems = Catalog::new(tenants, Vec::new()).unwrap_err().messages();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("101 views; a tenant may have at most 100"),
            "{problems:?}"
        );
    }
}
