//! Channel history on the owner core: each channel's position (an `epoch` naming its history and
//! the sequence number of its last event) and a bounded window of its recent events, kept for
//! the REST history API and for clients that resume after a reconnect. Bounded three ways: events
//! per channel, age (wall-clock ms, as the WAL stores it), and bytes across every channel of the
//! core (the oldest event of the core goes first). It is plain data: it never reads a clock (time
//! is passed in), never builds a frame and never talks to other cores.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::mesh::ChannelKey;
use crate::protocol::socket_id::SocketId;

/// The history limits of one core (the byte budget is this core's share of `[history]
/// bytes_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub events_per_channel_max: usize,
    pub age_ms_max: u64,
    pub bytes_max: usize,
}

/// Bookkeeping bytes charged per retained event on top of its strings.
const EVENT_OVERHEAD_BYTES: usize = 96;

/// One retained event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    pub seq: u64,
    /// Wall-clock Unix ms when the event was published.
    pub published_ms: u64,
    pub event: Arc<str>,
    /// The raw JSON text of the event's `data` (a string literal for REST events).
    pub data: Arc<str>,
    /// The sender of a client event on a presence channel.
    pub user_id: Option<Arc<str>>,
    /// The socket the event was not for (the sender of a client event, or REST `socket_id`).
    pub exclude: Option<SocketId>,
    /// The WAL record that holds it (0 without a WAL): retention keeps it while it is retained.
    pub lsn: u64,
}

impl HistoryEvent {
    fn bytes(&self) -> usize {
        EVENT_OVERHEAD_BYTES
            + self.event.len()
            + self.data.len()
            + self.user_id.as_ref().map_or(0, |id| id.len())
    }
}

/// A channel's position and retained events.
#[derive(Debug)]
pub struct ChannelLog {
    /// Names this history; a new epoch starts when the old history was lost.
    pub epoch: u64,
    /// The sequence number of the channel's last event (0 before the first).
    pub seq: u64,
    events: VecDeque<HistoryEvent>,
    /// The WAL record that last set the position without an event (`ChannelState`), 0 if none.
    pub state_lsn: u64,
    /// Monotonic ms until which an idle log is kept anyway (restored by a replay; 0 = no grace).
    pub keep_until_ms: u64,
}

impl ChannelLog {
    /// The retained events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &HistoryEvent> {
        self.events.iter()
    }

    fn first_seq(&self) -> u64 {
        self.events.front().map_or(self.seq + 1, |event| event.seq)
    }
}

/// What a resuming client gets: every missed event, or a statement that they are not all here.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// Every event after the client's position, oldest first (possibly none).
    Complete(Vec<HistoryEvent>),
    /// The epoch differs or some events are no longer retained: nothing is replayed.
    Incomplete,
}

/// A page of the REST history API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// `None` when the channel has no history at all.
    pub epoch: Option<u64>,
    /// The oldest retained event (`last_seq + 1` when none is retained).
    pub first_seq: u64,
    pub last_seq: u64,
    /// False when some events after `after` are no longer retained.
    pub complete: bool,
    pub events: Vec<HistoryEvent>,
}

#[derive(Debug)]
pub struct Histories {
    logs: HashMap<ChannelKey, ChannelLog>,
    /// Every retained event of the core as (channel, seq), oldest first; entries whose event
    /// was already evicted from its channel are skipped when met.
    order: VecDeque<(ChannelKey, u64)>,
    bytes: usize,
    limits: HistoryLimits,
}

