use chorus_history::*;
use std::time::Instant;
#[tokio::test]
async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("h.db")).await.unwrap();
    let mut rooms = vec![];
    for r in 0..10 { let c = s.claim_room(&format!("t/r{r}")).await.unwrap(); rooms.push((format!("t/r{r}"), c.epoch)); }
    let t = Instant::now();
    let mut n = 0;
    for i in 0..200 {
        let batches: Vec<_> = rooms.iter().map(|(room, epoch)| RoomBatch { room: room.clone(), epoch: *epoch, messages: (0..20).map(|j| NewMessage { id: format!("{i}-{j}"), sender: "u".into(), cid: format!("c{i}-{j}"), body: r#"{"text":"hello world, how are you doing"}"#.into(), meta: None, ts: i }).collect() }).collect();
        s.append(&batches).await.unwrap();
        n += 200;
    }
    let e = t.elapsed();
    println!("{n} msgs in {e:?}: {:.0} msg/s, {:?}/commit", n as f64 / e.as_secs_f64(), e / 200);
    let t = Instant::now();
    for i in 0..1000 { s.read("t/r3", ReadRange::Before { before: 4000 - i, limit: 50 }).await.unwrap(); }
    println!("1000 reads of 50 in {:?}", t.elapsed());
}
