//! The configuration file as the operator wrote it: every field optional, no validation.
//! `config::Config::from_raw` turns it into the validated form.

use serde::Deserialize;

/// `enrollgate.toml`, as written.
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub pki: RawPki,
    #[serde(default)]
    pub enrollment: RawEnrollment,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub renewal: RawRenewal,
}

/// `[renewal]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawRenewal {
    pub expired_grace: Option<String>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

/// `[shutdown]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawShutdown {
    pub grace: Option<String>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawServer {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub workers: Option<usize>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ca: Option<String>,
    pub key_exchange: Option<Vec<String>>,
    pub session_tickets: Option<bool>,
}

/// `[pki]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawPki {
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
    pub token_key: Option<String>,
    pub trust_domain: Option<String>,
    pub cert_lifetime: Option<String>,
}

/// `[enrollment]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawEnrollment {
    pub token_ttl: Option<String>,
    pub reenroll_grace: Option<String>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawStore {
    pub path: Option<String>,
    pub url: Option<Secret>,
    pub password_file: Option<String>,
    pub durability: Option<String>,
    pub queue_capacity: Option<usize>,
    pub max_batch: Option<usize>,
}

/// A string that may hold a password: never shown by `Debug`.
#[derive(Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawLimits {
    pub max_body_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub handshake_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub slow_request_grace: Option<String>,
    pub max_connections: Option<usize>,
    pub max_handshakes: Option<usize>,
    pub max_handshakes_per_source: Option<usize>,
    pub max_memory: Option<String>,
    pub sign_queue: Option<usize>,
    pub sign_batch: Option<usize>,
    pub per_source_rate: Option<String>,
    pub per_source_burst: Option<u32>,
    pub per_ca_rate: Option<String>,
    pub per_ca_burst: Option<u32>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[allow(missing_docs)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// Parses TOML text into the schema, with a problem (key path, message) for every key the
/// schema does not know and every value of the wrong type, all of them: a wrong value is
/// left out (as if absent) so that the rest is still read and checked. Only a TOML syntax
/// error stops it.
pub fn parse(text: &str) -> Result<(RawConfig, Vec<(String, String)>), String> {
    use serde::de::IntoDeserializer as _;
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut problems = Vec::new();
    // Each value alone, in a file that holds nothing else: a type error is that value's.
    let alone = |section: &str, key: Option<(&str, &toml::Value)>, value: &toml::Value| {
        let mut file = toml::Table::new();
        let inner = match key {
            Some((k, v)) => {
                toml::Value::Table(toml::Table::from_iter([(k.to_string(), v.clone())]))
            }
            None => value.clone(),
        };
        file.insert(section.to_string(), inner);
        RawConfig::deserialize(toml::Value::Table(file).into_deserializer())
            .err()
            .map(|e| e.message().trim().to_string())
    };
    let sections: Vec<String> = table.keys().cloned().collect();
    for section in sections {
        let Some(value) = table.get_mut(&section) else {
            continue;
        };
        match value {
            toml::Value::Table(keys) => {
                let names: Vec<String> = keys.keys().cloned().collect();
                for k in names {
                    let wrong = keys.get(&k).and_then(|v| alone(&section, Some((&k, v)), v));
                    if let Some(message) = wrong {
                        problems.push((format!("{section}.{k}"), message));
                        keys.remove(&k);
                    }
                }
            }
            other => {
                if let Some(message) = alone(&section, None, other) {
                    problems.push((section.clone(), message));
                    table.remove(&section);
                }
            }
        }
    }
    let mut unknown = Vec::new();
    let raw: RawConfig =
        serde_ignored::deserialize(toml::Value::Table(table).into_deserializer(), |path| {
            unknown.push(path.to_string())
        })
        .map_err(|e| e.to_string())?;
    problems.extend(unknown.into_iter().map(|k| (k, "unknown key".to_string())));
    Ok((raw, problems))
}
