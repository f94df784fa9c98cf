//! `pyococtl dlq …` (stub: being written).
use clap::Subcommand;
use crate::client::CtlResult;
use crate::Ctx;

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCmd {
    /// (in progress)
    List,
}

pub async fn dispatch(_ctx: &Ctx, _cmd: &DlqCmd) -> CtlResult<u8> {
    Err(crate::client::CtlError::new(crate::exit::ERROR, "not implemented yet"))
}
