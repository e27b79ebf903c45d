//! The deterministic simulation of failover (tests only): two nodes and a witness running the
//! real `NodeFailover` and `Witness` state machines, a model of the replication log, and a
//! seeded scheduler that injects crashes and restarts, disk wipes, pauses (SIGSTOP), partitions
//! of any pair, message loss, delay and reordering, clock drift within the margin, and disk
//! faults (a full disk refuses writes; a failed epoch write crashes the process). It must stay
//! deterministic: every choice comes from the seeded `Rng`, time is virtual, nothing reads a
//! clock or depends on iteration order of a hash map.
//!
//! The replication model: the primary appends a publish to its log (only while it can prove its
//! lease) and acknowledges it once the standby reported holding it (`ack = "replica"`; a quarter
//! of the seeds use `"local"`, acknowledging from its own log, where a failover may lose
//! records and only the lease invariants apply) and while its lease is still provable. It
//! sends `Sync` (heartbeat and up to `SYNC_BATCH` records after the standby's last matched
//! position, with the epoch of the record before them) every tick, FIFO per link like a TCP
//! stream (a crash drops what was in flight); the standby truncates at the first conflicting
//! record and appends, truncates a suffix past the primary's end, and claims the epoch
//! (`caught_up`) only once its log equals the primary's. Witness messages are datagrams
//! (reordered freely). Nodes restart as standbys; a wiped disk restarts at epoch 0.
//!
//! Planned switchovers: now and then the primary freezes (refuses new publishes), waits until
//! the standby matches its whole log (giving up after `SWITCHOVER_ABORT_US`), releases its
//! lease at the witness (`NodeFailover::release`), and once the witness confirms sends
//! `Handover` on the replication stream; the standby then asks for promotion at once
//! (`NodeFailover::handover`). A frozen primary acknowledges only what the standby holds, and
//! after the release nothing.
//!
//! Invariants, checked after every step: no two nodes can prove a lease at the same instant,
//! and no two are the primary of one epoch; each epoch's acknowledgements come from one node,
//! and none from an epoch once a higher epoch has acknowledged; a newly promoted primary's log
//! holds every acknowledged record; a standby's log agrees with its primary's up to where it
//! matched. Each of the first three is shown to catch a deliberately broken rule (`Broken`).
//!
//! `RINGCAST_SIM_SEED=N cargo test --lib failover::sim::simulation_holds -- --nocapture` replays
//! one seed with a trace; `RINGCAST_SIM_SEEDS=N` changes how many seeds run (default 10,000;
//! seeds are 0..N, the same on every run).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{
    LeaseConfig, NodeEffect, NodeFailover, NodeRole, Witness, WitnessEffect, WitnessMessage,
    WitnessRecord,
};

/// Index of the witness among the actors (the nodes are 0 and 1).
const WITNESS: usize = 2;
const NAMES: [&str; 2] = ["node-a", "node-b"];
/// Records per `Sync` at most.
const SYNC_BATCH: usize = 8;
/// Real microseconds between two ticks of a node, and between two chaos decisions.
const TICK_US: u64 = 10_000;
/// Real milliseconds one seed runs.
const DURATION_MS: u64 = 3_000;
/// Real microseconds a frozen primary waits for its standby before it gives the switchover up.
const SWITCHOVER_ABORT_US: u64 = 300_000;
/// Events one seed may process at most (a runaway loop is a failure, not a hang).
const EVENTS_MAX: usize = 40_000;

/// The timings of the simulation: the defaults scaled down five times, so a seed covers many
/// leases.
fn config() -> LeaseConfig {
    LeaseConfig {
        lease_ms: 100,
        renew_ms: 20,
        drift_margin_pct: 10,
        failover_after_ms: 100,
    }
}

/// A rule deliberately broken, to show the invariants catch it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Broken {
    #[default]
    Nothing,
    /// The witness grants promotion without waiting for the lease to expire.
    WitnessSkipsExpiry,
    /// The primary accepts and acknowledges publishes without proving its lease.
    AckWithoutLease,
    /// The primary acknowledges publishes before the standby has them (`ack = "local"`).
    AckBeforeReplica,
    /// The standby claims the primary's epoch before its log caught up.
    EarlyEpochClaim,
}

/// What a run may change from the correct system.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Knobs {
    pub broken: Broken,
    /// Print every event (for replaying one seed).
    pub trace: bool,
}

