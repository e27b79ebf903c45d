//! The owner state of one core as one deterministic state machine: the channels this core owns
//! (subscribers per core, presence members, the pending `subscription_count`), each channel's
//! position and history, the cache slots, and the signed-in user registry. One entry point takes
//! an owner-bound mesh message (`apply`); `tick` runs its timers; `replay` applies a WAL record.
//!
//! Live: a command that changes durable state becomes an `OwnerRecord`, is appended to the
//! journal (the WAL's group-commit buffer), and only then applied; its effects (messages for
//! cores, this one included, and webhooks) are queued for the shard. Replay (start-up): the same
//! `apply_record` with no effects. It never reads a clock (time comes in as `Now`), never does
//! IO (the journal is a seam the driver commits), and never sees a connection: hosts are reached
//! only through the messages it emits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::Now;
use super::apps::Apps;
use super::history::{Histories, HistoryEvent, HistoryLimits, Missed};
use crate::config::{AckMode, Config, StandbyLoss};
use crate::limits;
use crate::mesh::message::{
    AckOutcome, ChannelInfo, ChannelSummary, Durability, Member, PublishCommand, PublishRefusal,
    QueryRef, Replay, SubscribeReply, user_key,
};
use crate::mesh::{ChannelKey, ConnRef, ShardMessage};
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::close_code;
use crate::protocol::envelope::ResumeAfter;
use crate::protocol::outbound;
use crate::protocol::socket_id::SocketId;
use crate::webhook::{WebhookEvent, WebhookKind, WebhookQueues};
use crate::ws::frame;

/// Above this many subscribers, `subscription_count` events are sent at most every
/// `SUBSCRIPTION_COUNT_INTERVAL_MS` (Pusher's rule), so a join storm is not quadratic.
const SUBSCRIPTION_COUNT_EAGER_MAX: u64 = 100;
const SUBSCRIPTION_COUNT_INTERVAL_MS: u64 = 5_000;
/// At most one `cache_miss` webhook per channel per this interval (Pusher de-duplicates).
const CACHE_MISS_WEBHOOK_INTERVAL_MS: u64 = 5_000;

/// A durable change of owner state: exactly what one WAL record says. Apps are named by index
/// here; the journal maps them to their stable ids.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnerRecord {
    /// Event `seq` of `channel` in history `epoch`.
    Publish {
        epoch: u64,
        seq: u64,
        publish: Arc<PublishCommand>,
    },
    PresenceJoin {
        channel: ChannelKey,
        user_id: Arc<str>,
        info_json: Box<str>,
    },
    PresenceLeave {
        channel: ChannelKey,
        user_id: Arc<str>,
    },
    /// A channel's position without an event (a history that starts with a subscriber).
    ChannelState {
        channel: ChannelKey,
        epoch: u64,
        seq: u64,
    },
    /// A cache channel's cached event alone, without touching its history (a snapshot
    /// carries a cached event that has left the history window).
    Cache {
        epoch: u64,
        seq: u64,
        publish: Arc<PublishCommand>,
    },
}

impl OwnerRecord {
    /// The channel the record is about (it decides the owner core).
    pub fn channel(&self) -> &ChannelKey {
        match self {
            OwnerRecord::Publish { publish, .. } | OwnerRecord::Cache { publish, .. } => {
                &publish.channel
            }
            OwnerRecord::PresenceJoin { channel, .. }
            | OwnerRecord::PresenceLeave { channel, .. }
            | OwnerRecord::ChannelState { channel, .. } => channel,
        }
    }
}

impl PartialEq for PublishCommand {
    fn eq(&self, other: &PublishCommand) -> bool {
        self.channel == other.channel
            && self.event == other.event
            && self.data == other.data
            && self.exclude == other.exclude
            && self.user_id == other.user_id
            && self.published_ms == other.published_ms
            && self.cache == other.cache
            && self.client == other.client
    }
}

/// The journal refused a record: storage is full. Nothing was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalFull;

/// How far the journal is durable after a commit: every record up to `lsn`, at `durability`
/// locally, and how far the standby has it (None: no standby configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    pub lsn: u64,
    pub durability: Durability,
    pub replica: Option<ReplicaView>,
}

/// The standby's acknowledged positions in this core's stream, as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaView {
    /// Every record up to here is in the standby's WAL file.
    pub received_lsn: u64,
    /// Every record up to here is fsynced by the standby.
    pub durable_lsn: u64,
    /// The standby has been unreachable for longer than `standby_timeout_ms` (or this node is
    /// not the primary): publishes waiting for it follow `on_standby_loss` at once.
    pub lost: bool,
    /// With a witness: the monotonic ms (the cores' clock) until which this node can prove
    /// its lease; from then on nothing is acknowledged (`PublishRefusal::NoLease`). None:
    /// no witness, no lease needed.
    pub lease_until_ms: Option<u64>,
    /// A planned switchover froze publishes (and they stay refused after this node stepped
    /// down): a publish is acknowledged only once the standby has its record, whatever the
    /// ack mode and however long the standby takes, and never degraded.
    pub frozen: bool,
    /// This node is the primary.
    pub primary: bool,
}

/// The journal could not persist what it was given (a write or sync error): nothing may be
/// acknowledged any more, and the process exits (the PostgreSQL fsync rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JournalFailed(pub String);

/// Where the owner appends its records: the current loop tick's group-commit buffer (the WAL
/// stream of this core). The owner only appends; the driver ends each tick with `commit` and
/// runs `maintain` on its timer, and the shard then answers what became durable. This trait is
/// the shard's only way to the disk.
pub trait Journal {
    /// Appends `record`, returning its LSN; refuses (appending nothing) when storage is full.
    fn append(&mut self, record: &OwnerRecord) -> Result<u64, JournalFull>;
    /// The LSN of the last record appended (0 before any).
    fn appended_lsn(&self) -> u64;
    /// False without a WAL: nothing is appended and every acknowledgement is immediate.
    fn enabled(&self) -> bool;
    /// Ends a tick: writes what was appended (one write), syncs per policy.
    fn commit(&mut self, now: Now) -> Result<Durable, JournalFailed>;
    /// Timers: syncs an idle stream when due, retries space while the disk is full, removes
    /// segments no longer needed (`needed_lsn` is the oldest record the owner still needs).
    fn maintain(&mut self, now: Now, needed_lsn: u64) -> Result<Durable, JournalFailed>;
    /// The disk is full: publishes are refused until space is back.
    fn storage_full(&self) -> bool;
    /// The first LSN retention would keep if the owner needed nothing older (see
    /// `Owner::carry_forward`); 0 without a WAL.
    fn retention_cut(&self, now: Now) -> u64;
    /// Records appended but not yet written.
    fn has_pending(&self) -> bool;
    /// Milliseconds until an idle stream's sync is due (the loop must wake by then).
    fn sync_due_in_ms(&self, now: Now) -> Option<u64>;
    /// A reloaded app table (records name apps by their stable id).
    fn reload(&mut self, apps: Arc<Apps>);
    /// A sync the driver should start without blocking (an io_uring fsync of this descriptor),
    /// when one is due and none is in flight; None when the journal syncs by itself.
    fn begin_sync(&mut self, _now: Now) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The sync started by `begin_sync` finished with `result`.
    fn end_sync(&mut self, _result: std::io::Result<()>) -> Result<Durable, JournalFailed> {
        unreachable!("no sync was started")
    }
    /// Shutdown: writes and syncs everything appended, whatever the fsync policy.
    fn flush(&mut self, now: Now) -> Result<(), JournalFailed> {
        self.commit(now).map(|_| ())
    }
    /// Where the stream stands, for metrics.
    fn stats(&self) -> JournalStats {
        JournalStats::default()
    }
    /// Standby: appends one record the primary wrote, its bytes verbatim (same LSN, same
    /// epoch), and says what to apply (`Apply`: the owner record with its LSN; `Kept`: a
    /// record that carries no owner state), or that the disk is full (`Full`: nothing was
    /// appended; the caller tries again once `maintain` found space).
    fn append_replicated(&mut self, _raw: &[u8]) -> Result<Replicated, JournalFailed> {
        Err(JournalFailed("this journal cannot follow a primary".into()))
    }
    /// Promotion: records from now on carry `epoch`; the first is its `EpochStart`, written
    /// and synced before this returns.
    fn start_epoch(&mut self, _epoch: u64, _node_id: &str, _now: Now) -> Result<(), JournalFailed> {
        Err(JournalFailed("this journal has no epochs".into()))
    }
}

/// What `Journal::append_replicated` did with a record.
#[derive(Debug)]
pub enum Replicated {
    /// Appended; apply this owner record (with its LSN).
    Apply(OwnerRecord, u64),
    /// Appended; it carries no owner state.
    Kept,
    /// Not appended: the disk is full (a standby stalls until space is back).
    Full,
}

/// Where a journal's stream stands (metrics; all 0 without a WAL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub appended_lsn: u64,
    pub written_lsn: u64,
    pub synced_lsn: u64,
    pub bytes: u64,
    pub segments: u64,
    pub storage_full: bool,
}

