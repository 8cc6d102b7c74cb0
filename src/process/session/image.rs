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
    // allocation); the paths were decoded shared and move as they are
    let filename = filename_of(e);
    ImageRecord {
        argv: std::mem::take(&mut e.argv).into(),
        filename,
        interp: e.interp.take(),
        exe_path: std::mem::take(&mut e.exe_path),
        cwd: (!e.cwd.is_empty()).then(|| std::mem::take(&mut e.cwd)),
        // the buffers are empty now: what it makes of them takes no allocation
        ..image_from_exec(e, exec_index, clock, ident)
    }
}

/// The name run as the image keeps it: usually the executable's path itself, and then one
/// buffer, not two (the decoder shares them so already; an event from elsewhere may not).
fn filename_of(e: &ExecEvent) -> std::sync::Arc<[u8]> {
    if e.filename[..] == e.exe_path[..] {
        e.exe_path.clone()
    } else {
        e.filename.clone()
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
        filename: filename_of(e),
        interp: e.interp.clone(),
        exe_path: e.exe_path.clone(),
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
        cwd: (!e.cwd.is_empty()).then(|| e.cwd.clone()),
    }
}

pub(super) fn next_index(images: &[ImageRecord]) -> u32 {
    images.last().map(|i| i.exec_index.saturating_add(1)).unwrap_or(0)
}