/// What a run did, to show the simulation exercised something.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub acks: u64,
    pub promotions: u64,
    pub crashes: u64,
    /// Leases released by a planned switchover (the witness confirmed).
    pub releases: u64,
}

/// SplitMix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// One log entry: the epoch it was written in and the publish it carries (0: `EpochStart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    epoch: u64,
    id: u64,
}

#[derive(Debug, Clone)]
enum Msg {
    Witness(WitnessMessage),
    Sync {
        epoch: u64,
        prev_len: usize,
        prev_epoch: u64,
        entries: Vec<Rec>,
        primary_len: usize,
    },
    SyncAck {
        epoch: u64,
        ok: bool,
        len: usize,
    },
    Publish {
        id: u64,
    },
    /// Planned switchover: the frozen primary of `epoch` released its lease; take over.
    Handover {
        epoch: u64,
    },
}

impl Msg {
    /// Replication messages travel on a stream (FIFO); the rest are datagrams.
    fn is_stream(&self) -> bool {
        matches!(
            self,
            Msg::Sync { .. } | Msg::SyncAck { .. } | Msg::Handover { .. }
        )
    }
}

#[derive(Debug)]
enum Event {
    /// `lives`: the sender's and the receiver's incarnations when it was sent (a crash of
    /// either drops what was in flight, like the connection it travelled on).
    Deliver {
        from: usize,
        to: usize,
        lives: [u32; 2],
        msg: Msg,
    },
    Tick(usize),
    Chaos,
    Restart(usize),
}

struct Queued {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Queued) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Queued) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    /// Reversed, so the `BinaryHeap` pops the earliest event (ties in scheduling order).
    fn cmp(&self, other: &Queued) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A monotonic clock running at `rate_ppm` millionths of real time, from an arbitrary offset.
#[derive(Clone, Copy)]
struct Clock {
    offset_us: u64,
    rate_ppm: u64,
}

impl Clock {
    fn ms(&self, real_us: u64) -> u64 {
        (self.offset_us + real_us * self.rate_ppm / 1_000_000) / 1000
    }
}

/// What survives a node's crash (not a wipe).
#[derive(Debug, Clone, Default)]
struct Disk {
    log: Vec<Rec>,
    /// The epoch its log is complete up to (what it may be promoted from).
    epoch: u64,
    /// The highest epoch it has seen (it refuses records of lower ones).
    seen_epoch: u64,
}

struct Node {
    disk: Disk,
    fo: NodeFailover,
    up: bool,
    paused_until: u64,
    disk_full_until: u64,
    /// As the primary: the standby's log matches ours up to here.
    match_len: usize,
    /// As the primary: the next `Sync` starts here.
    probe_len: usize,
    /// As the primary: appended, not yet acknowledged `(lsn, id)`.
    pending: Vec<(usize, u64)>,
    /// As the primary: a planned switchover froze publishes at this real time (0: none).
    frozen_since_us: u64,
    /// The frozen primary released its lease.
    released: bool,
}

struct WitnessActor {
    record: Option<WitnessRecord>,
    machine: Witness,
    up: bool,
    disk_full_until: u64,
}

/// The acknowledgements of one epoch.
struct EpochAcks {
    epoch: u64,
    node: usize,
    first_us: u64,
}

/// The faults of one seed, drawn once so seeds differ in character as well as in detail.
struct Faults {
    /// `ack = "local"` (the primary acknowledges from its own log; a failover may lose what
    /// the standby did not have, so only the lease invariants apply) instead of `"replica"`.
    ack_local: bool,
    loss_per_mille: u64,
    delay_us_max: u64,
    crash_per_mille: u64,
    partition_per_mille: u64,
    publish_per_mille: u64,
    switchover_per_mille: u64,
}

pub(crate) struct World {
    rng: Rng,
    knobs: Knobs,
    faults: Faults,
    now_us: u64,
    seq: u64,
    events: usize,
    queue: BinaryHeap<Queued>,
    clocks: [Clock; 3],
    nodes: [Node; 2],
    witness: WitnessActor,
    /// Links a–b, a–witness, b–witness.
    links_up: [bool; 3],
    /// The last delivery time per directed pair (streams are FIFO).
    stream_clear_us: [[u64; 3]; 3],
    /// Crashes per actor so far.
    lives: [u32; 3],
    next_id: u64,
    acked: Vec<(usize, u64)>,
    epochs: Vec<EpochAcks>,
    stats: Stats,
    violation: Option<String>,
}

