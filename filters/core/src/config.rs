//! What every filter's config shares: parse-then-compile (`Compile`), the fields every rule
//! starts with (`rule_config!`: name, match, key, key normalisation) and their compilation
//! (`RuleHead`), and the tests every shipped example gets (`shipped_config_tests!`).
//! Field-path errors come from `error::parse_json` and name the field.

use crate::error::parse_json;
use crate::key::{KeyConfig, KeyPlan};
use crate::matcher::{MatchConfig, Matcher};
use crate::metrics::check_rule_name;
use crate::ConfigError;

/// What a request gets when shared data fails (`on_store_error`): `allow` (fail open, the
/// default: a proxy hiccup never becomes an outage) or `reject`. Shared by every filter that
/// offers the choice (ratelimit, breaker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    Allow,
    Reject,
}

/// A filter's config: parsed from JSON, then compiled into its immutable plan (`on_configure`
/// only; the request path never parses).
pub trait Compile: serde::de::DeserializeOwned {
    type Plan;
    fn compile(&self) -> Result<Self::Plan, ConfigError>;

    fn parse(bytes: &[u8]) -> Result<Self::Plan, ConfigError> {
        let cfg: Self = parse_json(bytes)?;
        cfg.compile()
    }
}

/// A rule's key field: required (`KeyConfig`) or optional (`Option<KeyConfig>`).
pub trait KeyField {
    type Plan;
    fn compile_key(
        &self,
        lowercase: bool,
        max_len: usize,
        path: &str,
    ) -> Result<Self::Plan, ConfigError>;
}

impl KeyField for KeyConfig {
    type Plan = KeyPlan;
    fn compile_key(
        &self,
        lowercase: bool,
        max_len: usize,
        path: &str,
    ) -> Result<KeyPlan, ConfigError> {
        self.compile(lowercase, max_len, path)
    }
}

impl KeyField for Option<KeyConfig> {
    type Plan = Option<KeyPlan>;
    fn compile_key(
        &self,
        lowercase: bool,
        max_len: usize,
        path: &str,
    ) -> Result<Option<KeyPlan>, ConfigError> {
        self.as_ref()
            .map(|k| k.compile(lowercase, max_len, path))
            .transpose()
    }
}

/// The compiled head of a rule: its matcher and key.
#[derive(Debug, Clone)]
pub struct RuleHead<K> {
    pub matcher: Matcher,
    pub key: K,
}

/// Compiles the shared head of the rule at `path` (`rules[i]`): a valid name not used by an
/// earlier rule (`taken`), the matcher and the key.
pub fn compile_head<K: KeyField>(
    path: &str,
    name: &str,
    taken: bool,
    match_: &MatchConfig,
    key: &K,
    lowercase: bool,
    max_len: usize,
) -> Result<RuleHead<K::Plan>, ConfigError> {
    check_rule_name(name, taken, path)?;
    Ok(RuleHead {
        key: key.compile_key(lowercase, max_len, path)?,
        matcher: match_.compile(&format!("{path}.match"))?,
    })
}

/// At least one rule: refuses an empty `rules` list.
pub fn require_rules<T>(rules: &[T]) -> Result<(), ConfigError> {
    if rules.is_empty() {
        return Err(ConfigError::new("rules", "at least one rule is required"));
    }
    Ok(())
}