impl Histories {
    pub fn new(limits: HistoryLimits) -> Histories {
        Histories {
            logs: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    pub fn set_limits(&mut self, limits: HistoryLimits) {
        self.limits = limits;
    }

    pub fn log(&self, channel: &ChannelKey) -> Option<&ChannelLog> {
        self.logs.get(channel)
    }

    pub fn logs(&self) -> impl Iterator<Item = (&ChannelKey, &ChannelLog)> {
        self.logs.iter()
    }

    /// Sets a channel's position without an event (a replayed `ChannelState`): a different
    /// epoch replaces the old history.
    pub fn set_position(&mut self, channel: &ChannelKey, epoch: u64, seq: u64, lsn: u64) {
        let log = ensure_log(&mut self.logs, channel, || epoch);
        if log.epoch != epoch || seq < log.seq {
            log.epoch = epoch;
            let dropped: usize = log.events.drain(..).map(|event| event.bytes()).sum();
            self.bytes -= dropped;
        }
        let log = self.logs.get_mut(channel).expect("ensured above");
        log.seq = seq;
        log.state_lsn = lsn;
    }

    /// Records event `event` of `channel` in `epoch`. A different epoch than the log's starts a
    /// new history (the old one was lost). Sequence numbers only move forward.
    pub fn append(&mut self, channel: &ChannelKey, epoch: u64, event: HistoryEvent) {
        let keep = self.limits.events_per_channel_max;
        let log = ensure_log(&mut self.logs, channel, || epoch);
        if log.epoch != epoch {
            log.epoch = epoch;
            log.seq = 0;
            let dropped: usize = log.events.drain(..).map(|event| event.bytes()).sum();
            self.bytes -= dropped;
        }
        assert!(
            event.seq > log.seq,
            "sequence went backwards on {channel:?}"
        );
        log.seq = event.seq;
        // The event's record carries the position from now on.
        log.state_lsn = 0;
        if keep == 0 {
            return;
        }
        self.bytes += event.bytes();
        self.order.push_back((channel.clone(), event.seq));
        log.events.push_back(event);
        while log.events.len() > keep {
            let evicted = log.events.pop_front().expect("over the count");
            self.bytes -= evicted.bytes();
        }
        self.evict_for_bytes();
    }

    /// Drops the core's oldest events until the byte budget holds.
    fn evict_for_bytes(&mut self) {
        while self.bytes > self.limits.bytes_max {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    /// Evicts the oldest event still retained on the core; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((channel, seq)) = self.order.pop_front() {
            let Some(log) = self.logs.get_mut(&channel) else {
                continue;
            };
            if log.events.front().is_some_and(|event| event.seq == seq) {
                let evicted = log.events.pop_front().expect("checked");
                self.bytes -= evicted.bytes();
                return true;
            }
        }
        false
    }

    /// Evicts events older than the age limit.
    pub fn expire(&mut self, now_unix_ms: u64) {
        let oldest_kept_ms = now_unix_ms.saturating_sub(self.limits.age_ms_max);
        while let Some((channel, seq)) = self.order.front() {
            let retained = self
                .logs
                .get(channel)
                .and_then(|log| log.events.front())
                .filter(|event| event.seq == *seq);
            match retained {
                Some(event) if event.published_ms >= oldest_kept_ms => break,
                Some(_) => {
                    self.evict_oldest();
                }
                None => {
                    self.order.pop_front();
                }
            }
        }
        if self.order.capacity() > 1024 && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to_fit();
        }
    }

    /// Forgets the log of a channel with no retained event, no subscriber and no grace left:
    /// its epoch is lost, and a later event starts a new one.
    pub fn forget_if_idle(&mut self, channel: &ChannelKey, occupied: bool, now_mono_ms: u64) {
        let idle = self.logs.get(channel).is_some_and(|log| {
            log.events.is_empty() && !occupied && now_mono_ms >= log.keep_until_ms
        });
        if idle {
            self.logs.remove(channel);
        }
    }

    /// The channels whose logs have no events (candidates for `forget_if_idle`).
    pub fn empty_logs(&self) -> Vec<ChannelKey> {
        self.logs
            .iter()
            .filter(|(_, log)| log.events.is_empty())
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    /// Keeps every log that exists now at least until `until_ms` (after a replay, so clients
    /// reconnecting within the grace can resume even on channels without retained events).
    pub fn keep_all_until(&mut self, until_ms: u64) {
        for log in self.logs.values_mut() {
            log.keep_until_ms = until_ms;
        }
    }

    /// The events a client that saw everything up to `(epoch, seq)` missed.
    pub fn missed(&self, channel: &ChannelKey, epoch: u64, seq: u64) -> Missed {
        let Some(log) = self.logs.get(channel) else {
            return Missed::Incomplete;
        };
        if log.epoch != epoch || seq > log.seq {
            return Missed::Incomplete;
        }
        if seq == log.seq {
            return Missed::Complete(Vec::new());
        }
        if log.first_seq() > seq + 1 {
            return Missed::Incomplete;
        }
        Missed::Complete(
            log.events
                .iter()
                .filter(|event| event.seq > seq)
                .cloned()
                .collect(),
        )
    }

    /// Up to `limit` events after `after`, oldest first.
    pub fn page(&self, channel: &ChannelKey, after: u64, limit: usize) -> HistoryPage {
        let Some(log) = self.logs.get(channel) else {
            return HistoryPage {
                epoch: None,
                first_seq: 1,
                last_seq: 0,
                complete: after == 0,
                events: Vec::new(),
            };
        };
        let first_seq = log.first_seq();
        HistoryPage {
            epoch: Some(log.epoch),
            first_seq,
            last_seq: log.seq,
            complete: after >= log.seq || first_seq <= after + 1,
            events: log
                .events
                .iter()
                .filter(|event| event.seq > after)
                .take(limit)
                .cloned()
                .collect(),
        }
    }

    /// The oldest WAL record any retained event or position still needs (`u64::MAX` if none):
    /// a log's oldest event, or for a log without events the `ChannelState` that holds it.
    pub fn needed_lsn(&self) -> u64 {
        self.logs
            .values()
            .filter_map(|log| match log.events.front() {
                Some(event) => Some(event.lsn),
                None => (log.state_lsn > 0).then_some(log.state_lsn),
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Positions of logs without events whose record is below `cut` (or that have none):
    /// (channel, epoch, seq) to be written again so their old record can go.
    pub fn positions_below(&self, cut: u64) -> Vec<(ChannelKey, u64, u64)> {
        self.logs
            .iter()
            .filter(|(_, log)| log.events.is_empty() && log.state_lsn < cut)
            .map(|(channel, log)| (channel.clone(), log.epoch, log.seq))
            .collect()
    }

    /// Bytes charged for retained events on this core.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The log of `channel` in `logs`, made with `epoch` at position 0 when it has none.
fn ensure_log<'a>(
    logs: &'a mut HashMap<ChannelKey, ChannelLog>,
    channel: &ChannelKey,
    epoch: impl FnOnce() -> u64,
) -> &'a mut ChannelLog {
    logs.entry(channel.clone()).or_insert_with(|| ChannelLog {
        epoch: epoch(),
        seq: 0,
        events: VecDeque::new(),
        state_lsn: 0,
        keep_until_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new(0, name)
    }

    fn event(seq: u64, published_ms: u64) -> HistoryEvent {
        HistoryEvent {
            seq,
            published_ms,
            event: Arc::from("e"),
            data: Arc::from("\"d\""),
            user_id: None,
            exclude: None,
            lsn: seq,
        }
    }

    fn limits(events: usize, bytes: usize) -> HistoryLimits {
        HistoryLimits {
            events_per_channel_max: events,
            age_ms_max: 1_000,
            bytes_max: bytes,
        }
    }

    #[test]
    fn keeps_the_last_events_per_channel_and_resumes_only_when_complete() {
        let mut histories = Histories::new(limits(3, usize::MAX));
        for seq in 1..=5 {
            histories.append(&key("a"), 7, event(seq, 100));
        }
        let page = histories.page(&key("a"), 0, 100);
        assert_eq!(
            (page.first_seq, page.last_seq, page.complete),
            (3, 5, false)
        );
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(histories.page(&key("a"), 2, 100).complete);
        assert_eq!(histories.page(&key("a"), 3, 1).events[0].seq, 4);
        match histories.missed(&key("a"), 7, 2) {
            Missed::Complete(events) => assert_eq!(events.len(), 3),
            Missed::Incomplete => panic!("3..5 are retained"),
        }
        assert_eq!(histories.missed(&key("a"), 7, 1), Missed::Incomplete);
        assert_eq!(histories.missed(&key("a"), 8, 4), Missed::Incomplete);
        assert_eq!(
            histories.missed(&key("a"), 7, 5),
            Missed::Complete(Vec::new())
        );
        assert_eq!(histories.missed(&key("a"), 7, 6), Missed::Incomplete);
        assert_eq!(histories.missed(&key("b"), 7, 0), Missed::Incomplete);
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_event_of_the_core_first() {
        let one = event(1, 0).bytes();
        let mut histories = Histories::new(limits(100, 3 * one));
        histories.append(&key("a"), 1, event(1, 0));
        histories.append(&key("b"), 1, event(1, 0));
        histories.append(&key("a"), 1, event(2, 0));
        histories.append(&key("b"), 1, event(2, 0));
        assert_eq!(histories.bytes(), 3 * one);
        assert_eq!(histories.page(&key("a"), 0, 10).first_seq, 2);
        assert_eq!(histories.page(&key("b"), 0, 10).first_seq, 1);
        assert_eq!(histories.needed_lsn(), 1);
    }

    #[test]
    fn age_expiry_and_idle_logs() {
        let mut histories = Histories::new(limits(100, usize::MAX));
        histories.append(&key("a"), 1, event(1, 1_000));
        histories.append(&key("a"), 1, event(2, 5_000));
        histories.expire(5_500);
        assert_eq!(histories.page(&key("a"), 0, 10).first_seq, 2);
        histories.expire(7_000);
        let page = histories.page(&key("a"), 0, 10);
        assert_eq!((page.first_seq, page.last_seq), (3, 2));
        assert_eq!(
            histories.missed(&key("a"), 1, 2),
            Missed::Complete(Vec::new())
        );
        histories.forget_if_idle(&key("a"), true, 0);
        assert!(
            histories.log(&key("a")).is_some(),
            "occupied channels keep their position"
        );
        histories.forget_if_idle(&key("a"), false, 0);
        assert!(histories.log(&key("a")).is_none());
        assert_eq!(histories.bytes(), 0);
        assert_eq!(histories.page(&key("a"), 0, 10).epoch, None);
        assert!(!histories.page(&key("a"), 3, 10).complete);
    }

    #[test]
    fn a_new_epoch_replaces_the_old_history() {
        let mut histories = Histories::new(limits(100, usize::MAX));
        histories.append(&key("a"), 1, event(1, 0));
        histories.append(&key("a"), 1, event(2, 0));
        histories.append(&key("a"), 2, event(1, 0));
        let page = histories.page(&key("a"), 0, 10);
        assert_eq!((page.epoch, page.first_seq, page.last_seq), (Some(2), 1, 1));
        assert_eq!(histories.bytes(), event(1, 0).bytes());
    }
}
