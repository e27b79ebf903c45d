//! The app table every core reads: lookups by key (WebSocket path) and by id (REST path), plus
//! atomic connection counters (per app and in total) so connection limits hold across cores.
//! A table never changes once built; a reload (SIGHUP) builds a new one that keeps every known
//! app at the same index and shares the same counters, so connections admitted under the old
//! table are released correctly under the new one. The counters are touched only at connect
//! and disconnect, never per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{AppConfig, Config};
use crate::limits;

#[derive(Debug)]
pub struct Apps {
    /// Index = the app's number for the life of the process. Apps removed by a reload keep
    /// their slot, disabled and out of the lookup maps.
    apps: Vec<AppConfig>,
    by_key: HashMap<String, u32>,
    by_id: HashMap<String, u32>,
    /// Connections per app index (sized for `APPS_MAX` so reloads never reallocate).
    connections: Arc<[AtomicU64]>,
    total: Arc<AtomicU64>,
    /// Connections across all apps; 0 = unlimited.
    total_max: u64,
}

/// Why a connection was not counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The process is at `server.max_connections` (4100).
    OverCapacity,
    /// The app is at its `max_connections` (4004).
    AppQuota,
}

impl Apps {
    pub fn new(config: &Config) -> Apps {
        let connections: Arc<[AtomicU64]> =
            (0..limits::APPS_MAX).map(|_| AtomicU64::new(0)).collect();
        Apps::build(
            config.apps.clone(),
            connections,
            Arc::new(AtomicU64::new(0)),
            config.server.max_connections,
        )
    }

    fn build(
        apps: Vec<AppConfig>,
        connections: Arc<[AtomicU64]>,
        total: Arc<AtomicU64>,
        total_max: u64,
    ) -> Apps {
        assert!(apps.len() <= limits::APPS_MAX);
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (index, app) in apps.iter().enumerate() {
            if app.id.is_empty() {
                continue; // A slot kept for an app removed by a reload.
            }
            by_key.insert(app.key.clone(), index as u32);
            by_id.insert(app.id.clone(), index as u32);
        }
        Apps {
            apps,
            by_key,
            by_id,
            connections,
            total,
            total_max,
        }
    }

    /// The table for a reloaded config: known ids keep their index, new ids are appended,
    /// removed ids keep a disabled, unreachable slot. Fails when the slots would exceed
    /// `APPS_MAX`.
    pub fn reloaded(&self, config: &Config) -> Result<Apps, String> {
        let mut apps: Vec<AppConfig> = self
            .apps
            .iter()
            .map(|old| {
                let mut gone = old.clone();
                gone.id = String::new();
                gone.key = String::new();
                gone.enabled = false;
                gone
            })
            .collect();
        for app in &config.apps {
            match self.by_id.get(&app.id) {
                Some(&index) => apps[index as usize] = app.clone(),
                None => apps.push(app.clone()),
            }
        }
        if apps.len() > limits::APPS_MAX {
            return Err(format!(
                "more than {} apps over the life of the process",
                limits::APPS_MAX
            ));
        }
        Ok(Apps::build(
            apps,
            Arc::clone(&self.connections),
            Arc::clone(&self.total),
            config.server.max_connections,
        ))
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

    /// Counts a new connection for `app`, or says which limit refuses it (nothing counted).
    pub fn try_connect(&self, app: u32) -> Result<(), ConnectRefusal> {
        let bounded_add = |counter: &AtomicU64, limit: u64| {
            counter
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (limit == 0 || n < limit).then_some(n + 1)
                })
                .is_ok()
        };
        if !bounded_add(&self.total, self.total_max) {
            return Err(ConnectRefusal::OverCapacity);
        }
        if !bounded_add(
            &self.connections[app as usize],
            self.get(app).max_connections,
        ) {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(ConnectRefusal::AppQuota);
        }
        Ok(())
    }

    pub fn disconnect(&self, app: u32) {
        let previous = self.connections[app as usize].fetch_sub(1, Ordering::Relaxed);
        assert!(previous > 0, "app connection counter underflow");
        let previous = self.total.fetch_sub(1, Ordering::Relaxed);
        assert!(previous > 0, "total connection counter underflow");
    }

    pub fn connections(&self, app: u32) -> u64 {
        self.connections[app as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text).unwrap().config
    }

    #[test]
    fn reload_keeps_indices_and_counters() {
        let first = config(
            "version = 1\n[[apps]]\nid = \"a\"\nkey = \"ka\"\nsecret = \"s\"\n[[apps]]\nid = \"b\"\nkey = \"kb\"\nsecret = \"s\"\n",
        );
        let apps = Apps::new(&first);
        let b = apps.by_id("b").unwrap();
        apps.try_connect(b).unwrap();
        let second = config(
            "version = 1\n[[apps]]\nid = \"c\"\nkey = \"kc\"\nsecret = \"s\"\n[[apps]]\nid = \"b\"\nkey = \"kb2\"\nsecret = \"s\"\nmax_connections = 1\n",
        );
        let reloaded = apps.reloaded(&second).unwrap();
        assert_eq!(reloaded.by_id("b"), Some(b), "known ids keep their index");
        assert_eq!(reloaded.by_key("kb2"), Some(b));
        assert_eq!(reloaded.by_id("a"), None, "removed apps are unreachable");
        assert_eq!(reloaded.by_id("c"), Some(2), "new apps are appended");
        assert_eq!(
            reloaded.try_connect(b),
            Err(ConnectRefusal::AppQuota),
            "counter carried over"
        );
        reloaded.disconnect(b);
        assert_eq!(reloaded.connections(b), 0);
    }

    #[test]
    fn total_limit_refuses_over_capacity() {
        let limited = config(
            "version = 1\n[server]\nmax_connections = 1\n[[apps]]\nid = \"a\"\nkey = \"ka\"\nsecret = \"s\"\n",
        );
        let apps = Apps::new(&limited);
        apps.try_connect(0).unwrap();
        assert_eq!(apps.try_connect(0), Err(ConnectRefusal::OverCapacity));
        apps.disconnect(0);
        apps.try_connect(0).unwrap();
    }
}
