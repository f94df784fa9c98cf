//! `pyococtl key create|list|revoke`: API keys in the NATS auth bucket, exactly as
//! `pyoco-server-admin api-key …` manages them (same records, same one-line JSON output, same
//! exit codes), so keys made by either tool work with both gateways.
//!
//! Differences from the original, on purpose: `list` on an empty bucket prints `[]` (the
//! original crashes); an invalid `--tenant` is a usage error (exit 2; the original crashes
//! with exit 1); `revoke` writes with compare-and-set and keeps fields it does not know.

use async_nats::jetstream::kv;
use clap::Subcommand;
use futures::StreamExt;
use pyoco_core::apikey::{self, ApiKeyRecord};
use pyoco_core::json::to_ascii_vec;
use pyoco_core::kv::{Decision, ModifyError};
use serde_json::{json, Value};

use crate::client::{connect_nats, nats_error, CtlError, CtlResult};
use crate::output::{local_time, print_json, render_table, LastColumn};
use crate::{exit, Ctx, OutputFormat};

#[derive(Debug, Clone, Subcommand)]
pub enum KeyCmd {
    /// Create an API key for a tenant. The key is printed once, here, and never stored.
    #[command(
        after_help = "Output: {\"key_id\": …, \"tenant_id\": …, \"api_key\": \"pyoco_<key_id>.<secret>\", \"created_at\": <unix s>}\n\
The pepper (PYOCO_AUTH_PEPPER, PYOCO_AUTH_PEPPER_FILE or auth_pepper in the config file) must be the gateway's.\n\n\
Example:\n  PYOCO_AUTH_PEPPER_FILE=/etc/pyoco/pepper pyococtl --nats-url nats://10.0.0.5:4222 key create --tenant acme"
    )]
    Create {
        /// Tenant id: 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'.
        #[arg(long)]
        tenant: String,
        /// Only these task modules (prefixes `a.b`, callables `a.b:f`; comma-separated or
        /// repeated) may be named by flow.yaml files submitted with this key — on top of the
        /// gateways' and workers' own rules. Enforced by this project's gateways.
        #[arg(long = "callable-allow", value_name = "MODULES", value_delimiter = ',')]
        callable_allow: Vec<String>,
    },
    /// List API keys (no secrets), newest first. JSON; `--output table` for a table.
    List,
    /// Revoke an API key; the gateway refuses it from then on (within a second).
    #[command(
        after_help = "Output: {\"key_id\": …, \"revoked_at\": <unix s>}; an unknown key prints {\"error\": \"not_found\", \"key_id\": …} and exits 2."
    )]
    Revoke {
        /// The key id (the part between `pyoco_` and the `.` of the key; `key list` shows them).
        #[arg(long = "key-id")]
        key_id: String,
    },
}

pub async fn dispatch(ctx: &Ctx, cmd: &KeyCmd) -> CtlResult<u8> {
    match cmd {
        KeyCmd::Create {
            tenant,
            callable_allow,
        } => create(ctx, tenant, callable_allow).await,
        KeyCmd::List => list(ctx).await,
        KeyCmd::Revoke { key_id } => revoke(ctx, key_id).await,
    }
}

/// Connects, makes sure the resources exist (as the original admin does) and binds the auth bucket.
async fn auth_bucket(ctx: &Ctx) -> CtlResult<kv::Store> {
    let url = ctx.nats_url();
    let client = connect_nats(&url, &ctx.nats_auth()?).await?;
    let js = async_nats::jetstream::new(client);
    // Drift (e.g. an original-created workers bucket with its 15 s TTL) is the daemons' to report.
    let (res, _drift) = pyoco_core::resources::ensure(&js, &ctx.config)
        .await
        .map_err(|e| nats_error(&url, "cannot prepare the JetStream resources", &e))?;
    Ok(res.auth)
}

async fn create(ctx: &Ctx, tenant: &str, callable_allow: &[String]) -> CtlResult<u8> {
    // Validate (and pay for PBKDF2) before touching NATS.
    let entries: Vec<String> = callable_allow
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if !entries.is_empty() {
        let parsed =
            pyoco_core::callables::CallableAllow::parse(&entries.join(",")).map_err(|e| {
                CtlError::usage(
                    e.replace("PYOCO_CALLABLE_ALLOW", "--callable-allow"),
                    "pyococtl key create --tenant acme --callable-allow acme_tasks,shared.reports",
                )
            })?;
        if parsed.anything() {
            return Err(CtlError::usage(
                "--callable-allow *: a key cannot widen what the gateways and workers allow; leave the flag out for no per-key limit",
                "pyococtl key create --tenant acme",
            ));
        }
    }
    let (api_key, mut record) = apikey::generate(tenant, ctx.config.auth_pepper.as_deref())
        .map_err(|e| CtlError::usage(e, "pyococtl key create --tenant acme"))?;
    if !entries.is_empty() {
        record
            .extra
            .insert(apikey::CALLABLE_ALLOW_FIELD.into(), json!(entries));
    }
    let kv = auth_bucket(ctx).await?;
    kv.create(apikey::kv_key(&record.key_id), to_ascii_vec(&record).into())
        .await
        .map_err(|e| {
            nats_error(
                &ctx.nats_url(),
                &format!(
                    "cannot store the new key in KV {}",
                    ctx.config.auth_kv_bucket
                ),
                &e,
            )
        })?;
    let mut out = json!({
        "key_id": record.key_id,
        "tenant_id": record.tenant_id,
        "api_key": api_key,
        "created_at": record.created_at,
    });
    if !entries.is_empty() {
        out[apikey::CALLABLE_ALLOW_FIELD] = json!(entries);
    }
    print_json(&out);
    Ok(exit::OK)
}

