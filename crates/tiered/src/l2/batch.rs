//! Read batching: reads from many tasks at once are merged into one multi-key
//! read (`MGET`), with no batching task of its own.
//!
//! At most [`MAX_IN_FLIGHT`] batches are on the wire at once. A read that
//! finds a free slot sends itself at once (a lone read has no added delay and
//! no task hop); one that finds none queues. When a batch comes back, the task
//! that sent it answers the batch's readers and hands its slot, with the reads
//! queued meanwhile, to the first of them: that reader wakes up (it would
//! have, for its answer) and sends them all as the next batch. So under load
//! the reads that arrive while a batch is on the wire ride together in the
//! next one, and a read costs one wake-up, as a plain `GET` on a multiplexed
//! connection does. One `MGET` of 50 keys costs Redis and the client far less
//! than 50 `GET`s — this is what lets the L2 path beat a hand-written `GET`
//! per request (see BENCHMARKS.md).
//!
//! A reader's future may be dropped at any point (a caller's timeout). The
//! slot and the reads it carries are then passed on by [`Turn`]'s `Drop`, so
//! a cancelled reader can neither leak a slot nor strand the reads it was to
//! send.
//!
//! A queued read has no timer of its own: a timer per read (registered and
//! cancelled in tokio's timer wheel) was ~3% of a busy L2 read path's CPU.
//! Instead each queued read carries its deadline, and whoever hands on a
//! slot answers the reads whose deadline has passed with a timeout rather
//! than sending them. Slots are handed on as calls end, and every call is
//! bounded (by the caller's `send`), so a read waits at most its `wait` plus
//! one call.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use parking_lot::Mutex;
use tokio::sync::oneshot;
// tokio's clock, as the calls' own timeouts use: a paused test clock moves
// both.
use tokio::time::Instant;

use super::L2Error;

/// Read batches on the wire at once; more reads wait and are merged.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// The most keys merged into one batch.
pub(crate) const MAX_BATCH_KEYS: usize = 512;

/// The result of a raw multi-key read: one value per key, in order.
pub(crate) type RawValues = Result<Vec<Option<Vec<u8>>>, L2Error>;

/// Merges concurrent reads (see the module docs).
#[derive(Default)]
pub(crate) struct Batcher {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Batches on the wire (slots held by a [`Turn`]).
    in_flight: usize,
    /// Reads waiting for a slot, oldest first.
    queue: VecDeque<Waiting>,
}

/// A queued read.
struct Waiting {
    keys: Vec<String>,
    reply: oneshot::Sender<Reply>,
    /// Not sent after this: answered with a timeout instead.
    deadline: Instant,
    wait: Duration,
}

/// What a queued reader is woken with.
enum Reply {
    /// Its values.
    Values(RawValues),
    /// A slot, and the reads to send with its own.
    Lead(Turn),
}

/// The right to have one batch on the wire, with the reads to send in it.
/// Dropped, it passes both on (see [`pass_on`]).
struct Turn {
    /// `None` once the turn has been passed on by other means.
    state: Option<Arc<Mutex<State>>>,
    /// The keys of the reader holding the turn (kept with the turn until it
    /// is received, as the reader's queued request is consumed to send it).
    own: Vec<String>,
    /// Other reads this turn must answer.
    waiting: Vec<Waiting>,
}

