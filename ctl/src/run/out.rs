//! Writing to stdout (a closed pipe ends the process quietly: main.rs restores SIGPIPE).

use std::io::Write;

use crate::client::{CtlError, CtlResult};
use crate::exit;

/// Writes `text` as is and flushes.
pub fn write(text: &str) -> CtlResult<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| {
            CtlError::new(
                exit::ERROR,
                format!("pyococtl: cannot write to stdout: {e}"),
            )
        })
}

/// Writes one line.
pub fn line(text: &str) -> CtlResult<()> {
    write(&format!("{text}\n"))
}

/// True when stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// The terminal's (columns, rows), if stdout is one.
pub fn terminal_size() -> Option<(usize, usize)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` into the pointer we pass, nothing else.
    let rc = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}
