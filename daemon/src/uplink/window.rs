//! Our QoS 1 PUBLISHes between the spool and their PUBACK, in send order.
//!
//! Pure bookkeeping: the session loop (see the module documentation of `uplink`) tells it what
//! rumqttc did, and asks it what to send next and how far the spool may be acked.

use std::collections::VecDeque;

use rumqttc::v5::mqttbytes::v5::Publish;

/// What a slot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The spool entry with this id.
    Spool(u64),
    /// The retained `online` status of this connection.
    Online,
    /// The retained `stopped` status of a clean shutdown.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not handed to rumqttc on this connection.
    Unsent,
    /// In rumqttc's pending queue; its packet id comes with the next event after rumqttc takes it.
    Queued,
    /// Written under `pkid`; waiting for its PUBACK.
    Sent,
    /// Held by rumqttc until the packet id it drew is free again (a broker acking out of order).
    Collided,
    /// PUBACKed, or refused for good: leaves once everything before it has.
    Done,
}

#[derive(Debug)]
struct Slot {
    origin: Origin,
    publish: Publish,
    state: State,
    /// Packet id of the latest send. Kept over a lost connection: a resumed session must see
    /// the re-send under the same id (MQTT 5.0 §4.4).
    pkid: Option<u16>,
    sent_before: bool,
}

#[derive(Debug)]
pub(super) struct Window {
    slots: VecDeque<Slot>,
    capacity: usize,
    /// Newest spool id taken in; the spool is read on after it.
    last_taken: u64,
}

impl Window {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            slots: VecDeque::with_capacity(capacity + 2),
            capacity,
            last_taken: 0,
        }
    }

    /// How many more spool entries may be taken in.
    pub(super) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.slots.len())
    }

    pub(super) fn last_taken(&self) -> u64 {
        self.last_taken
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Appends a message to send. Status messages may exceed the capacity: there are at most
    /// two, and the shutdown must not wait for room.
    pub(super) fn push(&mut self, origin: Origin, publish: Publish) {
        if let Origin::Spool(id) = origin {
            self.last_taken = self.last_taken.max(id);
        }
        self.slots.push_back(Slot {
            origin,
            publish,
            state: State::Unsent,
            pkid: None,
            sent_before: false,
        });
    }

    /// Takes in a spool entry that can never be sent, so that acking in order steps over it.
    pub(super) fn push_refused(&mut self, id: u64) {
        self.push(Origin::Spool(id), Publish::default());
        if let Some(slot) = self.slots.back_mut() {
            slot.state = State::Done;
        }
    }

    /// Whether a slot waits in rumqttc's pending queue for its packet id.
    pub(super) fn is_queued(&self) -> bool {
        self.slots.iter().any(|s| s.state == State::Queued)
    }

    /// The next message to hand rumqttc, which is marked queued: under its previous packet id,
    /// flagged as a duplicate, when the session it was sent in was resumed.
    pub(super) fn queue_next(&mut self) -> Option<Publish> {
        let slot = self.slots.iter_mut().find(|s| s.state == State::Unsent)?;
        slot.state = State::Queued;
        let mut publish = slot.publish.clone();
        if let Some(pkid) = slot.pkid {
            publish.pkid = pkid;
            publish.dup = true;
        }
        Some(publish)
    }

    /// The queued message cannot be sent on this connection and never will be (too large for
    /// the broker): it is done, unsent.
    pub(super) fn refuse_queued(&mut self) -> Option<Origin> {
        let slot = self.slots.iter_mut().find(|s| s.state == State::Queued)?;
        slot.state = State::Done;
        Some(slot.origin)
    }

    /// rumqttc wrote the queued message under `pkid`. Returns it and whether it is a re-send.
    pub(super) fn queued_written(&mut self, pkid: u16) -> Option<(Origin, bool)> {
        let slot = self.slots.iter_mut().find(|s| s.state == State::Queued)?;
        slot.state = State::Sent;
        slot.pkid = Some(pkid);
        let resend = std::mem::replace(&mut slot.sent_before, true);
        Some((slot.origin, resend))
    }

    /// rumqttc drew `pkid` for the queued message but holds it until that id is acked.
    pub(super) fn queued_collided(&mut self, pkid: u16) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.state == State::Queued) {
            slot.state = State::Collided;
            slot.pkid = Some(pkid);
        }
    }

    /// rumqttc took the queued message without saying under which id: it will be sent again.
    pub(super) fn queued_lost(&mut self) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.state == State::Queued) {
            slot.state = State::Unsent;
            slot.pkid = None;
        }
    }

    /// rumqttc wrote a message held by a collision, under `pkid`. Returns whether it was ours.
    pub(super) fn collision_written(&mut self, pkid: u16) -> Option<(Origin, bool)> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.state == State::Collided && s.pkid == Some(pkid))?;
        slot.state = State::Sent;
        let resend = std::mem::replace(&mut slot.sent_before, true);
        Some((slot.origin, resend))
    }

    /// A PUBACK for `pkid` (success or refusal). Returns the message it ends, if it is ours.
    pub(super) fn acked(&mut self, pkid: u16) -> Option<Origin> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.state == State::Sent && s.pkid == Some(pkid))?;
        slot.state = State::Done;
        Some(slot.origin)
    }

    /// Removes the finished front of the window. Returns the newest spool id in it: that id and
    /// all before it may be acked in the spool.
    pub(super) fn pop_done(&mut self) -> Option<u64> {
        let mut newest = None;
        while let Some(slot) = self.slots.front()
            && slot.state == State::Done
        {
            if let Origin::Spool(id) = slot.origin {
                newest = Some(id);
            }
            self.slots.pop_front();
        }
        newest
    }

    /// Whether `publish` is one of ours. rumqttc hands our own `Publish` values back on a
    /// connection error, and their topic buffers are shared with the slots' copies (`Bytes`
    /// clones share their buffer), so the buffer's address identifies them exactly.
    pub(super) fn owns(&self, publish: &Publish) -> bool {
        self.slots.iter().any(|s| {
            !s.publish.topic.is_empty() && s.publish.topic.as_ptr() == publish.topic.as_ptr()
        })
    }

    /// The connection is gone: whatever was not acked goes again, in order, on the next one.
    /// Status messages are dropped; the next connection announces itself afresh.
    pub(super) fn connection_lost(&mut self) {
        self.slots.retain(|s| matches!(s.origin, Origin::Spool(_)));
        for slot in &mut self.slots {
            if slot.state != State::Done {
                slot.state = State::Unsent;
            }
        }
    }

    /// A new connection is up. Without the old session the packet ids mean nothing any more.
    pub(super) fn session_started(&mut self, resumed: bool) {
        if !resumed {
            for slot in &mut self.slots {
                slot.pkid = None;
            }
        }
    }
}
