//! Ctrl-C and SIGTERM: the handler only sets a flag; every wait loop (a boot's, the KVM
//! probe's, a build's, a wait for the host's cores, the matrix scheduler's) checks it and
//! cleans up (kills its process group, removes its work dir).

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the Ctrl-C/SIGTERM handler; every wait loop checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs a Ctrl-C/SIGTERM handler that makes running boots stop and clean up.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

/// Whether an interrupt was asked for.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