async fn list(ctx: &Ctx) -> CtlResult<u8> {
    let table = match ctx.cli.output {
        None | Some(OutputFormat::Json | OutputFormat::Plugins) => false,
        Some(OutputFormat::Table) => true,
        Some(OutputFormat::Status) => {
            return Err(CtlError::usage(
                "--output status is only for `run watch`; `key list` prints json or table",
                "pyococtl --output table key list",
            ))
        }
    };
    let url = ctx.nats_url();
    let kv = auth_bucket(ctx).await?;
    let failed = |e: &dyn std::fmt::Display| {
        nats_error(
            &url,
            &format!("cannot list KV {}", ctx.config.auth_kv_bucket),
            e,
        )
    };
    let mut names = kv.keys().await.map_err(|e| failed(&e))?;
    let mut records: Vec<ApiKeyRecord> = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| failed(&e))?;
        // Like the original: every entry of the bucket that reads as a record; others skipped.
        let Some(raw) = kv.get(&name).await.map_err(|e| failed(&e))? else {
            continue;
        };
        if let Ok(rec) = ApiKeyRecord::from_json_bytes(&raw) {
            records.push(rec);
        }
    }
    // Stable, newest first: Python's sort(reverse=True) keeps equal items in order too.
    records.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
    if table {
        if records.is_empty() {
            println!("(no api keys)");
        } else {
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.key_id.clone(),
                        r.tenant_id.clone(),
                        local_time(Some(r.created_at)),
                        r.revoked_at
                            .map(|t| local_time(Some(t)))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(
                    &["KEY ID", "TENANT", "CREATED", "REVOKED"],
                    &rows,
                    LastColumn::Trimmed
                )
            );
        }
        return Ok(exit::OK);
    }
    let out: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut v = json!({"key_id": r.key_id, "tenant_id": r.tenant_id, "created_at": r.created_at, "revoked_at": r.revoked_at});
            // Ours alone; absent for keys without a list, so the original's output stays.
            if let Some(allow) = r.extra.get(apikey::CALLABLE_ALLOW_FIELD) {
                v[apikey::CALLABLE_ALLOW_FIELD] = allow.clone();
            }
            v
        })
        .collect();
    print_json(&Value::Array(out));
    Ok(exit::OK)
}

async fn revoke(ctx: &Ctx, key_id: &str) -> CtlResult<u8> {
    let not_found = || {
        print_json(&json!({"error": "not_found", "key_id": key_id}));
        eprintln!(
            "no API key with id {key_id:?} in KV {} (pyococtl key list shows the key ids)",
            ctx.config.auth_kv_bucket
        );
        Ok(exit::USAGE)
    };
    let name = apikey::kv_key(key_id);
    if !pyoco_core::wire::is_valid_kv_key(&name) {
        // Could never have been stored under this id.
        return not_found();
    }
    let url = ctx.nats_url();
    let kv = auth_bucket(ctx).await?;
    let failed = |e: &dyn std::fmt::Display| {
        nats_error(
            &url,
            &format!("cannot revoke the key in KV {}", ctx.config.auth_kv_bucket),
            e,
        )
    };
    let not_a_record = |raw: &[u8]| {
        let e = ApiKeyRecord::from_json_bytes(raw)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        CtlError::new(
            exit::ERROR,
            format!("ERR-PYOCO-AUTH: KV {} key {name} is not an API key record ({e}); inspect it with `nats kv get {} {name}`", ctx.config.auth_kv_bucket, ctx.config.auth_kv_bucket),
        )
    };
    let mut now = 0.0;
    let mut bad = false;
    let outcome = pyoco_core::kv::modify_bounded(&kv, &name, 20, |stored| {
        let Some(stored) = stored else {
            return Decision::Keep;
        };
        let Ok(mut rec) = serde_json::from_value::<ApiKeyRecord>(Value::Object(stored.clone()))
        else {
            bad = true;
            return Decision::Keep;
        };
        now = pyoco_core::time::now();
        // Re-revoking overwrites the time, as the original does.
        rec.revoked_at = Some(now);
        let bytes = to_ascii_vec(&rec);
        match serde_json::to_value(&rec) {
            Ok(Value::Object(doc)) => Decision::WriteBytes(doc, bytes),
            _ => Decision::Keep,
        }
    })
    .await;
    match outcome {
        Ok(m) if bad || !m.written => Err(not_a_record(m.previous.as_deref().unwrap_or_default())),
        Ok(_) => {
            print_json(&json!({"key_id": key_id, "revoked_at": now}));
            Ok(exit::OK)
        }
        Err(ModifyError::NotFound) => not_found(),
        Err(ModifyError::Undecodable(raw)) => Err(not_a_record(&raw)),
        Err(ModifyError::Conflict(_)) => Err(failed(
            &"the record kept changing under concurrent writes; try again",
        )),
        Err(e) => Err(failed(&e)),
    }
}