fn link(a: usize, b: usize) -> usize {
    match (a.min(b), a.max(b)) {
        (0, 1) => 0,
        (0, 2) => 1,
        _ => 2,
    }
}

fn node_of(name: &str) -> Option<usize> {
    NAMES.iter().position(|n| *n == name)
}

impl World {
    pub(crate) fn new(seed: u64, knobs: Knobs) -> World {
        let mut rng = Rng(seed);
        let faults = Faults {
            ack_local: rng.chance(250),
            loss_per_mille: rng.below(150),
            delay_us_max: rng.range(1_000, 20_000),
            crash_per_mille: rng.below(12),
            partition_per_mille: rng.below(25),
            publish_per_mille: rng.range(100, 800),
            switchover_per_mille: rng.below(30),
        };
        let drift = config().drift_margin_pct * 10_000 * 9 / 10;
        let clock = |rng: &mut Rng| Clock {
            offset_us: rng.below(1 << 40),
            rate_ppm: 1_000_000 - drift + rng.below(2 * drift + 1),
        };
        let clocks = [clock(&mut rng), clock(&mut rng), clock(&mut rng)];
        let node = |i: usize, role: NodeRole, rng: &mut Rng| Node {
            disk: Disk {
                log: Vec::new(),
                epoch: 1,
                seen_epoch: 1,
            },
            fo: NodeFailover::new(
                config(),
                NAMES[i].to_owned(),
                role,
                1,
                rng.next(),
                clocks[i].ms(0),
            ),
            up: true,
            paused_until: 0,
            disk_full_until: 0,
            match_len: 0,
            probe_len: 0,
            pending: Vec::new(),
            frozen_since_us: 0,
            released: false,
        };
        let nodes = [
            node(0, NodeRole::Primary, &mut rng),
            node(1, NodeRole::Standby, &mut rng),
        ];
        let mut machine = Witness::new(config(), None, clocks[WITNESS].ms(0));
        machine.skip_expiry_wait = knobs.broken == Broken::WitnessSkipsExpiry;
        let mut world = World {
            rng,
            knobs,
            faults,
            now_us: 0,
            seq: 0,
            events: 0,
            queue: BinaryHeap::new(),
            clocks,
            nodes,
            witness: WitnessActor {
                record: None,
                machine,
                up: true,
                disk_full_until: 0,
            },
            links_up: [true; 3],
            stream_clear_us: [[0; 3]; 3],
            lives: [0; 3],
            next_id: 1,
            acked: Vec::new(),
            epochs: Vec::new(),
            stats: Stats::default(),
            violation: None,
        };
        world.schedule(0, Event::Tick(0));
        world.schedule(TICK_US / 2, Event::Tick(1));
        world.schedule(TICK_US / 3, Event::Chaos);
        world
    }

    /// Runs the seed to its end.
    ///
    /// # Errors
    ///
    /// The first invariant broken, with the real time it broke at.
    pub(crate) fn run(mut self) -> Result<Stats, String> {
        while let Some(Queued { at, event, .. }) = self.queue.pop() {
            if at > DURATION_MS * 1000 {
                break;
            }
            self.events += 1;
            if self.events > EVENTS_MAX {
                return Err(format!("more than {EVENTS_MAX} events"));
            }
            self.now_us = at;
            if self.knobs.trace {
                eprintln!("{:>9}us {event:?}", self.now_us);
            }
            self.step(event);
            self.check_step();
            if let Some(violation) = self.violation.take() {
                return Err(format!("at {}us: {violation}", self.now_us));
            }
        }
        Ok(self.stats)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        let seq = self.seq;
        self.queue.push(Queued { at, seq, event });
    }

    fn local_ms(&self, actor: usize) -> u64 {
        self.clocks[actor].ms(self.now_us)
    }

