//! The app table every core reads: lookups by key (WebSocket path) and by id (REST path), plus
//! one atomic connection counter per app so per-app connection limits hold across cores. It is
//! built once from the validated config and never changes afterwards; the counters are the only
//! mutable part and are touched only at connect and disconnect, never per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{AppConfig, Config};

#[derive(Debug)]
pub struct Apps {
    apps: Vec<AppConfig>,
    by_key: HashMap<String, u32>,
    by_id: HashMap<String, u32>,
    connections: Vec<AtomicU64>,
}

impl Apps {
    pub fn new(config: &Config) -> Apps {
        let apps = config.apps.clone();
        let by_key = apps
            .iter()
            .enumerate()
            .map(|(i, app)| (app.key.clone(), i as u32))
            .collect();
        let by_id = apps
            .iter()
            .enumerate()
            .map(|(i, app)| (app.id.clone(), i as u32))
            .collect();
        let connections = apps.iter().map(|_| AtomicU64::new(0)).collect();
        Apps {
            apps,
            by_key,
            by_id,
            connections,
        }
    }

    pub fn get(&self, index: u32) -> &AppConfig {
        &self.apps[index as usize]
    }

    pub fn by_key(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn by_id(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Counts a new connection for `app`; false (and nothing counted) when the app is at its limit.
    pub fn try_connect(&self, app: u32) -> bool {
        let limit = self.get(app).max_connections;
        let counter = &self.connections[app as usize];
        if limit == 0 {
            counter.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn disconnect(&self, app: u32) {
        let previous = self.connections[app as usize].fetch_sub(1, Ordering::Relaxed);
        assert!(previous > 0, "app connection counter underflow");
    }

    pub fn connections(&self, app: u32) -> u64 {
        self.connections[app as usize].load(Ordering::Relaxed)
    }
}
