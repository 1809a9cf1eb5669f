//! Single-flight: at most one load per key per process at a time.
//!
//! A *flight* is a load in progress. The first caller to miss on a key registers
//! one and starts the load as a tokio task; later callers find the flight and
//! subscribe to its outcome instead of calling the loader again.
//!
//! The registry's lock is also what makes "invalidate during load" safe: a
//! `remove`/`set`/`clear` marks the key's flight *fenced* under the lock, and the
//! load installs its result under the same lock only if it was not fenced — so a
//! removal can never be undone by a load that started before it.
//!
//! A flight is unregistered when its outcome is published, or — if its task dies
//! without publishing (panic in our own code, runtime shutdown) — by a drop guard,
//! so no key is ever wedged: the next caller finds no flight and loads again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use crate::error::Error;

/// What a load produced for one key: the value, a definite "absent", or an error.
pub(crate) type Outcome<V> = Result<Option<Arc<V>>, Error>;

pub(crate) struct Flight<V> {
    tx: watch::Sender<Option<Outcome<V>>>,
    fenced: AtomicBool,
}

impl<V> Flight<V> {
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
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

pub(crate) struct Flights<V> {
    map: Mutex<HashMap<Arc<str>, Arc<Flight<V>>>>,
}

impl<V> Flights<V> {
    pub(crate) fn new() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn lock(&self) -> Registry<'_, V> {
        Registry {
            map: self.map.lock(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.map.lock().len()
    }
}

/// The locked registry. Keep it held only for map operations and L1 inserts.
pub(crate) struct Registry<'a, V> {
    map: MutexGuard<'a, HashMap<Arc<str>, Arc<Flight<V>>>>,
}

impl<V> Registry<'_, V> {
    /// Joins `key`'s flight, or — after `recheck` finds nothing usable — starts one.
    /// The re-check under the lock closes the gap between a caller's L1 miss and a
    /// flight that finished (installed and unregistered) just before this call.
    pub(crate) fn join<E>(
        &mut self,
        key: &Arc<str>,
        recheck: impl FnOnce() -> Option<E>,
    ) -> Joined<V, E> {
        if let Some(flight) = self.map.get(&**key) {
            return Joined::Wait(Ticket {
                rx: flight.tx.subscribe(),
            });
        }
        if let Some(found) = recheck() {
            return Joined::Found(found);
        }
        let (tx, rx) = watch::channel(None);
        let flight = Arc::new(Flight {
            tx,
            fenced: AtomicBool::new(false),
        });
        self.map.insert(Arc::clone(key), Arc::clone(&flight));
        Joined::Lead(flight, Ticket { rx })
    }

    /// Starts a flight for `key` unless one is running (background refresh).
    pub(crate) fn start_if_idle(&mut self, key: &Arc<str>) -> Option<Arc<Flight<V>>> {
        if self.map.contains_key(&**key) {
            return None;
        }
        let (tx, _) = watch::channel(None);
        let flight = Arc::new(Flight {
            tx,
            fenced: AtomicBool::new(false),
        });
        self.map.insert(Arc::clone(key), Arc::clone(&flight));
        Some(flight)
    }

    /// Fences `key`'s flight: its result will be returned to its callers but not
    /// stored.
    pub(crate) fn fence(&mut self, key: &str) {
        if let Some(flight) = self.map.get(key) {
            flight.fenced.store(true, Ordering::SeqCst);
        }
    }

    /// Fences every flight (on `clear`).
    pub(crate) fn fence_all(&mut self) {
        for flight in self.map.values() {
            flight.fenced.store(true, Ordering::SeqCst);
        }
    }

    /// Unregisters `flight` if it is still the one registered for `key`.
    pub(crate) fn finish(&mut self, key: &str, flight: &Arc<Flight<V>>) {
        if self.map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            self.map.remove(key);
        }
    }
}
