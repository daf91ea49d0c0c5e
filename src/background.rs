//! The management plane's work yields to the data plane's.
//!
//! Creating a key, listing an account's keys, reloading the keys file: an operator's or an
//! owner's call, worth milliseconds, never worth the served requests' latency. On a small
//! machine their CPU comes out of the same cores, and at 1,000 key creations a second the
//! served p99 doubled (benches/keystore_load.sh). So that work runs on threads whose
//! scheduling priority is lowered (`nice` +10, Linux: per thread): the admin listener's own
//! threads, and one [`Worker`] thread for the key store's blocking operations, whichever
//! listener they came from. Under contention the serving threads take the cores first; on an
//! idle machine nothing changes.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

/// Niceness of the management plane's threads (0 is the default, 19 the lowest priority).
pub const MANAGEMENT_NICE: i32 = 10;

/// Lower the calling thread's scheduling priority to [`MANAGEMENT_NICE`], once (an
/// unprivileged thread cannot raise it again). Linux only; elsewhere a no-op (there the call
/// would apply to the whole process).
pub fn lower_this_thread() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        let id = libc::id_t::try_from(tid).unwrap_or(0);
        if libc::setpriority(libc::PRIO_PROCESS, id, MANAGEMENT_NICE) != 0 {
            log::debug!(
                "cannot lower a management thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The calling thread's niceness (tests, diagnostics).
#[cfg(target_os = "linux")]
pub fn this_thread_nice() -> i32 {
    // SAFETY: as in `lower_this_thread`. -1 is a valid answer, so errno is cleared first.
    unsafe {
        let id = libc::id_t::try_from(libc::gettid()).unwrap_or(0);
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, id)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for the worker past which callers are told it is busy (each is one request
/// of the management API; a queue this long is seconds of work).
const QUEUE: usize = 1024;

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    /// [`QUEUE`] jobs were already waiting.
    Busy,
    /// The job panicked, or the worker is gone.
    Failed,
}

/// One low-priority thread that runs blocking jobs in order, started on first use.
#[derive(Default)]
pub struct Worker {
    queue: OnceLock<SyncSender<Job>>,
}

impl Worker {
    /// Run `job` on the worker thread and wait for its result without blocking the caller's
    /// thread.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NotRun> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        match self.queue().try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(NotRun::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(NotRun::Failed),
        }
        result.await.map_err(|_| NotRun::Failed)
    }

    fn queue(&self) -> &SyncSender<Job> {
        self.queue.get_or_init(|| {
            let (queue, jobs) = sync_channel::<Job>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("management".into())
                .spawn(move || {
                    lower_this_thread();
                    while let Ok(job) = jobs.recv() {
                        // A panicking job drops its sender: its caller sees `Failed`, and
                        // the thread goes on with the next.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if let Err(e) = spawned {
                log::error!("cannot start the management thread: {e}");
            }
            queue
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_run_in_order_on_a_lowered_thread_and_a_panic_is_contained() {
        let worker = Worker::default();
        let (nice, name) = worker
            .run(|| {
                (
                    this_thread_nice(),
                    std::thread::current().name().map(str::to_string),
                )
            })
            .await
            .unwrap();
        // At least that low (a process started lower stays lower).
        assert!(nice >= MANAGEMENT_NICE, "{nice}");
        assert_eq!(name.as_deref(), Some("management"));
        assert_eq!(
            worker.run(|| -> u32 { panic!("boom") }).await,
            Err(NotRun::Failed)
        );
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runs = (0..10).map(|i| {
            let order = order.clone();
            worker.run(move || order.lock().unwrap().push(i))
        });
        for r in futures_util::future::join_all(runs).await {
            r.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_queue_says_busy_and_the_worker_goes_on() {
        use futures_util::FutureExt;
        let worker = Worker::default();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        // Polled once: each job is queued, its result not awaited.
        assert!(worker.run(move || wait.recv()).now_or_never().is_none());
        for _ in 0..QUEUE {
            let _ = worker.run(|| ()).now_or_never();
        }
        assert_eq!(worker.run(|| ()).now_or_never(), Some(Err(NotRun::Busy)));
        release.send(()).unwrap();
        // Once the queue drains, jobs are taken again (bounded wait).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let again = runtime.block_on(async {
            for _ in 0..500 {
                match worker.run(|| 7).await {
                    Err(NotRun::Busy) => tokio::time::sleep(Duration::from_millis(10)).await,
                    done => return done,
                }
            }
            Err(NotRun::Busy)
        });
        assert_eq!(again, Ok(7));
    }

    #[test]
    fn lowering_is_for_the_calling_thread_only() {
        let before = this_thread_nice();
        let lowered = std::thread::spawn(|| {
            lower_this_thread();
            this_thread_nice()
        })
        .join()
        .unwrap();
        assert!(lowered >= MANAGEMENT_NICE, "{lowered}");
        assert_eq!(this_thread_nice(), before);
    }
}
