//! Single-flight: at most one load per key per process at a time.
//!
//! A *flight* is a load in progress. The first caller to miss on a key registers
//! one and starts the load as a tokio task; later callers find the flight and
//! subscribe to its outcome instead of calling the loader again.
//!
//! # Fencing
//!
//! The registry is also what makes "invalidate during load" safe. A `remove`,
//! `set` or `clear` *fences* the key's flight under the registry lock: the flight
//! is marked so its result is not stored, and it is unregistered so that callers
//! arriving after the invalidation start a new load instead of joining one that
//! read the data before it. The load installs its result under the same lock, so
//! the check and the store cannot be split by an invalidation.
//!
//! Each flight records its *birth*: the stamp it was born with and the tags its
//! entry will carry. A caller that finds a flight outdated by a later `clear` or
//! by an invalidation of one of *its* tags does not join it either: it fences it
//! and starts a fresh one. (Tag invalidations and `clear` take no registry lock;
//! a load that slips past them is still refused by the stamp check at install and
//! at read.) So "one load per key at a time" has one exception: a fenced load may
//! still be finishing while its replacement runs; only the replacement installs.
//!
//! # Never wedged
//!
//! A flight is unregistered when its outcome is published, when it is fenced, or
//! — if its task is dropped without publishing (runtime shutdown, even before the
//! task first ran) — by the task's drop guard. Waiters of a dropped flight get
//! [`Error::LoadAborted`]; the next caller finds no flight and loads again.
//!
//! The registry is sharded by key so misses on different keys do not contend.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use crate::error::Error;
use crate::invalidate::Birth;

/// What a load produced for one key: the value, a definite "absent", or an error.
pub(crate) type Outcome<V> = Result<Option<Arc<V>>, Error>;

const SHARDS: usize = 64;

pub(crate) struct Flight<V> {
    tx: watch::Sender<Option<Outcome<V>>>,
    fenced: AtomicBool,
    birth: Arc<Birth>,
}

impl<V> Flight<V> {
    fn new(birth: &Arc<Birth>) -> (Arc<Self>, Ticket<V>) {
        let (tx, rx) = watch::channel(None);
        let flight = Arc::new(Flight {
            tx,
            fenced: AtomicBool::new(false),
            birth: Arc::clone(birth),
        });
        (flight, Ticket { rx })
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// Publishes the outcome to every subscriber, present and future.
    pub(crate) fn publish(&self, outcome: Outcome<V>) {
        self.tx.send_replace(Some(outcome));
    }
}

/// A subscription to a flight's outcome.
pub(crate) struct Ticket<V> {
    rx: watch::Receiver<Option<Outcome<V>>>,
}

impl<V> Ticket<V> {
    /// Waits for the outcome.
    ///
    /// # Cancellation
    ///
    /// Dropping this future only stops waiting; the load goes on.
    pub(crate) async fn outcome(mut self) -> Outcome<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Err(Error::LoadAborted)),
            // The flight was dropped without publishing.
            Err(_) => Err(Error::LoadAborted),
        }
    }
}

/// What joining a key's flight gave.
pub(crate) enum Joined<V, E> {
    /// No flight was running and the re-check found this: use it, don't load.
    Found(E),
    /// Another caller's flight: wait on it.
    Wait(Ticket<V>),
    /// A new flight this caller must run (and can wait on too).
    Lead(Arc<Flight<V>>, Ticket<V>),
}

type Map<V> = HashMap<Arc<str>, Arc<Flight<V>>>;

/// One shard: the flights, and how many fences it has seen. A read that
/// installs without a flight (`Cache::get` filling L1 from L2) compares the
/// count before and after: any fence in the shard meanwhile — a `set` or
/// `remove` of its key, or of another key in the shard — and it does not
/// install.
struct Shard<V> {
    map: Map<V>,
    fences: u64,
}

pub(crate) struct Flights<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: foldhash::fast::RandomState,
}

impl<V> Flights<V> {
    pub(crate) fn new() -> Self {
        Flights {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        fences: 0,
                    })
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Locks the shard holding `key`. Hold it only for map operations and the L1
    /// insert of a load's result.
    pub(crate) fn lock(&self, key: &str) -> Registry<'_, V> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        Registry {
            shard: self.shards[i].lock(),
        }
    }

    /// Fences and unregisters every flight (on `clear`). The caller holds no
    /// shard lock; shards are taken one at a time.
    pub(crate) fn fence_all(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.fences += 1;
            for (_, flight) in shard.map.drain() {
                flight.fence();
            }
        }
    }

    /// Fences every flight whose key satisfies `pred` (pattern invalidation).
    pub(crate) fn fence_matching(&self, pred: impl Fn(&str) -> bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.fences += 1;
            shard.map.retain(|key, flight| {
                let hit = pred(key);
                if hit {
                    flight.fence();
                }
                !hit
            });
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

/// One locked shard of the registry.
pub(crate) struct Registry<'a, V> {
    shard: MutexGuard<'a, Shard<V>>,
}

impl<V> Registry<'_, V> {
    /// Fences seen by this shard so far (see [`Shard`]).
    pub(crate) fn fences(&self) -> u64 {
        self.shard.fences
    }

    /// Joins `key`'s flight, or — after `recheck` finds nothing usable — starts one
    /// with `birth`. A flight that `outdated` says predates an invalidation is not
    /// joined: it is fenced and replaced. The re-check under the lock closes the
    /// gap between a caller's L1 miss and a flight that finished (installed and
    /// unregistered) just before this call.
    pub(crate) fn join<E>(
        &mut self,
        key: &Arc<str>,
        birth: &Arc<Birth>,
        outdated: impl Fn(&Birth) -> bool,
        recheck: impl FnOnce() -> Option<E>,
    ) -> Joined<V, E> {
        if let Some(flight) = self.shard.map.get(&**key) {
            if !outdated(&flight.birth) {
                return Joined::Wait(Ticket {
                    rx: flight.tx.subscribe(),
                });
            }
            flight.fence();
            self.shard.map.remove(&**key);
        }
        if let Some(found) = recheck() {
            return Joined::Found(found);
        }
        let (flight, ticket) = Flight::new(birth);
        self.shard.map.insert(Arc::clone(key), Arc::clone(&flight));
        Joined::Lead(flight, ticket)
    }

    /// Starts a flight for `key` unless one is running (background refresh).
    pub(crate) fn start_if_idle(
        &mut self,
        key: &Arc<str>,
        birth: &Arc<Birth>,
    ) -> Option<Arc<Flight<V>>> {
        if self.shard.map.contains_key(&**key) {
            return None;
        }
        let (flight, _) = Flight::new(birth);
        self.shard.map.insert(Arc::clone(key), Arc::clone(&flight));
        Some(flight)
    }

    /// Fences `key`'s flight: its result goes to the callers already waiting on it
    /// but is not stored, and later callers start a new load.
    pub(crate) fn fence(&mut self, key: &str) {
        self.shard.fences += 1;
        if let Some(flight) = self.shard.map.remove(key) {
            flight.fence();
        }
    }

    /// Unregisters `flight` if it is still the one registered for `key`.
    pub(crate) fn finish(&mut self, key: &str, flight: &Arc<Flight<V>>) {
        if self
            .shard
            .map
            .get(key)
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            self.shard.map.remove(key);
        }
    }
}
