//! The secured NATS layout `pyococtl up/join` write by default: an application account with
//! one user per role (gateway, worker, admin) and per-role permissions, a system account,
//! route authorization, and the credential files they read their passwords from.
//!
//! The permission lists below were derived by running the real gateway, worker and
//! `pyococtl key/dlq/backup/restore` against nats-server 2.9 and 2.15 with them and reading the
//! server's "Permissions Violation" log lines (see `tests/tests/it/nats_secure.rs`).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use pyoco_core::resources::Names;
use rand::RngCore as _;

use crate::client::CtlError;
use crate::exit;

/// The application account (JetStream enabled) every product client lives in.
pub const APP_ACCOUNT: &str = "PYOCO";
/// The system account (`system_account`).
pub const SYS_ACCOUNT: &str = "SYS";
/// Where the package keeps the credential files (`pyococtl nats-credentials`' default, and
/// where pyococtl looks for `admin.password` when no credentials are configured).
pub const PACKAGED_CREDENTIALS_DIR: &str = "/etc/pyoco/credentials";
/// Overrides [`PACKAGED_CREDENTIALS_DIR`] (tests, or hosts that keep them elsewhere).
pub const CREDENTIALS_DIR_ENV: &str = "PYOCO_CREDENTIALS_DIR";
/// Longest password accepted from a file (a secret, not a document).
const MAX_PASSWORD_LEN: usize = 1024;
/// Shortest password accepted from a file an operator wrote.
const MIN_PASSWORD_LEN: usize = 16;

/// One role: its fixed user name and the file holding its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    pub user: &'static str,
    pub file: &'static str,
}

pub const GATEWAY: Role = Role {
    user: "pyoco-gateway",
    file: "gateway.password",
};
pub const WORKER: Role = Role {
    user: "pyoco-worker",
    file: "worker.password",
};
pub const ADMIN: Role = Role {
    user: "pyoco-admin",
    file: "admin.password",
};
pub const SYSTEM: Role = Role {
    user: "system",
    file: "system.password",
};
pub const ROUTE: Role = Role {
    user: "pyoco-route",
    file: "route.password",
};
/// Every credential file, in the order they are reported.
pub const ROLES: [Role; 5] = [GATEWAY, WORKER, ADMIN, SYSTEM, ROUTE];

/// The credentials directory of the package: `$PYOCO_CREDENTIALS_DIR`, else
/// `/etc/pyoco/credentials`.
pub fn packaged_credentials_dir() -> PathBuf {
    std::env::var_os(CREDENTIALS_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PACKAGED_CREDENTIALS_DIR))
}

/// A new password: 32 random bytes, URL-safe base64 (43 characters).
fn new_password() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn err(msg: String) -> CtlError {
    CtlError::new(exit::ERROR, msg)
}

/// Creates `dir` (mode 0700) and every missing credential file in it (0600, one random line);
/// never touches an existing file. Returns the files it created.
pub fn ensure_files(dir: &Path) -> Result<Vec<PathBuf>, CtlError> {
    if !dir.is_dir() {
        if dir.exists() {
            return Err(err(format!(
                "credentials directory {}: exists but is not a directory\n- hint: point --auth-dir/--dir at a directory",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            err(format!(
                "cannot create the credentials directory {}: {e}",
                dir.display()
            ))
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            err(format!(
                "cannot make the credentials directory {} private (0700): {e}",
                dir.display()
            ))
        })?;
    }
    let mut created = Vec::new();
    for role in ROLES {
        let path = dir.join(role.file);
        if path.exists() {
            continue;
        }
        // create_new: a file that appears meanwhile (another `up`) is kept, never overwritten.
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(err(format!(
                    "cannot create {}: {e}\n- hint: run as the owner of {} (or root), or give every file yourself (see pyococtl nats-credentials --help)",
                    path.display(),
                    dir.display()
                )))
            }
        };
        f.write_all(format!("{}\n", new_password()).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
        created.push(path);
    }
    Ok(created)
}

/// Reads one password file: its first line, trimmed; checked so it can be written into a
/// nats-server configuration and a route URL.
pub fn read_password(path: &Path) -> Result<String, CtlError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(format!(
            "cannot read the NATS password file {}: {e}\n- hint: create the missing files with `pyococtl nats-credentials --dir {}`, or run as a user who may read them",
            path.display(),
            path.parent().map(|p| p.display().to_string()).unwrap_or_default()
        ))
    })?;
    let pw = text.lines().next().unwrap_or("").trim().to_string();
    let bad = |why: &str| {
        err(format!(
            "NATS password file {}: {why}\n- hint: write one line of at least {MIN_PASSWORD_LEN} printable characters, or delete the file and let `pyococtl nats-credentials` create a random one",
            path.display()
        ))
    };
    if pw.len() < MIN_PASSWORD_LEN {
        return Err(bad(&format!(
            "the password is {} characters long, fewer than {MIN_PASSWORD_LEN}",
            pw.len()
        )));
    }
    if pw.len() > MAX_PASSWORD_LEN {
        return Err(bad(&format!(
            "the password is longer than {MAX_PASSWORD_LEN} characters"
        )));
    }
    if pw.chars().any(|c| c.is_control()) {
        return Err(bad("the password contains control characters"));
    }
    // nats-server takes a password starting with `$2` for a bcrypt hash.
    if pw.starts_with("$2") {
        return Err(bad(
            "the password starts with `$2`, which nats-server reads as a bcrypt hash",
        ));
    }
    Ok(pw)
}

