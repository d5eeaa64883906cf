//! The chaos run's node processes on loopback: start, SIGKILL, SIGSTOP/SIGCONT, a wiped
//! data dir, and the tmpfs data dir whose disk gets filled with a ballast file. Dropping
//! the [`Cluster`] kills every node and unmounts the tmpfs, however the run ends; the
//! pid and mount files it keeps let `scripts/chaos.sh` do the same if this process is
//! itself killed.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One node's ports, dirs and process.
pub struct Node {
    /// 1-based, as the report names nodes.
    pub index: usize,
    pub http_addr: String,
    pub gossip_addr: String,
    rpc_addr: String,
    pub url: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    pid_file: PathBuf,
    child: Option<tokio::process::Child>,
    /// SIGSTOPped and not yet continued.
    pub stopped: bool,
    /// Its data dir is a tmpfs this run mounted.
    pub tmpfs: bool,
    /// The ballast file filling its tmpfs, while it is there.
    pub ballast: Option<PathBuf>,
    /// The node id it answers with (`/cluster`), once known; a wiped node gets a new one.
    pub id: Option<String>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    bin: PathBuf,
    /// Flags every node gets, after its addresses.
    node_flags: Vec<String>,
    mounts_file: PathBuf,
    mounts: Vec<PathBuf>,
}

/// Bytes per ballast write: small enough that the fill ends close to the tmpfs size.
const BALLAST_CHUNK: usize = 1 << 20;

impl Cluster {
    /// Nodes 1..=`n`: node I on HTTP `base+10*I`, RPC `+1`, gossip `+2`, data under
    /// `work/nodeI`. Refuses ports that are in use, so a leftover cluster is never
    /// mistaken for this one.
    pub fn new(
        bin: &Path,
        work: &Path,
        base: u16,
        n: usize,
        node_flags: Vec<String>,
    ) -> Result<Self, String> {
        let mut nodes = Vec::with_capacity(n);
        for index in 1..=n {
            let port = u16::try_from(index)
                .ok()
                .and_then(|i| i.checked_mul(10))
                .and_then(|o| base.checked_add(o))
                .filter(|p| p.checked_add(2).is_some())
                .ok_or_else(|| format!("base port {base} leaves no room for node {index}"))?;
            let http_addr = format!("127.0.0.1:{port}");
            let rpc_addr = format!("127.0.0.1:{}", port + 1);
            let gossip_addr = format!("127.0.0.1:{}", port + 2);
            for addr in [&http_addr, &rpc_addr] {
                TcpListener::bind(addr.as_str()).map_err(|e| {
                    format!("port {addr} is not free ({e}): pick another --base-port")
                })?;
            }
            UdpSocket::bind(gossip_addr.as_str()).map_err(|e| {
                format!("port {gossip_addr} is not free ({e}): pick another --base-port")
            })?;
            let data_dir = work.join(format!("node{index}"));
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
            nodes.push(Node {
                index,
                url: format!("http://{http_addr}"),
                http_addr,
                rpc_addr,
                gossip_addr,
                data_dir,
                log: work.join(format!("node{index}.log")),
                pid_file: work.join(format!("node{index}.pid")),
                child: None,
                stopped: false,
                tmpfs: false,
                ballast: None,
                id: None,
            });
        }
        Ok(Cluster {
            nodes,
            bin: bin.to_owned(),
            node_flags,
            mounts_file: work.join("mounts"),
            mounts: Vec::new(),
        })
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// Mounts a tmpfs of `mib` MiB on node `i`'s (empty) data dir. Needs root.
    pub fn mount_tmpfs(&mut self, i: usize, mib: u64) -> Result<(), String> {
        let dir = self.node(i).data_dir.clone();
        let options = format!("size={mib}m,mode=0700");
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| format!("mount -t tmpfs -o {options} on {}: {e}", dir.display()))?;
        self.mounts.push(dir.clone());
        // For the script's trap: one mount point a line.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.mounts_file)
            .and_then(|mut f| writeln!(f, "{}", dir.display()))
            .map_err(|e| format!("writing {}: {e}", self.mounts_file.display()))?;
        self.node_mut(i).tmpfs = true;
        Ok(())
    }

