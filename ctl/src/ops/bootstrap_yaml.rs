//! nats-bootstrap 0.1.0's `bootstrap.yaml` (`up/join --bootstrap-config FILE`), so its users
//! bring their files over. The schema (from nats-bootstrap 0.1.0's loader; strict: an unknown
//! key is an error):
//!
//! ```yaml
//! cluster: pyoco                  # required
//! datafolder: ./data              # required; relative to the file's directory
//! client_port: 4222               # optional, 1..65535
//! http_port: 8222
//! cluster_port: 6222
//! system_account: { name: SYS, user: sys, password_env: NATS_SYS_PASSWORD }   # required
//! app_account: { name: APP, user: app, password_env: NATS_APP_PASSWORD }      # required
//! advertise: { client: "10.0.0.1:4222", cluster: "10.0.0.1:6222" }           # optional
//! ```
//!
//! The accounts keep their names; the app user keeps full access to its account (its clients
//! keep working) next to the role users, and the system user joins `system`.

use std::path::{Path, PathBuf};

use serde_norway::Value as Y;

use crate::client::CtlError;
use crate::exit;

const ROOT_KEYS: &[&str] = &[
    "cluster",
    "datafolder",
    "client_port",
    "http_port",
    "cluster_port",
    "system_account",
    "app_account",
    "advertise",
];
const ACCOUNT_KEYS: &[&str] = &["name", "user", "password_env"];
const ADVERTISE_KEYS: &[&str] = &["client", "cluster"];
/// Longest string value accepted (names, users, addresses).
const MAX_VALUE_LEN: usize = 256;

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub user: String,
    pub password_env: String,
}

#[derive(Debug, Clone)]
pub struct BootstrapYaml {
    pub path: PathBuf,
    pub cluster: String,
    pub datafolder: PathBuf,
    pub client_port: Option<u16>,
    pub http_port: Option<u16>,
    pub cluster_port: Option<u16>,
    pub system_account: Account,
    pub app_account: Account,
    pub advertise_client: Option<String>,
    pub advertise_cluster: Option<String>,
}

