//! Request coalescing: one origin request per key at a time in this process.
//!
//! The first request to miss on a key becomes the *leader* and goes to the
//! origin; requests for the same key that arrive meanwhile *wait* for it. When
//! the leader's response was stored, waiters are answered from it (each checked
//! against its own `Vary` fields). When it was not — `private`, `Set-Cookie`,
//! `no-store`, too large, an error — nothing is shared: each waiter goes to the
//! origin itself, because a response meant for one user must never reach
//! another. The engine's own single-flight cannot express that rule (it shares
//! whatever the loader returns), hence this small module.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::entry::Stored;

/// What a leader's request ended with, as seen by waiters.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// Still running.
    Pending,
    /// Stored under this key: waiters whose request maps to the same key
    /// (the same `Vary` variant) may use it.
    Stored(Arc<Stored>, String),
    /// Not shareable: waiters go to the origin themselves.
    NotShared,
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(watch::Receiver<Outcome>),
}

/// Held by the leader; dropping it without [`finish`](Leader::finish) tells
/// waiters to go to the origin themselves.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    tx: watch::Sender<Outcome>,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.map.lock();
        if let Some(rx) = map.get(key) {
            return Role::Waiter(rx.clone());
        }
        let (tx, rx) = watch::channel(Outcome::Pending);
        map.insert(key.to_owned(), rx);
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            tx,
        })
    }

    /// Whether a request for `key` is running (background revalidations use
    /// this to avoid starting a second one).
    pub(crate) fn running(&self, key: &str) -> bool {
        self.map.lock().contains_key(key)
    }
}

impl Leader<'_> {
    pub(crate) fn finish(self, outcome: Outcome) {
        self.tx.send_replace(outcome);
        // Drop removes the key.
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.flights.map.lock().remove(&self.key);
        if matches!(*self.tx.borrow(), Outcome::Pending) {
            self.tx.send_replace(Outcome::NotShared);
        }
    }
}

/// Waits for the leader's outcome.
pub(crate) async fn wait(mut rx: watch::Receiver<Outcome>) -> Outcome {
    loop {
        let current = rx.borrow_and_update().clone();
        if !matches!(current, Outcome::Pending) {
            return current;
        }
        if rx.changed().await.is_err() {
            // The leader is gone; its last word (if any) is still readable.
            let last = rx.borrow().clone();
            return match last {
                Outcome::Pending => Outcome::NotShared,
                other => other,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_see_the_leaders_outcome_and_a_dropped_leader_shares_nothing() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!("first is leader")
        };
        let Role::Waiter(rx) = flights.join("k") else {
            panic!("second waits")
        };
        assert!(flights.running("k"));
        drop(leader);
        assert!(matches!(wait(rx).await, Outcome::NotShared));
        assert!(!flights.running("k"));
        let Role::Leader(_again) = flights.join("k") else {
            panic!("leader again")
        };
    }
}