    fn trace(&self, what: String) {
        if self.knobs.trace {
            eprintln!("{:>9}us   {what}", self.now_us);
        }
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.links_up[link(from, to)] || self.rng.chance(self.faults.loss_per_mille) {
            return;
        }
        let mut at = self.now_us + self.rng.range(200, self.faults.delay_us_max);
        if msg.is_stream() {
            at = at.max(self.stream_clear_us[from][to]);
            self.stream_clear_us[from][to] = at;
        }
        let lives = [self.lives[from], self.lives[to]];
        self.schedule(
            at,
            Event::Deliver {
                from,
                to,
                lives,
                msg,
            },
        );
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Tick(i) => {
                self.schedule(self.now_us + TICK_US, Event::Tick(i));
                if self.nodes[i].up && self.nodes[i].paused_until <= self.now_us {
                    self.node_tick(i);
                }
            }
            Event::Chaos => {
                self.schedule(self.now_us + TICK_US, Event::Chaos);
                self.chaos();
            }
            Event::Restart(actor) => self.restart(actor),
            Event::Deliver {
                from,
                to,
                lives,
                msg,
            } => {
                if lives == [self.lives[from], self.lives[to]] {
                    self.deliver(from, to, msg);
                }
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let sender_side = matches!(msg, Msg::Publish { .. });
        if !sender_side && !self.links_up[link(from, to)] {
            return;
        }
        if to == WITNESS {
            if let Msg::Witness(message) = msg {
                self.witness_receive(&message);
            }
            return;
        }
        let paused_until = self.nodes[to].paused_until;
        if !self.nodes[to].up {
            return;
        }
        if paused_until > self.now_us {
            // A stopped process reads its socket when it resumes.
            let lives = [self.lives[from], self.lives[to]];
            self.schedule(
                paused_until,
                Event::Deliver {
                    from,
                    to,
                    lives,
                    msg,
                },
            );
            return;
        }
        match msg {
            Msg::Witness(message) => {
                let now = self.local_ms(to);
                let mut out = Vec::new();
                self.nodes[to].fo.on_witness(&message, now, &mut out);
                self.apply_effects(to, out);
            }
            Msg::Publish { id } => self.publish(to, id),
            Msg::Sync {
                epoch,
                prev_len,
                prev_epoch,
                entries,
                primary_len,
            } => self.on_sync(
                to,
                from,
                epoch,
                (prev_len, prev_epoch),
                &entries,
                primary_len,
            ),
            Msg::SyncAck { epoch, ok, len } => self.on_sync_ack(to, epoch, ok, len),
            Msg::Handover { epoch } => {
                let (now, mut out) = (self.local_ms(to), Vec::new());
                if self.nodes[to].fo.handover(epoch, now, &mut out) {
                    self.trace(format!("{} takes the handover of epoch {epoch}", NAMES[to]));
                }
                self.apply_effects(to, out);
            }
        }
    }

    fn chaos(&mut self) {
        for actor in 0..3 {
            if self.rng.chance(self.faults.crash_per_mille) {
                self.crash(actor);
            }
            if self.rng.chance(3) {
                let until = self.now_us + self.rng.range(20_000, 200_000);
                match actor {
                    WITNESS => self.witness.disk_full_until = until,
                    i => self.nodes[i].disk_full_until = until,
                }
            }
        }
        for i in 0..2 {
            if self.nodes[i].up && self.rng.chance(3) {
                // A pause never shortens one under way (messages held for its end stay FIFO).
                let until = self.now_us + self.rng.range(20_000, 250_000);
                self.nodes[i].paused_until = self.nodes[i].paused_until.max(until);
                self.trace(format!("pause {i} until {}", self.nodes[i].paused_until));
            }
        }
        for l in 0..3 {
            let flip = if self.links_up[l] {
                self.rng.chance(self.faults.partition_per_mille)
            } else {
                self.rng.chance(80)
            };
            self.links_up[l] ^= flip;
            if flip {
                self.trace(format!("link {l} up: {}", self.links_up[l]));
            }
        }
        if self.rng.chance(self.faults.switchover_per_mille) {
            let primary = (0..2).find(|i| {
                let n = &self.nodes[*i];
                n.up && n.fo.role() == NodeRole::Primary && n.frozen_since_us == 0
            });
            if let Some(i) = primary {
                self.trace(format!("switchover: {} freezes", NAMES[i]));
                self.nodes[i].frozen_since_us = self.now_us.max(1);
            }
        }
        if self.rng.chance(self.faults.publish_per_mille) {
            let (id, to) = (self.next_id, self.rng.below(2) as usize);
            self.next_id += 1;
            let life = self.lives[to];
            self.schedule(
                self.now_us + 500,
                Event::Deliver {
                    from: to,
                    to,
                    lives: [life, life],
                    msg: Msg::Publish { id },
                },
            );
        }
    }

    fn crash(&mut self, actor: usize) {
        let down_us = self.rng.range(20_000, 300_000);
        if actor == WITNESS {
            if !self.witness.up {
                return;
            }
            self.witness.up = false;
        } else {
            if !self.nodes[actor].up {
                return;
            }
            self.nodes[actor].up = false;
            if self.rng.chance(100) {
                self.nodes[actor].disk = Disk::default();
                self.trace(format!("wipe {actor}"));
            }
        }
        self.stats.crashes += 1;
        self.lives[actor] += 1;
        self.trace(format!("crash {actor} for {down_us}us"));
        self.schedule(self.now_us + down_us, Event::Restart(actor));
    }

    fn restart(&mut self, actor: usize) {
        let now = self.local_ms(actor);
        if actor == WITNESS {
            let mut machine = Witness::new(config(), self.witness.record.clone(), now);
            machine.skip_expiry_wait = self.knobs.broken == Broken::WitnessSkipsExpiry;
            self.witness.machine = machine;
            self.witness.up = true;
            return;
        }
        let session = self.rng.next();
        let node = &mut self.nodes[actor];
        node.fo = NodeFailover::new(
            config(),
            NAMES[actor].to_owned(),
            NodeRole::Standby,
            node.disk.epoch,
            session,
            now,
        );
        node.up = true;
        node.paused_until = 0;
        node.pending.clear();
        node.frozen_since_us = 0;
        node.released = false;
    }

    fn witness_receive(&mut self, message: &WitnessMessage) {
        if !self.witness.up {
            return;
        }
        let now = self.local_ms(WITNESS);
        let mut out = Vec::new();
        self.witness.machine.handle(message, now, &mut out);
        for effect in out {
            match effect {
                WitnessEffect::Persist(record) => {
                    if self.witness.disk_full_until > self.now_us {
                        self.crash(WITNESS);
                        return;
                    }
                    self.witness.record = Some(record);
                }
                WitnessEffect::Reply(answer) => {
                    if let Some(to) = node_of(answer.node()) {
                        self.send(WITNESS, to, Msg::Witness(answer));
                    }
                }
            }
        }
    }

    fn node_tick(&mut self, i: usize) {
        let now = self.local_ms(i);
        let mut out = Vec::new();
        self.nodes[i].fo.tick(now, &mut out);
        self.apply_effects(i, out);
        if self.nodes[i].up && self.nodes[i].fo.role() == NodeRole::Primary {
            self.switch_over(i);
            self.try_acknowledge(i);
            self.send_sync(i);
        }
    }

    /// A frozen primary: once the standby matches its whole log it releases its lease (the
    /// `Handover` follows the witness's confirmation); it gives up if that takes too long.
    fn switch_over(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.frozen_since_us == 0 || node.released {
            return;
        }
        if node.match_len == node.disk.log.len() && node.pending.is_empty() {
            node.released = true;
            let (now, mut out) = (self.local_ms(i), Vec::new());
            self.nodes[i].fo.release(now, &mut out);
            self.trace(format!("switchover: {} releases its lease", NAMES[i]));
            self.apply_effects(i, out);
        } else if self.now_us - node.frozen_since_us > SWITCHOVER_ABORT_US {
            node.frozen_since_us = 0;
            self.trace(format!("switchover: {} gives up", NAMES[i]));
        }
    }

    fn apply_effects(&mut self, i: usize, effects: Vec<NodeEffect>) {
        for effect in effects {
            if !self.nodes[i].up {
                return;
            }
            match effect {
                NodeEffect::Send(message) => self.send(i, WITNESS, Msg::Witness(message)),
                NodeEffect::PersistEpoch(epoch) => {
                    if self.nodes[i].disk_full_until > self.now_us {
                        self.crash(i);
                        return;
                    }
                    let disk = &mut self.nodes[i].disk;
                    disk.epoch = epoch;
                    disk.seen_epoch = disk.seen_epoch.max(epoch);
                }
                NodeEffect::Promote { epoch } => self.promote(i, epoch),
                NodeEffect::StepDown { .. } => {
                    let node = &mut self.nodes[i];
                    node.pending.clear();
                    node.frozen_since_us = 0;
                    node.released = false;
                }
                NodeEffect::Released { epoch } => {
                    self.stats.releases += 1;
                    self.send(i, 1 - i, Msg::Handover { epoch });
                }
                NodeEffect::StopAcknowledging | NodeEffect::ResumeAcknowledging => {}
            }
        }
    }

    fn promote(&mut self, i: usize, epoch: u64) {
        if self.nodes[i].disk_full_until > self.now_us {
            self.crash(i);
            return;
        }
        self.stats.promotions += 1;
        let node = &mut self.nodes[i];
        node.disk.log.push(Rec { epoch, id: 0 });
        node.match_len = 0;
        node.probe_len = node.disk.log.len();
        node.pending.clear();
        if self.faults.ack_local {
            return;
        }
        let log = &self.nodes[i].disk.log;
        let lost = self
            .acked
            .iter()
            .find(|(lsn, id)| log.get(lsn - 1).is_none_or(|rec| rec.id != *id));
        if let Some((lsn, id)) = lost {
            let what = format!(
                "{} promoted to epoch {epoch} without acknowledged record {id} at LSN {lsn}",
                NAMES[i]
            );
            self.violate(what);
        }
    }

    fn publish(&mut self, i: usize, id: u64) {
        let now = self.local_ms(i);
        let node = &mut self.nodes[i];
        let lease = node.fo.may_acknowledge(now) || self.knobs.broken == Broken::AckWithoutLease;
        let accepted = node.fo.role() == NodeRole::Primary
            && lease
            && node.disk_full_until <= self.now_us
            && node.frozen_since_us == 0;
        if accepted {
            node.disk.log.push(Rec {
                epoch: node.fo.epoch(),
                id,
            });
            node.pending.push((node.disk.log.len(), id));
        }
    }

    fn send_sync(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = &node.disk.log;
        let prev_len = node.probe_len.min(log.len());
        let end = (prev_len + SYNC_BATCH).min(log.len());
        let msg = Msg::Sync {
            epoch: node.fo.epoch(),
            prev_len,
            prev_epoch: if prev_len == 0 {
                0
            } else {
                log[prev_len - 1].epoch
            },
            entries: log[prev_len..end].to_vec(),
            primary_len: log.len(),
        };
        self.send(i, 1 - i, msg);
    }

    fn try_acknowledge(&mut self, i: usize) {
        let now = self.local_ms(i);
        if !self.nodes[i].fo.may_acknowledge(now) && self.knobs.broken != Broken::AckWithoutLease {
            return;
        }
        let node = &mut self.nodes[i];
        let epoch = node.fo.epoch();
        // Frozen for a switchover: only what the standby holds, whatever the ack mode.
        let local = (self.faults.ack_local && node.frozen_since_us == 0)
            || self.knobs.broken == Broken::AckBeforeReplica;
        let match_len = if local { usize::MAX } else { node.match_len };
        let (due, waiting): (Vec<_>, Vec<_>) = node
            .pending
            .drain(..)
            .partition(|(lsn, _)| *lsn <= match_len);
        node.pending = waiting;
        for (lsn, id) in due {
            self.acknowledge(i, epoch, lsn, id);
        }
    }

    fn acknowledge(&mut self, i: usize, epoch: u64, lsn: usize, id: u64) {
        self.stats.acks += 1;
        if self.nodes[i].disk.log.get(lsn - 1).map(|r| r.id) != Some(id) {
            self.violate(format!("{} acknowledges {id} it does not hold", NAMES[i]));
        }
        self.acked.push((lsn, id));
        if let Some(later) = self.epochs.iter().find(|e| e.epoch > epoch) {
            let what = format!(
                "{} acknowledges in epoch {epoch} after epoch {} began acknowledging at {}us",
                NAMES[i], later.epoch, later.first_us
            );
            self.violate(what);
        }
        match self.epochs.iter().find(|e| e.epoch == epoch) {
            Some(e) if e.node != i => {
                let what = format!("two nodes acknowledge in epoch {epoch}");
                self.violate(what);
            }
            Some(_) => {}
            None => self.epochs.push(EpochAcks {
                epoch,
                node: i,
                first_us: self.now_us,
            }),
        }
    }

    fn on_sync(
        &mut self,
        i: usize,
        from: usize,
        epoch: u64,
        (prev_len, prev_epoch): (usize, u64),
        entries: &[Rec],
        primary_len: usize,
    ) {
        let now = self.local_ms(i);
        let known = self.nodes[i].disk.seen_epoch.max(self.nodes[i].fo.epoch());
        if epoch < known {
            let reply = Msg::SyncAck {
                epoch: known,
                ok: false,
                len: 0,
            };
            self.send(i, from, reply);
            return;
        }
        if self.nodes[i].fo.role() == NodeRole::Primary {
            if epoch == self.nodes[i].fo.epoch() {
                self.violate(format!("two primaries in epoch {epoch}"));
                return;
            }
            let mut out = Vec::new();
            self.nodes[i].fo.saw_epoch(epoch, now, &mut out);
            self.apply_effects(i, out);
        }
        let full = self.nodes[i].disk_full_until > self.now_us;
        let node = &mut self.nodes[i];
        node.fo.heard_primary(now);
        if !full {
            node.disk.seen_epoch = epoch;
        }
        let log = &mut node.disk.log;
        let consistent =
            prev_len <= log.len() && (prev_len == 0 || log[prev_len - 1].epoch == prev_epoch);
        if !consistent {
            let hint = log.len().min(prev_len.saturating_sub(1));
            self.send(
                i,
                from,
                Msg::SyncAck {
                    epoch,
                    ok: false,
                    len: hint,
                },
            );
            return;
        }
        let matched = if full {
            prev_len
        } else {
            self.append(i, prev_len, entries, primary_len)
        };
        self.check_prefix(i, from, epoch, matched);
        let node = &mut self.nodes[i];
        let early = self.knobs.broken == Broken::EarlyEpochClaim;
        if !full && (early || node.disk.log.len() == primary_len && matched == primary_len) {
            node.disk.epoch = node.disk.epoch.max(epoch);
            node.fo.caught_up(epoch);
        }
        let reply = Msg::SyncAck {
            epoch,
            ok: true,
            len: matched,
        };
        self.send(i, from, reply);
    }

    /// Writes a consistent `Sync`'s records into node `i`'s log; returns where it now matches
    /// the primary's.
    fn append(&mut self, i: usize, prev_len: usize, entries: &[Rec], primary_len: usize) -> usize {
        let log = &mut self.nodes[i].disk.log;
        let mut mismatch = None;
        for (k, rec) in entries.iter().enumerate() {
            let at = prev_len + k;
            match log.get(at) {
                Some(held) if held == rec => {}
                Some(held) if held.epoch == rec.epoch => mismatch = Some((*held, *rec)),
                Some(_) => {
                    log.truncate(at);
                    log.push(*rec);
                }
                None => log.push(*rec),
            }
        }
        let matched = prev_len + entries.len();
        if matched == primary_len {
            log.truncate(primary_len);
        }
        if let Some((held, rec)) = mismatch {
            self.violate(format!("log matching broken: {held:?} held, {rec:?} sent"));
        }
        matched
    }

    /// The standby's log agrees with its primary's up to where they matched (when that node is
    /// still the primary of this epoch).
    fn check_prefix(&mut self, standby: usize, primary: usize, epoch: u64, matched: usize) {
        let p = &self.nodes[primary];
        if !p.up || p.fo.role() != NodeRole::Primary || p.fo.epoch() != epoch {
            return;
        }
        let (s, p) = (&self.nodes[standby].disk.log, &p.disk.log);
        if matched > p.len() || s.len() < matched || s[..matched] != p[..matched] {
            let what = format!("standby log is not a prefix of the primary's in epoch {epoch}");
            self.violate(what);
        }
    }

    fn on_sync_ack(&mut self, i: usize, epoch: u64, ok: bool, len: usize) {
        if self.nodes[i].fo.role() != NodeRole::Primary {
            return;
        }
        let own = self.nodes[i].fo.epoch();
        if epoch > own {
            let (now, mut out) = (self.local_ms(i), Vec::new());
            self.nodes[i].fo.saw_epoch(epoch, now, &mut out);
            self.apply_effects(i, out);
            return;
        }
        if epoch < own {
            return;
        }
        let node = &mut self.nodes[i];
        node.probe_len = len;
        node.match_len = if ok { len } else { node.match_len.min(len) };
        self.try_acknowledge(i);
    }

    /// Checked after every step: no two nodes can prove a lease at the same instant, and no
    /// two nodes are the primary of one epoch.
    fn check_step(&mut self) {
        let [a, b] = &self.nodes;
        let primary = |n: &Node| n.up && n.fo.role() == NodeRole::Primary;
        if primary(a) && primary(b) && a.fo.epoch() == b.fo.epoch() {
            self.violate(format!("two primaries in epoch {}", a.fo.epoch()));
        }
        let proving = (0..2)
            .filter(|i| self.nodes[*i].up && self.nodes[*i].fo.may_acknowledge(self.local_ms(*i)))
            .count();
        if proving > 1 {
            let epochs = [self.nodes[0].fo.epoch(), self.nodes[1].fo.epoch()];
            self.violate(format!("both nodes can prove a lease (epochs {epochs:?})"));
        }
    }
}

/// Runs one seed.
///
/// # Errors
///
/// The invariant the seed broke.
pub(crate) fn run(seed: u64, knobs: Knobs) -> Result<Stats, String> {
    World::new(seed, knobs).run()
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number")),
    )
}

