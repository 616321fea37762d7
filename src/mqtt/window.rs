//! Which message each packet id carries, from `publish()` to PUBACK.
//!
//! rumqttc's `publish()` only queues a request; the packet id is assigned when
//! the event loop takes the request from its channel, in channel order, and
//! announced as `Outgoing::Publish(pkid)`. Every publish of a connection goes
//! through one sender (the session loop), so the n-th announced packet id
//! belongs to the n-th queued message. A packet id that is still in use when
//! the next one is due (the broker acknowledged out of order) is announced as
//! `Outgoing::AwaitAck(pkid)` and sent, with `Outgoing::Publish(pkid)`, right
//! after the PUBACK that frees it.

use std::collections::{HashMap, VecDeque};

/// What a published message carries, i.e. what its PUBACK releases.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tag {
    /// An outbox row: `mark_sent(seq)`. `newest` is its newest sample's clock.
    Data { seq: u64, points: u64, newest: i64 },
    /// A ledger uplink row: `uplink_done(id)`.
    Uplink(u64),
    /// An empty retained message clearing a removed host's metadata topic.
    ClearHost(String),
    /// A resend of stored history (not durable).
    Resend,
    /// Status, host metadata, rejections: nothing to release.
    Other,
}

impl Tag {
    pub fn is_durable(&self) -> bool {
        matches!(self, Tag::Data { .. } | Tag::Uplink(_))
    }
}

/// The messages of one connection between `publish()` and PUBACK.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Handed to the client, packet id not yet announced.
    queued: VecDeque<Tag>,
    /// Waiting for its packet id to be freed.
    collided: Option<(u16, Tag)>,
    inflight: HashMap<u16, Tag>,
    resends: usize,
}

impl Window {
    /// All messages between `publish()` and PUBACK.
    pub fn len(&self) -> usize {
        self.queued.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }

    /// Resend messages among them.
    pub fn resends(&self) -> usize {
        self.resends
    }

    /// Whether any durable message is still unacknowledged.
    pub fn has_durable(&self) -> bool {
        self.tags().any(Tag::is_durable)
    }

    fn tags(&self) -> impl Iterator<Item = &Tag> {
        self.queued
            .iter()
            .chain(self.inflight.values())
            .chain(self.collided.iter().map(|(_, t)| t))
    }

    /// A message was handed to the client (in channel order).
    pub fn queue(&mut self, tag: Tag) {
        if tag == Tag::Resend {
            self.resends += 1;
        }
        self.queued.push_back(tag);
    }

    /// The last queued message could not be handed over after all.
    pub fn unqueue_last(&mut self) -> Option<Tag> {
        let tag = self.queued.pop_back()?;
        if tag == Tag::Resend {
            self.resends -= 1;
        }
        Some(tag)
    }

    /// `Outgoing::Publish(pkid)`: the packet is on its way.
    pub fn on_outgoing(&mut self, pkid: u16) {
        let tag = match self.collided.take() {
            Some((p, tag)) if p == pkid && !self.inflight.contains_key(&pkid) => Some(tag),
            other => {
                self.collided = other;
                self.queued.pop_front()
            }
        };
        match tag {
            Some(tag) => {
                if let Some(old) = self.inflight.insert(pkid, tag) {
                    // Cannot happen with a conforming client; keep the books balanced.
                    tracing::warn!(pkid, ?old, "packet id reused before its PUBACK");
                    self.forget(&old);
                }
            }
            None => tracing::warn!(pkid, "publish announced that was never queued"),
        }
    }

    /// `Outgoing::AwaitAck(pkid)`: the next queued message waits for `pkid`.
    pub fn on_await_ack(&mut self, pkid: u16) {
        if let Some(tag) = self.queued.pop_front() {
            self.collided = Some((pkid, tag));
        }
    }

    /// `Incoming::PubAck(pkid)`: the message is delivered; returns what it carried.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Tag> {
        let tag = self.inflight.remove(&pkid)?;
        self.forget(&tag);
        Some(tag)
    }

    fn forget(&mut self, tag: &Tag) {
        if *tag == Tag::Resend {
            self.resends = self.resends.saturating_sub(1);
        }
    }

    /// The connection is gone: everything unacknowledged is dropped (durable
    /// rows stay in the database and are sent again). Returns the lowest data
    /// seq and uplink id that were in flight, where the next connection resumes.
    pub fn abandon(&mut self) -> (Option<u64>, Option<u64>) {
        let mut seq = None::<u64>;
        let mut id = None::<u64>;
        for tag in self.tags() {
            match tag {
                Tag::Data { seq: s, .. } => seq = Some(seq.map_or(*s, |m| m.min(*s))),
                Tag::Uplink(i) => id = Some(id.map_or(*i, |m| m.min(*i))),
                _ => {}
            }
        }
        *self = Window::default();
        (seq, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seq: u64) -> Tag {
        Tag::Data {
            seq,
            points: 1,
            newest: 0,
        }
    }

    #[test]
    fn packet_ids_are_matched_in_queue_order() {
        let mut w = Window::default();
        w.queue(data(7));
        w.queue(Tag::Uplink(3));
        w.queue(Tag::Other);
        assert_eq!(w.len(), 3);
        w.on_outgoing(1);
        w.on_outgoing(2);
        assert_eq!(w.on_puback(2), Some(Tag::Uplink(3)));
        assert_eq!(w.on_puback(2), None, "a second PUBACK releases nothing");
        w.on_outgoing(3);
        assert_eq!(w.on_puback(1), Some(data(7)));
        assert!(!w.has_durable());
        assert_eq!(w.on_puback(3), Some(Tag::Other));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_collision_is_resolved_by_the_freeing_puback() {
        let mut w = Window::default();
        w.queue(data(1));
        w.queue(data(2));
        w.queue(data(3));
        w.on_outgoing(1);
        w.on_outgoing(2);
        // Broker acknowledged 2 first; the next id (1 again, wrapped) is taken.
        assert_eq!(w.on_puback(2), Some(data(2)));
        w.on_await_ack(1);
        assert_eq!(w.len(), 2);
        assert_eq!(w.on_puback(1), Some(data(1)));
        w.on_outgoing(1);
        assert_eq!(w.on_puback(1), Some(data(3)));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn abandoning_reports_where_to_resume() {
        let mut w = Window::default();
        w.queue(data(10));
        w.queue(Tag::Uplink(5));
        w.queue(data(11));
        w.queue(Tag::Resend);
        w.on_outgoing(1);
        assert_eq!(w.resends(), 1);
        assert_eq!(w.unqueue_last(), Some(Tag::Resend));
        assert_eq!(w.resends(), 0);
        assert!(w.has_durable());
        assert_eq!(w.abandon(), (Some(10), Some(5)));
        assert_eq!(w.len(), 0);
        assert_eq!(w.abandon(), (None, None));
    }
}