/// Declares a filter's rule config struct: the fields every rule starts with, then the
/// filter's own. `deny_unknown_fields` cannot be combined with `#[serde(flatten)]`, so the
/// shared fields are spelled once here instead. `key` is the key field's type and attributes
/// (`KeyConfig`, or `#[serde(default)] Option<KeyConfig>`). `head(path, taken)` compiles them.
#[macro_export]
macro_rules! rule_config {
    (
        $(#[$m:meta])*
        pub struct $name:ident {
            $(#[$km:meta])* key: $key:ty,
            $($rest:tt)*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, ::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Letters, digits, `_`; appears in metric names and shared-data keys.
            pub name: String,
            /// Which requests the rule applies to (`core::matcher`).
            #[serde(default, rename = "match")]
            pub match_: $crate::matcher::MatchConfig,
            /// The request value the rule is keyed by (`core::key`): one component or a list.
            $(#[$km])*
            pub key: $key,
            /// Lower-case the key.
            #[serde(default)]
            pub lowercase_key: bool,
            /// Keys are cut at this many bytes.
            #[serde(default = "sg_core::key::default_max_key_len")]
            pub max_key_len: usize,
            $($rest)*
        }

        impl $name {
            /// Compiles the shared head of this rule at `path` (`rules[i]`); `taken`: an
            /// earlier rule has this name.
            pub fn head(
                &self,
                path: &str,
                taken: bool,
            ) -> Result<
                $crate::config::RuleHead<<$key as $crate::config::KeyField>::Plan>,
                $crate::ConfigError,
            > {
                $crate::config::compile_head(
                    path,
                    &self.name,
                    taken,
                    &self.match_,
                    &self.key,
                    self.lowercase_key,
                    self.max_key_len,
                )
            }
        }
    };
}

/// The tests every filter's shipped config gets: `config/<filter>.json` compiles,
/// `config/<filter>.schema.json` describes every field it uses, and the Istio `WasmPlugin`'s
/// `pluginConfig` (`deploy/istio/<filter>-wasmplugin.yaml`) compiles. Invoke inside the config
/// module's `tests` (paths are relative to `filters/<filter>/src/`; the crate needs
/// `serde_yaml` as a dev-dependency).
///
/// `shipped_config_tests!("<filter>", fleet)` adds the same for `config/fleet/<filter>.json`
/// (the example with `"scope": "fleet"` rules, README "Fleet").
#[macro_export]
macro_rules! shipped_config_tests {
    ($filter:literal, fleet) => {
        $crate::shipped_config_tests!($filter);

        #[test]
        fn shipped_fleet_example_compiles_and_its_schema_describes_it() {
            let json = include_str!(concat!("../../../config/fleet/", $filter, ".json"));
            let p = <Config as $crate::config::Compile>::parse(json.as_bytes());
            assert!(
                p.as_ref().is_ok_and(|p| p.fleet.is_some()),
                "config/fleet/{}.json: {:?}",
                $filter,
                p.err()
            );
            let gaps = $crate::error::schema_gaps_of(
                include_str!(concat!("../../../config/", $filter, ".schema.json")),
                json,
            );
            assert!(
                gaps.is_empty(),
                "config/{}.schema.json lacks {gaps:?}",
                $filter
            );
        }
    };
    ($filter:literal) => {
        #[test]
        fn shipped_example_compiles() {
            let json = include_str!(concat!("../../../config/", $filter, ".json"));
            let p = <Config as $crate::config::Compile>::parse(json.as_bytes());
            assert!(p.is_ok(), "config/{}.json: {:?}", $filter, p.err());
        }

        #[test]
        fn schema_describes_every_field_of_the_example() {
            let gaps = $crate::error::schema_gaps_of(
                include_str!(concat!("../../../config/", $filter, ".schema.json")),
                include_str!(concat!("../../../config/", $filter, ".json")),
            );
            assert!(
                gaps.is_empty(),
                "config/{}.schema.json lacks {gaps:?}",
                $filter
            );
        }

        #[test]
        fn istio_wasmplugin_config_compiles() {
            let yaml = include_str!(concat!(
                "../../../deploy/istio/",
                $filter,
                "-wasmplugin.yaml"
            ));
            let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap_or_default();
            let cfg = doc
                .get("spec")
                .and_then(|s| s.get("pluginConfig"))
                .map(|c| serde_json::to_vec(c).unwrap_or_default())
                .unwrap_or_default();
            assert!(
                !cfg.is_empty(),
                "no spec.pluginConfig in the {} WasmPlugin",
                $filter
            );
            let p = <Config as $crate::config::Compile>::parse(&cfg);
            assert!(
                p.is_ok(),
                "deploy/istio/{}-wasmplugin.yaml: {:?}",
                $filter,
                p.err()
            );
        }
    };
}
