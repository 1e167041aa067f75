//! Bounded waits on a Rust client's events: each panics, naming what it
//! waited for, when nothing matching arrives within [`T`].

use std::time::Duration;

use chorus_protocol::client::{Client, Event};
use tokio::time::Instant;

pub use crate::raw::T;

/// Skip events until one matches; panics after `T`.
pub async fn wait_event(c: &mut Client, what: &str, pred: impl FnMut(&Event) -> bool) -> Event {
    c.wait_for(T, pred)
        .await
        .unwrap_or_else(|| panic!("no {what} within {T:?}"))
}

/// The `msg` with this seq in this room.
pub async fn wait_msg(c: &mut Client, room: &str, seq: u64) -> chorus_protocol::Message {
    match wait_event(
        c,
        &format!("msg {room}#{seq}"),
        |e| matches!(e, Event::Msg(m) if m.room == room && m.seq == seq),
    )
    .await
    {
        Event::Msg(m) => m,
        _ => unreachable!(),
    }
}

/// Wait for the end of the connection: its close code and reason.
pub async fn wait_closed(c: &mut Client) -> (Option<u16>, String) {
    match wait_event(c, "close", |e| matches!(e, Event::Closed { .. })).await {
        Event::Closed { code, reason } => (code, reason),
        _ => unreachable!(),
    }
}

/// Every event that arrives within `d`.
pub async fn events_for(c: &mut Client, d: Duration) -> Vec<Event> {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, c.next_event()).await {
        out.push(ev);
    }
    out
}