/// Whether `--bootstrap-config FILE` names a bootstrap.yaml (nats-bootstrap 0.1.0) rather than
/// the JSON `nats-config.json` (0.0.9): by extension, else by a first character other than `{`.
pub fn is_yaml(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => true,
        Some("json") => false,
        _ => std::fs::read_to_string(path)
            .map(|t| !t.trim_start().starts_with('{'))
            .unwrap_or(false),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn key_name(k: &Y) -> String {
    match k {
        Y::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

pub fn load(path: &Path) -> Result<BootstrapYaml, CtlError> {
    let shown = path.display().to_string();
    let invalid = |reason: String, fix: &str| {
        CtlError::new(
            exit::USAGE,
            format!("--bootstrap-config {shown}: {reason}\n- fix: {fix}"),
        )
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            format!("cannot read it: {e}"),
            "point --bootstrap-config at an existing bootstrap.yaml",
        )
    })?;
    let doc: Y = serde_norway::from_str(&text).map_err(|e| {
        invalid(
            format!("not valid YAML: {e}"),
            "fix the YAML syntax (see `pyococtl up --help` for the schema)",
        )
    })?;
    let Y::Mapping(root) = doc else {
        return Err(invalid(
            "the document must be a mapping (key: value lines)".into(),
            "start from the example in docs/operations.md",
        ));
    };
    let check_keys = |m: &serde_norway::Mapping, allowed: &[&str], label: &str| {
        let mut unknown: Vec<String> = m
            .keys()
            .map(key_name)
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort();
        Err(invalid(
            format!(
                "unknown key{} {} in {label}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &format!("remove or rename it; {label} takes {}", allowed.join(", ")),
        ))
    };
    check_keys(&root, ROOT_KEYS, "the top level")?;
    let get = |m: &serde_norway::Mapping, k: &str| m.get(Y::String(k.into())).cloned();
    let string = |v: Option<Y>, label: &str, required: bool| -> Result<Option<String>, CtlError> {
        match v {
            None | Some(Y::Null) if !required => Ok(None),
            Some(Y::String(s)) if !s.trim().is_empty() => {
                let s = s.trim().to_string();
                if s.len() > MAX_VALUE_LEN || s.chars().any(char::is_control) {
                    return Err(invalid(
                        format!("`{label}` is longer than {MAX_VALUE_LEN} characters or holds control characters"),
                        "shorten it",
                    ));
                }
                Ok(Some(s))
            }
            _ => Err(invalid(
                format!(
                    "`{label}` is {} (a non-empty string)",
                    if required { "required" } else { "not a string" }
                ),
                &format!("set `{label}: …`"),
            )),
        }
    };
    let port = |k: &str| -> Result<Option<u16>, CtlError> {
        match get(&root, k) {
            None => Ok(None),
            Some(Y::Number(n)) => match n.as_u64() {
                Some(p @ 1..=65535) => Ok(Some(p as u16)),
                _ => Err(invalid(
                    format!("`{k}` is {n}, not between 1 and 65535"),
                    &format!("set `{k}` to a port number"),
                )),
            },
            Some(_) => Err(invalid(
                format!("`{k}` must be an integer"),
                &format!("e.g. `{k}: 4222`"),
            )),
        }
    };
    let account = |k: &str| -> Result<Account, CtlError> {
        let Some(Y::Mapping(m)) = get(&root, k) else {
            return Err(invalid(
                format!("`{k}` is required (a mapping with name, user, password_env)"),
                &format!("add `{k}: {{ name: …, user: …, password_env: … }}`"),
            ));
        };
        check_keys(&m, ACCOUNT_KEYS, &format!("`{k}`"))?;
        let name = string(get(&m, "name"), &format!("{k}.name"), true)?.unwrap_or_default();
        let user = string(get(&m, "user"), &format!("{k}.user"), true)?.unwrap_or_default();
        let env = string(get(&m, "password_env"), &format!("{k}.password_env"), true)?
            .unwrap_or_default();
        for (field, v) in [("name", &name), ("password_env", &env)] {
            if !is_identifier(v) {
                return Err(invalid(
                    format!("`{k}.{field}` is {v:?}, not an identifier"),
                    "use letters, digits and _ only, not starting with a digit",
                ));
            }
        }
        if user.contains('"') || user.contains('\\') {
            return Err(invalid(
                format!("`{k}.user` holds a quote or backslash"),
                "use a plain user name",
            ));
        }
        Ok(Account {
            name,
            user,
            password_env: env,
        })
    };
    let cluster = string(get(&root, "cluster"), "cluster", true)?.unwrap_or_default();
    let datafolder = string(get(&root, "datafolder"), "datafolder", true)?.unwrap_or_default();
    let datafolder = super::expand_tilde(Path::new(&datafolder));
    let datafolder = if datafolder.is_absolute() {
        datafolder
    } else {
        // nats-bootstrap resolves it against the file's directory, not the current one.
        let base = super::absolute(path);
        base.parent().unwrap_or(Path::new("/")).join(datafolder)
    };
    let system_account = account("system_account")?;
    let app_account = account("app_account")?;
    if system_account.name == app_account.name {
        return Err(invalid(
            format!(
                "system_account.name and app_account.name are both {:?}",
                app_account.name
            ),
            "give the two accounts different names",
        ));
    }
    let (advertise_client, advertise_cluster) = match get(&root, "advertise") {
        None | Some(Y::Null) => (None, None),
        Some(Y::Mapping(m)) => {
            check_keys(&m, ADVERTISE_KEYS, "`advertise`")?;
            (
                string(get(&m, "client"), "advertise.client", false)?,
                string(get(&m, "cluster"), "advertise.cluster", false)?,
            )
        }
        Some(_) => {
            return Err(invalid(
                "`advertise` must be a mapping".into(),
                "e.g. `advertise: { client: \"10.0.0.1:4222\" }`",
            ))
        }
    };
    Ok(BootstrapYaml {
        path: super::absolute(path),
        cluster,
        datafolder: super::absolute(&datafolder),
        client_port: port("client_port")?,
        http_port: port("http_port")?,
        cluster_port: port("cluster_port")?,
        system_account,
        app_account,
        advertise_client,
        advertise_cluster,
    })
}

/// The password an account names through `password_env`, from the environment.
pub fn password(file: &Path, label: &str, a: &Account) -> Result<String, CtlError> {
    match std::env::var(&a.password_env) {
        Ok(v) if !v.trim().is_empty() => {
            let v = v.trim().to_string();
            if v.chars().any(char::is_control) || v.len() > 1024 || v.starts_with("$2") {
                return Err(CtlError::new(
                    exit::USAGE,
                    format!(
                        "the environment variable {} ({label}.password_env in {}) holds control characters, more than 1024 characters or a `$2` bcrypt prefix\n- fix: set it to the plain password",
                        a.password_env,
                        file.display()
                    ),
                ));
            }
            Ok(v)
        }
        _ => Err(CtlError::new(
            exit::USAGE,
            format!(
                "the environment variable {} is not set; {} names it as {label}.password_env (the password of user {:?})\n- fix: export {}=… before `pyococtl up`, or change {label}.password_env",
                a.password_env,
                file.display(),
                a.user,
                a.password_env
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn schema() {
        let dir = std::env::temp_dir().join(format!("pyococtl-by-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = write(
            &dir,
            "bootstrap.yaml",
            "cluster: demo\ndatafolder: data\nclient_port: 4333\nsystem_account: {name: SYS, user: sys, password_env: SYS_PW}\napp_account: {name: APP, user: app, password_env: APP_PW}\nadvertise: {client: \"10.0.0.1:4333\", cluster: null}\n",
        );
        let b = load(&good).unwrap();
        assert_eq!(b.cluster, "demo");
        assert_eq!(b.datafolder, dir.join("data"));
        assert_eq!(b.client_port, Some(4333));
        assert_eq!(b.http_port, None);
        assert_eq!(b.app_account.password_env, "APP_PW");
        assert_eq!(b.advertise_client.as_deref(), Some("10.0.0.1:4333"));
        assert_eq!(b.advertise_cluster, None);
        assert!(is_yaml(&good));

        let bad = write(&dir, "b1.yaml", "cluster: demo\ndatafolder: d\nzzz: 1\nsystem_account: {name: SYS, user: s, password_env: A}\napp_account: {name: APP, user: a, password_env: B}\n");
        let e = load(&bad).unwrap_err().message;
        assert!(e.contains("unknown key `zzz` in the top level"), "{e}");
        let bad = write(&dir, "b2.yaml", "cluster: demo\ndatafolder: d\nsystem_account: {name: SYS, user: s, password_env: A, pw: x}\napp_account: {name: APP, user: a, password_env: B}\n");
        let e = load(&bad).unwrap_err().message;
        assert!(e.contains("unknown key `pw` in `system_account`"), "{e}");
        let bad = write(&dir, "b3.yaml", "cluster: demo\ndatafolder: d\nclient_port: 70000\nsystem_account: {name: SYS, user: s, password_env: A}\napp_account: {name: APP, user: a, password_env: B}\n");
        assert!(load(&bad)
            .unwrap_err()
            .message
            .contains("`client_port` is 70000"));
        let bad = write(&dir, "b4.yaml", "datafolder: d\n");
        assert!(load(&bad)
            .unwrap_err()
            .message
            .contains("`cluster` is required"));
        let bad = write(&dir, "b5.yaml", "cluster: demo\ndatafolder: d\nsystem_account: {name: X, user: s, password_env: A}\napp_account: {name: X, user: a, password_env: 1B}\n");
        assert!(load(&bad)
            .unwrap_err()
            .message
            .contains("not an identifier"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
