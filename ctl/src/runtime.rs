//! `pyococtl runtime setup`: the workers' Python environment (stub: being written).

use clap::Subcommand;

use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx};

#[derive(Debug, Clone, Subcommand)]
pub enum RuntimeCmd {
    /// (in progress)
    Setup,
}

pub async fn dispatch(_ctx: &Ctx, _cmd: &RuntimeCmd) -> CtlResult<u8> {
    Err(CtlError::new(exit::ERROR, "not implemented yet"))
}
