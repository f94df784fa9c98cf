//! NATS day-2 operations (`up join leave down status doctor service controller backup restore`),
//! taking over nats-bootstrap's job natively (stub: being written).

use clap::{Args, Subcommand};

use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {}
#[derive(Debug, Clone, Args)]
pub struct DownArgs {}
#[derive(Debug, Clone, Args)]
pub struct LeaveArgs {}
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {}
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {}
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {}
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {}
#[derive(Debug, Clone, Subcommand)]
pub enum ServiceCmd {
    /// (in progress)
    Status,
}
#[derive(Debug, Clone, Subcommand)]
pub enum ControllerCmd {
    /// (in progress)
    Start,
}

/// Which operation to run.
pub enum Op<'a> {
    Up(&'a UpArgs, bool),
    Down(&'a DownArgs),
    Leave(&'a LeaveArgs),
    Status(&'a StatusArgs),
    Doctor(&'a DoctorArgs),
    Service(&'a ServiceCmd),
    Controller(&'a ControllerCmd),
    Backup(&'a BackupArgs),
    Restore(&'a RestoreArgs),
}

pub async fn dispatch(_ctx: &Ctx, _op: Op<'_>) -> CtlResult<u8> {
    Err(CtlError::new(exit::ERROR, "not implemented yet"))
}
