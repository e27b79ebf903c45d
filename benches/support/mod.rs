//! What the Shard benches share: a one-core `Shard` on the embedded default config, driven
//! without sockets at a fixed `NOW`. Only set-up lives here; each bench measures its own path.

use std::sync::Arc;

use ringcast::config;
use ringcast::control::Control;
use ringcast::mesh::Mesh;
use ringcast::metrics::Metrics;
use ringcast::shard::{Apps, Now, Shard};

pub const NOW: Now = Now {
    mono_ms: 1,
    mono_us: 1_000,
    unix_secs: 1_700_000_000,
    unix_ms: 1_700_000_000_000,
};

/// A one-core shard on the embedded default config (app `123456`, key `app-key`).
pub fn one_core_shard() -> Shard {
    let config = Arc::new(config::parse(config::EMBEDDED_DEFAULT).unwrap().config);
    let apps = Arc::new(Apps::new(&config));
    let control = Arc::new(Control::new(1));
    let metrics = Arc::new(Metrics::new(
        Arc::clone(&control),
        Arc::new(Mesh::new(1).unwrap()),
    ));
    let webhooks = Arc::new(ringcast::webhook::WebhookQueues::new(1));
    Shard::new(0, 1, config, apps, 7, metrics, webhooks)
}
