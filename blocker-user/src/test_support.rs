//! Helpers shared by unit tests of several modules.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

/// Every permission mode `path` was seen with while `work` ran, watched in a tight loop from
/// another thread: a mode that a file or directory shows only between its creation and a
/// chmod is caught when `work` repeats that often enough.
pub fn modes_seen_while(path: &Path, work: impl FnOnce()) -> BTreeSet<u32> {
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (path, done) = (path.to_path_buf(), done.clone());
        std::thread::spawn(move || {
            let mut modes = BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    modes.insert(meta.permissions().mode() & 0o777);
                }
            }
            modes
        })
    };
    work();
    done.store(true, Ordering::Relaxed);
    watcher.join().expect("the watcher thread panicked")
}
