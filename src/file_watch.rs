//! Watching the operator's files (lanes.yaml, the keys file, the classifier's weights) for
//! edits in place, renames over them and removal, without hearing anything else that lives
//! in their folders.
//!
//! Why not a plain folder watch: the ledger and the key store (SQLite, WAL) usually sit
//! beside lanes.yaml, and a folder watched for modifications reports every page SQLite
//! writes there: each creation of a key cost the kernel an event and a watcher thread a
//! wake-up, about a quarter of what a creation cost the gateway. So on Linux the folder is
//! watched only for names coming and going (created, renamed in or out, deleted) and for
//! writers closing files, and each watched file's own inode for writes; a file replaced by
//! a rename (editors, `keys new`, certbot-style tools) gets a watch on its new inode.
//! Elsewhere the files are polled every second (their readers skip unchanged content by
//! digest).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What happened to a watched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEvent {
    /// Created, or written in place (a writer may still have it open).
    Written,
    /// A writer closed it.
    Closed,
    /// Renamed over, renamed away or deleted: a writer that had it open has the old inode;
    /// the file under the name is to be read again. Also sent for every file when events
    /// were lost (the kernel's queue overflowed).
    Replaced,
}

/// A running watch; dropping it stops it.
pub struct FileWatch {
    task: tokio::task::JoinHandle<()>,
    /// Events read from the kernel, about watched files or not (what the watch costs).
    events_read: Arc<AtomicU64>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileWatch {
    /// Events read from the kernel so far.
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    /// Watch `files` (folders that do not exist are created) and call `on_event` with the
    /// index of the file in `files` for each event. Runs as a task of the current Tokio
    /// runtime.
    #[cfg(target_os = "linux")]
    pub fn start(
        files: &[PathBuf],
        on_event: impl FnMut(usize, FileEvent) + Send + 'static,
    ) -> std::io::Result<FileWatch> {
        let inotify = inotify::Inotify::init()?;
        let mut targets = Vec::with_capacity(files.len());
        let mut folders: Vec<(PathBuf, inotify::WatchDescriptor)> = Vec::new();
        for path in files {
            let folder = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let folder_wd = match folders.iter().find(|(f, _)| *f == folder) {
                Some((_, wd)) => wd.clone(),
                None => {
                    if let Err(e) = std::fs::create_dir_all(&folder) {
                        log::warn!("cannot create {}: {e}", folder.display());
                    }
                    let wd = inotify.watches().add(&folder, linux::FOLDER_EVENTS)?;
                    folders.push((folder, wd.clone()));
                    wd
                }
            };
            let mut target = linux::Target {
                path: path.clone(),
                name: path
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_default(),
                folder_wd,
                file_wd: None,
            };
            // Absent for now: its creation in the folder adds the watch.
            target.watch_file(&mut inotify.watches());
            targets.push(target);
        }
        let stream = inotify.into_event_stream(vec![0u8; 4096])?;
        let events_read = Arc::new(AtomicU64::new(0));
        Ok(FileWatch {
            task: tokio::spawn(linux::run(stream, targets, events_read.clone(), on_event)),
            events_read,
        })
    }

    /// Poll: every second, each file is reported replaced (read again if its digest moved).
    #[cfg(not(target_os = "linux"))]
    pub fn start(
        files: &[PathBuf],
        mut on_event: impl FnMut(usize, FileEvent) + Send + 'static,
    ) -> std::io::Result<FileWatch> {
        let count = files.len();
        Ok(FileWatch {
            events_read: Arc::default(),
            task: tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    for i in 0..count {
                        on_event(i, FileEvent::Replaced);
                    }
                }
            }),
        })
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::FileEvent;
    use futures_util::StreamExt;
    use inotify::{EventMask, EventStream, WatchDescriptor, WatchMask, Watches};
    use std::ffi::OsString;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// On a folder: names appearing and going, and writers closing files (a file created
    /// and written before its own watch was added is still seen closed). Not `MODIFY`: that
    /// is every write of every file in the folder.
    pub(super) const FOLDER_EVENTS: WatchMask = WatchMask::CREATE
        .union(WatchMask::MOVED_TO)
        .union(WatchMask::MOVED_FROM)
        .union(WatchMask::DELETE)
        .union(WatchMask::CLOSE_WRITE);
    /// On a watched file's inode: its writes.
    const FILE_EVENTS: WatchMask = WatchMask::MODIFY;

    pub(super) struct Target {
        pub(super) path: PathBuf,
        pub(super) name: OsString,
        pub(super) folder_wd: WatchDescriptor,
        pub(super) file_wd: Option<WatchDescriptor>,
    }

    impl Target {
        /// Watch the inode now under the name (none when the file is absent).
        pub(super) fn watch_file(&mut self, watches: &mut Watches) {
            self.file_wd = watches.add(&self.path, FILE_EVENTS).ok();
        }

        fn forget_file(&mut self, watches: &mut Watches) {
            if let Some(wd) = self.file_wd.take() {
                // Already gone with its inode when the file was deleted: nothing to undo.
                let _ = watches.remove(wd);
            }
        }
    }

    /// What an event means for a target, if it concerns it.
    fn classify(mask: EventMask) -> Option<FileEvent> {
        if mask.contains(EventMask::CLOSE_WRITE) {
            Some(FileEvent::Closed)
        } else if mask.intersects(EventMask::CREATE | EventMask::MODIFY) {
            Some(FileEvent::Written)
        } else if mask.intersects(EventMask::MOVED_TO | EventMask::MOVED_FROM | EventMask::DELETE) {
            Some(FileEvent::Replaced)
        } else {
            None
        }
    }

    pub(super) async fn run(
        mut stream: EventStream<Vec<u8>>,
        mut targets: Vec<Target>,
        events_read: Arc<AtomicU64>,
        mut on_event: impl FnMut(usize, FileEvent),
    ) {
        let mut watches = stream.watches();
        while let Some(event) = stream.next().await {
            events_read.fetch_add(1, Ordering::Relaxed);
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    log::warn!("file watching stopped ({e}); reload with SIGHUP");
                    return;
                }
            };
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                for (i, t) in targets.iter_mut().enumerate() {
                    t.forget_file(&mut watches);
                    t.watch_file(&mut watches);
                    on_event(i, FileEvent::Replaced);
                }
                continue;
            }
            for (i, t) in targets.iter_mut().enumerate() {
                let on_file = t.file_wd.as_ref() == Some(&event.wd);
                let in_folder =
                    event.wd == t.folder_wd && event.name.as_deref() == Some(t.name.as_os_str());
                if on_file && event.mask.contains(EventMask::IGNORED) {
                    t.file_wd = None;
                    continue;
                }
                if !(on_file || in_folder) {
                    continue;
                }
                let Some(what) = classify(event.mask) else {
                    continue;
                };
                if in_folder {
                    if event
                        .mask
                        .intersects(EventMask::CREATE | EventMask::MOVED_TO)
                    {
                        t.forget_file(&mut watches);
                        t.watch_file(&mut watches);
                    } else if event
                        .mask
                        .intersects(EventMask::MOVED_FROM | EventMask::DELETE)
                    {
                        t.forget_file(&mut watches);
                    }
                }
                on_event(i, what);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    type Seen = Arc<Mutex<Vec<(usize, FileEvent)>>>;

    fn watch(files: &[PathBuf]) -> (FileWatch, Seen) {
        let seen: Seen = Arc::default();
        let sink = seen.clone();
        let watch = FileWatch::start(files, move |i, e| sink.lock().unwrap().push((i, e)))
            .expect("inotify");
        (watch, seen)
    }

    /// Wait (bounded) until `seen` holds an event matching `want`.
    async fn saw(seen: &Seen, want: impl Fn(&(usize, FileEvent)) -> bool) -> bool {
        for _ in 0..200 {
            if seen.lock().unwrap().iter().any(&want) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn writes_to_other_files_of_the_folder_are_not_heard() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = dir.path().join("lanes.yaml");
        std::fs::write(&lanes, "a: 1\n").unwrap();
        // Two databases beside it, opened before and written many times (as SQLite does,
        // alternately, so the kernel could not fold their events into one).
        let mut db = std::fs::File::create(dir.path().join("ledger.sqlite")).unwrap();
        let mut wal = std::fs::File::create(dir.path().join("ledger.sqlite-wal")).unwrap();
        let (watch, seen) = watch(std::slice::from_ref(&lanes));
        for _ in 0..100 {
            db.write_all(&[0u8; 4096]).unwrap();
            wal.write_all(&[0u8; 4096]).unwrap();
        }
        // Then one edit of the watched file: the only events are about it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&lanes)
            .unwrap()
            .write_all(b"b: 2\n")
            .unwrap();
        assert!(saw(&seen, |e| *e == (0, FileEvent::Closed)).await);
        let events = seen.lock().unwrap().clone();
        assert!(events.iter().all(|(i, _)| *i == 0), "{events:?}");
        assert!(events.contains(&(0, FileEvent::Written)), "{events:?}");
        // Its write and its close, not the databases' 200 writes.
        assert!(
            watch.events_read() <= 3,
            "{} events read",
            watch.events_read()
        );
        drop((db, wal));
    }

    #[tokio::test]
    async fn a_file_renamed_over_is_watched_on_its_new_inode() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.yaml");
        let other = dir.path().join("lanes.yaml");
        std::fs::write(&keys, "old\n").unwrap();
        let (_watch, seen) = watch(&[other.clone(), keys.clone()]);
        let tmp = dir.path().join(".keys.yaml.tmp");
        std::fs::write(&tmp, "new\n").unwrap();
        std::fs::rename(&tmp, &keys).unwrap();
        assert!(saw(&seen, |e| *e == (1, FileEvent::Replaced)).await);
        seen.lock().unwrap().clear();
        // The new inode's in-place writes are heard (the old inode's watch went with it).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&keys)
            .unwrap();
        f.write_all(b"more\n").unwrap();
        assert!(saw(&seen, |e| *e == (1, FileEvent::Written)).await);
        drop(f);
        assert!(saw(&seen, |e| *e == (1, FileEvent::Closed)).await);
        // A file that did not exist at start is seen when created.
        std::fs::write(&other, "x\n").unwrap();
        assert!(saw(&seen, |e| *e == (0, FileEvent::Written)).await);
        // And its deletion.
        std::fs::remove_file(&other).unwrap();
        assert!(saw(&seen, |e| *e == (0, FileEvent::Replaced)).await);
    }
}