impl Batcher {
    /// Reads `keys` with `send`, merged with concurrent reads. `send` is
    /// given the merged keys and must return one value per key, in order (an
    /// answer of another length fails the batch), and must be bounded in
    /// time. A read still queued `wait` after it came is answered with
    /// [`L2Error::Timeout`] when the next slot is handed on, so it waits at
    /// most `wait` plus one call.
    pub(crate) async fn read<F, Fut>(&self, keys: Vec<String>, wait: Duration, send: F) -> RawValues
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = RawValues>,
    {
        // Decided under the lock, which must not be held across an await.
        // Left: a free slot, send now; right: queued.
        let queued = {
            let mut state = self.state.lock();
            if state.in_flight < MAX_IN_FLIGHT {
                state.in_flight += 1;
                Either::Left(keys)
            } else {
                let (reply, answer) = oneshot::channel();
                state.queue.push_back(Waiting {
                    keys,
                    reply,
                    deadline: Instant::now() + wait,
                    wait,
                });
                Either::Right(answer)
            }
        };
        let answer = match queued {
            Either::Right(answer) => answer,
            Either::Left(keys) => {
                let turn = Turn {
                    state: Some(Arc::clone(&self.state)),
                    own: keys,
                    waiting: Vec::new(),
                };
                return lead(turn, send).await;
            }
        };
        match answer.await {
            Ok(Reply::Values(values)) => values,
            Ok(Reply::Lead(turn)) => lead(turn, send).await,
            // Whoever held the reply dropped it without answering; cannot
            // happen (a `Turn` answers or passes on every read it holds), but
            // a miss is the safe answer.
            Err(_) => Err(L2Error::Backend("read batch lost".into())),
        }
    }
}

/// Sends the turn's batch (its holder's keys first) and answers the others.
async fn lead<F, Fut>(mut turn: Turn, send: F) -> RawValues
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: Future<Output = RawValues>,
{
    let own = turn.own.len();
    let mut keys = std::mem::take(&mut turn.own);
    for w in &turn.waiting {
        keys.extend(w.keys.iter().cloned());
    }
    let n = keys.len();
    // If this await is cancelled, `turn` still holds the other reads and
    // passes them on when dropped.
    let result = send(keys).await;
    let waiting = std::mem::take(&mut turn.waiting);
    // The slot goes to the next queued reads before anyone is answered, so
    // the next batch is on its way as early as possible.
    drop(turn);
    match result {
        Ok(values) if values.len() != n => {
            let error = L2Error::Backend(format!("{} values for {n} keys", values.len()));
            for w in waiting {
                let _ = w.reply.send(Reply::Values(Err(error.clone())));
            }
            Err(error)
        }
        Ok(mut values) => {
            let mut rest = values.split_off(own).into_iter();
            for w in waiting {
                let part = rest.by_ref().take(w.keys.len()).collect();
                let _ = w.reply.send(Reply::Values(Ok(part)));
            }
            Ok(values)
        }
        Err(error) => {
            for w in waiting {
                let _ = w.reply.send(Reply::Values(Err(error.clone())));
            }
            Err(error)
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            pass_on(&state, std::mem::take(&mut self.waiting));
        }
    }
}

/// Passes a slot on: puts back `unanswered` (reads a turn did not answer),
/// skips queued reads whose reader is gone, answers those whose deadline has
/// passed with a timeout, then gives the slot and up to
/// [`MAX_BATCH_KEYS`] keys' worth of queued reads to the oldest queued reader,
/// or frees the slot if none waits. A loop, not recursion through `Drop`:
/// a reader gone between the check and the hand-over refuses the turn, and
/// the next one is tried.
fn pass_on(state: &Arc<Mutex<State>>, mut unanswered: Vec<Waiting>) {
    let now = Instant::now();
    let mut late = Vec::new();
    loop {
        let (first, batch) = {
            let mut guard = state.lock();
            for w in unanswered.drain(..).rev() {
                guard.queue.push_front(w);
            }
            // Readers that gave up are skipped as they come to the front.
            let mut batch: Vec<Waiting> = Vec::new();
            let mut keys = 0;
            while let Some(w) = guard.queue.pop_front() {
                if w.reply.is_closed() {
                    continue;
                }
                if w.deadline <= now {
                    late.push(w);
                    continue;
                }
                if !batch.is_empty() && keys + w.keys.len() > MAX_BATCH_KEYS {
                    guard.queue.push_front(w);
                    break;
                }
                keys += w.keys.len();
                batch.push(w);
            }
            if batch.is_empty() {
                guard.in_flight -= 1;
                drop(guard);
                time_out(late);
                return;
            }
            let first = batch.remove(0);
            (first, batch)
        };
        let turn = Turn {
            state: Some(Arc::clone(state)),
            own: first.keys,
            waiting: batch,
        };
        let Err(Reply::Lead(mut refused)) = first.reply.send(Reply::Lead(turn)) else {
            time_out(late);
            return;
        };
        refused.state = None;
        unanswered = std::mem::take(&mut refused.waiting);
    }
}