/// The passwords of every role.
#[derive(Clone)]
pub struct Credentials {
    pub dir: PathBuf,
    pub gateway: String,
    pub worker: String,
    pub admin: String,
    pub system: String,
    pub route: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Stand-ins for checking a layout without touching the files (`service install`).
    pub fn placeholder(dir: &Path) -> Credentials {
        let p = || "placeholder-not-a-password".to_string();
        Credentials {
            dir: dir.to_path_buf(),
            gateway: p(),
            worker: p(),
            admin: p(),
            system: p(),
            route: p(),
        }
    }
}

/// The credentials of `dir`: when every file is there they are only read (the directory may be
/// read-only, e.g. systemd's `$CREDENTIALS_DIRECTORY`); otherwise the missing ones are created
/// first. `created` lists what was created.
pub fn load_or_create(dir: &Path) -> Result<(Credentials, Vec<PathBuf>), CtlError> {
    let complete = ROLES.iter().all(|r| dir.join(r.file).is_file());
    let created = if complete {
        Vec::new()
    } else {
        ensure_files(dir)?
    };
    let read = |r: Role| read_password(&dir.join(r.file));
    Ok((
        Credentials {
            dir: dir.to_path_buf(),
            gateway: read(GATEWAY)?,
            worker: read(WORKER)?,
            admin: read(ADMIN)?,
            system: read(SYSTEM)?,
            route: read(ROUTE)?,
        },
        created,
    ))
}

// ---------------------------------------------------------------------------------------------
// Permissions

