//! Per-room seq tracking (pure): de-duplication and gap detection.

use std::collections::HashMap;

#[derive(Debug, Default, Clone, Copy)]
struct RoomTrack {
    /// Last seq delivered for the room.
    last: Option<u64>,
    /// Whether a `joined` arrived (and no `left` since) on this connection.
    joined: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Deliver,
    Duplicate,
    /// Deliver, but `expected` was due first.
    Gap {
        expected: u64,
    },
}

/// De-duplication and gap detection per room.
#[derive(Debug, Default)]
pub(super) struct SeqTracker {
    rooms: HashMap<String, RoomTrack>,
}

impl SeqTracker {
    #[allow(clippy::expect_used, reason = "inserted just above")]
    fn entry(&mut self, room: &str) -> &mut RoomTrack {
        // Look up by &str first: no allocation on the hot path.
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.to_owned(), RoomTrack::default());
        }
        self.rooms.get_mut(room).expect("just inserted")
    }

    /// Cursor from a resume: replay starts after `seq`.
    pub(super) fn seed(&mut self, room: &str, seq: u64) {
        self.entry(room).last = Some(seq);
    }

    /// A `join` is being written. With `since` on a room not joined here,
    /// the replay starts after `since`.
    pub(super) fn join_sent(&mut self, room: &str, since: Option<u64>) {
        if let Some(since) = since {
            let t = self.entry(room);
            if !t.joined {
                t.last = Some(since);
            }
        }
    }

    /// `joined` arrived: live messages follow the tip. Returns the cursor.
    pub(super) fn joined(&mut self, room: &str, tip: u64) -> u64 {
        let t = self.entry(room);
        t.joined = true;
        let last = t.last.map_or(tip, |l| l.max(tip));
        t.last = Some(last);
        last
    }

    pub(super) fn left(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    pub(super) fn msg(&mut self, room: &str, seq: u64) -> Verdict {
        if let Some(t) = self.rooms.get_mut(room) {
            return Self::judge(t, seq);
        }
        Self::judge(self.entry(room), seq)
    }

    fn judge(t: &mut RoomTrack, seq: u64) -> Verdict {
        match t.last {
            Some(last) if seq <= last => Verdict::Duplicate,
            Some(last) if seq > last + 1 => {
                t.last = Some(seq);
                Verdict::Gap { expected: last + 1 }
            }
            _ => {
                t.last = Some(seq);
                Verdict::Deliver
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_dedups_and_reports_gaps() {
        let mut t = SeqTracker::default();
        // First message of an unknown room is accepted as is.
        assert_eq!(t.msg("r", 5), Verdict::Deliver);
        assert_eq!(t.msg("r", 6), Verdict::Deliver);
        assert_eq!(t.msg("r", 6), Verdict::Duplicate);
        assert_eq!(t.msg("r", 3), Verdict::Duplicate);
        assert_eq!(t.msg("r", 9), Verdict::Gap { expected: 7 });
        assert_eq!(t.msg("r", 10), Verdict::Deliver);
        // Rooms are independent.
        assert_eq!(t.msg("s", 1), Verdict::Deliver);
        assert_eq!(t.msg("s", 1), Verdict::Duplicate);
    }

    #[test]
    fn tracker_join_since_and_tip() {
        let mut t = SeqTracker::default();
        // join since=3: replay 4, 5, then joined tip=5, live 6.
        t.join_sent("r", Some(3));
        assert_eq!(t.msg("r", 4), Verdict::Deliver);
        assert_eq!(t.msg("r", 5), Verdict::Deliver);
        assert_eq!(t.joined("r", 5), 5);
        assert_eq!(t.msg("r", 6), Verdict::Deliver);
        // Re-join of a joined room with an older since: replays are duplicates.
        t.join_sent("r", Some(0));
        assert_eq!(t.msg("r", 1), Verdict::Duplicate);
        assert_eq!(t.joined("r", 6), 6);
        // Join without since: live starts after the tip, no false gap.
        assert_eq!(t.joined("n", 40), 40);
        assert_eq!(t.msg("n", 41), Verdict::Deliver);
        // Not recovered (too many missed): nothing replayed, cursor jumps to tip.
        t.join_sent("big", Some(1));
        assert_eq!(t.joined("big", 50_000), 50_000);
        assert_eq!(t.msg("big", 50_001), Verdict::Deliver);
        // Leave forgets; a later join since resets.
        t.left("r");
        t.join_sent("r", Some(2));
        assert_eq!(t.msg("r", 3), Verdict::Deliver);
        // Resume seed.
        t.seed("z", 7);
        assert_eq!(t.msg("z", 7), Verdict::Duplicate);
        assert_eq!(t.msg("z", 8), Verdict::Deliver);
    }
}
