//! `enrollgate init` and `enrollgate quickstart`.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::CliError;
use crate::clock::{Clock, SystemClock};
use crate::config::{initial_file, PublicUrl};
use crate::identity_file::{write_private, IdentityFile};
use crate::model::{Identity, IdentityType, Method};
use crate::pki::{self, fingerprint, Host, IssuePolicy, KeyType, Signer};
use crate::store::{Command, Store};

/// The data directory `quickstart` uses.
pub const DEFAULT_DATA_DIR: &str = "./enrollgate-data";
/// The enrollment listener `init` configures by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// Arguments of `init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Directory to create (must not exist, or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the enrollment listener.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Public URL of the enrollment listener (default: https://localhost:<listen port>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Key type of the internal CA and server certificate (JWTs: ES256 or RS256).
    #[arg(long, value_enum, default_value = "ec")]
    pub key_type: KeyType,
    /// Name of the first admin identity.
    #[arg(long, default_value = "Default Admin")]
    pub admin_name: String,
    /// The CA key in a PKCS#11 token, as an RFC 7512 URI:
    /// `pkcs11:token=LABEL;object=KEY?module-path=/path/module.so&pin-source=/path/pin`
    /// (or `pin-source=env:NAME`). The key is generated in the token (EC P-256, not
    /// extractable) when it holds none by that label, and used when it does; it never
    /// exists in a file.
    #[arg(long)]
    pub ca_key: Option<String>,
    /// Write the configuration here instead of DATA_DIR/enrollgate.toml, with absolute
    /// paths into the data directory (e.g. /etc/enrollgate/enrollgate.toml under systemd).
    #[arg(long)]
    pub config_out: Option<PathBuf>,
    /// Keep the store in this PostgreSQL database instead of an embedded RocksDB
    /// (`postgresql://USER@HOST[:PORT][,HOST[:PORT]]/DB[?PARAMS]`), so that several gateways
    /// can share it. The database must hold no enrollgate store yet. The password: in the
    /// URL, or in $ENROLLGATE_STORE_PASSWORD (then not written to the configuration).
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
}

/// Arguments of `quickstart`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuickstartArgs {
    /// Data directory, created on first use.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Address of the enrollment listener (first use only).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The config file.
    pub config: PathBuf,
    /// The admin identity file.
    pub admin: PathBuf,
}

fn mkdir_private(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// Creates a data directory. On any failure nothing is left behind.
pub fn init(args: InitArgs) -> Result<Initialized, CliError> {
    crate::ops::process::private_umask();
    let dir = &args.data_dir;
    let existed = dir.exists();
    if existed {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| CliError::new(format!("{}: {e}", dir.display())))?;
        if entries.next().is_some() {
            return Err(CliError::new(format!(
                "{} already exists and is not empty; refusing to initialise over it (nothing was changed)",
                dir.display()
            )));
        }
    }
    if let Some(out) = &args.config_out {
        if out.exists() {
            return Err(CliError::new(format!(
                "{} already exists; refusing to overwrite it (nothing was changed)",
                out.display()
            )));
        }
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(CliError::new(format!(
                    "{}: no such directory for --config-out (nothing was changed)",
                    parent.display()
                )));
            }
        }
    }
    // An existing (empty) directory is made private; a failure gives it its mode back.
    let mode_before = existed
        .then(|| std::fs::metadata(dir).ok().map(|m| m.permissions()))
        .flatten();
    crate::enroll::validate_name(&args.admin_name)
        .map_err(|e| CliError::new(format!("--admin-name: {e}")))?;
    let public_url = match &args.public_url {
        Some(u) => PublicUrl::parse(u).map_err(|e| CliError::new(format!("--public-url: {e}")))?,
        None if args.listen.port() == 0 => PublicUrl::for_bound(args.listen),
        None => PublicUrl {
            host: "localhost".into(),
            port: args.listen.port(),
        },
    };
    let result = create_all(dir, existed, &args, &public_url);
    if result.is_err() {
        // Leave nothing half-made.
        if let Some(out) = &args.config_out {
            let _ = std::fs::remove_file(out);
        }
        if existed {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir_all(e.path())
                        .or_else(|_| std::fs::remove_file(e.path()));
                }
            }
            if let Some(mode) = mode_before {
                let _ = std::fs::set_permissions(dir, mode);
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}

