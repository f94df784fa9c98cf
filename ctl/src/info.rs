//! `pyococtl metrics` and `pyococtl health` (stub: being written).
use crate::client::CtlResult;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {}

pub async fn metrics(_ctx: &Ctx, _args: &MetricsArgs) -> CtlResult<u8> {
    Err(crate::client::CtlError::new(crate::exit::ERROR, "not implemented yet"))
}

pub async fn health(_ctx: &Ctx) -> CtlResult<u8> {
    Err(crate::client::CtlError::new(crate::exit::ERROR, "not implemented yet"))
}
