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

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use parking_lot::Mutex;
use tokio::sync::oneshot;

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
    /// answer of another length fails the batch). A queued read waits at
    /// most `wait` for its turn or its values (its values may come from
    /// another reader's call, so `wait` must allow for queueing and a call).
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
                state.queue.push_back(Waiting { keys, reply });
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
        let reply = match crate::load::sleep_until(tokio::time::Instant::now() + wait) {
            Some(sleep) => {
                match futures_util::future::select(answer, std::pin::pin!(sleep)).await {
                    Either::Left((reply, _)) => reply,
                    // The read stays queued with no one to answer: harmless.
                    Either::Right(_) => return Err(L2Error::Timeout(wait)),
                }
            }
            // Timers disabled.
            None => answer.await,
        };
        match reply {
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
/// skips queued reads whose reader is gone, then gives the slot and up to
/// [`MAX_BATCH_KEYS`] keys' worth of queued reads to the oldest queued reader,
/// or frees the slot if none waits. A loop, not recursion through `Drop`:
/// a reader gone between the check and the hand-over refuses the turn, and
/// the next one is tried.
fn pass_on(state: &Arc<Mutex<State>>, mut unanswered: Vec<Waiting>) {
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
                if !batch.is_empty() && keys + w.keys.len() > MAX_BATCH_KEYS {
                    guard.queue.push_front(w);
                    break;
                }
                keys += w.keys.len();
                batch.push(w);
            }
            if batch.is_empty() {
                guard.in_flight -= 1;
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
            return;
        };
        refused.state = None;
        unanswered = std::mem::take(&mut refused.waiting);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_that_gave_up_are_skipped_and_the_next_live_one_is_served() {
        let batcher = Arc::new(Batcher::default());
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let leaders = fill_slots(&batcher, &gate, &sizes).await;
        // A long queue of reads that give up at once (each times out and
        // leaves its entry behind, with no one to answer)…
        let mut quitters = Vec::new();
        for i in 0..20_000 {
            let batcher = batcher.clone();
            quitters.push(tokio::spawn(async move {
                batcher
                    .read(
                        vec![format!("q{i}")],
                        Duration::from_millis(1),
                        |keys| async move { Ok(values(&keys)) },
                    )
                    .await
            }));
        }
        for q in quitters {
            assert!(matches!(q.await.expect("task"), Err(L2Error::Timeout(_))));
        }
        // …then one that waits.
        let live = {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                batcher
                    .read(vec!["live".into()], WAIT, |keys| async move {
                        Ok(values(&keys))
                    })
                    .await
            })
        };
        while batcher.state.lock().queue.len() < 20_001 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1000);
        for l in leaders {
            l.await.expect("task").expect("read");
        }
        let got = live.await.expect("task").expect("read");
        assert_eq!(got, vec![Some(b"live".to_vec())]);
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
