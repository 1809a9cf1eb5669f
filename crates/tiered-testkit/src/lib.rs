//! Test-only helpers for `tiered`.
//!
//! * [`Loader`] — a scriptable loader: returns values, "absent", errors, panics or
//!   hangs on cue; counts its calls; can be held (loads wait until released) so a
//!   test controls exactly when a load finishes, without sleeping.
//!
//! * [`redis`] — private `redis-server` processes (standalone, TLS + ACL, a
//!   3-master Cluster) on free ports, which tests can kill, pause and resume.
//!
//! * [`postgres`] — private PostgreSQL servers on free ports, started from a
//!   template cluster (no `initdb` per test), which tests can stop, start
//!   again, kill, pause and resume.

pub mod postgres;
pub mod redis;

/// A TCP port on 127.0.0.1 that is free right now and that no other caller
/// in this process has been given (nor any server the testkit started), so
/// tests running in parallel never pick the same one for their own servers.
pub fn free_port() -> u16 {
    redis::free_port(false)
}

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

/// What one loader call does.
#[derive(Clone, Debug)]
pub enum Step<V> {
    /// Return `Ok(Some(value))`.
    Value(V),
    /// Return `Ok(None)`: the key does not exist.
    Absent,
    /// Return an error with this message.
    Fail(String),
    /// Panic.
    Panic,
    /// Never finish.
    Hang,
}

/// Yields to the runtime until `done()` holds.
///
/// # Panics
///
/// After 10 s of wall time (real time, not tokio's clock, so this also works
/// under a paused clock), naming `what`.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 10 s waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// The error a scripted loader returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// The future a [`Loader`] call returns.
pub type LoadFuture<V> = Pin<Box<dyn Future<Output = Result<Option<V>, LoadError>> + Send>>;

type Hook = Arc<dyn Fn() + Send + Sync>;

struct State<V> {
    calls: AtomicUsize,
    finished: AtomicUsize,
    script: Mutex<VecDeque<Step<V>>>,
    fallback: Mutex<Step<V>>,
    open: watch::Sender<bool>,
    hook: Mutex<Option<Hook>>,
}

/// A scriptable loader. Clones share state.
///
/// Each call takes the next scripted [`Step`], or the fallback when the script is
/// empty. While [held](Loader::hold), calls wait (after being counted) until
/// [`release`](Loader::release).
///
/// ```
/// use tiered_testkit::{LoadError, Loader, Step};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let loader = Loader::returning("row".to_string());
/// loader.then(Step::Fail("db down".into()));
/// assert_eq!((loader.load())().await, Err(LoadError("db down".into())));
/// assert_eq!((loader.load())().await, Ok(Some("row".to_string())));
/// assert_eq!(loader.calls(), 2);
/// # }
/// ```
pub struct Loader<V> {
    state: Arc<State<V>>,
}

impl<V> Clone for Loader<V> {
    fn clone(&self) -> Self {
        Loader {
            state: Arc::clone(&self.state),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Loader<V> {
    /// A loader doing `fallback` on every call not otherwise scripted.
    pub fn new(fallback: Step<V>) -> Self {
        let (open, _) = watch::channel(true);
        Loader {
            state: Arc::new(State {
                calls: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                script: Mutex::new(VecDeque::new()),
                fallback: Mutex::new(fallback),
                open,
                hook: Mutex::new(None),
            }),
        }
    }

    /// A loader that always returns `value`.
    pub fn returning(value: V) -> Self {
        Self::new(Step::Value(value))
    }

    /// Scripts the next call (calls consume steps in order).
    pub fn then(&self, step: Step<V>) -> &Self {
        self.state.script.lock().push_back(step);
        self
    }

    /// Changes what unscripted calls do.
    pub fn set_fallback(&self, step: Step<V>) {
        *self.state.fallback.lock() = step;
    }

    /// Runs `hook` at the start of every call (e.g. to advance a manual clock and
    /// so give the load a measured duration).
    pub fn on_call(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.state.hook.lock() = Some(Arc::new(hook));
    }

    /// From now on calls wait, after being counted, until [`release`](Self::release).
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }

    /// Lets waiting and future calls proceed.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Calls that returned (not panicked, hung or were dropped).
    pub fn finished(&self) -> usize {
        self.state.finished.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` calls have started (yielding to the runtime).
    ///
    /// # Panics
    ///
    /// After 10 s of wall time, so a regression fails the test instead of hanging
    /// the suite.
    pub async fn wait_for_calls(&self, n: usize) {
        eventually("loader calls", || self.calls() >= n).await;
    }

    /// A loader closure for `get_or_load`.
    pub fn load(&self) -> impl FnOnce() -> LoadFuture<V> + Send + 'static {
        let state = Arc::clone(&self.state);
        move || {
            Box::pin(async move {
                state.calls.fetch_add(1, Ordering::SeqCst);
                let hook = state.hook.lock().clone();
                if let Some(hook) = hook {
                    hook();
                }
                let step = {
                    let next = state.script.lock().pop_front();
                    next.unwrap_or_else(|| state.fallback.lock().clone())
                };
                let mut open = state.open.subscribe();
                // An error here means the sender is gone, which cannot happen while
                // `state` is alive; proceed either way.
                let _ = open.wait_for(|o| *o).await;
                let result = match step {
                    Step::Value(v) => Ok(Some(v)),
                    Step::Absent => Ok(None),
                    Step::Fail(msg) => Err(LoadError(msg)),
                    Step::Panic => panic!("scripted loader panic"),
                    Step::Hang => std::future::pending().await,
                };
                state.finished.fetch_add(1, Ordering::SeqCst);
                result
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_run_in_order_then_the_fallback() {
        let loader = Loader::returning(1u32);
        loader.then(Step::Absent).then(Step::Value(7));
        assert_eq!((loader.load())().await, Ok(None));
        assert_eq!((loader.load())().await, Ok(Some(7)));
        assert_eq!((loader.load())().await, Ok(Some(1)));
        assert_eq!((loader.calls(), loader.finished()), (3, 3));
    }

    #[tokio::test]
    async fn held_calls_wait_until_released() {
        let loader = Loader::returning(5u32);
        loader.hold();
        let call = tokio::spawn((loader.load())());
        loader.wait_for_calls(1).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!call.is_finished());
        assert_eq!(loader.finished(), 0);
        loader.release();
        assert_eq!(call.await.expect("task"), Ok(Some(5)));
    }

    #[tokio::test]
    async fn panics_and_hooks_happen() {
        let loader = Loader::new(Step::<u32>::Panic);
        let hooked = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hooked);
        loader.on_call(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        let joined = tokio::spawn((loader.load())()).await;
        assert!(joined.expect_err("must panic").is_panic());
        assert_eq!(hooked.load(Ordering::SeqCst), 1);
        assert_eq!(loader.finished(), 0);
    }
}