/// A grant: the subject and why the role needs it.
type Grant = (String, &'static str);

/// Publish and subscribe allow-lists of one role.
pub struct Permissions {
    pub publish: Vec<Grant>,
    pub subscribe: Vec<Grant>,
}

/// What the gateway needs: ensure every product stream, bucket and object store; read and
/// write every bucket; publish work; watch runs, workers and keys (its indexes, SSE).
pub fn gateway_permissions(n: &Names) -> Permissions {
    let mut publish: Vec<Grant> = Vec::new();
    for s in n.all_streams() {
        publish.extend([
            (
                format!("$JS.API.STREAM.INFO.{s}"),
                "ensure: find the resource, report drift; metrics (DLQ size)",
            ),
            (
                format!("$JS.API.STREAM.CREATE.{s}"),
                "ensure: create the resource when missing",
            ),
        ]);
    }
    for b in [
        &n.runs_bucket,
        &n.workers_bucket,
        &n.auth_bucket,
        &n.idempotency_bucket,
        &n.wheel_history_bucket,
    ] {
        let st = format!("KV_{b}");
        publish.extend([
            (
                format!("$KV.{b}.>"),
                "write the bucket (create, update, delete)",
            ),
            (format!("$JS.API.STREAM.MSG.GET.{st}"), "read a key"),
            (
                format!("$JS.API.DIRECT.GET.{st}.>"),
                "read a key (buckets made with direct get, e.g. by the original)",
            ),
        ]);
    }
    for b in [
        &n.runs_bucket,
        &n.workers_bucket,
        &n.auth_bucket,
        &n.idempotency_bucket,
        &n.wheel_history_bucket,
    ] {
        let st = format!("KV_{b}");
        publish.extend([
            (
                format!("$JS.API.CONSUMER.CREATE.{st}"),
                "watch or list the bucket (ordered consumer): indexes, SSE, key revocation",
            ),
            (
                format!("$JS.API.CONSUMER.CREATE.{st}.>"),
                "watch the bucket (the named-consumer API form)",
            ),
            (
                format!("$JS.API.CONSUMER.INFO.{st}.*"),
                "the original's (nats-py) watches check their consumer",
            ),
            (
                format!("$JS.API.CONSUMER.DELETE.{st}.*"),
                "the original's (nats-py) watches delete their consumer when done",
            ),
            (format!("$JS.FC.{st}.>"), "flow-control replies of a watch"),
        ]);
    }
    let obj = format!("OBJ_{}", n.wheels_bucket);
    publish.extend([
        (
            format!("{}.>", n.work_subject_prefix),
            "publish jobs to the work queue",
        ),
        (
            format!("$O.{}.>", n.wheels_bucket),
            "write the wheel object store",
        ),
        (
            format!("$JS.API.STREAM.MSG.GET.{obj}"),
            "read wheel metadata",
        ),
        (
            format!("$JS.API.DIRECT.GET.{obj}.>"),
            "read wheel metadata (direct get)",
        ),
        (
            format!("$JS.API.STREAM.PURGE.{obj}"),
            "replace or delete a wheel (purges its chunks)",
        ),
        (
            format!("$JS.API.CONSUMER.CREATE.{obj}"),
            "read wheel chunks (ordered consumer)",
        ),
        (
            format!("$JS.API.CONSUMER.CREATE.{obj}.>"),
            "read wheel chunks (the named-consumer API form)",
        ),
        (format!("$JS.FC.{obj}.>"), "flow control of wheel reads"),
    ]);
    Permissions {
        publish,
        subscribe: vec![(
            "_INBOX.>".into(),
            "replies to its requests and watch deliveries",
        )],
    }
}

/// What a worker needs and no more: look the resources up (it never creates them: a worker
/// started first waits for the gateway), pull from its work consumers and ack, read and write
/// the runs and workers buckets, follow its running run's key (cancel), publish dead letters,
/// read the wheel store (the original's `--wheel-sync`). Not: the API-key bucket, the
/// idempotency bucket, stream creation or deletion, other buckets' watches.
pub fn worker_permissions(n: &Names) -> Permissions {
    let work = &n.work_stream;
    let runs = format!("KV_{}", n.runs_bucket);
    let workers = format!("KV_{}", n.workers_bucket);
    let wheels = format!("OBJ_{}", n.wheels_bucket);
    let mut publish: Vec<Grant> = Vec::new();
    for s in n.all_streams() {
        publish.push((
            format!("$JS.API.STREAM.INFO.{s}"),
            "ensure at start: find every resource (info only, no contents)",
        ));
    }
    publish.extend([
        // A wildcard matches whole tokens only, so these cover every consumer of the work
        // stream (`pyoco_workers_<tag>`): the work queue is the workers' domain anyway.
        (
            format!("$JS.API.CONSUMER.CREATE.{work}.*"),
            "bind/create its durable pull consumer per tag",
        ),
        (
            format!("$JS.API.CONSUMER.CREATE.{work}.*.>"),
            "bind/create its durable pull consumer per tag (filtered form)",
        ),
        (
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{work}.*"),
            "durable consumer create (older API form)",
        ),
        (
            format!("$JS.API.CONSUMER.INFO.{work}.*"),
            "look its consumer up",
        ),
        (format!("$JS.API.CONSUMER.MSG.NEXT.{work}.*"), "pull jobs"),
        (
            format!("$JS.ACK.{work}.>"),
            "ack, nak, in-progress and term of its jobs",
        ),
        (format!("$KV.{}.>", n.runs_bucket), "write run snapshots"),
        (
            format!("$KV.{}.>", n.workers_bucket),
            "write its worker record",
        ),
        (format!("$JS.API.DIRECT.GET.{runs}"), "read a run snapshot"),
        (
            format!("$JS.API.DIRECT.GET.{runs}.>"),
            "read a run snapshot by key",
        ),
        (
            format!("$JS.API.STREAM.MSG.GET.{runs}"),
            "read a run snapshot (without direct get)",
        ),
        (
            format!("$JS.API.DIRECT.GET.{workers}"),
            "read its worker record (compare-and-set)",
        ),
        (
            format!("$JS.API.DIRECT.GET.{workers}.>"),
            "read its worker record by key",
        ),
        (
            format!("$JS.API.STREAM.MSG.GET.{workers}"),
            "read its worker record (without direct get)",
        ),
        (
            format!("{}.>", n.dlq_subject_prefix),
            "publish dead letters",
        ),
        (
            format!("$JS.API.DIRECT.GET.{wheels}"),
            "read wheel metadata",
        ),
        (
            format!("$JS.API.DIRECT.GET.{wheels}.>"),
            "read wheel metadata by name",
        ),
        (
            format!("$JS.API.STREAM.MSG.GET.{wheels}"),
            "read wheel metadata (without direct get)",
        ),
        (
            format!("$JS.API.CONSUMER.CREATE.{wheels}"),
            "read wheel chunks (ordered consumer)",
        ),
        (
            format!("$JS.API.CONSUMER.CREATE.{wheels}.>"),
            "read wheel chunks (ordered consumer, 2.9+ form)",
        ),
        (format!("$JS.FC.{wheels}.>"), "flow control of wheel reads"),
    ]);
    Permissions {
        publish,
        subscribe: vec![
            (
                "_INBOX.>".into(),
                "replies to its requests and watch deliveries",
            ),
            (
                format!("$KV.{}.>", n.runs_bucket),
                "cancel requests: a subscription to the running run's key",
            ),
            (
                format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{work}.*"),
                "jobs that ran out of deliveries end FAILED and in the DLQ",
            ),
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// The configuration text

/// Quotes a value for the nats-server configuration format.
pub fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a route URL's userinfo).
fn userinfo_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `nats://host:port` → `nats://pyoco-route:<password>@host:port` (a URL that already carries
/// credentials is kept).
pub fn route_with_credentials(route: &str, password: &str) -> String {
    let Some((scheme, rest)) = route.split_once("://") else {
        return route.to_string();
    };
    if rest.contains('@') {
        return route.to_string();
    }
    format!(
        "{scheme}://{}:{}@{rest}",
        ROUTE.user,
        userinfo_escape(password)
    )
}

fn permissions_block(p: &Permissions, indent: &str) -> Vec<String> {
    let list = |grants: &[Grant]| -> Vec<String> {
        grants
            .iter()
            .map(|(s, why)| format!("{indent}      {}  # {why}", q(s)))
            .collect()
    };
    let mut out = vec![format!("{indent}permissions: {{")];
    out.push(format!("{indent}  publish: {{ allow: ["));
    out.extend(list(&p.publish));
    out.push(format!("{indent}  ] }}"));
    out.push(format!("{indent}  subscribe: {{ allow: ["));
    out.extend(list(&p.subscribe));
    out.push(format!("{indent}  ] }}"));
    out.push(format!("{indent}}}"));
    out
}

/// An extra user: (user, password as written into the config — a quoted value or a `$VAR`).
pub type ExtraUser = (String, String);

/// The `accounts` and `system_account` lines of the secured layout. `app_account`/`sys_account`
/// name the accounts (nats-bootstrap's bootstrap.yaml may rename them); `app_extra` and
/// `sys_extra` are more users (bootstrap.yaml's app user with full access, `--sys-user`).
pub fn accounts_text(
    c: &Credentials,
    n: &Names,
    app_account: &str,
    sys_account: &str,
    app_extra: &[ExtraUser],
    sys_extra: &[ExtraUser],
) -> Vec<String> {
    let mut l = vec![
        "# Accounts: every product client authenticates; there is no anonymous user.".to_string(),
        "accounts: {".to_string(),
        format!("  {app_account}: {{"),
        "    jetstream: enabled".to_string(),
        "    users: [".to_string(),
    ];
    let user = |l: &mut Vec<String>, name: &str, pw: &str, perms: Option<Permissions>| {
        l.push("      {".to_string());
        l.push(format!("        user: {}", q(name)));
        l.push(format!("        password: {pw}"));
        if let Some(p) = perms {
            l.extend(permissions_block(&p, "        "));
        }
        l.push("      }".to_string());
    };
    user(
        &mut l,
        GATEWAY.user,
        &q(&c.gateway),
        Some(gateway_permissions(n)),
    );
    user(
        &mut l,
        WORKER.user,
        &q(&c.worker),
        Some(worker_permissions(n)),
    );
    // The admin (pyococtl key/dlq/backup/restore) may do everything inside the account.
    user(&mut l, ADMIN.user, &q(&c.admin), None);
    for (u, pw) in app_extra {
        user(&mut l, u, pw, None);
    }
    l.push("    ]".to_string());
    l.push("  }".to_string());
    l.push(format!("  {sys_account}: {{"));
    l.push("    users: [".to_string());
    user(&mut l, SYSTEM.user, &q(&c.system), None);
    for (u, pw) in sys_extra {
        user(&mut l, u, pw, None);
    }
    l.push("    ]".to_string());
    l.push("  }".to_string());
    l.push("}".to_string());
    l.push(format!("system_account: {sys_account}"));
    l
}

/// Writes `text` to `path` with mode 0600 (it holds passwords), replacing the file atomically.
pub fn write_private(path: &Path, text: &str) -> Result<(), CtlError> {
    let tmp = path.with_extension("conf.tmp");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::from_config(&pyoco_core::config::Config::defaults())
    }

    #[test]
    fn files_are_created_private_and_never_overwritten() {
        let base = std::env::temp_dir().join(format!("pyococtl-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("auth");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("keep"), "x").unwrap();
        let created = ensure_files(&dir).unwrap();
        assert_eq!(created.len(), 5);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for r in ROLES {
            let p = dir.join(r.file);
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            let pw = read_password(&p).unwrap();
            assert!(
                pw.len() >= 32
                    && pw
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{pw}"
            );
        }
        std::fs::write(dir.join(ADMIN.file), "operator-chosen-password\n").unwrap();
        std::fs::remove_file(dir.join(WORKER.file)).unwrap();
        let created = ensure_files(&dir).unwrap();
        assert_eq!(created, vec![dir.join(WORKER.file)]);
        let (c, created) = load_or_create(&dir).unwrap();
        assert!(created.is_empty());
        assert_eq!(c.admin, "operator-chosen-password");
        assert!(!format!("{c:?}").contains("operator-chosen"));
        std::fs::write(dir.join(ADMIN.file), "short\n").unwrap();
        let e = load_or_create(&dir).unwrap_err();
        assert!(
            e.message.contains("admin.password") && e.message.contains("fewer than 16"),
            "{}",
            e.message
        );
        std::fs::write(dir.join(ADMIN.file), "$2a$11$abcdefghijklmnopqrstuv\n").unwrap();
        assert!(load_or_create(&dir).unwrap_err().message.contains("bcrypt"));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn route_urls_carry_the_route_user() {
        assert_eq!(
            route_with_credentials("nats://10.0.0.1:6222", "a/b:c"),
            "nats://pyoco-route:a%2Fb%3Ac@10.0.0.1:6222"
        );
        assert_eq!(
            route_with_credentials("nats://u:p@h:1", "x"),
            "nats://u:p@h:1"
        );
    }

    #[test]
    fn the_worker_may_not_touch_the_auth_or_idempotency_buckets() {
        let n = names();
        let p = worker_permissions(&n);
        for (s, _) in &p.publish {
            let forbidden = s.contains("pyoco_auth") && !s.starts_with("$JS.API.STREAM.INFO.")
                || s.contains("pyoco_idempotency") && !s.starts_with("$JS.API.STREAM.INFO.")
                || s.contains("STREAM.CREATE")
                || s.contains("STREAM.DELETE")
                || s == ">";
            assert!(!forbidden, "worker may publish {s}");
        }
        assert!(p.publish.iter().any(|(s, _)| s == "$KV.pyoco_runs.>"));
        let g = gateway_permissions(&n);
        assert!(g.publish.iter().any(|(s, _)| s == "$KV.pyoco_auth.>"));
        assert!(g.publish.iter().all(|(s, _)| !s.contains("STREAM.DELETE")));
        // Every wildcard is a whole token (nats-server ignores `abc*`).
        for (s, _) in g.publish.iter().chain(&p.publish).chain(&p.subscribe) {
            assert!(
                s.split('.')
                    .all(|t| t == "*" || t == ">" || !t.contains(['*', '>'])),
                "{s}"
            );
        }
    }
}