#[test]
fn simulation_holds_every_invariant() {
    if let Some(seed) = env_u64("RINGCAST_SIM_SEED") {
        let knobs = Knobs {
            trace: true,
            ..Knobs::default()
        };
        let stats = run(seed, knobs).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        eprintln!("seed {seed}: {stats:?}");
        return;
    }
    let seeds = env_u64("RINGCAST_SIM_SEEDS").unwrap_or(10_000);
    let mut total = Stats::default();
    for seed in 0..seeds {
        match run(seed, Knobs::default()) {
            Ok(stats) => {
                total.acks += stats.acks;
                total.promotions += stats.promotions;
                total.crashes += stats.crashes;
                total.releases += stats.releases;
            }
            Err(error) => panic!(
                "simulation seed {seed} failed: {error}\nreplay: RINGCAST_SIM_SEED={seed} cargo test --lib failover::sim::simulation_holds -- --nocapture"
            ),
        }
    }
    eprintln!("{seeds} seeds: {total:?}");
    // The faults must actually exercise failover, not only steady state.
    assert!(total.promotions * 5 >= seeds, "{total:?}");
    assert!(total.acks >= seeds * 10, "{total:?}");
    // And planned switchovers (a release, then a handover).
    assert!(total.releases * 20 >= seeds, "{total:?}");
}

