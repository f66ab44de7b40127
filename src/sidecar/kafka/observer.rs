//! The observer: a thread of its own beside the data path that reads copies of relayed responses for what
//! they tell (offsets acknowledged, records delivered, commits), so that measuring (decoding Fetch
//! responses, decompressing batches, building spans) never holds the runtime thread that relays the
//! application's traffic.
//!
//! - **Bounded**: responses waiting to be observed hold at most [`OBSERVE_BUDGET`] bytes; beyond it a
//!   response is relayed but not observed, and the caller counts it.
//! - **Contained**: a panic while observing one response (or in the periodic work) is caught;
//!   `on_panic` is told (it counts it and drops what the measurement held, so no frozen value is served
//!   as fresh) and the next response is observed as usual. If the thread ends anyway, [`Observer::alive`] turns false and sends fail.
//! - **Gathered**: while traffic flows the thread looks for hand-overs every [`GATHER`] rather than being
//!   woken for each (a wake-up is a futex call on the relaying thread and a context switch: at 5,000
//!   records/s they were most of the sidecar's CPU, perf); after [`IDLE_LOOKS`] empty looks it waits to
//!   be woken again.
//! - **Recycled**: the last large copy comes back as a spare buffer for the next large response (a fresh
//!   50 MB buffer would cost 12,800 page faults on the relaying thread); freed after [`SPARE_IDLE`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Bytes of relayed responses waiting to be observed, at most (each counts its length + 256, a larger
/// one the whole budget).
pub const OBSERVE_BUDGET: u32 = 8 * 1024 * 1024;

/// How long a spare observation buffer is kept unused before it is freed.
pub const SPARE_IDLE: Duration = Duration::from_secs(2);

/// While traffic flows, how long the observer lets hand-overs gather before it looks again: measurements
/// lag the traffic by at most this; at 100 MB/s the responses waiting meanwhile hold about 200 KB of the
/// budget.
pub const GATHER: Duration = Duration::from_millis(2);

/// Empty looks in a row after which the observer waits to be woken (traffic stopped: 100 ms).
pub const IDLE_LOOKS: u32 = 50;

/// How often the observer runs its periodic work (the lag refresh), busy or idle: on this thread, never
/// on the one that relays traffic (a refresh of 10,000 partitions takes milliseconds,
/// `benches/lag_refresh.rs`).
pub const TICK: Duration = Duration::from_secs(1);

/// A relayed response to observe, with what its request asked (`A`).
pub struct Observation<A> {
    pub frame: Bytes,
    pub version: i16,
    pub latency: Duration,
    pub sent_at: SystemTime,
    pub ask: A,
    pub budget: OwnedSemaphorePermit,
}

