//! What an executable is, by content rather than by name (issue 18): a watched tool copied or
//! linked under another name (`cp /usr/bin/tcpdump /tmp/x`) is still that tool.
//!
//! In: an exec (its executable's device, inode and change time, its path, its argv) and a way
//! to read the file ([`ContainerLookup::open_executable`]). Out: the watched tool's name the
//! image is, if any, and for a run through the dynamic loader (`ld.so /bin/x`) the program the
//! loader runs.
//!
//! How: the first run of a watched name (by the executable's own base name, never argv[0],
//! which the caller chooses) hashes its binary (sha256) and remembers digest -> name and its
//! size; configured digests (`process.activity.watch_sha256`) are known from the start. Any
//! other binary is hashed only when it could match: its size equals a remembered watched
//! binary's (a copy keeps its size), or digests were configured (then every binary up to
//! `hash_max_mib` is hashed once). Each (device, inode, change time) is judged once and
//! remembered (bounded), so the cost is one hash per distinct binary, not per exec.
//! Not seen: a binary that exited before it could be opened (`/proc/<pid>/exe` is gone),
//! counted in `IdentityCounters::unreadable`; a watched tool rebuilt or patched (its digest
//! differs) and renamed.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use sha2::{Digest, Sha256};

use super::activity::{ActivityConfig, ActivityScope};
use super::containers::ContainerLookup;
use crate::capture::event::ExecEvent;
use crate::lru::FastLru;
use crate::text::basename;

/// Binaries judged and remembered at once.
const SEEN_ENTRIES: usize = 16_384;
/// Learned digests kept (configured ones always are).
const LEARNED_MAX: usize = 1_024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityCounters {
    /// Binaries hashed.
    pub hashed: u64,
    /// Binaries that could not be opened or read to be judged (the process was gone).
    pub unreadable: u64,
    /// Images identified as a watched tool by content although their name is another.
    pub renamed: u64,
}

/// What one exec is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecIdentity {
    /// The watched tool this image runs, by content or by its executable's name.
    pub tool: Option<String>,
    /// The program a dynamic loader was asked to run (`ld.so [options] PROGRAM`).
    pub program: Option<Vec<u8>>,
}

pub struct Identities {
    known: HashMap<[u8; 32], String>,
    learned: usize,
    sizes: HashSet<u64>,
    configured: bool,
    max_bytes: u64,
    /// By the executable's (device, inode, change time) and, below, the mount namespace's
    /// inode: numbers the kernel chooses (a container's user can make a file but not pick
    /// them), so [`FastLru`] (`crate::hashing`'s rule); both are asked on every exec.
    seen: FastLru<(u32, u64, u64), Option<String>>,
    /// Mount namespaces whose watched tools were looked for.
    roots: FastLru<u32, ()>,
    pub counters: IdentityCounters,
}

/// Where a watched tool is looked for in a mount namespace seen for the first time.
const BIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A dynamic loader's base name: `ld-linux-x86-64.so.2`, `ld-linux.so.2`, `ld.so`,
/// `ld-musl-x86_64.so.1`, `ld64.so.2`.
/// Asked on every exec: compared as bytes (the names are ASCII, so a lossy text of the name
/// would match the same ones), without a UTF-8 pass over the name.
pub fn is_loader(name: &[u8]) -> bool {
    name == b"ld.so"
        || ((name.starts_with(b"ld-linux") || name.starts_with(b"ld-musl-") || name.starts_with(b"ld64.so"))
            && name.windows(3).any(|w| w == b".so"))
}

/// The program `ld.so [options] PROGRAM [args]` runs: the first argument after the options
/// (glibc's options that take a value are skipped with it).
pub fn loader_program(argv: &[Vec<u8>]) -> Option<Vec<u8>> {
    const WITH_VALUE: &[&[u8]] =
        &[b"--library-path", b"--preload", b"--argv0", b"--audit", b"--glibc-hwcaps-mask", b"--glibc-hwcaps-prepend"];
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a.as_slice() == b"--" {
            return it.next().cloned();
        }
        if WITH_VALUE.contains(&a.as_slice()) {
            it.next();
            continue;
        }
        if a.starts_with(b"-") {
            continue;
        }
        return Some(a.clone());
    }
    None
}

impl Identities {
    pub fn new(cfg: &ActivityConfig) -> Self {
        let mut known = HashMap::new();
        for (name, digests) in &cfg.watch_sha256 {
            for d in digests {
                if let Some(b) = parse_digest(d) {
                    known.insert(b, name.clone());
                }
            }
        }
        Identities {
            configured: !known.is_empty(),
            known,
            learned: 0,
            sizes: HashSet::new(),
            max_bytes: cfg.hash_max_mib.saturating_mul(1024 * 1024),
            seen: FastLru::with_hasher(SEEN_ENTRIES),
            roots: FastLru::with_hasher(SEEN_ENTRIES),
            counters: IdentityCounters::default(),
        }
    }

