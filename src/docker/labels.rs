//! The labels the agent sets on every container it creates (besides the managed marker), from
//! which the container table is rebuilt after a restart.

pub const LABEL_CLAIM_ID: &str = "io.utopia.claim_id";
pub const LABEL_GPU_IDS: &str = "io.utopia.gpu_ids";
pub const LABEL_GPU_UUIDS: &str = "io.utopia.gpu_uuids";
pub const LABEL_PORTS: &str = "io.utopia.ports";