/// Runs seeds with `broken` until one fails; returns the seed and the violation.
fn first_failure(broken: Broken, seeds: u64) -> (u64, String) {
    let knobs = Knobs {
        broken,
        ..Knobs::default()
    };
    let found = (0..seeds).find_map(|seed| run(seed, knobs).err().map(|e| (seed, e)));
    found.unwrap_or_else(|| panic!("no seed of {seeds} caught {broken:?}"))
}

#[test]
fn simulation_catches_a_witness_that_skips_the_expiry_wait() {
    let (seed, error) = first_failure(Broken::WitnessSkipsExpiry, 200);
    eprintln!("seed {seed}: {error}");
    assert!(error.contains("both nodes can prove a lease"), "{error}");
}

#[test]
fn simulation_catches_a_primary_that_acknowledges_without_its_lease() {
    let (seed, error) = first_failure(Broken::AckWithoutLease, 2_000);
    eprintln!("seed {seed}: {error}");
    assert!(error.contains("acknowledge"), "{error}");
}

#[test]
fn simulation_catches_a_primary_that_acknowledges_before_the_standby_has_it() {
    let (seed, error) = first_failure(Broken::AckBeforeReplica, 2_000);
    eprintln!("seed {seed}: {error}");
    assert!(error.contains("without acknowledged record"), "{error}");
}

#[test]
fn simulation_catches_a_standby_that_claims_an_epoch_before_catching_up() {
    let (seed, error) = first_failure(Broken::EarlyEpochClaim, 5_000);
    eprintln!("seed {seed}: {error}");
    assert!(error.contains("without acknowledged record"), "{error}");
}

#[test]
fn the_same_seed_replays_the_same_run() {
    for seed in [1, 7, 42] {
        let a = run(seed, Knobs::default()).unwrap();
        let b = run(seed, Knobs::default()).unwrap();
        assert_eq!(
            (a.acks, a.promotions, a.crashes),
            (b.acks, b.promotions, b.crashes)
        );
    }
}
