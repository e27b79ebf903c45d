//! ringcast: a Pusher-Channels-compatible real-time broker built as one pinned io_uring event
//! loop per core. This file only lists the modules, in reading order; it holds no logic.
//!
//! Reading order: `limits` (every bound), `config` (TOML in, validated config out), `ws` and
//! `http` (sans-IO wire codecs), `protocol` (Pusher events, sans-IO), `mesh` (the only way cores
//! talk), `shard` (the per-core state machine: connections, channels, REST; sans-IO), `runtime`
//! (the io_uring driver that feeds the shard; all socket IO and its `unsafe` live there),
//! `wal` (the write-ahead log: record codec and segment scanning sans-IO, segment files behind
//! a `Storage` seam, the per-stream writer and recovery), `webhook` (the delivery worker and
//! its outbox, durable on the WAL), `replication` (the hot standby's wire protocol and
//! handshake decisions, sans-IO), `replica` (the hot standby at run time: role, epoch, the
//! link's threads, promotion), `failover` (automatic failover's lease, witness and node state
//! machines, their wire format and the deterministic simulation, sans-IO), `witness` (the `ringcast witness` process driving
//! `failover::Witness`), `service` (process start-up, signals, logging), `admin`
//! (the operator's admin endpoint and its CLI client, off every core).

pub mod admin;
pub mod bench;
pub mod config;
pub mod control;
pub mod failover;
pub mod http;
pub mod limits;
pub mod mesh;
pub mod metrics;
pub mod protocol;
pub mod replica;
pub mod replication;
pub mod runtime;
pub mod service;
pub mod shard;
pub mod tls;
pub mod wal;
pub mod webhook;
pub mod witness;
pub mod ws;
