//! Compiles the kernel side (`ebpf/podtrail.bpf.c`) into one BPF object that the binary embeds.
//!
//! Why here and why C: the kernel programs are C built by Debian's clang with CO-RE against
//! BTF, because Rust for BPF (aya-ebpf, bpf-linker) needs a nightly `rust-src` this toolchain
//! does not have. Building the object in build.rs keeps `cargo build` the only command a
//! developer runs, and embedding it means the binary can never load a stale object.
use std::{env, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let out = PathBuf::from(env::var("OUT_DIR")?).join("podtrail.bpf.o");
    for f in [
        "podtrail.bpf.c",
        "process.bpf.c",
        "net.bpf.c",
        "ns.bpf.c",
        "file.bpf.c",
        "dns.bpf.c",
        "sock.bpf.c",
        "uring.bpf.c",
        "tty.bpf.c",
        "common.h",
        "podtrail.h",
        "vmlinux.h",
    ] {
        println!("cargo:rerun-if-changed=ebpf/{f}");
    }
    println!("cargo:rerun-if-env-changed=PODTRAIL_CLANG");
    let clang = env::var("PODTRAIL_CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match env::var("CARGO_CFG_TARGET_ARCH")?.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => bail!("no BPF target arch mapping for {other}"),
    };
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-g", "-O2", "-Wall", "-Werror", "-Wno-unused-function"])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .args(["-I", "ebpf", "-c", "ebpf/podtrail.bpf.c", "-o"])
        .arg(&out)
        .status()
        .with_context(|| {
            format!("running {clang}: install clang and libbpf-dev (scripts/setup.sh does) or set PODTRAIL_CLANG")
        })?;
    if !status.success() {
        bail!("{clang} failed to compile ebpf/podtrail.bpf.c ({status})");
    }
    Ok(())
}
