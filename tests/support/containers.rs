//! Real containers for tests: a private containerd (its own root, state and socket under a
//! temp dir, so tests never touch or collide with a system containerd), busybox root
//! filesystems, `ctr run` and `ctr task exec`.
//!
//! Prerequisites ([`super::prereq::containers`]): root, `containerd`, `containerd-shim-runc-v2`,
//! `runc`, `ctr`, and a static busybox at /bin/busybox (Debian: `apt-get install containerd
//! runc busybox-static`, as scripts/setup.sh does). [`Containerd::start`] fails the test when
//! one is missing, in CI or not.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// busybox applets linked into every test rootfs.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "sleep", "wget", "nc", "tar", "cat", "echo", "ls", "ps", "id", "true", "false", "env", "nslookup",
    "hostname", "uname", "touch", "rm", "mkdir", "grep", "head", "seq", "timeout", "kill",
];

/// A short unique name: container ids, exec ids.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A directory with /bin/busybox and its applets as symlinks: a complete rootfs for `ctr run
/// --rootfs` (busybox-static needs no libraries).
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy("/bin/busybox", bin.join("busybox"))?;
    for a in APPLETS {
        let link = bin.join(a);
        if !link.exists() {
            symlink("busybox", link)?;
        }
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(dir.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    Ok(())
}

/// A containerd of our own; killed (with its containers) on drop.
pub struct Containerd {
    pub dir: PathBuf,
    pub address: PathBuf,
    pub namespace: String,
    child: Child,
    containers: std::sync::Mutex<Vec<String>>,
}

impl Containerd {
    /// Starts containerd with everything under a fresh temp dir and waits for its socket.
    /// Fails the test when a prerequisite is missing.
    pub fn start() -> Containerd {
        super::prereq::containers();
        // short path: the socket path must fit in sun_path (108 bytes)
        let dir = PathBuf::from(format!("/tmp/ptc-{}", unique("d")));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create containerd dir");
        let address = dir.join("c.sock");
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = \"{a}\"\n[ttrpc]\n  address = \"{a}.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            d = dir.display(),
            a = address.display()
        );
        fs::write(dir.join("config.toml"), config).expect("write containerd config");
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let cd = Containerd { dir, address, namespace: "default".into(), child, containers: Default::default() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if cd.address.exists() && cd.ctr(&["version"]).status.success() {
                break;
            }
            if Instant::now() > deadline {
                panic!("containerd did not come up: {}", cd.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address ... --namespace ... ARGS`, waited for.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("run ctr")
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.address).arg("--namespace").arg(&self.namespace).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// `ctr run -d [--label K=V].. [extra flags].. --rootfs DIR ID CMD..`: a busybox container
    /// that keeps running; returns its id (also its cgroup path `/<namespace>/<id>`).
    pub fn run(&self, labels: &[(&str, &str)], extra: &[&str], cmd: &[&str]) -> Container {
        self.run_prepared(labels, extra, cmd, &|_| {})
    }

    /// [`Self::run`], with `prepare` adding to the busybox rootfs before the container starts
    /// (more applets, files the image should ship): what it writes is part of the "image".
    pub fn run_prepared(
        &self,
        labels: &[(&str, &str)],
        extra: &[&str],
        cmd: &[&str],
        prepare: &dyn Fn(&Path),
    ) -> Container {
        let id = unique("pt");
        let rootfs = self.dir.join("rootfs").join(&id);
        busybox_rootfs(&rootfs).expect("build busybox rootfs");
        prepare(&rootfs);
        // no image config with --rootfs: the spec's environment is all the process gets
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--env".into(), "PATH=/bin".into()];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--rootfs".into());
        args.push(rootfs.display().to_string());
        args.push(id.clone());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = self.ctr(&a);
        assert!(out.status.success(), "ctr run failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        self.containers.lock().unwrap().push(id.clone());
        let c = Container { id, namespace: self.namespace.clone() };
        // wait for the task to be running
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.task_pid(&c.id).is_none() {
            assert!(Instant::now() < deadline, "task {} never ran", c.id);
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// The root filesystem of a container started by [`Self::run`] (a plain directory: what
    /// the container writes lands here).
    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.dir.join("rootfs").join(id)
    }

    /// The container's init pid (host pid namespace), from `ctr task ls`.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id) && f.get(2) == Some(&"RUNNING")).then(|| f.get(1)?.parse().ok()).flatten()
        })
    }

    /// `ctr task exec --exec-id X ID CMD..`, waited for.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> Output {
        self.exec_cmd(id, cmd).output().expect("ctr task exec")
    }

    /// The same, not yet started (for concurrent execs).
    pub fn exec_cmd(&self, id: &str, cmd: &[&str]) -> Command {
        let exec_id = unique("x");
        let mut args = vec!["task", "exec", "--exec-id", exec_id.as_str(), id];
        args.extend_from_slice(cmd);
        self.ctr_cmd(&args)
    }

    /// `ctr task exec -t ... sh` in container `id` on a pseudo-terminal (util-linux `script`
    /// gives it one), stdin piped for typing, stdout to `stdout`; a missing `script` fails the
    /// test as a missing prerequisite.
    pub fn exec_tty_shell(&self, id: &str, stdout: Stdio) -> Child {
        if Command::new("script").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
            super::prereq::missing(
                "util-linux `script` (a terminal for ctr task exec -t)",
                "apt-get install util-linux",
            );
        }
        let ctr = format!(
            "ctr --address {} --namespace {} task exec -t --exec-id {} {id} sh",
            self.address.display(),
            self.namespace,
            unique("tty"),
        );
        Command::new("script")
            .args(["-q", "-e", "-f", "-c", &ctr, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("script -c ctr task exec -t")
    }

    /// The cgroup2 directory of a container started by this containerd (`ctr` puts it at
    /// `/<namespace>/<id>`).
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("/{}/{}", self.namespace, id)
    }

    /// Stop and delete a container.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.task_pid(id).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.ctr(&["task", "delete", "-f", id]);
        let _ = self.ctr(&["container", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.containers.lock().unwrap());
        for id in ids {
            self.remove(&id);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running container.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub namespace: String,
}
