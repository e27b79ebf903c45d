//! Test support: start the real binary with a config, WebSocket clients, signed REST calls.