fn create_all(
    dir: &Path,
    existed: bool,
    args: &InitArgs,
    public_url: &PublicUrl,
) -> Result<Initialized, CliError> {
    let at = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| CliError::new(format!("{path}: {e} (nothing was changed)"))
    };
    if existed {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(at(dir))?;
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(at(dir))?;
    }
    let pki_dir = dir.join("pki");
    mkdir_private(&pki_dir).map_err(at(&pki_dir))?;
    let now = SystemClock.unix_now();

    let hosts = [Host::parse(&public_url.host)];
    let (material, ca_key) = match &args.ca_key {
        Some(uri) => {
            let hsm = |e: pki::hsm::HsmError| CliError::new(format!("--ca-key: {e}"));
            if args.key_type != KeyType::Ec {
                return Err(CliError::new(
                    "--ca-key: a CA key in a PKCS#11 token is EC P-256: use --key-type ec",
                ));
            }
            let uri = pki::hsm::Pkcs11Uri::parse(uri).map_err(hsm)?;
            let token = pki::hsm::Token::open(&uri).map_err(hsm)?;
            let (key, generated) = token.key_or_generate().map_err(hsm)?;
            eprintln!(
                "{} the CA key '{}' in PKCS#11 token '{}'",
                if generated { "generated" } else { "using" },
                uri.object,
                uri.token
            );
            let material = pki::create_with(&key, args.key_type, &hosts, now)?;
            (material, pki::CaKey::Hsm(key))
        }
        None => {
            let material = pki::create(args.key_type, &hosts, now)?;
            let key = rcgen::KeyPair::from_pem(&material.ca_key_pem)?;
            (material, key.into())
        }
    };
    write_private(&pki_dir.join("ca.crt"), material.ca_cert_pem.as_bytes())?;
    if args.ca_key.is_none() {
        write_private(&pki_dir.join("ca.key"), material.ca_key_pem.as_bytes())?;
    }
    write_private(
        &pki_dir.join("server.crt"),
        material.server_cert_pem.as_bytes(),
    )?;
    write_private(
        &pki_dir.join("server.key"),
        material.server_key_pem.as_bytes(),
    )?;
    crate::token::secret::create(&pki_dir.join("token.key"))
        .map_err(|e| CliError::new(format!("{e} (nothing was changed)")))?;

    // The first admin: an identity already enrolled with a certificate from the CA.
    let admin_id = crate::ids::new_id().map_err(|e| CliError::new(e.to_string()))?;
    let ca_der = pem::parse(&material.ca_cert_pem)
        .map_err(|e| CliError::new(e.to_string()))?
        .into_contents();
    let signer = Signer::new(
        &ca_der,
        ca_key,
        IssuePolicy {
            trust_domain: "enrollgate".into(),
            lifetime_secs: 365 * 86_400,
            crl_url: None,
        },
    )?;
    let admin_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&admin_key);
    let cert = signer.issue_client(&spki, &admin_id, now)?;
    let admin = Identity {
        id: admin_id,
        name: args.admin_name.clone(),
        kind: IdentityType::User,
        is_admin: true,
        role_attributes: vec![],
        created_at: now,
        updated_at: now,
        enrollment_id: None,
        lifecycle: Default::default(),
        authenticator: Some(
            fingerprint::authenticator(&cert.der, true, Method::Ott, now)
                .ok_or_else(|| CliError::new("the admin certificate does not parse"))?,
        ),
    };
    let store = match &args.store_url {
        None => Store::open(&dir.join("store"), true)?,
        Some(url) => {
            let password = std::env::var(crate::store::pg::url::PASSWORD_ENV).ok();
            let url = crate::store::pg::StoreUrl::parse(url, password)
                .map_err(|e| CliError::new(format!("--store-url: {e}")))?;
            let gateway = crate::store::pg::gateway_of(material.ca_cert_pem.as_bytes())
                .map_err(CliError::new)?;
            Store::open_configured(&dir.join("store"), Some(&url), &gateway, true)
                .map_err(|e| CliError::new(format!("--store-url {url}: {e}")))?
        }
    };
    for r in store.apply_now(vec![Command::CreateIdentity {
        identity: admin,
        enrollment: None,
    }])? {
        r?;
    }
    drop(store);

    // Port 0 means "any free port": the daemon then derives `iss` from the bound address.
    let configured_url =
        (args.public_url.is_some() || args.listen.port() != 0).then_some(public_url);
    let config = match &args.config_out {
        Some(out) => {
            let absolute = std::fs::canonicalize(dir)?;
            let text = initial_file(args.listen, configured_url, Some(&absolute));
            let text = with_store_url(with_ca_key(text, args.ca_key.as_deref()), args);
            write_private(out, text.as_bytes())?;
            out.clone()
        }
        None => {
            let c = dir.join("enrollgate.toml");
            let text = initial_file(args.listen, configured_url, None);
            let text = with_store_url(with_ca_key(text, args.ca_key.as_deref()), args);
            write_private(&c, text.as_bytes())?;
            c
        }
    };
    let admin_path = dir.join("admin.json");
    IdentityFile::new(
        public_url,
        &admin_key.serialize_pem(),
        &cert.pem,
        &material.ca_cert_pem,
    )
    .write_new(&admin_path)?;
    Ok(Initialized {
        config,
        admin: admin_path,
    })
}

