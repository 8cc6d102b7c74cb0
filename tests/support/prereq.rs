//! The one way a test says what it needs. A missing prerequisite fails the test, in CI or not,
//! with one message: what is missing and how to get it. Never a skip: cargo hides a test's
//! output when it passes, so a test that returns early reads as proof it never gave.

use std::path::Path;

/// Where every prerequisite comes from.
const SETUP: &str = "`sudo scripts/setup.sh` installs what the suite needs and mounts the kernel filesystems; \
                     run the tests as root (`sudo scripts/test.sh`, or `sudo -E cargo test ...`)";

/// Fails the calling test: `what` is missing; `how` gets it.
#[track_caller]
pub fn missing(what: &str, how: &str) -> ! {
    panic!("test prerequisite missing: {what}. To get it: {how}. {SETUP}.")
}

/// Root: the kernel programs need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, containerd and
/// runc need root, and so do `ip route` and tcpdump.
#[track_caller]
pub fn root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing("root (BPF programs, containerd, network namespaces)", "run the tests as root");
    }
}

/// Root and a kernel with BTF: what loading the capture programs needs (the loader mounts
/// tracefs itself).
#[track_caller]
pub fn kernel() {
    root();
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing(
            "kernel BTF at /sys/kernel/btf/vmlinux",
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.8 or later; Debian's kernels have it)",
        );
    }
}

/// `bin` on PATH, from the Debian package `package`.
#[track_caller]
pub fn program(bin: &str, package: &str) {
    if !on_path(bin) {
        missing(&format!("`{bin}` on PATH"), &format!("apt-get install {package}"));
    }
}

/// A file at `path`, from the Debian package `package`.
#[track_caller]
pub fn file(path: &str, package: &str) {
    if !Path::new(path).is_file() {
        missing(path, &format!("apt-get install {package}"));
    }
}

/// Root, containerd with its runc shim and `ctr`, and a static busybox for the root
/// filesystems: what [`super::containers::Containerd::start`] needs.
#[track_caller]
pub fn containers() {
    root();
    for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        program(b, "containerd");
    }
    program("runc", "runc");
    file("/bin/busybox", "busybox-static");
}

pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false)
}
