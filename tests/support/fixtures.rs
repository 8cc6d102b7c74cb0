//! Small C programs under `tests/fixtures/` that a test runs inside a busybox container (which
//! has no libc, hence static), and the local route that gives their floods somewhere to go.

use std::path::{Path, PathBuf};
use std::process::Command;

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
