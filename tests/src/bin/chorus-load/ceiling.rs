//! The durable scenario's ceiling: what PostgreSQL itself commits on this
//! machine for chorus's rows, from a plain client with no gateway in the way.
//! The same server settings as the durable scenario (a fresh cluster from
//! `PostgresServer`, fsync and synchronous commit on), chorus's own schema
//! (applied by the store's migrations), 100-byte bodies, one room per
//! connection; each transaction inserts one batch of messages and commits.
//! Two ways to insert: `UNNEST` arrays (how chorus's append writes them) and
//! `COPY ... FROM STDIN`. The best rows/s over the batch sizes and
//! connection counts tried is the ceiling the durable acks/s are compared to.

use std::time::{Duration, Instant};

use chorus_history::{PostgresOptions, PostgresStore};
use chorus_tests::services::PostgresServer;
use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// A 100-byte body, as the durable scenario sends.
fn body(seq: i64) -> String {
    let head = format!(r#"{{"k":{seq},"pad":""#);
    format!("{head}{}\"}}", "x".repeat(100 - head.len() - 2))
}

/// Insert batches of `batch` rows into `room` until `deadline`; rows committed.
async fn writer(
    pool: PgPool,
    room: String,
    batch: usize,
    copy: bool,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut seq: i64 = 0;
    let mut rows = 0u64;
    while Instant::now() < deadline {
        let mut tx = pool.begin().await?;
        let first = seq + 1;
        seq += batch as i64;
        let seqs: Vec<i64> = (first..=seq).collect();
        if copy {
            let mut text = String::with_capacity(batch * 200);
            for s in &seqs {
                // room, seq, id, sender, cid, body, meta (NULL), ts
                text.push_str(&format!(
                    "{room}\t{s}\t{}\tsender\tc{s}\t{}\t\\N\t{s}\n",
                    uuid::Uuid::now_v7(),
                    body(*s)
                ));
            }
            let mut sink = tx
                .copy_in_raw(
                    "COPY messages (room, seq, id, sender, cid, body, meta, ts) FROM STDIN",
                )
                .await?;
            sink.send(text.into_bytes()).await?;
            sink.finish().await?;
        } else {
            let ids: Vec<String> = seqs
                .iter()
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect();
            let cids: Vec<String> = seqs.iter().map(|s| format!("c{s}")).collect();
            let bodies: Vec<String> = seqs.iter().map(|s| body(*s)).collect();
            let rooms = vec![room.as_str(); batch];
            let senders = vec!["sender"; batch];
            let metas: Vec<Option<&str>> = vec![None; batch];
            sqlx::query(
                "INSERT INTO messages (room, seq, id, sender, cid, body, meta, ts) \
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::int8[])",
            )
            .bind(&rooms)
            .bind(&seqs)
            .bind(&ids)
            .bind(&senders)
            .bind(&cids)
            .bind(&bodies)
            .bind(&metas)
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        rows += batch as u64;
    }
    Ok(rows)
}

/// Every combination for `secs` each; prints a line each and the best.
pub(crate) async fn pg_ceiling(secs: u64, quick: bool) -> anyhow::Result<Value> {
    let pg = PostgresServer::start();
    let url = pg.create_database();
    // chorus's schema, by the store's own migrations.
    drop(PostgresStore::connect_with(&url, PostgresOptions::default()).await?);
    let (batches, conns): (&[usize], &[usize]) = if quick {
        (&[16, 64], &[2])
    } else {
        (&[1, 16, 64, 256], &[2, 8, 32])
    };
    let mut runs = Vec::new();
    let mut best = (0.0f64, String::new());
    let mut round = 0;
    for method in ["unnest", "copy"] {
        for &batch in batches {
            for &n in conns {
                let pool = PgPoolOptions::new()
                    .max_connections(n as u32)
                    .connect(&url)
                    .await?;
                let deadline = Instant::now() + Duration::from_secs(secs);
                let started = Instant::now();
                let jobs: Vec<_> = (0..n)
                    .map(|w| {
                        let room = format!("ceiling-{round}-{w}");
                        tokio::spawn(writer(
                            pool.clone(),
                            room,
                            batch,
                            method == "copy",
                            deadline,
                        ))
                    })
                    .collect();
                let mut rows = 0;
                for j in jobs {
                    rows += j.await??;
                }
                let rate = rows as f64 / started.elapsed().as_secs_f64();
                pool.close().await;
                round += 1;
                println!(
                    "  {:<13} PostgreSQL ceiling, {method}, batches of {batch}, {n} connections: {rate:.0} rows/s",
                    "postgres"
                );
                if rate > best.0 {
                    best = (
                        rate,
                        format!("{method}, batches of {batch}, {n} connections"),
                    );
                }
                runs.push(json!({"method": method, "batch": batch, "connections": n, "rows_per_sec": rate}));
            }
        }
    }
    println!(
        "  {:<13} PostgreSQL ceiling: {:.0} rows/s ({})",
        "postgres", best.0, best.1
    );
    Ok(json!({"rows_per_sec": best.0, "best": best.1, "runs": runs}))
}
