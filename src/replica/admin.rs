//! The admin endpoint's view of replication (`crate::admin::AdminBackend`): `GET /replication`
//! shows the link's state, `POST /replication/promote` promotes this standby,
//! `POST /replication/switchover` hands this primary's epoch to its standby. Without
//! `[replication]` the node says so and refuses promotion. It only forwards to `promote`.

use std::sync::Arc;

use serde_json::{Value, json};

use super::link::Link;
use crate::admin::{AdminBackend, AdminError};

/// The backend for `admin::start`.
#[derive(Debug)]
pub struct ReplicationAdmin {
    pub link: Option<Arc<Link>>,
}

impl AdminBackend for ReplicationAdmin {
    fn replication(&self) -> Value {
        match &self.link {
            Some(link) => super::promote::status(link),
            None => json!({
                "role": "primary",
                "replication": "off",
                "peer_connected": false,
                "in_sync": false,
            }),
        }
    }

    fn promote(&self, force: bool) -> Result<Value, AdminError> {
        let Some(link) = &self.link else {
            return Err(AdminError::new(
                409,
                "replication is not configured on this node",
            ));
        };
        super::promote::promote(link, force)
            .map_err(|refused| AdminError::new(refused.status, refused.message))
    }

    fn switchover(&self) -> Result<Value, AdminError> {
        let Some(link) = &self.link else {
            return Err(AdminError::new(
                409,
                "replication is not configured on this node: no standby to hand over to",
            ));
        };
        super::switchover::switchover(link)
            .map_err(|refused| AdminError::new(refused.status, refused.message))
    }
}