/// The sending side, held by the relay.
pub struct Observer<A> {
    tx: Mutex<Sender<Observation<A>>>,
    budget: Arc<Semaphore>,
    spare: Mutex<Option<(BytesMut, Instant)>>,
    alive: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f`, catching a panic in it: `on_panic` is told why, and the thread goes on.
fn contained(f: impl FnOnce(), on_panic: &impl Fn(String)) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        on_panic(why);
    }
}

/// Marks the observer dead when its thread ends, however it ends.
struct AliveGuard<A: Send + 'static>(Arc<Observer<A>>);

impl<A: Send + 'static> Drop for AliveGuard<A> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }
}

impl<A: Send + 'static> Observer<A> {
    /// Starts the observer thread: `observe` is called for each observation until `shutdown` turns true,
    /// `tick` every [`TICK`]; `on_panic` after each call of either that panicked.
    pub fn start(
        mut observe: impl FnMut(Observation<A>) + Send + 'static,
        mut tick: impl FnMut() + Send + 'static,
        on_panic: impl Fn(String) + Send + 'static,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Observer<A>>> {
        let (tx, rx): (Sender<Observation<A>>, Receiver<Observation<A>>) = channel();
        let observer = Arc::new(Observer {
            tx: Mutex::new(tx),
            budget: Arc::new(Semaphore::new(OBSERVE_BUDGET as usize)),
            spare: Mutex::new(None),
            alive: AtomicBool::new(true),
        });
        let guard = AliveGuard(observer.clone());
        std::thread::Builder::new().name("eventscope-observer".into()).spawn(move || {
            let observer = &guard.0;
            let mut empty = IDLE_LOOKS;
            let mut ticked = Instant::now();
            loop {
                if ticked.elapsed() >= TICK {
                    ticked = Instant::now();
                    contained(&mut tick, &on_panic);
                }
                let o = match rx.try_recv() {
                    Ok(o) => o,
                    Err(TryRecvError::Disconnected) => return,
                    // Traffic flows: look again soon, unwoken.
                    Err(TryRecvError::Empty) if empty < IDLE_LOOKS => {
                        empty += 1;
                        std::thread::sleep(GATHER);
                        continue;
                    }
                    // Quiet: wait to be woken by the next hand-over.
                    Err(TryRecvError::Empty) => match rx.recv_timeout(Duration::from_millis(500)) {
                        Ok(o) => o,
                        Err(RecvTimeoutError::Timeout) if !*shutdown.borrow() => continue,
                        Err(_) => return,
                    },
                };
                empty = 0;
                let frame = o.frame.clone();
                contained(|| observe(o), &on_panic);
                observer.give_back(frame);
            }
        })?;
        Ok(observer)
    }

    /// Whether the observer thread still runs.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// The budget itself, for what charges its bytes as they accumulate (Fetch pieces).
    pub fn budget(&self) -> Arc<Semaphore> {
        self.budget.clone()
    }

    /// Room in the budget for a response of `len` bytes, if there is.
    pub fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let cost = (len as u32).saturating_add(260).min(OBSERVE_BUDGET);
        self.budget.clone().try_acquire_many_owned(cost).ok()
    }

    /// Hands an observation over; false if the observer is gone (the caller counts it unobserved).
    pub fn send(&self, o: Observation<A>) -> bool {
        self.alive() && lock(&self.tx).send(o).is_ok()
    }

    /// An empty buffer for a copy of `len` bytes: the spare one when it is large enough. A spare too small
    /// is freed before the larger buffer is made, never held beside it.
    pub fn buffer(&self, len: usize) -> BytesMut {
        if len >= crate::memory::OWN_PAGES_FROM {
            let spare = lock(&self.spare).take();
            if let Some((mut b, _)) = spare.filter(|(b, _)| b.capacity() >= len) {
                b.clear();
                return b;
            }
        }
        BytesMut::with_capacity(len)
    }

    /// Frees the spare buffer once it has been unused for [`SPARE_IDLE`].
    pub fn expire_spare(&self) {
        let mut spare = lock(&self.spare);
        if spare.as_ref().is_some_and(|(_, at)| at.elapsed() >= SPARE_IDLE) {
            *spare = None;
        }
    }

    /// Nothing refers to an observed frame any more: a large buffer is kept for the next large response.
    fn give_back(&self, frame: Bytes) {
        if frame.len() < crate::memory::OWN_PAGES_FROM {
            return;
        }
        if let Ok(buf) = frame.try_into_mut() {
            let mut spare = lock(&self.spare);
            if spare.as_ref().is_none_or(|(b, _)| b.capacity() <= buf.capacity()) {
                *spare = Some((buf, Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The observer hands a large buffer back whole once the decoded response that sliced it is gone,
    /// and the relay gets it back for a response that fits.
    #[test]
    fn an_observed_frame_comes_back_as_the_spare_buffer() {
        let len = crate::memory::OWN_PAGES_FROM + 10;
        let mut b = BytesMut::with_capacity(len);
        b.resize(len, 7);
        let frame = b.freeze();
        let slice = frame.slice(100..200);
        let frame = frame.try_into_mut().expect_err("a slice still refers to it");
        drop(slice);
        let back = frame.try_into_mut().expect("unique again");
        assert!(back.capacity() >= len);
        assert_eq!(back.len(), len);
    }

    fn observation(observer: &Observer<u32>, ask: u32) -> Observation<u32> {
        Observation {
            frame: Bytes::from_static(b"frame"),
            version: 0,
            latency: Duration::ZERO,
            sent_at: SystemTime::now(),
            ask,
            budget: observer.reserve(5).expect("room"),
        }
    }

    /// Defect 3: a panic while observing killed the observer thread silently, and everything after it
    /// went unobserved while the gauges kept their last values.
    #[test]
    fn a_panic_while_observing_is_contained_and_told() {
        let (_stop, shutdown) = watch::channel(false);
        let (seen_tx, seen_rx) = channel();
        let (panic_tx, panic_rx) = channel();
        let observer = Observer::start(
            move |o: Observation<u32>| {
                if o.ask == 1 {
                    panic!("observing response {}", o.ask);
                }
                seen_tx.send(o.ask).unwrap();
            },
            || {},
            move |why| panic_tx.send(why).unwrap(),
            shutdown,
        )
        .unwrap();
        for ask in [1, 2, 3] {
            assert!(observer.send(observation(&observer, ask)));
        }
        let why = panic_rx.recv_timeout(Duration::from_secs(5)).expect("the panic is told");
        assert!(why.contains("observing response 1"), "{why}");
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(5)), Ok(2));
        assert_eq!(seen_rx.recv_timeout(Duration::from_secs(5)), Ok(3));
        assert!(observer.alive());
        // Every budget permit came back, the panicking one's too.
        std::thread::sleep(Duration::from_millis(50));
        assert!(observer.reserve(OBSERVE_BUDGET as usize).is_some());
    }

    /// The periodic work runs on the observer's thread while it is idle too, and a panic in it is
    /// contained and told like one while observing.
    #[test]
    fn the_tick_runs_on_the_observers_thread_idle_or_not_and_is_contained() {
        let (_stop, shutdown) = watch::channel(false);
        let (tick_tx, tick_rx) = channel();
        let (panic_tx, panic_rx) = channel();
        let mut ticks = 0;
        let _observer = Observer::start(
            |_: Observation<u32>| {},
            move || {
                ticks += 1;
                tick_tx.send(std::thread::current().name().map(String::from)).unwrap();
                if ticks == 1 {
                    panic!("tick {ticks}");
                }
            },
            move |why| panic_tx.send(why).unwrap(),
            shutdown,
        )
        .unwrap();
        for _ in 0..2 {
            let thread = tick_rx.recv_timeout(TICK * 5).expect("a tick");
            assert_eq!(thread.as_deref(), Some("eventscope-observer"));
        }
        assert!(panic_rx.recv_timeout(Duration::from_secs(1)).unwrap().contains("tick 1"));
    }

    /// An observer whose thread is gone says so, and refuses what it can no longer observe.
    #[test]
    fn a_stopped_observer_is_not_alive_and_refuses() {
        let (stop, shutdown) = watch::channel(false);
        let observer = Observer::start(|_: Observation<u32>| {}, || {}, |_| {}, shutdown).unwrap();
        stop.send(true).unwrap();
        let mut gone = false;
        for _ in 0..100 {
            if !observer.alive() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone);
        assert!(!observer.send(observation(&observer, 9)));
    }
}
