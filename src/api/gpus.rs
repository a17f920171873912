//! `POST /api/v1/gpus/{index}/health/reset`: an operator clears a GPU's Xid history (after a
//! GPU reset or a reboot fixed it). Only the history: live counters (ECC, remapped rows, PCIe,
//! throttling) stay what NVML says at the next sample.

use crate::api::error::ApiError;
use crate::api::{ApiContext, Reply};
use crate::state::NvmlState;
use crate::telemetry::gpu_health::{self, gpu_key};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct ResetDocument {
    id: u32,
    uuid: Option<String>,
    /// How many Xid errors were forgotten.
    cleared_xid_errors: usize,
    /// The GPU's health without its Xid history, as of the last sample (published with the
    /// next sample).
    health: &'static str,
    health_reasons: Vec<String>,
}

pub fn reset_health(context: &ApiContext, index: &str) -> Result<Reply, ApiError> {
    let index: u32 = Some(index)
        .filter(|i| !i.is_empty() && i.len() <= 9 && i.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("GPU index {index:?} is not a number (e.g. 0)"))
        })?;
    let history = context.xid_history.as_ref().ok_or_else(|| {
        ApiError::unavailable("gpu_unavailable", "the GPU health history is not kept")
    })?;
    let report = context.snapshot.gpus();
    if report.state != NvmlState::Ok {
        return Err(ApiError::unavailable(
            "gpu_unavailable",
            format!(
                "GPUs cannot be looked up: {}",
                report.error().unwrap_or_default()
            ),
        ));
    }
    let Some(gpu) = report.gpus.iter().find(|g| g.index == index) else {
        let known: Vec<String> = report.gpus.iter().map(|g| g.index.to_string()).collect();
        return Err(ApiError::not_found(format!(
            "GPU {index} does not exist on this node (GPUs: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    let key = gpu_key(index, gpu.uuid.as_deref());
    let cleared = history.reset(&key);
    log::info!(
        "GPU {index} ({key}): Xid history cleared through the API ({cleared} Xid error(s) \
         forgotten)"
    );
    let mut after = gpu.clone();
    gpu_health::assess(&mut after, &[]);
    Reply::ok(ResetDocument {
        id: index,
        uuid: gpu.uuid.clone(),
        cleared_xid_errors: cleared,
        health: after.health.as_str(),
        health_reasons: after.health_reasons,
    })
}