/// No WAL: records are dropped, nothing is ever full, LSNs stay 0.
#[derive(Debug, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn append(&mut self, _record: &OwnerRecord) -> Result<u64, JournalFull> {
        Ok(0)
    }

    fn appended_lsn(&self) -> u64 {
        0
    }

    fn enabled(&self) -> bool {
        false
    }

    fn commit(&mut self, _now: Now) -> Result<Durable, JournalFailed> {
        Ok(Durable {
            lsn: 0,
            durability: Durability::Memory,
            replica: None,
        })
    }

    fn maintain(&mut self, now: Now, _needed_lsn: u64) -> Result<Durable, JournalFailed> {
        self.commit(now)
    }

    fn storage_full(&self) -> bool {
        false
    }

    fn retention_cut(&self, _now: Now) -> u64 {
        0
    }

    fn has_pending(&self) -> bool {
        false
    }

    fn sync_due_in_ms(&self, _now: Now) -> Option<u64> {
        None
    }

    fn reload(&mut self, _apps: Arc<Apps>) {}
}

/// What the owner knows about one occupied (or, after a replay, tentatively occupied) channel.
#[derive(Debug)]
struct OwnedChannel {
    /// Subscribers per core (index = core).
    per_core: Box<[u32]>,
    total: u64,
    /// Presence channels: user id → member (per user, not per connection).
    members: Option<HashMap<Arc<str>, MemberState>>,
    /// When a `subscription_count` event was last sent, and whether a newer count is owed.
    count_sent_ms: u64,
    count_owed: bool,
}

impl OwnedChannel {
    fn new(cores: usize, presence: bool) -> OwnedChannel {
        OwnedChannel {
            per_core: vec![0; cores].into_boxed_slice(),
            total: 0,
            members: presence.then(HashMap::new),
            count_sent_ms: 0,
            count_owed: false,
        }
    }

    fn user_count(&self) -> u64 {
        self.members
            .as_ref()
            .map_or(0, |members| members.len() as u64)
    }

    /// Presence channels: the `data` of `subscription_succeeded` (every member, spec §2.6).
    /// Members restored by a replay who have not come back yet are listed too: if they return
    /// they are reconfirmed silently, if not `member_removed` follows the grace.
    fn presence_data(&self) -> Option<String> {
        self.members.as_ref().map(|members| {
            outbound::presence_data(members.iter().map(|(id, m)| (&**id, &*m.info_json)))
        })
    }

    /// Nothing left to keep: no subscriber and no (tentative) member.
    fn is_empty(&self) -> bool {
        self.total == 0 && self.members.as_ref().is_none_or(HashMap::is_empty)
    }
}

#[derive(Debug)]
struct MemberState {
    info_json: Box<str>,
    /// Subscribed connections of this user; 0 for a member restored by a replay that has not
    /// come back yet (tentative until the grace ends).
    connections: u32,
    /// The WAL record that holds its join.
    lsn: u64,
}

/// The last event of a cache channel. Its expiry is wall-clock time, as the WAL records it.
#[derive(Debug)]
struct CachedEvent {
    /// Built on first use (a replay restores the slot without building frames).
    frame: Option<Bytes>,
    publish: Arc<PublishCommand>,
    epoch: u64,
    seq: u64,
    expires_unix_ms: u64,
    /// The WAL record that holds it.
    lsn: u64,
}

/// One signed-in user's entry on its owner core.
#[derive(Debug, Default)]
struct UserEntry {
    connections: u32,
    /// Watcher user id → how many of the watcher's connections declared this user.
    watchers: HashMap<Arc<str>, u32>,
}

/// A `Barrier` waiting for its records to become durable.
#[derive(Debug)]
struct PendingAck {
    to: usize,
    query: QueryRef,
    lsn: u64,
    ack: AckMode,
    /// Monotonic ms when it started waiting (the standby gets `standby_timeout_ms`).
    since_ms: u64,
}

/// What a waiting barrier is answered now, if anything: records first reach the local WAL,
/// then (for `replica` and `replica-durable`) the standby.
fn ack_outcome(
    ack: &PendingAck,
    durable: &Durable,
    now_ms: u64,
    timeout_ms: u64,
    policy: StandbyLoss,
) -> Option<AckOutcome> {
    if ack.lsn > durable.lsn {
        return None;
    }
    if let Some(ReplicaView {
        lease_until_ms: Some(until),
        ..
    }) = durable.replica
        && now_ms >= until
    {
        // Whatever the ack mode: a node that cannot prove its lease may have been replaced.
        return Some(AckOutcome::Refused(PublishRefusal::NoLease));
    }
    if let Some(replica) = durable.replica
        && replica.frozen
    {
        // A switchover: what the standby (the next primary) holds, or nothing.
        let (reached, level) = match ack.ack {
            AckMode::ReplicaDurable => (replica.durable_lsn, Durability::ReplicaDurable),
            _ => (replica.received_lsn, Durability::ReplicaReceived),
        };
        return if ack.lsn <= reached {
            Some(AckOutcome::Durable(level))
        } else if !replica.primary {
            Some(AckOutcome::Refused(PublishRefusal::Switchover))
        } else {
            None
        };
    }
    let (Some(replica), AckMode::Replica | AckMode::ReplicaDurable) = (durable.replica, ack.ack)
    else {
        return Some(AckOutcome::Durable(durable.durability));
    };
    let (reached, level) = match ack.ack {
        AckMode::ReplicaDurable => (replica.durable_lsn, Durability::ReplicaDurable),
        _ => (replica.received_lsn, Durability::ReplicaReceived),
    };
    if ack.lsn <= reached {
        return Some(AckOutcome::Durable(level));
    }
    if !replica.lost && now_ms.saturating_sub(ack.since_ms) < timeout_ms {
        return None;
    }
    Some(match policy {
        StandbyLoss::Degrade => AckOutcome::Durable(durable.durability.degraded()),
        StandbyLoss::Reject => AckOutcome::Refused(PublishRefusal::StandbyUnavailable),
    })
}

pub struct Owner {
    core: usize,
    cores: usize,
    config: Arc<Config>,
    apps: Arc<Apps>,
    webhooks: Arc<WebhookQueues>,
    channels: HashMap<ChannelKey, OwnedChannel>,
    histories: Histories,
    caches: HashMap<ChannelKey, CachedEvent>,
    /// Owned channels whose `subscription_count` event is waiting for its interval.
    counts_owed: Vec<ChannelKey>,
    /// Cache channels that recently sent a `cache_miss` webhook, and when (de-duplication).
    cache_misses: HashMap<ChannelKey, u64>,
    users: HashMap<(u32, Arc<str>), UserEntry>,
    /// Per source core: a REST publish from it was refused since its last barrier.
    refused: Box<[Option<PublishRefusal>]>,
    /// Client events refused since the shard last collected the count.
    refused_client_events: u64,
    /// Barriers waiting for durability, in LSN order.
    acks: VecDeque<PendingAck>,
    /// Monotonic ms at which presence members restored by a replay and not back are removed
    /// (0: no grace running).
    presence_grace_until_ms: u64,
    /// State of the generator of channel epochs (seeded per process start).
    random: u64,
    /// Messages for cores (this one included), in the order they were made.
    effects: Vec<(usize, ShardMessage)>,
    now: Now,
}

