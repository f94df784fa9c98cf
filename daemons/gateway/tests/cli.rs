//! The thin binary: configuration problems exit 2 before anything starts, naming the setting.

use std::process::Command;

fn pyoco_server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pyoco-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PYOCO_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PYOCO_LOAD_DOTENV", "0");
    cmd
}

#[test]
fn a_duration_setting_out_of_range_exits_2_naming_it() {
    let out = pyoco_server()
        .env("PYOCO_READY_TIMEOUT_SEC", "1e30")
        .args(["--port", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("[pyoco-server][ERR-PYOCO-0018] setting `ready_timeout_sec` (PYOCO_READY_TIMEOUT_SEC) = 1e30: too large"),
        "{err}"
    );
}

#[test]
fn config_prints_the_typed_source_table_and_exits_0() {
    let out = pyoco_server()
        .env("PYOCO_READY_TIMEOUT_SEC", "7")
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("ready_timeout_sec "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("7.0"), "{row}");
    assert!(row.contains("(PYOCO_READY_TIMEOUT_SEC)"), "{row}");
}