    /// What `e` runs. `files` opens the binary (or, for a loader, the program).
    pub fn identify(&mut self, cfg: &ActivityConfig, e: &ExecEvent, files: &mut dyn ContainerLookup) -> ExecIdentity {
        if cfg.scope == ActivityScope::Sessions || (cfg.watch.is_empty() && !self.configured) {
            return ExecIdentity::default();
        }
        if e.mntns_ino != 0 && !self.roots.contains_key(&e.mntns_ino) {
            self.roots.insert(e.mntns_ino, ());
            self.learn_root(cfg, e.pid, files);
        }
        let exe_name = basename(&e.exe_path);
        if is_loader(exe_name) {
            let program = loader_program(&e.argv);
            let tool = program.as_ref().and_then(|p| {
                let name = basename(p);
                if let Some(w) = cfg.watch.iter().find(|w| w.as_bytes() == name) {
                    return Some(w.clone());
                }
                let mut f = files.open_executable(e.pid, Some(p.as_slice()))?;
                let (digest, _) = self.hash(&mut f)?;
                self.known.get(&digest).cloned()
            });
            return ExecIdentity { tool, program };
        }
        let key = (e.exe_dev, e.exe_ino, e.exe_ctime_ns);
        if e.exe_ino != 0 {
            if let Some(v) = self.seen.get(&key) {
                return ExecIdentity { tool: v.clone(), program: None };
            }
        }
        let by_name = cfg.watch.iter().find(|w| w.as_bytes() == exe_name).cloned();
        let (tool, judged) = match by_name {
            Some(name) => {
                // learn what this tool is, so a renamed copy is known
                match files.open_executable(e.pid, None) {
                    Some(mut f) => self.learn(&mut f, &name),
                    None => self.counters.unreadable += 1,
                }
                (Some(name), true)
            }
            None => self.by_content(e, files),
        };
        if e.exe_ino != 0 && judged {
            self.seen.insert(key, tool.clone());
        }
        ExecIdentity { tool, program: None }
    }

    /// The watched tools a mount namespace (a container's image, the host) holds where
    /// programs are installed: their digests are known before anything runs a copy. Only a
    /// file that is that tool (its real name starts with the watched name: `nc` ->
    /// `nc.openbsd`), never a multi-call binary a link names (`nc` -> `busybox`, which is
    /// every applet at once).
    fn learn_root(&mut self, cfg: &ActivityConfig, pid: u32, files: &mut dyn ContainerLookup) {
        for name in &cfg.watch {
            for dir in BIN_DIRS {
                let path = format!("{dir}/{name}");
                let Some(mut f) = files.open_executable(pid, Some(path.as_bytes())) else { continue };
                if real_name(&f).is_some_and(|n| n.starts_with(name.as_str())) {
                    self.learn(&mut f, name);
                }
            }
        }
    }

    fn learn(&mut self, f: &mut std::fs::File, name: &str) {
        if let Some((digest, size)) = self.hash(f) {
            if self.learned < LEARNED_MAX && !self.known.contains_key(&digest) {
                self.known.insert(digest, name.to_owned());
                self.sizes.insert(size);
                self.learned += 1;
            }
        }
    }

    /// An executable whose name is not watched: a watched tool's digest under another name?
    /// The flag says the verdict may be remembered (the file was read, or needed not be).
    fn by_content(&mut self, e: &ExecEvent, files: &mut dyn ContainerLookup) -> (Option<String>, bool) {
        if self.known.is_empty() {
            return (None, true);
        }
        let Some(mut f) = files.open_executable(e.pid, None) else {
            self.counters.unreadable += 1;
            return (None, false);
        };
        let Ok(size) = f.metadata().map(|m| m.len()) else { return (None, false) };
        if !self.configured && !self.sizes.contains(&size) {
            return (None, true);
        }
        let Some((digest, _)) = self.hash(&mut f) else { return (None, false) };
        let tool = self.known.get(&digest).cloned();
        if tool.is_some() {
            self.counters.renamed += 1;
        }
        (tool, true)
    }

    fn hash(&mut self, f: &mut std::fs::File) -> Option<([u8; 32], u64)> {
        let size = f.metadata().ok()?.len();
        if size > self.max_bytes {
            return None;
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(_) => {
                    self.counters.unreadable += 1;
                    return None;
                }
            }
        }
        self.counters.hashed += 1;
        Some((h.finalize().into(), size))
    }
}

/// The base name of the file an open descriptor reached, links followed.
fn real_name(f: &std::fs::File) -> Option<String> {
    use std::os::fd::AsRawFd;
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
    Some(p.file_name()?.to_string_lossy().into_owned())
}

/// A sha256 digest in hex (64 digits).
pub fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s.trim()).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_loader_runs_the_first_argument_after_its_options() {
        assert!(is_loader(b"ld-linux-x86-64.so.2"));
        assert!(is_loader(b"ld-musl-x86_64.so.1"));
        assert!(!is_loader(b"ldconfig"));
        assert!(is_loader(b"ld.so") && is_loader(b"ld64.so.2") && is_loader(b"ld-linux.so.2"));
        assert!(!is_loader(b"ld-linux") && !is_loader(b"ld.so.1") && !is_loader(b"ld-musl-\xff"));
        assert!(is_loader(b"ld-linux\xff.so"), "a non-UTF-8 byte changes nothing");
        assert_eq!(loader_program(&argv(&["ld.so", "/tmp/x", "-i", "any"])), Some(b"/tmp/x".to_vec()));
        assert_eq!(
            loader_program(&argv(&["/lib64/ld-linux-x86-64.so.2", "--library-path", "/l", "--argv0", "sh", "/tmp/x"])),
            Some(b"/tmp/x".to_vec())
        );
        assert_eq!(loader_program(&argv(&["ld.so", "--list"])), None);
    }

    #[test]
    fn digests_are_64_hex_digits() {
        assert!(parse_digest(&"ab".repeat(32)).is_some());
        assert!(parse_digest("abc").is_none());
        assert!(parse_digest(&"zz".repeat(32)).is_none());
    }
}
