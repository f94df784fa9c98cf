//! `pyococtl key …` (stub: being written).
use clap::Subcommand;
use crate::client::CtlResult;
use crate::Ctx;

#[derive(Debug, Clone, Subcommand)]
pub enum KeyCmd {
    /// (in progress)
    List,
}

pub async fn dispatch(_ctx: &Ctx, _cmd: &KeyCmd) -> CtlResult<u8> {
    Err(crate::client::CtlError::new(crate::exit::ERROR, "not implemented yet"))
}
