//! Exit codes of pyococtl, shown in `--help` and docs/cli.md. Scripts rely on them.

pub const OK: u8 = 0;
/// A request failed: HTTP error status, gateway or NATS unreachable, bad server answer.
pub const ERROR: u8 = 1;
/// Bad command line or input file (also `key revoke` of an unknown key, as pyoco-server-admin).
pub const USAGE: u8 = 2;
/// `--until-terminal` / `--watch` / `cancel --wait`: the run ended FAILED.
pub const RUN_FAILED: u8 = 3;
/// `--until-terminal` / `--watch`: the run ended CANCELLED.
pub const RUN_CANCELLED: u8 = 4;
/// A `--timeout-sec` ran out before the run ended.
pub const TIMEOUT: u8 = 5;
/// Interrupted by Ctrl-C.
pub const INTERRUPTED: u8 = 130;

pub const HELP: &str = "Exit codes:
  0    success (--until-terminal / submit --watch: the run COMPLETED; cancel --wait: CANCELLED or already COMPLETED)
  1    request failed (HTTP error status, gateway or NATS unreachable)
  2    usage error (bad flag, bad input file; key revoke of an unknown key)
  3    the run ended FAILED (--until-terminal, --watch, cancel --wait)
  4    the run ended CANCELLED (--until-terminal, --watch)
  5    --timeout-sec ran out before the run ended
  130  interrupted (Ctrl-C)";

/// Exit code for a terminal run status.
pub fn for_status(status: &str) -> u8 {
    match status {
        "COMPLETED" => OK,
        "FAILED" => RUN_FAILED,
        "CANCELLED" => RUN_CANCELLED,
        _ => ERROR,
    }
}
