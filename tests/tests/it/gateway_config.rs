//! `pyoco-server config` and the precedence flag > environment > .env > TOML file > default.

use pyoco_tests::*;

fn row<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no row {key} in:\n{out}"))
}

#[tokio::test]
async fn precedence_and_sources_are_reported() {
    let dir = TestDir::new("config");
    let toml = dir.write("pyoco.toml", "nats_url = \"nats://file:4222\"\ndefault_tag = \"from-file\"\nconsumer_ack_wait_sec = 45\nhttp_port = 8100\n");
    let dotenv = dir.write(
        "custom.env",
        "PYOCO_DEFAULT_TAG=from-dotenv\nPYOCO_RUNS_KV_BUCKET=\"runs_dotenv\"\n",
    );
    let out = run_workspace_bin(
        "pyoco-server",
        &[
            "config",
            "--config",
            toml.to_str().unwrap(),
            "--port",
            "9001",
        ],
        &[
            ("PYOCO_LOAD_DOTENV", "1"),
            ("PYOCO_ENV_FILE", dotenv.to_str().unwrap()),
            ("PYOCO_RUNS_KV_BUCKET", "runs_env"),
            ("PYOCO_HTTP_PORT", "9000"),
        ],
    )
    .await;
    out.assert_success();
    let text = out.stdout_text();
    assert!(
        row(&text, "nats_url").contains("nats://file:4222")
            && row(&text, "nats_url").contains("file "),
        "{text}"
    );
    assert!(
        row(&text, "default_tag").contains("from-dotenv")
            && row(&text, "default_tag").contains(".env "),
        "{text}"
    );
    assert!(
        row(&text, "runs_kv_bucket").contains("runs_env")
            && row(&text, "runs_kv_bucket").contains(" env"),
        "{text}"
    );
    assert!(
        row(&text, "http_port").contains("9001") && row(&text, "http_port").contains("flag"),
        "{text}"
    );
    assert!(row(&text, "consumer_ack_wait_sec").contains("45"), "{text}");
    assert!(
        row(&text, "workflow_yaml_max_bytes").contains("262144")
            && row(&text, "workflow_yaml_max_bytes").contains("default"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_toml_key_is_an_error_naming_it() {
    let dir = TestDir::new("config-bad");
    let toml = dir.write("pyoco.toml", "nats_ulr = \"nats://x:4222\"\n");
    let out = run_workspace_bin(
        "pyoco-server",
        &["config", "--config", toml.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(2));
    let err = out.stderr_text();
    assert!(
        err.contains("nats_ulr") && err.contains("nats_url"),
        "names the key and suggests the fix: {err}"
    );
}

#[tokio::test]
async fn bad_environment_values_fall_back_with_a_warning() {
    let out = run_workspace_bin(
        "pyoco-server",
        &["config"],
        &[("PYOCO_CONSUMER_MAX_DELIVER", "lots")],
    )
    .await;
    out.assert_success();
    let text = out.stdout_text();
    assert!(row(&text, "consumer_max_deliver").contains("20"), "{text}");
    assert!(
        text.contains("warning:")
            && text.contains("PYOCO_CONSUMER_MAX_DELIVER")
            && text.contains("lots"),
        "{text}"
    );
}

#[tokio::test]
async fn missing_config_file_is_an_error() {
    let out = run_workspace_bin(
        "pyoco-server",
        &["--config", "/nonexistent/pyoco.toml"],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr_text().contains("/nonexistent/pyoco.toml"),
        "{}",
        out.stderr_text()
    );
}