impl Owner {
    pub fn new(
        core: usize,
        cores: usize,
        config: Arc<Config>,
        apps: Arc<Apps>,
        webhooks: Arc<WebhookQueues>,
        seed: u64,
    ) -> Owner {
        assert!(core < cores);
        let limits = history_limits(&config, cores);
        Owner {
            core,
            cores,
            config,
            apps,
            webhooks,
            channels: HashMap::new(),
            histories: Histories::new(limits),
            caches: HashMap::new(),
            counts_owed: Vec::new(),
            cache_misses: HashMap::new(),
            users: HashMap::new(),
            refused: vec![None; cores].into_boxed_slice(),
            refused_client_events: 0,
            acks: VecDeque::new(),
            presence_grace_until_ms: 0,
            random: seed ^ (core as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            effects: Vec::new(),
            now: Now::ZERO,
        }
    }

    /// A reloaded configuration (apps keep their indexes).
    pub fn reload(&mut self, config: Arc<Config>, apps: Arc<Apps>) {
        self.histories
            .set_limits(history_limits(&config, self.cores));
        self.config = config;
        self.apps = apps;
    }

    /// Takes the messages made since the last call, in order.
    pub fn take_effects(&mut self, into: &mut Vec<(usize, ShardMessage)>) {
        into.append(&mut self.effects);
    }

    /// The one entry point for owner-bound messages from core `from` (this core included).
    pub fn apply(
        &mut self,
        from: usize,
        message: ShardMessage,
        now: Now,
        journal: &mut dyn Journal,
    ) {
        self.now = now;
        match message {
            ShardMessage::Subscribe {
                channel,
                conn,
                socket_id,
                member,
                resume,
            } => self.subscribe(from, channel, conn, socket_id, member, resume, journal),
            ShardMessage::Resubscribe { channel, conn } => self.resubscribe(from, channel, conn),
            ShardMessage::Unsubscribe {
                channel,
                user_id,
                socket_id,
            } => self.unsubscribe(from, &channel, user_id, socket_id, journal),
            ShardMessage::Publish {
                publish,
                published_us,
            } => self.publish(from, *publish, published_us, journal),
            ShardMessage::Relay {
                channel,
                frame,
                published_us,
            } => self.fan_out(&channel, &frame, None, published_us),
            ShardMessage::Barrier { query, ack } => self.barrier(from, query, ack, journal),
            ShardMessage::ListChannels { query, app, prefix } => {
                let channels = self.owned_channels(app, &prefix);
                self.emit(from, ShardMessage::ChannelList { query, channels });
            }
            ShardMessage::DescribeChannel {
                query,
                index,
                channel,
                with_users,
            } => {
                let info = self.channel_info(&channel, with_users);
                self.emit(
                    from,
                    ShardMessage::ChannelDescription { query, index, info },
                );
            }
            ShardMessage::History {
                query,
                channel,
                after,
                limit,
            } => {
                let page = Box::new(self.histories.page(&channel, after, limit));
                self.emit(from, ShardMessage::HistoryPage { query, page });
            }
            ShardMessage::UserOnline { app, user_id } => self.user_presence(app, user_id, true),
            ShardMessage::UserOffline { app, user_id } => self.user_presence(app, user_id, false),
            ShardMessage::Watch {
                app,
                watcher,
                watched,
                conn,
            } => self.watch(from, app, watcher, watched, conn),
            ShardMessage::Unwatch {
                app,
                watcher,
                watched,
            } => self.unwatch(app, watcher, watched),
            other => unreachable!("not an owner-bound message: {other:?}"),
        }
    }

    /// Whether `message` is for the owner side (`apply`) rather than for connections.
    pub fn is_owner_bound(message: &ShardMessage) -> bool {
        matches!(
            message,
            ShardMessage::Subscribe { .. }
                | ShardMessage::Resubscribe { .. }
                | ShardMessage::Unsubscribe { .. }
                | ShardMessage::Publish { .. }
                | ShardMessage::Relay { .. }
                | ShardMessage::Barrier { .. }
                | ShardMessage::ListChannels { .. }
                | ShardMessage::DescribeChannel { .. }
                | ShardMessage::History { .. }
                | ShardMessage::UserOnline { .. }
                | ShardMessage::UserOffline { .. }
                | ShardMessage::Watch { .. }
                | ShardMessage::Unwatch { .. }
        )
    }

    fn emit(&mut self, to: usize, message: ShardMessage) {
        self.effects.push((to, message));
    }

    /// Appends `record` and applies it; false (nothing applied) when the journal is full.
    fn log_and_apply(&mut self, record: OwnerRecord, journal: &mut dyn Journal) -> bool {
        match journal.append(&record) {
            Ok(lsn) => {
                self.apply_record(record, lsn, true);
                true
            }
            Err(JournalFull) => false,
        }
    }

    /// Replays one WAL record at start-up (no effects).
    pub fn replay(&mut self, record: OwnerRecord, lsn: u64, now: Now) {
        self.now = now;
        self.apply_record(record, lsn, false);
    }

    /// The replay is over: restored presence members who do not come back within the grace
    /// are removed then, and restored channel positions are kept at least as long.
    pub fn replayed(&mut self, now: Now) {
        self.now = now;
        let until = now.mono_ms + limits::RESTORED_STATE_GRACE_MS;
        let tentative = self
            .channels
            .values()
            .any(|owned| owned.members.as_ref().is_some_and(|m| !m.is_empty()));
        if tentative {
            self.presence_grace_until_ms = until;
        }
        self.histories.keep_all_until(until);
        self.histories.expire(now.unix_ms);
    }

    /// The state change of one record; `live` also makes its effects (deliveries, webhooks).
    fn apply_record(&mut self, record: OwnerRecord, lsn: u64, live: bool) {
        match record {
            OwnerRecord::Publish {
                epoch,
                seq,
                publish,
            } => self.apply_publish(epoch, seq, publish, lsn, live),
            OwnerRecord::PresenceJoin {
                channel,
                user_id,
                info_json,
            } => {
                let cores = self.cores;
                let owned = self
                    .channels
                    .entry(channel)
                    .or_insert_with(|| OwnedChannel::new(cores, true));
                let members = owned.members.get_or_insert_with(HashMap::new);
                let member = members.entry(user_id).or_insert(MemberState {
                    info_json: info_json.clone(),
                    connections: 0,
                    lsn,
                });
                member.info_json = info_json;
                member.lsn = lsn;
            }
            OwnerRecord::PresenceLeave { channel, user_id } => {
                if let Some(owned) = self.channels.get_mut(&channel) {
                    if let Some(members) = owned.members.as_mut() {
                        members.remove(&user_id);
                    }
                    if owned.is_empty() {
                        self.channels.remove(&channel);
                    }
                }
            }
            OwnerRecord::ChannelState {
                channel,
                epoch,
                seq,
            } => self.histories.set_position(&channel, epoch, seq, lsn),
            OwnerRecord::Cache {
                epoch,
                seq,
                publish,
            } => {
                let ttl_ms = self.apps.get(publish.channel.app).cache_ttl_secs * 1000;
                let cached = CachedEvent {
                    frame: None,
                    expires_unix_ms: publish.published_ms + ttl_ms,
                    publish: Arc::clone(&publish),
                    epoch,
                    seq,
                    lsn,
                };
                self.caches.insert(publish.channel.clone(), cached);
            }
        }
    }

    /// Records that rebuild this owner's durable state from nothing: each channel's position
    /// and retained events, each unexpired cached event, each presence member. Replayed into an
    /// empty owner (in order) they give the same history pages, cache slots and members. Used
    /// to move the state into new streams when the core count changes, and to carry it past
    /// retention.
    pub fn snapshot(&self, now_unix_ms: u64) -> Vec<OwnerRecord> {
        let mut records = Vec::new();
        for (channel, log) in self.histories.logs() {
            let first = log.events().next().map_or(log.seq, |event| event.seq - 1);
            records.push(OwnerRecord::ChannelState {
                channel: channel.clone(),
                epoch: log.epoch,
                seq: first,
            });
            for event in log.events() {
                let publish = history_publish(channel, event);
                records.push(OwnerRecord::Publish {
                    epoch: log.epoch,
                    seq: event.seq,
                    publish: Arc::new(publish),
                });
            }
        }
        for cached in self.caches.values() {
            if cached.expires_unix_ms > now_unix_ms {
                records.push(OwnerRecord::Cache {
                    epoch: cached.epoch,
                    seq: cached.seq,
                    publish: Arc::clone(&cached.publish),
                });
            }
        }
        for (channel, owned) in &self.channels {
            for (user_id, member) in owned.members.iter().flatten() {
                records.push(OwnerRecord::PresenceJoin {
                    channel: channel.clone(),
                    user_id: Arc::clone(user_id),
                    info_json: member.info_json.clone(),
                });
            }
        }
        records
    }

    fn apply_publish(
        &mut self,
        epoch: u64,
        seq: u64,
        publish: Arc<PublishCommand>,
        lsn: u64,
        live: bool,
    ) {
        let channel = &publish.channel;
        let sequenced = is_sequenced(channel);
        if sequenced {
            self.histories.append(
                channel,
                epoch,
                HistoryEvent {
                    seq,
                    published_ms: publish.published_ms,
                    event: Arc::clone(&publish.event),
                    data: Arc::clone(&publish.data),
                    user_id: publish.user_id.clone(),
                    exclude: publish.exclude,
                    lsn,
                },
            );
        }
        let frame = live.then(|| self.event_frame(&publish, seq));
        if publish.cache {
            let ttl_ms = self.apps.get(channel.app).cache_ttl_secs * 1000;
            let cached = CachedEvent {
                frame: frame.clone(),
                publish: Arc::clone(&publish),
                epoch,
                seq,
                expires_unix_ms: publish.published_ms + ttl_ms,
                lsn,
            };
            self.caches.insert(channel.clone(), cached);
        }
        if let Some(frame) = frame {
            let published_us = self.now.mono_us;
            self.fan_out(channel, &frame, publish.exclude, published_us);
        }
    }

    /// The frame subscribers get for `publish` (with its `seq` when the app asks for it).
    fn event_frame(&self, publish: &PublishCommand, seq: u64) -> Bytes {
        let channel = &publish.channel;
        let text = if publish.client {
            outbound::client_event(
                &publish.event,
                &channel.name,
                &publish.data,
                publish.user_id.as_deref(),
            )
        } else {
            outbound::channel_event(&publish.event, &channel.name, &publish.data)
        };
        let text = if self.wants_sequence(channel) {
            outbound::with_sequence(text, seq)
        } else {
            text
        };
        frame::encode_text(text.as_bytes())
    }

    fn wants_sequence(&self, channel: &ChannelKey) -> bool {
        is_sequenced(channel) && self.apps.get(channel.app).event_sequence
    }

    /// A fresh channel epoch (never 0).
    fn next_epoch(&mut self) -> u64 {
        // splitmix64: deterministic for a seed, well spread.
        self.random = self.random.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    }

    /// Sequences one event: the record is appended first; a full journal refuses it (the
    /// sender's next barrier reports it and nothing of it is applied).
    fn publish(
        &mut self,
        from: usize,
        publish: PublishCommand,
        published_us: u64,
        journal: &mut dyn Journal,
    ) {
        let channel = publish.channel.clone();
        if !is_sequenced(&channel) {
            // Internal channels (`#server-to-user-`) have no history: deliver, never log.
            let frame = self.event_frame(&publish, 0);
            self.fan_out(&channel, &frame, publish.exclude, published_us);
            return;
        }
        let (epoch, seq) = match self.histories.log(&channel) {
            Some(log) => (log.epoch, log.seq + 1),
            None => (self.next_epoch(), 1),
        };
        let client = publish.client;
        let record = OwnerRecord::Publish {
            epoch,
            seq,
            publish: Arc::new(publish),
        };
        if !self.log_and_apply(record, journal) {
            self.refuse(from, client, PublishRefusal::StorageFull);
        }
    }

    /// A publish from core `from` was not sequenced. A REST publish's next barrier reports it
    /// (503: the client retries); a client event has no acknowledgement to carry it, so it is
    /// only counted (`rejected`), and no REST request of that core is blamed for it.
    pub fn refuse(&mut self, from: usize, client: bool, refusal: PublishRefusal) {
        if client {
            self.refused_client_events += 1;
            return;
        }
        self.refused[from].get_or_insert(refusal);
    }

    /// Client events refused since the last call (for the rejection metric).
    pub fn take_refused_client_events(&mut self) -> u64 {
        std::mem::take(&mut self.refused_client_events)
    }

    /// Whether any core with subscribers of `channel` other than this one has at least
    /// `backlog_max` messages waiting for it (`backlog` tells): a publish would add to it.
    pub fn fan_out_backed_up(
        &self,
        channel: &ChannelKey,
        backlog: impl Fn(usize) -> usize,
        backlog_max: usize,
    ) -> bool {
        self.channels.get(channel).is_some_and(|owned| {
            owned.per_core.iter().enumerate().any(|(core, &count)| {
                core != self.core && count > 0 && backlog(core) >= backlog_max
            })
        })
    }

    /// Sends `frame` to every core with subscribers of `channel` (this one included).
    fn fan_out(
        &mut self,
        channel: &ChannelKey,
        frame: &Bytes,
        exclude: Option<SocketId>,
        published_us: u64,
    ) {
        let Some(owned) = self.channels.get(channel) else {
            return;
        };
        for (core, &count) in owned.per_core.iter().enumerate() {
            if count > 0 {
                self.effects.push((
                    core,
                    ShardMessage::Deliver {
                        channel: channel.clone(),
                        frame: frame.clone(),
                        exclude,
                        published_us,
                    },
                ));
            }
        }
    }

    /// A barrier from `from`: answered once the records before it are durable, or at once with
    /// the refusal when one of its publishes was refused.
    fn barrier(&mut self, from: usize, query: QueryRef, ack: AckMode, journal: &mut dyn Journal) {
        if let Some(refusal) = self.refused[from].take() {
            let outcome = AckOutcome::Refused(refusal);
            self.emit(from, ShardMessage::BarrierAck { query, outcome });
            return;
        }
        if !journal.enabled() {
            let outcome = AckOutcome::Durable(Durability::Memory);
            self.emit(from, ShardMessage::BarrierAck { query, outcome });
            return;
        }
        assert!(
            self.acks.len() < limits::PENDING_ACKS_PER_CORE_MAX,
            "pending acknowledgements are bounded by the REST queries in flight"
        );
        self.acks.push_back(PendingAck {
            to: from,
            query,
            lsn: journal.appended_lsn(),
            ack,
            since_ms: self.now.mono_ms,
        });
    }

    /// The driver committed the journal (or the standby acknowledged more): every barrier
    /// whose records reached what its app asked for is answered. One waiting for a standby
    /// that is lost, or for longer than `standby_timeout_ms`, follows `on_standby_loss`.
    pub fn committed(&mut self, durable: Durable, now: Now) {
        // The commit's own time: the lease and the timeouts are judged now, never at the time
        // of the last apply (a node paused in between must not answer from before the pause).
        self.now = now;
        let timeout_ms = self.config.replication.standby_timeout_ms;
        let policy = self.config.replication.on_standby_loss;
        let mut index = 0;
        while index < self.acks.len() {
            let ack = &self.acks[index];
            let outcome = ack_outcome(ack, &durable, self.now.mono_ms, timeout_ms, policy);
            let Some(outcome) = outcome else {
                index += 1;
                continue;
            };
            let ack = self.acks.remove(index).expect("index in range");
            self.emit(
                ack.to,
                ShardMessage::BarrierAck {
                    query: ack.query,
                    outcome,
                },
            );
        }
    }

    /// Timers: owed subscription counts, cache and history expiry, the end of the presence
    /// grace after a replay.
    pub fn tick(&mut self, now: Now, sweep: u64, journal: &mut dyn Journal) {
        self.now = now;
        self.pay_owed_counts();
        if self.presence_grace_until_ms != 0 && now.mono_ms >= self.presence_grace_until_ms {
            self.presence_grace_until_ms = 0;
            self.remove_tentative_members(journal);
        }
        if sweep.is_multiple_of(limits::OWNER_HOUSEKEEPING_SWEEPS) {
            let now_ms = now.mono_ms;
            self.caches
                .retain(|_, cached| cached.expires_unix_ms > now.unix_ms);
            self.cache_misses
                .retain(|_, sent| now_ms < *sent + CACHE_MISS_WEBHOOK_INTERVAL_MS);
            self.histories.expire(now.unix_ms);
            for channel in self.histories.empty_logs() {
                let occupied = self.channels.contains_key(&channel);
                self.histories.forget_if_idle(&channel, occupied, now_ms);
            }
        }
    }

    /// Writes again the state whose records are below `cut` and would otherwise hold old
    /// segments back: unexpired cached events, presence members, and positions of channels
    /// without retained events. Retained events are not carried: they age out of the window
    /// (`history.age_secs_max`, `bytes_max`), and their segments go then.
    pub fn carry_forward(&mut self, cut: u64, now: Now, journal: &mut dyn Journal) {
        self.now = now;
        if !journal.enabled() {
            return;
        }
        let mut records = Vec::new();
        for cached in self.caches.values() {
            if cached.lsn < cut && cached.expires_unix_ms > now.unix_ms {
                records.push(OwnerRecord::Cache {
                    epoch: cached.epoch,
                    seq: cached.seq,
                    publish: Arc::clone(&cached.publish),
                });
            }
        }
        for (channel, owned) in &self.channels {
            for (user_id, member) in owned.members.iter().flatten() {
                if member.lsn < cut {
                    records.push(OwnerRecord::PresenceJoin {
                        channel: channel.clone(),
                        user_id: Arc::clone(user_id),
                        info_json: member.info_json.clone(),
                    });
                }
            }
        }
        for (channel, epoch, seq) in self.histories.positions_below(cut) {
            records.push(OwnerRecord::ChannelState {
                channel,
                epoch,
                seq,
            });
        }
        for record in records {
            // With the disk full the old segments simply stay until space is back.
            let Ok(lsn) = journal.append(&record) else {
                return;
            };
            self.apply_record(record, lsn, false);
        }
    }

    /// The oldest WAL record the owner state still needs (retention keeps it).
    pub fn needed_lsn(&self) -> u64 {
        let members = self
            .channels
            .values()
            .flat_map(|owned| owned.members.iter().flat_map(|m| m.values()))
            .map(|member| member.lsn);
        let caches = self.caches.values().map(|cached| cached.lsn);
        members
            .chain(caches)
            .filter(|&lsn| lsn > 0)
            .min()
            .unwrap_or(u64::MAX)
            .min(self.histories.needed_lsn())
    }

    /// Presence members restored by a replay who did not come back: removed now, with their
    /// `member_removed` event and webhook.
    fn remove_tentative_members(&mut self, journal: &mut dyn Journal) {
        let mut gone = Vec::new();
        for (channel, owned) in &self.channels {
            for (user_id, member) in owned.members.iter().flatten() {
                if member.connections == 0 {
                    gone.push((channel.clone(), Arc::clone(user_id)));
                }
            }
        }
        for (channel, user_id) in gone {
            self.member_left(&channel, user_id, None, journal);
        }
    }

    /// A presence member is gone: logged, the webhook, and `member_removed` to the others.
    fn member_left(
        &mut self,
        channel: &ChannelKey,
        user_id: Arc<str>,
        socket_id: Option<SocketId>,
        journal: &mut dyn Journal,
    ) {
        let record = OwnerRecord::PresenceLeave {
            channel: channel.clone(),
            user_id: Arc::clone(&user_id),
        };
        // Presence is soft state: with the disk full the member still leaves.
        if journal.append(&record).is_err() {
            tracing::debug!(?channel, "presence leave not logged: storage full");
        }
        self.apply_record(record, 0, true);
        self.webhook(
            channel.app,
            WebhookKind::MemberRemoved,
            &channel.name,
            |event| {
                event.user_id = Some(Arc::clone(&user_id));
            },
        );
        if self.channels.contains_key(channel) {
            let text = outbound::member_removed(&channel.name, &user_id);
            let frame = frame::encode_text(text.as_bytes());
            let published_us = self.now.mono_us;
            self.fan_out(channel, &frame, socket_id, published_us);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &mut self,
        from: usize,
        channel: ChannelKey,
        conn: ConnRef,
        socket_id: SocketId,
        member: Option<Member>,
        resume: Option<Box<ResumeAfter>>,
        journal: &mut dyn Journal,
    ) {
        let presence = channel::kind_of(&channel.name) == ChannelKind::Presence;
        let cores = self.cores;
        let owned = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| OwnedChannel::new(cores, presence));
        let newly_occupied = owned.total == 0;
        let joined = match member.as_ref() {
            Some(member) if presence => match self.join_member(&channel, member, journal) {
                Ok(joined) => joined,
                Err(reply) => {
                    let user_id = Some(Arc::clone(&member.user_id));
                    return self.emit(
                        from,
                        ShardMessage::SubscribeOk {
                            channel,
                            conn,
                            user_id,
                            reply: Box::new(reply),
                        },
                    );
                }
            },
            _ => false,
        };
        let owned = self.channels.get_mut(&channel).expect("inserted above");
        owned.per_core[from] += 1;
        owned.total += 1;
        if newly_occupied {
            self.webhook(
                channel.app,
                WebhookKind::ChannelOccupied,
                &channel.name,
                |_| {},
            );
        }
        let reply = Box::new(self.joined_reply(&channel, resume, journal));
        let user_id = member.as_ref().map(|m| Arc::clone(&m.user_id));
        self.emit(
            from,
            ShardMessage::SubscribeOk {
                channel: channel.clone(),
                conn,
                user_id,
                reply,
            },
        );
        if let (true, Some(member)) = (joined, member) {
            self.webhook(
                channel.app,
                WebhookKind::MemberAdded,
                &channel.name,
                |event| {
                    event.user_id = Some(Arc::clone(&member.user_id));
                },
            );
            let text = outbound::member_added(&channel.name, &member.user_id, &member.info_json);
            let frame = frame::encode_text(text.as_bytes());
            let published_us = self.now.mono_us;
            self.fan_out(&channel, &frame, Some(socket_id), published_us);
        }
        if !presence {
            self.owe_subscription_count(&channel);
        }
    }

    /// A connection already counted in the presence channel subscribed again: it gets the
    /// member list as it stands, counting nothing and announcing nothing.
    fn resubscribe(&mut self, from: usize, channel: ChannelKey, conn: ConnRef) {
        // The connection's core sends this only for an Active subscription, whose `Unsubscribe`
        // can only follow it on the same FIFO queue: the owner still counts the connection.
        let owned = self
            .channels
            .get(&channel)
            .expect("resubscribe to a channel the owner does not count");
        assert!(
            owned.per_core[from] > 0,
            "resubscribe from a core without subscribers of {channel:?}"
        );
        let presence_data = owned
            .presence_data()
            .expect("resubscribe is only sent for presence channels");
        self.emit(
            from,
            ShardMessage::Resubscribed {
                channel,
                conn,
                presence_data,
            },
        );
    }

    /// Counts one more connection of `member` on a presence channel. Ok(true) when the user is
    /// new to the channel (logged, announced); Ok(false) for another connection of a present
    /// user, or one restored by a replay coming back (no announcement); Err when the channel
    /// is full.
    fn join_member(
        &mut self,
        channel: &ChannelKey,
        member: &Member,
        journal: &mut dyn Journal,
    ) -> Result<bool, SubscribeReply> {
        let members_max = self.apps.get(channel.app).presence_members_max;
        let owned = self
            .channels
            .get_mut(channel)
            .expect("created by the caller");
        let members = owned.members.get_or_insert_with(HashMap::new);
        let full = members.len() >= members_max;
        let (known, info_changed) = match members.get_mut(&member.user_id) {
            // Another connection of a known user: last writer wins, no member_added.
            Some(state) => {
                state.connections += 1;
                (true, state.info_json != member.info_json)
            }
            None if full => {
                if owned.is_empty() {
                    self.channels.remove(channel);
                }
                return Err(SubscribeReply::Refused {
                    error_type: "LimitReached",
                    message: format!(
                        "Presence channel {} is full ({members_max} members)",
                        channel.name
                    ),
                    status: close_code::OVER_CAPACITY,
                });
            }
            None => (false, true),
        };
        if info_changed {
            let record = OwnerRecord::PresenceJoin {
                channel: channel.clone(),
                user_id: Arc::clone(&member.user_id),
                info_json: member.info_json.clone(),
            };
            // Presence is soft state: with the disk full the member still joins (unlogged).
            let lsn = journal.append(&record).unwrap_or(0);
            self.apply_record(record, lsn, true);
        }
        if !known {
            let owned = self.channels.get_mut(channel).expect("still there");
            let members = owned.members.as_mut().expect("presence");
            members
                .get_mut(&member.user_id)
                .expect("just joined")
                .connections = 1;
        }
        Ok(!known)
    }

    /// The answer to a subscription that was counted in: presence data, the cached event, the
    /// position and the resume replay, as the app asks.
    fn joined_reply(
        &mut self,
        channel: &ChannelKey,
        resume: Option<Box<ResumeAfter>>,
        journal: &mut dyn Journal,
    ) -> SubscribeReply {
        let owned = &self.channels[channel];
        let presence_data = owned.presence_data();
        let cached = channel::is_cache(&channel.name).then(|| self.cached_frame(channel));
        if matches!(cached, Some(None)) {
            self.cache_miss_webhook(channel);
        }
        let sequence = self.wants_sequence(channel);
        let position = sequence.then(|| self.position(channel, journal));
        let replay = match (sequence, resume) {
            (true, Some(resume)) => Some(self.replay_for(channel, &resume)),
            _ => None,
        };
        SubscribeReply::Joined {
            presence_data,
            cached,
            position,
            replay,
        }
    }

    /// The channel's (epoch, last seq); a channel without a history gets one now, logged so a
    /// subscriber's position survives a restart.
    fn position(&mut self, channel: &ChannelKey, journal: &mut dyn Journal) -> (u64, u64) {
        if let Some(log) = self.histories.log(channel) {
            return (log.epoch, log.seq);
        }
        let epoch = self.next_epoch();
        let record = OwnerRecord::ChannelState {
            channel: channel.clone(),
            epoch,
            seq: 0,
        };
        let lsn = journal.append(&record).unwrap_or(0);
        self.apply_record(record, lsn, true);
        (epoch, 0)
    }

    /// Every event after the client's position, or nothing when they are not all retained.
    /// Events published excluding the client's previous socket were never for it: skipped.
    fn replay_for(&mut self, channel: &ChannelKey, resume: &ResumeAfter) -> Replay {
        match self.histories.missed(channel, resume.epoch, resume.seq) {
            Missed::Complete(events) => {
                let frames = events
                    .into_iter()
                    .filter(|event| event.exclude.is_none() || event.exclude != resume.socket_id)
                    .map(|event| self.event_frame(&history_publish(channel, &event), event.seq))
                    .collect();
                Replay {
                    recovered: true,
                    frames,
                }
            }
            Missed::Incomplete => Replay {
                recovered: false,
                frames: Vec::new(),
            },
        }
    }

    /// A subscribe found an empty cache slot: one `cache_miss` webhook per channel per interval.
    fn cache_miss_webhook(&mut self, channel: &ChannelKey) {
        if self.apps.get(channel.app).webhooks.is_empty() {
            return;
        }
        let now_ms = self.now.mono_ms;
        let recent = self
            .cache_misses
            .get(channel)
            .is_some_and(|&sent| now_ms < sent + CACHE_MISS_WEBHOOK_INTERVAL_MS);
        if recent {
            return;
        }
        self.cache_misses.insert(channel.clone(), now_ms);
        self.webhook(channel.app, WebhookKind::CacheMiss, &channel.name, |_| {});
    }

    fn unsubscribe(
        &mut self,
        from: usize,
        channel: &ChannelKey,
        user_id: Option<Arc<str>>,
        socket_id: Option<SocketId>,
        journal: &mut dyn Journal,
    ) {
        let owned = self
            .channels
            .get_mut(channel)
            .expect("unsubscribe from a channel the owner never counted");
        assert!(
            owned.per_core[from] > 0,
            "owner count underflow for {channel:?}"
        );
        owned.per_core[from] -= 1;
        owned.total -= 1;
        let mut left = None;
        if let (Some(user_id), Some(members)) = (user_id, owned.members.as_mut()) {
            let state = members
                .get_mut(&user_id)
                .expect("presence member of a counted subscription");
            state.connections -= 1;
            if state.connections == 0 {
                left = Some(user_id);
            }
        }
        let presence = owned.members.is_some();
        let vacated = owned.total == 0;
        if let Some(user_id) = left {
            self.member_left(channel, user_id, socket_id, journal);
        }
        if vacated {
            if self
                .channels
                .get(channel)
                .is_some_and(OwnedChannel::is_empty)
            {
                self.channels.remove(channel);
            }
            self.webhook(
                channel.app,
                WebhookKind::ChannelVacated,
                &channel.name,
                |_| {},
            );
            let now_ms = self.now.mono_ms;
            self.histories.forget_if_idle(channel, false, now_ms);
            return;
        }
        if !presence {
            self.owe_subscription_count(channel);
        }
    }

    /// Sends the channel's subscription count now, or marks it owed when the channel is large
    /// and one was sent recently (the timer pays the debt); nothing when nobody wants it (the
    /// app neither sends counts nor has webhook targets).
    fn owe_subscription_count(&mut self, channel: &ChannelKey) {
        let app = self.apps.get(channel.app);
        if !app.enable_subscription_count && app.webhooks.is_empty() {
            return;
        }
        let now_ms = self.now.mono_ms;
        let Some(owned) = self.channels.get_mut(channel) else {
            return;
        };
        if owned.total > SUBSCRIPTION_COUNT_EAGER_MAX
            && now_ms < owned.count_sent_ms + SUBSCRIPTION_COUNT_INTERVAL_MS
        {
            if !owned.count_owed {
                owned.count_owed = true;
                self.counts_owed.push(channel.clone());
            }
            return;
        }
        owned.count_sent_ms = now_ms;
        owned.count_owed = false;
        let total = owned.total;
        self.send_subscription_count(channel.clone(), total);
    }

    /// The count event to subscribers (when the app enables it) and the webhook (when the app
    /// has webhook targets).
    fn send_subscription_count(&mut self, channel: ChannelKey, total: u64) {
        self.webhook(
            channel.app,
            WebhookKind::SubscriptionCount,
            &channel.name,
            |event| {
                event.subscription_count = Some(total);
            },
        );
        if self.apps.get(channel.app).enable_subscription_count {
            let text = outbound::subscription_count(&channel.name, total);
            let frame = frame::encode_text(text.as_bytes());
            let published_us = self.now.mono_us;
            self.fan_out(&channel, &frame, None, published_us);
        }
    }

    /// Timer: sends owed subscription counts whose interval has passed.
    fn pay_owed_counts(&mut self) {
        let now_ms = self.now.mono_ms;
        let owed = std::mem::take(&mut self.counts_owed);
        for channel in owed {
            let Some(owned) = self.channels.get_mut(&channel) else {
                continue;
            };
            if !owned.count_owed {
                continue;
            }
            if now_ms < owned.count_sent_ms + SUBSCRIPTION_COUNT_INTERVAL_MS {
                self.counts_owed.push(channel);
                continue;
            }
            owned.count_owed = false;
            owned.count_sent_ms = now_ms;
            let total = owned.total;
            self.send_subscription_count(channel, total);
        }
    }

    /// The cached event's frame, when there is an unexpired one.
    fn cached_frame(&mut self, channel: &ChannelKey) -> Option<Bytes> {
        let now_ms = self.now.unix_ms;
        let cached = self.caches.get(channel)?;
        if cached.expires_unix_ms <= now_ms {
            self.caches.remove(channel);
            return None;
        }
        if let Some(frame) = &cached.frame {
            return Some(frame.clone());
        }
        let frame = self.event_frame(&cached.publish, cached.seq);
        self.caches.get_mut(channel).expect("checked").frame = Some(frame.clone());
        Some(frame)
    }

    /// Occupied channels this core owns for `app` whose name starts with `prefix` (the
    /// server-to-user channels are internal and never listed).
    fn owned_channels(&self, app: u32, prefix: &str) -> Vec<ChannelSummary> {
        self.channels
            .iter()
            .filter(|(key, owned)| {
                key.app == app
                    && owned.total > 0
                    && key.name.starts_with(prefix)
                    && !key.name.starts_with(channel::SERVER_TO_USER_PREFIX)
            })
            .map(|(key, owned)| ChannelSummary {
                name: Arc::clone(&key.name),
                subscription_count: owned.total,
                user_count: owned.user_count(),
            })
            .collect()
    }

    /// What the owner knows about one channel, for REST.
    fn channel_info(&mut self, channel: &ChannelKey, with_users: bool) -> ChannelInfo {
        let now_ms = self.now.unix_ms;
        let cache = channel::is_cache(&channel.name)
            .then(|| {
                self.caches
                    .get(channel)
                    .filter(|cached| cached.expires_unix_ms > now_ms)
            })
            .flatten()
            .map(|cached| {
                (
                    Box::from(&*cached.publish.data),
                    (cached.expires_unix_ms - now_ms).div_ceil(1000),
                )
            });
        let Some(owned) = self.channels.get(channel) else {
            return ChannelInfo {
                users: with_users.then(Vec::new),
                cache,
                ..ChannelInfo::default()
            };
        };
        ChannelInfo {
            subscription_count: owned.total,
            user_count: owned.user_count(),
            users: with_users.then(|| {
                let mut ids: Vec<Arc<str>> = owned
                    .members
                    .iter()
                    .flat_map(|m| m.keys().cloned())
                    .collect();
                ids.sort();
                ids
            }),
            cache,
        }
    }

    /// Counts a signed-in connection of `user_id` in or out; tells watchers about 0↔1
    /// transitions on their `#server-to-user-` channels.
    fn user_presence(&mut self, app: u32, user_id: Arc<str>, online: bool) {
        let key = (app, Arc::clone(&user_id));
        let entry = self.users.entry(key.clone()).or_default();
        let changed = if online {
            entry.connections += 1;
            entry.connections == 1
        } else {
            assert!(entry.connections > 0, "user connection count underflow");
            entry.connections -= 1;
            entry.connections == 0
        };
        let watchers: Vec<Arc<str>> = if changed {
            entry.watchers.keys().cloned().collect()
        } else {
            Vec::new()
        };
        if entry.connections == 0 && entry.watchers.is_empty() {
            self.users.remove(&key);
        }
        if !self.apps.get(app).enable_watchlist_events {
            return;
        }
        let ids = [&*user_id];
        let text = if online {
            outbound::watchlist_events(&ids, &[])
        } else {
            outbound::watchlist_events(&[], &ids)
        };
        let frame = frame::encode_text(text.as_bytes());
        let published_us = self.now.mono_us;
        for watcher in watchers {
            let channel =
                ChannelKey::new(app, &format!("{}{watcher}", channel::SERVER_TO_USER_PREFIX));
            let owner = channel.owner(self.cores);
            self.emit(
                owner,
                ShardMessage::Relay {
                    channel,
                    frame: frame.clone(),
                    published_us,
                },
            );
        }
    }

    /// A watcher connection registers interest and learns the current status.
    fn watch(
        &mut self,
        from: usize,
        app: u32,
        watcher: Arc<str>,
        watched: Arc<str>,
        conn: ConnRef,
    ) {
        debug_assert_eq!(user_key(app, &watched).owner(self.cores), self.core);
        let entry = self.users.entry((app, Arc::clone(&watched))).or_default();
        *entry.watchers.entry(watcher).or_default() += 1;
        let online = entry.connections > 0;
        self.emit(
            from,
            ShardMessage::WatchStatus {
                conn,
                watched,
                online,
            },
        );
    }

    fn unwatch(&mut self, app: u32, watcher: Arc<str>, watched: Arc<str>) {
        let key = (app, watched);
        let Some(entry) = self.users.get_mut(&key) else {
            return;
        };
        if let Some(count) = entry.watchers.get_mut(&watcher) {
            *count -= 1;
            if *count == 0 {
                entry.watchers.remove(&watcher);
            }
        }
        if entry.connections == 0 && entry.watchers.is_empty() {
            self.users.remove(&key);
        }
    }

    /// Subscribers the owner counts for `channel` (tests).
    #[cfg(test)]
    pub fn subscribers(&self, channel: &ChannelKey) -> Option<u64> {
        self.channels.get(channel).map(|owned| owned.total)
    }

    /// What REST would be told about `channel` (tests).
    #[cfg(test)]
    pub fn describe(&mut self, channel: &ChannelKey) -> ChannelInfo {
        self.channel_info(channel, false)
    }

    /// The history page of `channel` from the start (tests).
    #[cfg(test)]
    pub fn history(&self, channel: &ChannelKey) -> super::HistoryPage {
        self.histories.page(channel, 0, usize::MAX)
    }

    /// Channels the owner keeps (tests).
    #[cfg(test)]
    pub fn occupied_channels(&self) -> usize {
        self.channels.len()
    }

    /// Queues a webhook event made by the owner (see `queue_webhook`).
    fn webhook(
        &self,
        app: u32,
        kind: WebhookKind,
        channel: &Arc<str>,
        fill: impl FnOnce(&mut WebhookEvent),
    ) {
        let queues = (&*self.webhooks, self.core);
        super::queue_webhook(
            &self.apps,
            queues,
            self.now.unix_ms,
            app,
            kind,
            channel,
            fill,
        );
    }
}

/// The publish a retained event came from, as far as delivery and replay need it (a client
/// event's frame differs from a REST event's only by its `user_id`).
fn history_publish(channel: &ChannelKey, event: &HistoryEvent) -> PublishCommand {
    PublishCommand {
        channel: channel.clone(),
        event: Arc::clone(&event.event),
        data: Arc::clone(&event.data),
        exclude: event.exclude,
        user_id: event.user_id.clone(),
        published_ms: event.published_ms,
        cache: false,
        client: event.user_id.is_some(),
    }
}

/// Channels with a history and sequence numbers: every channel but the internal ones (`#`).
fn is_sequenced(channel: &ChannelKey) -> bool {
    !channel.name.starts_with('#')
}

fn history_limits(config: &Config, cores: usize) -> HistoryLimits {
    HistoryLimits {
        events_per_channel_max: config.history.events_per_channel_max,
        age_ms_max: config.history.age_secs_max * 1000,
        bytes_max: config.history.bytes_max / cores.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// A journal that keeps every record, and can be made full.
    #[derive(Default)]
    struct MemJournal {
        records: Vec<(u64, OwnerRecord)>,
        full: bool,
    }

    impl Journal for MemJournal {
        fn append(&mut self, record: &OwnerRecord) -> Result<u64, JournalFull> {
            if self.full {
                return Err(JournalFull);
            }
            let lsn = self.records.len() as u64 + 1;
            self.records.push((lsn, record.clone()));
            Ok(lsn)
        }

        fn appended_lsn(&self) -> u64 {
            self.records.len() as u64
        }

        fn enabled(&self) -> bool {
            true
        }

        fn commit(&mut self, _now: Now) -> Result<Durable, JournalFailed> {
            Ok(Durable {
                lsn: self.appended_lsn(),
                durability: Durability::Written,
                replica: None,
            })
        }

        fn maintain(&mut self, now: Now, _needed_lsn: u64) -> Result<Durable, JournalFailed> {
            self.commit(now)
        }

        fn storage_full(&self) -> bool {
            self.full
        }

        fn retention_cut(&self, _now: Now) -> u64 {
            0
        }

        fn has_pending(&self) -> bool {
            false
        }

        fn sync_due_in_ms(&self, _now: Now) -> Option<u64> {
            None
        }

        fn reload(&mut self, _apps: Arc<Apps>) {}
    }

    const NOW: Now = Now {
        mono_ms: 1_000,
        mono_us: 1_000_000,
        unix_secs: 1_700_000_000,
        unix_ms: 1_700_000_000_000,
    };

    fn owner(event_sequence: bool) -> Owner {
        let mut loaded = config::parse(config::EMBEDDED_DEFAULT).unwrap();
        loaded.config.apps[0].event_sequence = event_sequence;
        let config = Arc::new(loaded.config);
        let apps = Arc::new(Apps::new(&config));
        Owner::new(0, 1, config, apps, Arc::new(WebhookQueues::new(1)), 7)
    }

    fn publish(channel: &str, data: &str, cache: bool) -> ShardMessage {
        ShardMessage::Publish {
            publish: Box::new(PublishCommand {
                channel: ChannelKey::new(0, channel),
                event: Arc::from("e"),
                data: Arc::from(data),
                exclude: None,
                user_id: None,
                published_ms: NOW.unix_ms,
                cache,
                client: false,
            }),
            published_us: 0,
        }
    }

    fn subscribe(channel: &str, user: Option<&str>, key: u32) -> ShardMessage {
        ShardMessage::Subscribe {
            channel: ChannelKey::new(0, channel),
            conn: ConnRef {
                core: 0,
                key,
                generation: 1,
            },
            socket_id: SocketId {
                high: 1,
                low: key.into(),
            },
            member: user.map(|id| Member {
                user_id: Arc::from(id),
                info_json: "{}".into(),
            }),
            resume: None,
        }
    }

    /// A publish's acknowledgement pending at `lsn`, in mode `ack`, since `since_ms`.
    fn pending_ack(lsn: u64, ack: AckMode, since_ms: u64) -> PendingAck {
        PendingAck {
            to: 0,
            query: query(1),
            lsn,
            ack,
            since_ms,
        }
    }

    /// The journal written and fsynced through LSN 5, the standby as `replica` says.
    fn fsynced_through_5(replica: ReplicaView) -> Durable {
        Durable {
            lsn: 5,
            durability: Durability::Fsynced,
            replica: Some(replica),
        }
    }

    fn query(slot: u32) -> QueryRef {
        QueryRef {
            core: 0,
            slot,
            generation: 1,
        }
    }

    fn acks(owner: &mut Owner) -> Vec<AckOutcome> {
        let mut effects = Vec::new();
        owner.take_effects(&mut effects);
        effects
            .into_iter()
            .filter_map(|(_, message)| match message {
                ShardMessage::BarrierAck { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_replay_of_the_records_rebuilds_the_durable_state() {
        let mut live = owner(true);
        let mut journal = MemJournal::default();
        for n in 0..30 {
            let channel = format!("chan-{}", n % 3);
            live.apply(
                0,
                publish(&channel, &format!("\"{n}\""), false),
                NOW,
                &mut journal,
            );
        }
        live.apply(0, publish("cache-x", "\"last\"", true), NOW, &mut journal);
        live.apply(
            0,
            subscribe("presence-room", Some("ann"), 1),
            NOW,
            &mut journal,
        );
        live.apply(
            0,
            subscribe("presence-room", Some("bob"), 2),
            NOW,
            &mut journal,
        );
        live.apply(0, subscribe("quiet", None, 3), NOW, &mut journal);
        let bob_leaves = ShardMessage::Unsubscribe {
            channel: ChannelKey::new(0, "presence-room"),
            user_id: Some(Arc::from("bob")),
            socket_id: None,
        };
        live.apply(0, bob_leaves, NOW, &mut journal);

        let mut replayed = owner(true);
        for (lsn, record) in journal.records.clone() {
            replayed.replay(record, lsn, NOW);
        }
        replayed.replayed(NOW);
        for channel in ["chan-0", "chan-1", "chan-2", "cache-x", "quiet", "nothing"] {
            let key = ChannelKey::new(0, channel);
            assert_eq!(
                live.histories.page(&key, 0, 1000),
                replayed.histories.page(&key, 0, 1000),
                "{channel}"
            );
        }
        let cache = ChannelKey::new(0, "cache-x");
        assert_eq!(
            live.channel_info(&cache, false).cache,
            replayed.channel_info(&cache, false).cache
        );
        assert_eq!(live.cached_frame(&cache), replayed.cached_frame(&cache));
        let room = ChannelKey::new(0, "presence-room");
        let members = replayed.channel_info(&room, true).users.unwrap();
        assert_eq!(
            members,
            vec![Arc::<str>::from("ann")],
            "bob left before the crash"
        );
        assert_eq!(replayed.channel_info(&room, false).subscription_count, 0);
        assert!(replayed.needed_lsn() >= 1);

        // A snapshot of the replayed state, replayed again, is the same state (the events
        // sit in other WAL records then).
        let mut from_snapshot = owner(true);
        for (index, record) in replayed.snapshot(NOW.unix_ms).into_iter().enumerate() {
            from_snapshot.replay(record, index as u64 + 1, NOW);
        }
        let without_lsns = |mut page: super::super::HistoryPage| {
            page.events.iter_mut().for_each(|event| event.lsn = 0);
            page
        };
        for channel in ["chan-0", "chan-1", "chan-2", "cache-x", "quiet"] {
            let key = ChannelKey::new(0, channel);
            assert_eq!(
                without_lsns(live.histories.page(&key, 0, 1000)),
                without_lsns(from_snapshot.histories.page(&key, 0, 1000)),
                "{channel}"
            );
        }
        assert_eq!(
            live.cached_frame(&cache),
            from_snapshot.cached_frame(&cache)
        );
        assert_eq!(
            from_snapshot.channel_info(&room, true).users.unwrap(),
            vec![Arc::<str>::from("ann")]
        );
    }

    #[test]
    fn restored_members_who_come_back_are_reconfirmed_silently_and_the_others_removed() {
        let mut live = owner(false);
        let mut journal = MemJournal::default();
        live.apply(
            0,
            subscribe("presence-room", Some("ann"), 1),
            NOW,
            &mut journal,
        );
        live.apply(
            0,
            subscribe("presence-room", Some("bob"), 2),
            NOW,
            &mut journal,
        );
        let mut restarted = owner(false);
        for (lsn, record) in journal.records.clone() {
            restarted.replay(record, lsn, NOW);
        }
        restarted.replayed(NOW);
        let mut journal = MemJournal::default();
        restarted.apply(
            0,
            subscribe("presence-room", Some("ann"), 5),
            NOW,
            &mut journal,
        );
        let mut effects = Vec::new();
        restarted.take_effects(&mut effects);
        let added = effects.iter().any(|(_, message)| {
            matches!(message, ShardMessage::Deliver { frame, .. }
                if String::from_utf8_lossy(frame).contains("member_added"))
        });
        assert!(!added, "ann came back: no member_added");
        assert!(journal.records.is_empty(), "a reconfirmation logs nothing");
        let later = Now {
            mono_ms: NOW.mono_ms + limits::RESTORED_STATE_GRACE_MS,
            ..NOW
        };
        restarted.tick(later, 1, &mut journal);
        let room = ChannelKey::new(0, "presence-room");
        let members = restarted.channel_info(&room, true).users.unwrap();
        assert_eq!(members, vec![Arc::<str>::from("ann")]);
        assert!(matches!(
            &journal.records[..],
            [(_, OwnerRecord::PresenceLeave { user_id, .. })] if &**user_id == "bob"
        ));
    }

    #[test]
    fn carried_forward_state_no_longer_holds_old_records() {
        let mut owner = owner(true);
        let mut journal = MemJournal::default();
        owner.apply(0, publish("cache-x", "\"last\"", true), NOW, &mut journal);
        owner.apply(
            0,
            subscribe("presence-room", Some("ann"), 1),
            NOW,
            &mut journal,
        );
        owner.apply(0, subscribe("quiet", None, 2), NOW, &mut journal);
        let later = Now {
            unix_ms: NOW.unix_ms + 3_600_000,
            ..NOW
        };
        // An hour later the cached event has expired and left the history window: what is
        // left to carry is the member and the quiet channel's position.
        owner.tick(later, limits::OWNER_HOUSEKEEPING_SWEEPS, &mut journal);
        let before = journal.records.len() as u64;
        assert!(owner.needed_lsn() <= before);
        owner.carry_forward(before + 1, later, &mut journal);
        assert!(
            owner.needed_lsn() > before,
            "nothing needed is below the cut any more: {}",
            owner.needed_lsn()
        );
        let carried: Vec<&OwnerRecord> = journal.records[before as usize..]
            .iter()
            .map(|(_, record)| record)
            .collect();
        assert!(
            carried
                .iter()
                .any(|r| matches!(r, OwnerRecord::PresenceJoin { .. }))
        );
        assert!(
            carried
                .iter()
                .any(|r| matches!(r, OwnerRecord::ChannelState { .. }))
        );
        // Fresh state from fresh records: a replay of only the carried records has it all.
        let mut replayed = super::tests::owner(true);
        for (lsn, record) in journal.records[before as usize..].iter().cloned() {
            replayed.replay(record, lsn, later);
        }
        let room = ChannelKey::new(0, "presence-room");
        assert_eq!(
            replayed.channel_info(&room, true).users.unwrap(),
            vec![Arc::<str>::from("ann")]
        );
        let quiet = ChannelKey::new(0, "quiet");
        assert_eq!(
            replayed
                .histories
                .log(&quiet)
                .map(|log| (log.epoch, log.seq)),
            owner.histories.log(&quiet).map(|log| (log.epoch, log.seq))
        );
    }

    #[test]
    fn a_refused_client_event_never_blames_the_next_rest_request() {
        let mut owner = owner(false);
        let mut journal = MemJournal::default();
        owner.refuse(0, true, PublishRefusal::Busy);
        owner.apply(
            0,
            ShardMessage::Barrier {
                query: query(1),
                ack: crate::config::AckMode::Local,
            },
            NOW,
            &mut journal,
        );
        owner.committed(
            Durable {
                lsn: 0,
                durability: Durability::Written,
                replica: None,
            },
            NOW,
        );
        assert_eq!(acks(&mut owner), [AckOutcome::Durable(Durability::Written)]);
        assert_eq!(owner.take_refused_client_events(), 1);
        owner.refuse(0, false, PublishRefusal::Busy);
        owner.apply(
            0,
            ShardMessage::Barrier {
                query: query(2),
                ack: crate::config::AckMode::Local,
            },
            NOW,
            &mut journal,
        );
        assert_eq!(
            acks(&mut owner),
            [AckOutcome::Refused(PublishRefusal::Busy)]
        );
    }

    #[test]
    fn a_full_journal_refuses_the_publish_and_its_barrier_says_so() {
        let mut owner = owner(false);
        let mut journal = MemJournal::default();
        owner.apply(0, publish("a", "\"1\"", false), NOW, &mut journal);
        journal.full = true;
        owner.apply(0, publish("a", "\"2\"", false), NOW, &mut journal);
        owner.apply(
            0,
            ShardMessage::Barrier {
                query: query(1),
                ack: crate::config::AckMode::Local,
            },
            NOW,
            &mut journal,
        );
        assert_eq!(
            acks(&mut owner),
            [AckOutcome::Refused(PublishRefusal::StorageFull)]
        );
        let page = owner.histories.page(&ChannelKey::new(0, "a"), 0, 10);
        assert_eq!(page.last_seq, 1, "the refused event was not sequenced");
        journal.full = false;
        owner.apply(0, publish("a", "\"3\"", false), NOW, &mut journal);
        owner.apply(
            0,
            ShardMessage::Barrier {
                query: query(2),
                ack: crate::config::AckMode::Local,
            },
            NOW,
            &mut journal,
        );
        assert!(acks(&mut owner).is_empty(), "waits for the commit");
        owner.committed(
            Durable {
                lsn: 1,
                durability: Durability::Written,
                replica: None,
            },
            NOW,
        );
        assert!(acks(&mut owner).is_empty(), "its record is lsn 2");
        owner.committed(
            Durable {
                lsn: 2,
                durability: Durability::Fsynced,
                replica: None,
            },
            NOW,
        );
        assert_eq!(acks(&mut owner), [AckOutcome::Durable(Durability::Fsynced)]);
        let page = owner.histories.page(&ChannelKey::new(0, "a"), 0, 10);
        assert_eq!(page.last_seq, 2, "sequences continue without a gap");
    }

    // Regression (the SIGSTOP drill on CI): a commit judged the lease with the owner's clock of
    // its last apply, so a primary paused after taking a publish and resumed after its lease
    // ended answered it 200 from before the pause.
    #[test]
    fn a_commit_judges_the_lease_at_its_own_time() {
        let mut owner = owner(false);
        let mut journal = MemJournal::default();
        owner.apply(0, publish("a", "\"1\"", false), NOW, &mut journal);
        owner.apply(
            0,
            ShardMessage::Barrier {
                query: query(1),
                ack: crate::config::AckMode::Replica,
            },
            NOW,
            &mut journal,
        );
        let resumed = Now {
            mono_ms: NOW.mono_ms + 5_000,
            ..NOW
        };
        owner.committed(
            Durable {
                lsn: 1,
                durability: Durability::Written,
                replica: Some(ReplicaView {
                    received_lsn: 1,
                    durable_lsn: 1,
                    lost: false,
                    lease_until_ms: Some(NOW.mono_ms + 500),
                    frozen: false,
                    primary: true,
                }),
            },
            resumed,
        );
        assert_eq!(
            acks(&mut owner),
            [AckOutcome::Refused(PublishRefusal::NoLease)]
        );
    }

    /// A planned switchover: whatever the ack mode and the standby's state, a frozen node
    /// acknowledges only what the standby holds, waits for it (never degrades, however long
    /// and even with the standby counted lost), and refuses the rest once it stepped down.
    #[test]
    fn a_frozen_node_acknowledges_only_what_the_standby_holds() {
        let view = |received_lsn, lost, primary| ReplicaView {
            received_lsn,
            durable_lsn: 3,
            lost,
            lease_until_ms: None,
            frozen: true,
            primary,
        };
        for ack in [AckMode::Local, AckMode::Replica, AckMode::ReplicaDurable] {
            let pending = pending_ack(5, ack, 0);
            let outcome = |view, policy| {
                ack_outcome(&pending, &fsynced_through_5(view), 60_000, 1_000, policy)
            };
            for policy in [StandbyLoss::Degrade, StandbyLoss::Reject] {
                assert_eq!(
                    outcome(view(4, false, true), policy),
                    None,
                    "{ack:?}: waits"
                );
                assert_eq!(
                    outcome(view(4, true, true), policy),
                    None,
                    "{ack:?}: lost, waits"
                );
                assert_eq!(
                    outcome(view(4, true, false), policy),
                    Some(AckOutcome::Refused(PublishRefusal::Switchover)),
                    "{ack:?}: stepped down"
                );
            }
            let held = outcome(view(5, false, true), StandbyLoss::Degrade);
            if ack == AckMode::ReplicaDurable {
                assert_eq!(held, None, "synced only up to 3");
            } else {
                assert_eq!(held, Some(AckOutcome::Durable(Durability::ReplicaReceived)));
            }
        }
    }

    #[test]
    fn nothing_is_acknowledged_past_the_proven_lease_whatever_the_ack_mode() {
        let replica = |lease_until_ms| ReplicaView {
            received_lsn: 5,
            durable_lsn: 5,
            lost: false,
            lease_until_ms,
            frozen: false,
            primary: true,
        };
        for ack in [AckMode::Local, AckMode::Replica, AckMode::ReplicaDurable] {
            let pending = pending_ack(5, ack, 90);
            let outcome = |view, now| {
                ack_outcome(
                    &pending,
                    &fsynced_through_5(view),
                    now,
                    1_000,
                    StandbyLoss::Degrade,
                )
            };
            let refused = Some(AckOutcome::Refused(PublishRefusal::NoLease));
            assert_eq!(
                outcome(replica(Some(100)), 100),
                refused,
                "{ack:?}: at its end"
            );
            assert_eq!(
                outcome(replica(Some(0)), 100),
                refused,
                "{ack:?}: no lease yet"
            );
            assert!(
                matches!(
                    outcome(replica(Some(101)), 100),
                    Some(AckOutcome::Durable(_))
                ),
                "{ack:?}: within the lease"
            );
            assert!(
                matches!(outcome(replica(None), 100), Some(AckOutcome::Durable(_))),
                "{ack:?}: no witness, no lease needed"
            );
        }
        let pending = pending_ack(6, AckMode::Local, 90);
        let not_written = ack_outcome(
            &pending,
            &fsynced_through_5(replica(Some(0))),
            100,
            1_000,
            StandbyLoss::Degrade,
        );
        assert_eq!(not_written, None, "a record not yet written waits first");
    }
}
