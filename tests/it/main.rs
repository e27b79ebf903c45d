//! The black-box integration suite: each module starts the real `ringcast` binary on
//! 127.0.0.1:0 and talks to it with real clients (tungstenite, raw TCP, signed REST calls).

/// The admin endpoint with a fake backend, and `ringcast status|promote` against it.
mod admin;
/// `ringcast bench` against the real broker: exact delivery counts, consistent counters.
mod bench;
/// Private, presence, encrypted and cache channels, client events, signin, users, multi-app.
mod channels;
/// The command line and config handling of the binary.
mod cli;
/// The real-client suite (pusher-js and the `pusher` npm library) run against the binary.
mod compat;
/// The crash harness: SIGKILL at seeded points under load; nothing acknowledged is lost.
mod crash;
/// Durability with a WAL: restarts, fsync levels, resume across a restart, a full disk, an
/// fsync error.
mod durability;
/// Automatic failover with a witness: the drills (kill -9, SIGSTOP, the witness down).
mod failover;
/// The hot-standby failover end to end: HAProxy by `/readyz`, pusher-js with the resume plugin,
/// the `pusher` REST library, kill -9 of the primary, `ringcast promote`.
mod haproxy;
/// Channel history: the REST history API, sequence numbers on the wire, resume after reconnect.
mod history;
/// Many connections over both cores, one publisher: nothing lost, nothing reordered.
mod load;
/// Operations: systemd notify, health, metrics, drain, reload, admission, slow readers.
mod operations;
/// The drills that need a network (root: namespaces and nftables): a cut replication link, an
/// isolated primary, packet loss.
mod partition;
/// The hot standby: following, ack modes, failover (seeded), standby loss, rejoin, secrets.
mod replication;
/// HTTP handling and the REST API: routing, signatures, publish, channel info, bad requests.
mod rest;
/// Smoke tests of the harness itself.
mod smoke;
/// Failover drill 7, the reconnect storm: a fleet of `ringcast bench storm --hold-secs`
/// clients moves to the promoted standby under publish load; health, publish latency, shedding.
mod storm;
/// Start the binary, clients, signed REST calls.
mod support;
/// Drill 8: planned switchover under load, without and with a witness.
mod switchover;
/// Source hygiene: module docs, `unsafe` placement and SAFETY notes, function length, leftovers.
mod tidy;
/// Native TLS: wss and https, certificate reload, handshake limits, bad certificates at start.
mod tls;
/// `ringcast wal inspect|verify|dump` on logs written with the library: exit codes, reports,
/// read-only.
mod wal;
/// Webhooks: signed delivery from both cores, retries and de-duplication, a down receiver, the
/// removal delay, filters and reload, the durable outbox across kill -9, and the `pusher` npm
/// library's verification.
mod webhooks;
/// WebSocket framing and the Pusher connection protocol: transcripts, close codes, bad frames.
mod websocket;