    /// Starts node `i` on its data dir, joining through `seeds` (gossip addresses).
    pub fn start(&mut self, i: usize, seeds: &[String]) -> Result<(), String> {
        let bin = self.bin.clone();
        let flags = self.node_flags.clone();
        let node = self.node_mut(i);
        if node.child.is_some() {
            return Err(format!("node {i} is already running"));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("opening {}: {e}", node.log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", node.log.display()))?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--http-addr", &node.http_addr])
            .args(["--rpc-addr", &node.rpc_addr])
            .args(["--gossip-addr", &node.gossip_addr]);
        for s in seeds {
            cmd.args(["--seed", s]);
        }
        cmd.args(&flags)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // A safety net behind the Drop below: a node never outlives its handle.
            .kill_on_drop(true);
        // `serve` reads its settings from RINGKV_* too: what this shell has set must not
        // change one node and not another.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RINGKV_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        if let Some(pid) = child.id() {
            std::fs::write(&node.pid_file, format!("{pid}\n"))
                .map_err(|e| format!("writing {}: {e}", node.pid_file.display()))?;
        }
        node.child = Some(child);
        node.stopped = false;
        Ok(())
    }

    /// SIGKILL, and reap it.
    pub async fn kill(&mut self, i: usize) -> Result<(), String> {
        let node = self.node_mut(i);
        let Some(mut child) = node.child.take() else {
            return Ok(());
        };
        let _ = std::fs::remove_file(&node.pid_file);
        node.stopped = false;
        // A stopped process dies of SIGKILL as well.
        child
            .start_kill()
            .map_err(|e| format!("SIGKILL node {i}: {e}"))?;
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .map_err(|_| format!("node {i} did not die of SIGKILL within 10 s"))?
            .map_err(|e| format!("waiting for node {i}: {e}"))?;
        Ok(())
    }

    /// SIGSTOP (gray failure: the sockets stay open, nothing answers) or SIGCONT.
    pub fn pause(&mut self, i: usize, stop: bool) -> Result<(), String> {
        let node = self.node_mut(i);
        let Some(pid) = node.child.as_ref().and_then(|c| c.id()) else {
            return Err(format!("node {i} is not running"));
        };
        let signal = if stop {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let pid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
        kill(Pid::from_raw(pid), signal).map_err(|e| format!("{signal} node {i}: {e}"))?;
        node.stopped = stop;
        Ok(())
    }

    /// Whether node `i`'s process runs; `Some(status)` once it has exited by itself (the
    /// handle is then dropped, so a restart can follow).
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        let node = self.node_mut(i);
        let status = node.child.as_mut()?.try_wait().ok().flatten()?;
        node.child = None;
        node.stopped = false;
        let _ = std::fs::remove_file(&node.pid_file);
        Some(status)
    }

    pub fn running(&self, i: usize) -> bool {
        self.node(i).child.is_some()
    }

    /// Disk loss: removes everything in node `i`'s data dir (the dir stays: it may be a
    /// mount point). The node must not be running.
    pub fn wipe(&mut self, i: usize) -> Result<(), String> {
        let node = self.node_mut(i);
        if node.child.is_some() {
            return Err(format!("node {i} is running: kill it before wiping"));
        }
        let entries = std::fs::read_dir(&node.data_dir)
            .map_err(|e| format!("reading {}: {e}", node.data_dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("reading {}: {e}", node.data_dir.display()))?
                .path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
        node.ballast = None;
        node.id = None;
        Ok(())
    }

    /// Fills node `i`'s tmpfs with a ballast file until the file system says ENOSPC;
    /// returns the bytes written. Bounded by `max_bytes` (the tmpfs size).
    pub fn fill(&mut self, i: usize, max_bytes: u64) -> Result<u64, String> {
        let node = self.node_mut(i);
        if !node.tmpfs {
            return Err(format!("node {i} has no tmpfs to fill"));
        }
        let path = node.data_dir.join("chaos-ballast");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        node.ballast = Some(path.clone());
        let chunk = vec![0x5au8; BALLAST_CHUNK];
        let mut written = 0u64;
        let rounds = max_bytes / BALLAST_CHUNK as u64 + 2;
        for _ in 0..rounds {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(k) => written += k as u64,
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => {
                    return Ok(written)
                }
                Err(e) => return Err(format!("writing {}: {e}", path.display())),
            }
        }
        // tmpfs said nothing: the ballast did not fill it, and the fault would be a lie.
        Err(format!(
            "{} took {written} bytes without ENOSPC (tmpfs of at most {max_bytes})",
            path.display()
        ))
    }

    /// Removes node `i`'s ballast; whether there was one.
    pub fn unfill(&mut self, i: usize) -> Result<bool, String> {
        let node = self.node_mut(i);
        let Some(path) = node.ballast.take() else {
            return Ok(false);
        };
        std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        Ok(true)
    }

    /// The last `lines` lines of node `i`'s log, for a report.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(i).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM every node (continued first), SIGKILL what is left after `grace`, then
    /// unmount. Returns the nodes that did not exit 0 by themselves in time.
    pub async fn shutdown(&mut self, grace: Duration) -> Vec<(usize, String)> {
        let mut unclean = Vec::new();
        for i in 1..=self.nodes.len() {
            if self.node(i).stopped {
                let _ = self.pause(i, false);
            }
            if let Some(pid) = self.node(i).child.as_ref().and_then(|c| c.id()) {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + grace;
        for i in 1..=self.nodes.len() {
            let node = self.node_mut(i);
            let Some(mut child) = node.child.take() else {
                continue;
            };
            let _ = std::fs::remove_file(&node.pid_file);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => unclean.push((i, format!("exited with {status}"))),
                Ok(Err(e)) => unclean.push((i, format!("wait failed: {e}"))),
                Err(_) => {
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    unclean.push((i, format!("still running {grace:?} after SIGTERM")));
                }
            }
        }
        self.unmount();
        unclean
    }

    fn unmount(&mut self) {
        for dir in self.mounts.drain(..) {
            // Lazy: a node killed a moment ago may still hold a file open there.
            if let Err(e) = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("chaos: unmounting {}: {e}", dir.display());
            }
        }
        let _ = std::fs::remove_file(&self.mounts_file);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.start_kill();
                // Reap it (SIGKILL is quick), bounded.
                for _ in 0..200 {
                    if child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = std::fs::remove_file(&node.pid_file);
            }
        }
        self.unmount();
    }
}
