//! Connection threads: the one way SQLite work leaves the runtime thread.
//!
//! A [`DbThreads`] is one or more OS threads, each owning its own SQLite
//! connection for its whole life. Callers hand over a job (a closure on the
//! connection) through a channel and await its result on a oneshot channel, so
//! an `async fn` of the store or the ledger never touches SQLite, and never
//! waits on a lock SQLite holds, on the runtime thread. A connection is never
//! shared: there is no mutex around it. Jobs run in the order they were handed
//! over (per thread); with several threads, whichever is free takes the next.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::{lock, StoreError};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Threads that each own a connection; cheap to clone (clones share them).
#[derive(Clone)]
pub struct DbThreads {
    jobs: mpsc::Sender<Job>,
}

/// How the threads compete for the CPU with the rest of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Normal,
    /// Bulk work (large history answers): the scheduler prefers everything
    /// else, so polling and the uplink are not slowed on a small box.
    Background,
}

/// The nice value of [`Priority::Background`] threads.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority (Linux: per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id.
        let r = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE)
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a reader thread's priority");
        }
    }
}

impl DbThreads {
    /// Starts one thread per connection, named `name`. The threads end when
    /// every clone of the handle is gone (after the jobs already handed over).
    pub fn spawn(name: &str, conns: Vec<Connection>) -> Result<DbThreads, StoreError> {
        DbThreads::spawn_with(name, conns, Priority::Normal)
    }

    /// [`DbThreads::spawn`] at a given priority.
    pub fn spawn_with(
        name: &str,
        conns: Vec<Connection>,
        priority: Priority,
    ) -> Result<DbThreads, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for mut conn in conns {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || {
                    if priority == Priority::Background {
                        lower_priority();
                    }
                    loop {
                        // The receiver's lock is held only while waiting for a job.
                        let job = lock(&rx).recv();
                        let Ok(job) = job else { break };
                        if catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
                            tracing::error!(thread = %std::thread::current().name().unwrap_or("?"), "a database job panicked");
                        }
                    }
                })?;
        }
        Ok(DbThreads { jobs })
    }

    /// Runs `f` on one of the threads' connections and returns its result.
    /// Nothing of it runs on the caller's thread.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` once on each of `n` threads (there must be that many), for
    /// tests that inspect every connection.
    #[cfg(test)]
    pub async fn on_each<T: Send + 'static>(
        &self,
        n: usize,
        f: fn(&Connection) -> T,
    ) -> Result<Vec<T>, StoreError> {
        // Each job waits until all have started: no thread takes two.
        let all = Arc::new(std::sync::Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (all, threads) = (all.clone(), self.clone());
                tokio::spawn(async move {
                    threads
                        .call(move |conn| {
                            all.wait();
                            Ok(f(conn))
                        })
                        .await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.map_err(|_| StoreError::Closed)??);
        }
        Ok(out)
    }
}
