//! The write path of `append`, inside the caller's transaction: lock and
//! fence the rooms, look up duplicates, assign seqs, then insert the new rows
//! and move the rooms' tips in one statement.

use std::collections::HashMap;

use sqlx::{Postgres, Transaction};

use super::decode::{pg_error, saturating_i64, to_u64};
use crate::store::{Appended, RoomBatch, RoomOutcome, StoreError};

/// A room's fence row as locked by `append`, and its tip as this call moves it.
struct LockedRoom {
    epoch: i64,
    /// `last_seq` when the lock was taken.
    committed: u64,
    /// `last_seq` after the messages this call has assigned so far.
    last_seq: u64,
}

/// `(room, sender, cid)`: the idempotency key.
type Key<'a> = (&'a str, &'a str, &'a str);

/// The body of `append`, inside the caller's transaction: a fixed number of
/// round trips however many rooms and messages the call carries (lock, look
/// up duplicates, insert and move tips).
pub(super) async fn append_in(
    tx: &mut Transaction<'_, Postgres>,
    batches: &[RoomBatch],
) -> Result<Vec<RoomOutcome>, StoreError> {
    // Lock every room of the call in one statement, in byte order of the
    // room key: two calls that share rooms lock them in the same order, so
    // group commits of overlapping rooms (a stale owner and a new one) queue
    // instead of deadlocking. The lock is held to the end of the transaction,
    // so a concurrent claim waits and then sees this call's last_seq.
    let mut room_keys: Vec<&str> = batches.iter().map(|b| b.room.as_str()).collect();
    room_keys.sort_unstable();
    room_keys.dedup();
    let locked_rows = sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT room, epoch, last_seq FROM rooms WHERE room = ANY($1) ORDER BY room FOR UPDATE",
    )
    .bind(&room_keys)
    .fetch_all(&mut **tx)
    .await
    .map_err(pg_error)?;
    let mut locked: HashMap<String, LockedRoom> = HashMap::with_capacity(locked_rows.len());
    for (room, epoch, last_seq) in locked_rows {
        let last_seq = to_u64(last_seq, "rooms.last_seq")?;
        locked.insert(
            room,
            LockedRoom {
                epoch,
                committed: last_seq,
                last_seq,
            },
        );
    }

    // Which batches commit: the room exists and its epoch is the batch's. A
    // room nobody claimed has no writer, so any batch for it is stale.
    let mut fenced: Vec<Option<u64>> = Vec::with_capacity(batches.len());
    for batch in batches {
        fenced.push(match locked.get(batch.room.as_str()) {
            None => Some(0),
            Some(room) if i64::try_from(batch.epoch).ok() != Some(room.epoch) => {
                Some(to_u64(room.epoch, "rooms.epoch")?)
            }
            Some(_) => None,
        });
    }

    // Distinct keys of the committing batches that may already be stored (a
    // room that never committed a message has nothing to deduplicate
    // against), looked up in one statement.
    let mut lookup_slot: HashMap<Key<'_>, usize> = HashMap::new();
    let (mut lookup_rooms, mut lookup_senders, mut lookup_cids) =
        (Vec::new(), Vec::new(), Vec::new());
    for (batch, fence) in batches.iter().zip(&fenced) {
        let has_history = locked
            .get(batch.room.as_str())
            .is_some_and(|room| room.committed > 0);
        if fence.is_some() || !has_history {
            continue;
        }
        for message in &batch.messages {
            let key = (
                batch.room.as_str(),
                message.sender.as_str(),
                message.cid.as_str(),
            );
            let next = lookup_rooms.len();
            lookup_slot.entry(key).or_insert_with(|| {
                lookup_rooms.push(key.0);
                lookup_senders.push(key.1);
                lookup_cids.push(key.2);
                next
            });
        }
    }

    // What each key resolved to: (seq, id, ts) of the stored original, or of
    // the first occurrence in this call.
    let mut resolved: HashMap<Key<'_>, (u64, String, i64)> = HashMap::new();
    if !lookup_rooms.is_empty() {
        // Driving the join from the key list makes PostgreSQL probe the
        // (room, sender, cid) unique index once per key.
        let rows = sqlx::query_as::<_, (String, String, String, i64, String, i64)>(
            "SELECT m.room, m.sender, m.cid, m.seq, m.id, m.ts \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(room, sender, cid) \
             JOIN messages AS m ON m.room = k.room AND m.sender = k.sender AND m.cid = k.cid",
        )
        .bind(&lookup_rooms)
        .bind(&lookup_senders)
        .bind(&lookup_cids)
        .fetch_all(&mut **tx)
        .await
        .map_err(pg_error)?;
        let keys: Vec<Key<'_>> = lookup_rooms
            .iter()
            .zip(&lookup_senders)
            .zip(&lookup_cids)
            .map(|((room, sender), cid)| (*room, *sender, *cid))
            .collect();
        for (room, sender, cid, seq, id, ts) in rows {
            if let Some(&slot) = lookup_slot.get(&(room.as_str(), sender.as_str(), cid.as_str())) {
                resolved.insert(keys[slot], (to_u64(seq, "messages.seq")?, id, ts));
            }
        }
    }

    // Assign seqs in batch order and collect the new rows column by column
    // for one multi-row insert.
    let mut rows = NewRows::default();
    let mut outcomes = Vec::with_capacity(batches.len());
    for (batch, fence) in batches.iter().zip(fenced) {
        if let Some(current_epoch) = fence {
            outcomes.push(RoomOutcome::Fenced { current_epoch });
            continue;
        }
        let Some(room) = locked.get_mut(batch.room.as_str()) else {
            return Err(StoreError::Internal(format!(
                "room {} committing without its lock",
                batch.room
            )));
        };
        let mut appended = Vec::with_capacity(batch.messages.len());
        for message in &batch.messages {
            let key = (
                batch.room.as_str(),
                message.sender.as_str(),
                message.cid.as_str(),
            );
            if let Some((seq, id, ts)) = resolved.get(&key) {
                appended.push(Appended {
                    seq: *seq,
                    id: id.clone(),
                    ts: *ts,
                    duplicate: true,
                });
                continue;
            }
            let seq = room.last_seq + 1;
            let Ok(seq_column) = i64::try_from(seq) else {
                return Err(StoreError::Internal(format!(
                    "seq {seq} of room {} does not fit PostgreSQL's BIGINT",
                    batch.room
                )));
            };
            room.last_seq = seq;
            resolved.insert(key, (seq, message.id.clone(), message.ts));
            rows.rooms.push(key.0);
            rows.seqs.push(seq_column);
            rows.ids.push(message.id.as_str());
            rows.senders.push(key.1);
            rows.cids.push(key.2);
            rows.bodies.push(message.body.as_str());
            rows.metas.push(message.meta.as_deref());
            rows.tss.push(message.ts);
            appended.push(Appended {
                seq,
                id: message.id.clone(),
                ts: message.ts,
                duplicate: false,
            });
        }
        outcomes.push(RoomOutcome::Committed(appended));
    }

    if rows.seqs.is_empty() {
        return Ok(outcomes);
    }
    let (mut tip_rooms, mut tips) = (Vec::new(), Vec::new());
    for (room, state) in &locked {
        if state.last_seq != state.committed {
            tip_rooms.push(room.as_str());
            // Fits: every assigned seq was checked against i64 above.
            tips.push(saturating_i64(state.last_seq));
        }
    }
    // The rows and the tips in one statement (one round trip): PostgreSQL
    // runs a data-modifying WITH exactly once, to completion, in the same
    // snapshot and transaction as the UPDATE.
    sqlx::query(
        "WITH inserted AS ( \
           INSERT INTO messages (room, seq, id, sender, cid, body, meta, ts) \
           SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                                $6::text[], $7::text[], $8::int8[])) \
         UPDATE rooms SET last_seq = u.last_seq \
         FROM UNNEST($9::text[], $10::int8[]) AS u(room, last_seq) WHERE rooms.room = u.room",
    )
    .bind(&rows.rooms)
    .bind(&rows.seqs)
    .bind(&rows.ids)
    .bind(&rows.senders)
    .bind(&rows.cids)
    .bind(&rows.bodies)
    .bind(&rows.metas)
    .bind(&rows.tss)
    .bind(&tip_rooms)
    .bind(&tips)
    .execute(&mut **tx)
    .await
    .map_err(pg_error)?;
    Ok(outcomes)
}

/// The new messages of one `append`, one vector per column (the shape
/// `UNNEST` takes).
#[derive(Default)]
struct NewRows<'a> {
    rooms: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<&'a str>,
    senders: Vec<&'a str>,
    cids: Vec<&'a str>,
    bodies: Vec<&'a str>,
    metas: Vec<Option<&'a str>>,
    tss: Vec<i64>,
}
