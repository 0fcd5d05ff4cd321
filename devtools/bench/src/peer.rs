//! A peer gateway on the same mock upstream, for comparison: Portkey's
//! open-source gateway (npm `@portkey-ai/gateway`, Node.js), run as a child
//! process on a free port. It reaches the mock as a custom OpenAI host
//! (`x-portkey-provider: openai`, `x-portkey-custom-host: <mock>/v1`; it
//! trusts 127.0.0.1 as a custom host by default).
//!
//! `--peer-portkey` takes `auto`, a path (the package's `start-server.js`,
//! the package folder, or a folder holding `node_modules`), or a command
//! line (`npx @portkey-ai/gateway`). `bench/peers/install.sh` installs it
//! into `bench/peers/node_modules` (gitignored), where `auto` finds it.

use anyhow::{anyhow, bail, Context};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The package's Node entry point, relative to the package folder.
const ENTRY: &str = "build/start-server.js";
const PACKAGE: &str = "node_modules/@portkey-ai/gateway";

/// How to start the peer: a program and its arguments (the port is added).
#[derive(Clone, Debug)]
pub struct PeerCommand {
    program: String,
    args: Vec<String>,
}

impl PeerCommand {
    /// Resolve a `--peer-portkey` value; `auto` looks in the usual install
    /// folders, then falls back to an already installed package via `npx`.
    pub fn resolve(spec: &str) -> anyhow::Result<PeerCommand> {
        let spec = spec.trim();
        if spec.is_empty() {
            bail!("--peer-portkey: empty value");
        }
        if spec == "auto" {
            return Ok(auto_candidates()
                .into_iter()
                .find_map(|dir| entry_in(&dir))
                .map(node)
                .unwrap_or_else(|| PeerCommand {
                    // --no-install: never fetch during a benchmark run.
                    program: "npx".into(),
                    args: vec!["--no-install".into(), "@portkey-ai/gateway".into()],
                }));
        }
        let path = Path::new(spec);
        if path.is_file() {
            return Ok(node(path.to_path_buf()));
        }
        if path.is_dir() {
            return entry_in(path)
                .map(node)
                .ok_or_else(|| anyhow!("no {PACKAGE}/{ENTRY} under {}", path.display()));
        }
        let mut words = spec.split_whitespace().map(str::to_owned);
        let program = words
            .next()
            .ok_or_else(|| anyhow!("--peer-portkey: empty command"))?;
        Ok(PeerCommand {
            program,
            args: words.collect(),
        })
    }

    pub fn describe(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn node(entry: PathBuf) -> PeerCommand {
    PeerCommand {
        program: "node".into(),
        args: vec![entry.display().to_string()],
    }
}

/// Where `auto` looks: `$TOLLGATE_PEERS_DIR`, this crate's `peers/` folder
/// (as built), and `devtools/bench/peers` and `.` under the working directory.
fn auto_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("TOLLGATE_PEERS_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("peers"));
    dirs.push(PathBuf::from("devtools/bench/peers"));
    dirs.push(PathBuf::from("."));
    dirs
}

/// The entry point in `dir`, whether `dir` holds `node_modules` or is the package.
fn entry_in(dir: &Path) -> Option<PathBuf> {
    [dir.join(PACKAGE).join(ENTRY), dir.join(ENTRY)]
        .into_iter()
        .find(|p| p.is_file())
}

/// A running peer gateway. It runs in a process group of its own (`npx`
/// starts node as a grandchild), which is ended as a whole on drop.
pub struct PeerChild {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PeerChild {
    pub fn spawn(command: &PeerCommand) -> anyhow::Result<PeerChild> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("peer.log");
        let out = std::fs::File::create(&log)?;
        let port = free_port()?;
        let child = Command::new(&command.program)
            .args(&command.args)
            // No UI and no log-streaming routes: only the gateway.
            .arg(format!("--port={port}"))
            .arg("--headless")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting `{}`", command.describe()))?;
        let mut peer = PeerChild {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
        };
        peer.wait_listening(Duration::from_secs(60))?;
        Ok(peer)
    }

    fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the peer exited at start ({status}): {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the peer is not listening on {} after {limit:?}: {}",
            self.addr,
            self.log_tail()
        )
    }

    /// The last lines the peer printed (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("Starting AI Gateway"))
            .collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every process of the peer's group (node, and npx around it if any).
    pub fn pids(&self) -> Vec<u32> {
        group_pids(self.pid())
    }

    /// Resident set size of the whole group, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| crate::child::proc_memory_kib(pid).ok())
            .map(|(rss, _)| rss)
            .sum()
    }
}

impl Drop for PeerChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // The group id is the child's pid (process_group(0)).
            signal_group(self.pid(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            signal_group(self.pid(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// `kill -SIG -- -PGID`: the workspace denies unsafe code, so no libc call.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Pids whose process group is `pgid` (field 5 of /proc/PID/stat).
fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![pgid];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // The command name may hold spaces: fields start after its ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                    .and_then(|g| g.parse::<u32>().ok())
                    == Some(pgid)
            })
        })
        .collect()
}

/// A port the OS had free a moment ago (the peer binds it itself).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
