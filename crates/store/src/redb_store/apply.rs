//! One batch of ops as one redb write transaction.

use std::collections::HashMap;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};

use super::{Fail, DEPTH, INBOUND, QUEUE, RETAINED, SESSIONS, SUBSCRIPTIONS};
use crate::codec;
use crate::Op;

/// Change to one session's queue depth within the transaction.
#[derive(Default)]
struct DepthDelta {
    /// The session was deleted in this transaction: start from zero, not from the table.
    reset: bool,
    count: i64,
    bytes: i64,
    next_seq: u64,
}

struct Tables<'t> {
    sessions: Table<'t, &'static str, &'static [u8]>,
    subscriptions: Table<'t, (&'static str, &'static str), &'static [u8]>,
    queue: Table<'t, (&'static str, u64), &'static [u8]>,
    depth: Table<'t, &'static str, &'static [u8]>,
    inbound: Table<'t, (&'static str, u16), ()>,
    retained: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, Fail> {
        Ok(Tables {
            sessions: txn.open_table(SESSIONS)?,
            subscriptions: txn.open_table(SUBSCRIPTIONS)?,
            queue: txn.open_table(QUEUE)?,
            depth: txn.open_table(DEPTH)?,
            inbound: txn.open_table(INBOUND)?,
            retained: txn.open_table(RETAINED)?,
        })
    }

    fn delete_session(&mut self, c: &str) -> Result<(), Fail> {
        self.sessions.remove(c)?;
        // Every (c, filter) sorts before (c + "\0", ""): no string lies between c and c + "\0".
        let after = format!("{c}\0");
        self.subscriptions
            .retain_in((c, "")..(after.as_str(), ""), |_, _| false)?;
        self.queue.retain_in((c, 0)..=(c, u64::MAX), |_, _| false)?;
        self.inbound
            .retain_in((c, 0)..=(c, u16::MAX), |_, _| false)?;
        self.depth.remove(c)?;
        Ok(())
    }

    fn apply<'o>(
        &mut self,
        op: &'o Op,
        depths: &mut HashMap<&'o str, DepthDelta>,
    ) -> Result<(), Fail> {
        match op {
            Op::PutSession { client_id, record } => {
                self.sessions
                    .insert(&**client_id, codec::encode_session(record).as_slice())?;
            }
            Op::DeleteSession { client_id } => {
                self.delete_session(client_id)?;
                depths.insert(
                    client_id,
                    DepthDelta {
                        reset: true,
                        ..DepthDelta::default()
                    },
                );
            }
            Op::PutSubscription {
                client_id,
                filter,
                record,
            } => {
                let v = codec::encode_subscription(record);
                self.subscriptions
                    .insert((&**client_id, &**filter), v.as_slice())?;
            }
            Op::DeleteSubscription { client_id, filter } => {
                self.subscriptions.remove((&**client_id, &**filter))?;
            }
            Op::PutQueued {
                client_id,
                seq,
                record,
            } => {
                let v = codec::encode_queued(record);
                let old = self
                    .queue
                    .insert((&**client_id, *seq), v.as_slice())?
                    .map(|g| codec::queued_weight(g.value()))
                    .transpose()?;
                let d = depths.entry(client_id).or_default();
                match old {
                    Some(w) => d.bytes -= w as i64,
                    None => d.count += 1,
                }
                d.bytes += record.message.weight() as i64;
                d.next_seq = d.next_seq.max(seq.saturating_add(1));
            }
            Op::DeleteQueued { client_id, seq } => {
                // A key the group both put and deleted never reached the table: this is then a
                // lookup that finds nothing, and writes nothing.
                let old = self
                    .queue
                    .remove((&**client_id, *seq))?
                    .map(|g| codec::queued_weight(g.value()))
                    .transpose()?;
                if let Some(w) = old {
                    let d = depths.entry(client_id).or_default();
                    d.count -= 1;
                    d.bytes -= w as i64;
                }
            }
            Op::PutInbound {
                client_id,
                packet_id,
            } => {
                self.inbound.insert((&**client_id, *packet_id), ())?;
            }
            Op::DeleteInbound {
                client_id,
                packet_id,
            } => {
                self.inbound.remove((&**client_id, *packet_id))?;
            }
            Op::PutRetained { topic, message } => {
                self.retained
                    .insert(&**topic, codec::encode_message(message).as_slice())?;
            }
            Op::DeleteRetained { topic } => {
                self.retained.remove(&**topic)?;
            }
        }
        Ok(())
    }

    /// Folds the transaction's depth changes into `queue_depth`, one row per session touched.
    fn write_depths(&mut self, depths: HashMap<&str, DepthDelta>) -> Result<(), Fail> {
        for (c, d) in depths {
            let (count, bytes, next_seq) = match (d.reset, self.depth.get(c)?) {
                (false, Some(g)) => codec::decode_depth(g.value())?,
                _ => (0, 0, 0),
            };
            if d.reset && d.count == 0 && d.next_seq == 0 {
                continue; // deleted and nothing queued since: the row is gone already
            }
            let row = codec::encode_depth(
                count.saturating_add_signed(d.count),
                bytes.saturating_add_signed(d.bytes),
                next_seq.max(d.next_seq),
            );
            self.depth.insert(c, row.as_slice())?;
        }
        Ok(())
    }
}

/// Applies `ops` in one transaction, committed with fsync when `sync`.
pub(super) fn apply(db: &Database, ops: &[Op], sync: bool) -> Result<(), Fail> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if sync {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    if !ops.is_empty() {
        let mut tables = Tables::open(&txn)?;
        let mut depths = HashMap::new();
        for op in ops {
            tables.apply(op, &mut depths)?;
        }
        tables.write_depths(depths)?;
    }
    txn.commit()?;
    Ok(())
}