/// The configuration `text` with `store.url` in place of `store.path` when the store is a
/// database. The file is private (0600): a password in the URL stays in it.
fn with_store_url(text: String, args: &InitArgs) -> String {
    let Some(url) = &args.store_url else {
        return text;
    };
    let mut out = String::with_capacity(text.len() + url.len());
    for line in text.lines() {
        if line.starts_with("path = ") && line.contains("store") {
            out.push_str(&format!(
                "url = {}   # several gateways on one database (docs/scale-out.md)",
                toml::Value::String(url.clone())
            ));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The configuration `text` with `pki.ca_key` set to `uri` (a PKCS#11 key), if given.
fn with_ca_key(text: String, uri: Option<&str>) -> String {
    let Some(uri) = uri else { return text };
    let mut out = String::with_capacity(text.len() + uri.len());
    for line in text.lines() {
        if line.starts_with("ca_key = ") {
            out.push_str(&format!("ca_key = {}", toml::Value::String(uri.into())));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// `quickstart`: init on first use, explain, serve.
pub fn quickstart(args: QuickstartArgs) -> Result<(), CliError> {
    let config = args.data_dir.join("enrollgate.toml");
    if !config.exists() {
        let made = init(InitArgs {
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            public_url: None,
            key_type: KeyType::Ec,
            admin_name: "Default Admin".into(),
            ca_key: None,
            config_out: None,
            store_url: None,
        })?;
        eprintln!("initialised {}", args.data_dir.display());
        let _ = made;
    }
    let admin = args.data_dir.join("admin.json");
    let admin = std::fs::canonicalize(&admin).unwrap_or(admin);
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "enrollgate".into());
    eprintln!(
        "\nadmin identity: {admin}\n\nIn another terminal, create an identity and enroll it:\n\n  export ENROLLGATE_IDENTITY={admin}\n  {exe} identity create user NewUser -o NewUser.jwt\n  {exe} enroll --jwt NewUser.jwt --out NewUser.json\n",
        admin = admin.display()
    );
    super::serve::serve(super::serve::ServeArgs {
        config,
        workers: None,
        log_format: None,
        listen: None,
        metrics_listen: None,
    })
}
