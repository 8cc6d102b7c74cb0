//! An exec's event as the process's new image: its argv and paths shared from here on (a fork's
//! inherited image and a live update's copy cost a reference-count bump, issue 15).

use crate::capture::event::ExecEvent;
use crate::model::ImageRecord;
use crate::process::identity::ExecIdentity;

/// A wall-clock time (ns since the epoch) as boot ns; None for 0 (unknown) and for times
/// before the boot.
fn wall_to_boot_ns(clock: &crate::clock::BootClock, wall_ns: u64) -> Option<u64> {
    let boot_epoch = clock.to_system_time(0).duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as u64;
    (wall_ns != 0).then(|| wall_ns.checked_sub(boot_epoch)).flatten()
}

/// [`image_from_exec`] from an event that is not read again: its buffers move.
pub(super) fn image_taken_from_exec(
    e: &mut ExecEvent,
    exec_index: u32,
    clock: &crate::clock::BootClock,
    ident: &ExecIdentity,
) -> ImageRecord {
    // the argv's arguments move (only the list of them is copied, into the shared
    // allocation); the paths are copied once here, and shared from then on: the name run
    // is usually the executable's path itself, and then it is one buffer, not two
    let exe_path = shared_bytes(std::mem::take(&mut e.exe_path));
    let filename = std::mem::take(&mut e.filename);
    let filename = if filename[..] == exe_path[..] { exe_path.clone() } else { shared_bytes(filename) };
    ImageRecord {
        argv: std::mem::take(&mut e.argv).into(),
        filename,
        interp: e.interp.take().map(shared_bytes),
        exe_path,
        cwd: (!e.cwd.is_empty()).then(|| shared_bytes(std::mem::take(&mut e.cwd))),
        // the buffers are empty now: what it makes of them takes no allocation
        ..image_from_exec(e, exec_index, clock, ident)
    }
}

/// A path shared from here on; an empty one takes no allocation.
fn shared_bytes(v: Vec<u8>) -> std::sync::Arc<[u8]> {
    if v.is_empty() {
        std::sync::Arc::default()
    } else {
        v.into()
    }
}

/// A copy to share; an empty one takes no allocation (std's empty `Arc<[T]>` is static).
fn shared<T: Clone>(v: &[T]) -> std::sync::Arc<[T]> {
    if v.is_empty() {
        std::sync::Arc::default()
    } else {
        v.into()
    }
}

pub(super) fn image_from_exec(
    e: &ExecEvent,
    exec_index: u32,
    clock: &crate::clock::BootClock,
    ident: &ExecIdentity,
) -> ImageRecord {
    ImageRecord {
        exec_index,
        start_ns: e.ts_ns,
        end_ns: None,
        inherited: false,
        argv: shared(&e.argv),
        argv_truncated: e.flags.argv_truncated,
        argv_redacted: 0,
        filename: shared(&e.filename),
        interp: e.interp.as_deref().map(shared),
        exe_path: shared(&e.exe_path),
        fileless: e.flags.fileless,
        tty: e.flags.tty,
        uid: e.uid,
        euid: e.euid,
        connects: Vec::new(),
        files: Vec::new(),
        exe_written_ns: wall_to_boot_ns(clock, e.exe_ctime_ns),
        exe_file: (e.exe_dev, e.exe_ino),
        identity: ident.tool.clone(),
        program: ident.program.clone(),
        connects_over_cap: 0,
        cwd: (!e.cwd.is_empty()).then(|| shared(&e.cwd)),
    }
}

pub(super) fn next_index(images: &[ImageRecord]) -> u32 {
    images.last().map(|i| i.exec_index.saturating_add(1)).unwrap_or(0)
}
