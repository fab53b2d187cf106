//! jobledger handler cores (api, dispatch, launch, project, notify, sweep), the ports they use and their adapters.
//!
//! Cores never import Lambda types: the same functions run under `jobledger dev` and in the Lambda binaries.

pub mod api;
#[cfg(feature = "aws")]
pub mod aws;
pub mod batch;
pub mod dispatch;
pub mod launch;
pub mod local;
pub mod notify;
pub mod ports;
pub mod project;
pub mod sweep;
