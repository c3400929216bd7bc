//! Ctrl-C during training: the first one asks the loop to stop after the current batch (the last
//! complete checkpoint stays valid and `--resume` continues from it); a second one ends the
//! process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process; later calls do nothing).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nanomalyncd: interrupted again, stopping now");
            std::process::exit(130);
        }
        eprintln!("\nanomalyncd: stopping after the current batch (Ctrl-C again to stop now)");
    });
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Asks for a stop as Ctrl-C does (tests, embedding programs).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}
