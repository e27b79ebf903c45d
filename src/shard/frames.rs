//! `FrameQueue`: one connection's frames waiting to be written, in order. It owns only the
//! queue's shape: the first frame is held inline, so a connection that is written one frame at a
//! time (a subscriber between events, which is nearly every subscriber) allocates nothing per
//! delivery, and a backlog spills into a `VecDeque` that is freed again when the queue empties
//! (an idle connection holds no queue memory). It must not know the outbound byte bound or the
//! socket: the shard enforces the first, and for the second the driver takes the frames it sends
//! out of the queue (its send owns them until the kernel is done) and the shard puts back, at the
//! front, what the socket did not take.

use std::collections::VecDeque;

use bytes::Bytes;

/// Capacity of a spilled queue when it is first made (it grows like any `VecDeque`).
const SPILL_CAPACITY: usize = 4;

#[derive(Debug, Default)]
pub enum FrameQueue {
    #[default]
    Empty,
    One(Bytes),
    Many(VecDeque<Bytes>),
}

impl FrameQueue {
    pub fn is_empty(&self) -> bool {
        match self {
            FrameQueue::Empty => true,
            FrameQueue::One(_) => false,
            FrameQueue::Many(frames) => frames.is_empty(),
        }
    }

    pub fn push_back(&mut self, frame: Bytes) {
        match self {
            FrameQueue::Empty => *self = FrameQueue::One(frame),
            FrameQueue::One(_) => {
                let FrameQueue::One(first) = std::mem::take(self) else {
                    unreachable!("matched One");
                };
                let mut frames = VecDeque::with_capacity(SPILL_CAPACITY);
                frames.push_back(first);
                frames.push_back(frame);
                *self = FrameQueue::Many(frames);
            }
            FrameQueue::Many(frames) => frames.push_back(frame),
        }
    }

    /// Puts a frame back before every other one (the unsent rest of a send).
    pub fn push_front(&mut self, frame: Bytes) {
        match self {
            FrameQueue::Empty => *self = FrameQueue::One(frame),
            FrameQueue::One(_) => {
                let FrameQueue::One(second) = std::mem::take(self) else {
                    unreachable!("matched One");
                };
                let mut frames = VecDeque::with_capacity(SPILL_CAPACITY);
                frames.push_back(frame);
                frames.push_back(second);
                *self = FrameQueue::Many(frames);
            }
            FrameQueue::Many(frames) => frames.push_front(frame),
        }
    }

    /// Removes the oldest frame; a spilled queue that becomes empty is freed.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        match self {
            FrameQueue::Empty => None,
            FrameQueue::One(_) => match std::mem::take(self) {
                FrameQueue::One(frame) => Some(frame),
                _ => unreachable!("matched One"),
            },
            FrameQueue::Many(frames) => {
                let frame = frames.pop_front();
                if frames.is_empty() {
                    *self = FrameQueue::Empty;
                }
                frame
            }
        }
    }

    /// The frames, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        let (one, many) = match self {
            FrameQueue::Empty => (None, None),
            FrameQueue::One(frame) => (Some(frame), None),
            FrameQueue::Many(frames) => (None, Some(frames.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Drops every frame and any spilled storage.
    pub fn clear(&mut self) {
        *self = FrameQueue::Empty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    fn contents(queue: &FrameQueue) -> Vec<&[u8]> {
        queue.iter().map(|frame| &frame[..]).collect()
    }

    #[test]
    fn keeps_order_through_inline_and_spilled_states() {
        let mut queue = FrameQueue::default();
        assert!(queue.is_empty());
        assert_eq!(queue.pop_front(), None);
        queue.push_back(frame("a"));
        assert!(matches!(queue, FrameQueue::One(_)));
        queue.push_back(frame("b"));
        queue.push_back(frame("c"));
        assert!(matches!(queue, FrameQueue::Many(_)));
        assert_eq!(queue.iter().count(), 3);
        assert_eq!(contents(&queue), [&b"a"[..], b"b", b"c"]);
        assert_eq!(queue.pop_front(), Some(frame("a")));
        queue.push_back(frame("d"));
        assert_eq!(contents(&queue), [&b"b"[..], b"c", b"d"]);
        assert_eq!(queue.pop_front(), Some(frame("b")));
        assert_eq!(queue.pop_front(), Some(frame("c")));
        assert_eq!(queue.pop_front(), Some(frame("d")));
        // The spilled storage is gone with the last frame.
        assert!(matches!(queue, FrameQueue::Empty));
        assert_eq!(queue.pop_front(), None);
    }

    #[test]
    fn one_frame_at_a_time_never_spills() {
        let mut queue = FrameQueue::default();
        for _ in 0..3 {
            queue.push_back(frame("event"));
            assert!(matches!(queue, FrameQueue::One(_)));
            assert_eq!(queue.pop_front(), Some(frame("event")));
            assert!(queue.is_empty());
            // The unsent rest of a send goes back alone: still inline.
            queue.push_front(frame("nt"));
            assert!(matches!(queue, FrameQueue::One(_)));
            assert_eq!(queue.pop_front(), Some(frame("nt")));
        }
    }

    #[test]
    fn push_front_goes_before_everything_in_every_state() {
        let mut queue = FrameQueue::default();
        queue.push_back(frame("c"));
        queue.push_front(frame("b"));
        assert!(matches!(queue, FrameQueue::Many(_)));
        queue.push_front(frame("a"));
        queue.push_back(frame("d"));
        assert_eq!(contents(&queue), [&b"a"[..], b"b", b"c", b"d"]);
    }

    #[test]
    fn clear_drops_everything() {
        let mut queue = FrameQueue::default();
        queue.push_back(frame("a"));
        queue.push_back(frame("b"));
        queue.clear();
        assert!(queue.is_empty());
        assert_eq!(queue.iter().count(), 0);
    }

    #[test]
    fn costs_a_connection_at_most_one_word_more_than_a_deque() {
        assert!(size_of::<FrameQueue>() <= size_of::<VecDeque<Bytes>>() + 8);
    }
}