/// Answers reads whose deadline passed in the queue (outside the lock).
fn time_out(late: Vec<Waiting>) {
    for w in late {
        let _ = w.reply.send(Reply::Values(Err(L2Error::Timeout(w.wait))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    const WAIT: Duration = Duration::from_secs(10);

    fn values(keys: &[String]) -> Vec<Option<Vec<u8>>> {
        keys.iter().map(|k| Some(k.as_bytes().to_vec())).collect()
    }

    /// A `send` that records the batch sizes and waits for a permit.
    async fn gated(keys: Vec<String>, gate: &Semaphore, sizes: &Mutex<Vec<usize>>) -> RawValues {
        sizes.lock().push(keys.len());
        gate.acquire().await.expect("gate open").forget();
        Ok(values(&keys))
    }

    /// Fills every slot with a read whose call waits at `gate`; returns the
    /// readers once each has sent its call.
    async fn fill_slots(
        batcher: &Arc<Batcher>,
        gate: &Arc<Semaphore>,
        sizes: &Arc<Mutex<Vec<usize>>>,
    ) -> Vec<tokio::task::JoinHandle<RawValues>> {
        let mut leaders = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            let (batcher, gate, seen) = (batcher.clone(), gate.clone(), sizes.clone());
            leaders.push(tokio::spawn(async move {
                batcher
                    .read(vec![format!("l{i}")], WAIT, |keys| async move {
                        gated(keys, &gate, &seen).await
                    })
                    .await
            }));
            while sizes.lock().len() <= i {
                tokio::task::yield_now().await;
            }
        }
        leaders
    }

    #[tokio::test]
    async fn a_lone_read_is_sent_at_once() {
        let batcher = Batcher::default();
        let got = batcher
            .read(vec!["a".into(), "b".into()], WAIT, |keys| async move {
                Ok(values(&keys))
            })
            .await
            .expect("read");
        assert_eq!(got, vec![Some(b"a".to_vec()), Some(b"b".to_vec())]);
        assert_eq!(batcher.state.lock().in_flight, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_queued_behind_full_slots_are_merged_and_each_gets_its_own_values() {
        let batcher = Arc::new(Batcher::default());
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (batcher, gate, seen) = (batcher.clone(), gate.clone(), sizes.clone());
            tasks.push(tokio::spawn(async move {
                let keys = vec![format!("k{i}"), format!("x{i}")];
                let got = batcher
                    .read(
                        keys,
                        WAIT,
                        |keys| async move { gated(keys, &gate, &seen).await },
                    )
                    .await
                    .expect("read");
                assert_eq!(
                    got,
                    vec![
                        Some(format!("k{i}").into_bytes()),
                        Some(format!("x{i}").into_bytes())
                    ]
                );
            }));
            // The first two take the slots; let them get there first.
            if i < 2 {
                while sizes.lock().len() <= i {
                    tokio::task::yield_now().await;
                }
            }
        }
        while batcher.state.lock().queue.len() < 38 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1000);
        for t in tasks {
            t.await.expect("task");
        }
        let sizes = sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 80, "{sizes:?}");
        // Two lone reads, then the 38 queued ones in one batch.
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        assert_eq!(batcher.state.lock().in_flight, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_sender_passes_its_reads_on() {
        let batcher = Arc::new(Batcher::default());
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        // Fill both slots with reads that never return…
        let leaders = fill_slots(&batcher, &gate, &sizes).await;
        // …queue reads behind them, one of which is given up on…
        let calls = Arc::new(AtomicUsize::new(0));
        let mut queued = Vec::new();
        for i in 0..5 {
            let (batcher, calls) = (batcher.clone(), calls.clone());
            queued.push(tokio::spawn(async move {
                batcher
                    .read(vec![format!("q{i}")], WAIT, |keys| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok(values(&keys))
                    })
                    .await
            }));
        }
        while batcher.state.lock().queue.len() < 5 {
            tokio::task::yield_now().await;
        }
        queued.remove(0).abort();
        // …then cancel the senders: the queued reads are still answered.
        for l in leaders {
            l.abort();
            let _ = l.await;
        }
        for (i, q) in queued.into_iter().enumerate() {
            let got = q.await.expect("task").expect("read");
            assert_eq!(got, vec![Some(format!("q{}", i + 1).into_bytes())]);
        }
        assert!(calls.load(Ordering::SeqCst) >= 1);
        assert_eq!(batcher.state.lock().in_flight, 0);
        assert!(batcher.state.lock().queue.is_empty());
    }

    /// Queues a read of `key` behind the full slots (a batch it sends
    /// records its size in `sizes`); returns its task once the queue holds
    /// `queued` reads.
    async fn queue_read(
        batcher: &Arc<Batcher>,
        sizes: &Arc<Mutex<Vec<usize>>>,
        key: String,
        wait: Duration,
        queued: usize,
    ) -> tokio::task::JoinHandle<RawValues> {
        let task = {
            let (batcher, sizes) = (batcher.clone(), sizes.clone());
            tokio::spawn(async move {
                batcher
                    .read(vec![key], wait, |keys| async move {
                        sizes.lock().push(keys.len());
                        Ok(values(&keys))
                    })
                    .await
            })
        };
        while batcher.state.lock().queue.len() < queued {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_that_gave_up_are_skipped_and_the_next_live_one_is_served() {
        let batcher = Arc::new(Batcher::default());
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let leaders = fill_slots(&batcher, &gate, &sizes).await;
        // A long queue of reads whose callers give up (their futures are
        // dropped, leaving their entries behind with no one to answer)…
        let mut quitters = Vec::new();
        for i in 0..20_000 {
            quitters.push(queue_read(&batcher, &sizes, format!("q{i}"), WAIT, i + 1).await);
        }
        for q in &quitters {
            q.abort();
        }
        for q in quitters {
            assert!(q.await.is_err_and(|e| e.is_cancelled()));
        }
        // …then one that waits.
        let live = queue_read(&batcher, &sizes, "live".into(), WAIT, 20_001).await;
        gate.add_permits(1000);
        for l in leaders {
            l.await.expect("task").expect("read");
        }
        let got = live.await.expect("task").expect("read");
        assert_eq!(got, vec![Some(b"live".to_vec())]);
        assert_eq!(*sizes.lock(), vec![1, 1, 1], "no quitter was sent");
        assert_eq!(batcher.state.lock().in_flight, 0);
        assert!(batcher.state.lock().queue.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_past_their_wait_time_out_when_a_slot_frees_and_are_not_sent() {
        let batcher = Arc::new(Batcher::default());
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let leaders = fill_slots(&batcher, &gate, &sizes).await;
        let mut late = Vec::new();
        for i in 0..100 {
            late.push(
                queue_read(
                    &batcher,
                    &sizes,
                    format!("late{i}"),
                    Duration::from_millis(1),
                    i + 1,
                )
                .await,
            );
        }
        // Their wait passes while both slots are held: nothing answers them
        // yet (no timer of their own), and they stay queued.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(late.iter().all(|t| !t.is_finished()));
        let live = queue_read(&batcher, &sizes, "live".into(), WAIT, 101).await;
        gate.add_permits(1000);
        for l in leaders {
            l.await.expect("task").expect("read");
        }
        for t in late {
            let got = t.await.expect("task");
            assert!(matches!(got, Err(L2Error::Timeout(_))), "{got:?}");
        }
        let got = live.await.expect("task").expect("read");
        assert_eq!(got, vec![Some(b"live".to_vec())]);
        // Sent: the two leaders' reads, then the live one alone.
        assert_eq!(*sizes.lock(), vec![1, 1, 1]);
        assert_eq!(batcher.state.lock().in_flight, 0);
        assert!(batcher.state.lock().queue.is_empty());
    }

    #[tokio::test]
    async fn a_short_answer_fails_every_read_in_the_batch() {
        let batcher = Batcher::default();
        let got = batcher
            .read(vec!["a".into(), "b".into()], WAIT, |_| async {
                Ok(vec![None])
            })
            .await;
        assert!(matches!(got, Err(L2Error::Backend(_))), "{got:?}");
        assert_eq!(batcher.state.lock().in_flight, 0);
    }
}
