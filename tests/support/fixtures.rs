//! Small C programs under `tests/fixtures/` that a test runs inside a busybox container (which
//! has no libc, hence static), the local route that gives their floods somewhere to go, and a
//! network namespace of their own for containers that need addresses to talk to.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `tests/fixtures/<name>.c` compiled statically into `dir/<name>`; fails the test when it
/// cannot be (a missing compiler or static libc is a missing prerequisite, not a skip).
pub fn compile_static(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.c"));
    let bin = dir.join(name);
    let out = Command::new("cc").args(["-static", "-O2", "-o"]).arg(&bin).arg(&src).output();
    match out {
        Ok(o) if o.status.success() => bin,
        other => super::prereq::missing(
            &format!("a C compiler with a static libc (cc -static tests/fixtures/{name}.c: {other:?})"),
            "apt-get install gcc libc6-dev",
        ),
    }
}

/// A route that makes a range local to this host (`ip route add local CIDR dev lo`), so a
/// flood's connects to it are refused at once and need no network; removed on drop.
pub struct LocalRoute(String);

impl LocalRoute {
    pub fn add(cidr: &str) -> LocalRoute {
        super::prereq::program("ip", "iproute2");
        let out = Command::new("ip").args(["route", "add", "local", cidr, "dev", "lo"]).output().expect("run ip");
        assert!(out.status.success(), "ip route add local {cidr}: {}", String::from_utf8_lossy(&out.stderr));
        LocalRoute(cidr.to_owned())
    }
}

impl Drop for LocalRoute {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["route", "del", "local", &self.0, "dev", "lo"]).status();
    }
}

/// A network namespace with `addrs` on its loopback (up), for a container started with
/// `--with-ns` [`NetNs::with_ns`]; deleted on drop.
pub struct NetNs(String);

impl NetNs {
    pub fn new(addrs: &[&str]) -> NetNs {
        let name = super::containers::unique("ptns");
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = NetNs(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for a in addrs {
            ip(&["-n", &name, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        ns
    }

    /// The namespace's name (`ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `ctr run --with-ns` for it.
    pub fn with_ns(&self) -> String {
        format!("network:/var/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(Stdio::null()).status();
    }
}
