//! On-CPU time per thread from /proc (schedstat: nanoseconds actually run),
//! grouped by thread name, so each scenario can say where the cores went.

use std::collections::BTreeMap;

/// On-CPU nanoseconds of the live threads of `pid`, summed by thread name.
pub fn by_thread_name(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0u64);
        *out.entry(comm.trim().to_owned()).or_default() += ns;
    }
    out
}

/// A snapshot of the threads that matter: the load generator and the mock
/// (this process) and the gateway child's runtime workers and event-log writer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub load_generator: u64,
    pub mock: u64,
    pub gateway_workers: u64,
    pub gateway_event_log: u64,
    pub gateway_other: u64,
}

/// Thread names as set by the bench, tokio's default, and the store.
const LOAD_GENERATOR: &str = "load-generator";
const MOCK: &str = "mock-upstream";
const TOKIO_WORKER: &str = "tokio-rt-worker";
const EVENT_LOG_PREFIX: &str = "tollgate-eventl";

impl Cpu {
    /// `gateway_pids`: the gateway child, or a peer gateway's processes
    /// (whose threads all count as `gateway_other`).
    pub fn snapshot(gateway_pids: &[u32]) -> Cpu {
        let me = by_thread_name(std::process::id());
        let mut cpu = Cpu {
            load_generator: me.get(LOAD_GENERATOR).copied().unwrap_or(0),
            mock: me.get(MOCK).copied().unwrap_or(0),
            ..Cpu::default()
        };
        for &pid in gateway_pids {
            for (name, ns) in by_thread_name(pid) {
                if name == TOKIO_WORKER {
                    cpu.gateway_workers += ns;
                } else if name.starts_with(EVENT_LOG_PREFIX) {
                    cpu.gateway_event_log += ns;
                } else {
                    cpu.gateway_other += ns;
                }
            }
        }
        cpu
    }

    /// `self − earlier`, per field.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            load_generator: self.load_generator.saturating_sub(earlier.load_generator),
            mock: self.mock.saturating_sub(earlier.mock),
            gateway_workers: self.gateway_workers.saturating_sub(earlier.gateway_workers),
            gateway_event_log: self
                .gateway_event_log
                .saturating_sub(earlier.gateway_event_log),
            gateway_other: self.gateway_other.saturating_sub(earlier.gateway_other),
        }
    }

    pub fn add(&mut self, other: &Cpu) {
        self.load_generator += other.load_generator;
        self.mock += other.mock;
        self.gateway_workers += other.gateway_workers;
        self.gateway_event_log += other.gateway_event_log;
        self.gateway_other += other.gateway_other;
    }

    pub fn gateway(&self) -> u64 {
        self.gateway_workers + self.gateway_event_log + self.gateway_other
    }

    pub fn total(&self) -> u64 {
        self.load_generator + self.mock + self.gateway()
    }
}

/// Thread ids of `pid`'s threads named `name`.
pub fn thread_ids(pid: u32, name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| t.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Restrict a thread (or, with `all_threads`, every thread of a process) to
/// the CPUs in `cpus` (a list such as `0` or `0,1`), with util-linux `taskset`.
pub fn pin(id: u32, cpus: &str, all_threads: bool) -> anyhow::Result<()> {
    let mut command = std::process::Command::new("taskset");
    if all_threads {
        command.arg("-a");
    }
    let status = command
        .args(["-p", "-c", cpus, &id.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| anyhow::anyhow!("running taskset (util-linux) to pin threads: {e}"))?;
    if !status.success() {
        anyhow::bail!("taskset -p -c {cpus} {id} failed: {status}");
    }
    Ok(())
}

/// Pin this process's threads named `name` to `cpus`; returns how many.
pub fn pin_own_threads(name: &str, cpus: &str) -> anyhow::Result<usize> {
    // A new thread names itself once it runs: wait a little for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut ids = thread_ids(std::process::id(), name);
    while ids.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        ids = thread_ids(std::process::id(), name);
    }
    for &tid in &ids {
        pin(tid, cpus, false)?;
    }
    Ok(ids.len())
}
