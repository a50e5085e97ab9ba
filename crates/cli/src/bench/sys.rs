//! What the operating system tells about the generator and the broker: CPU time (getrusage,
//! /proc/PID/stat), resident memory (/proc/PID/status) and the open-files limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU seconds (user + system) this process has used so far.
pub fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft open-files limit to the hard limit (each connection is a descriptor).
/// Returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// CPU seconds (user + system) of process `pid` from /proc/PID/stat.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) / hz)
}

/// Resident memory of process `pid` in KiB (VmRSS).
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU seconds of all these processes together; `None` when there are none or one cannot
/// be read (a cluster's nodes are watched as one broker).
pub fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| proc_cpu_secs(*p)).sum()
}

/// Resident memory of all these processes together, in KiB.
pub fn rss_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| proc_rss_kib(*p)).sum()
}

/// Samples a broker's RSS (all its processes together) in the background (every 100 ms) and
/// keeps the maximum.
pub struct BrokerWatch {
    pub pids: Vec<u32>,
    max_rss: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl BrokerWatch {
    /// Starts sampling; `None` when the process cannot be read.
    pub fn start(pids: &[u32]) -> Option<BrokerWatch> {
        let first = rss_of(pids)?;
        let pid_list = pids.to_vec();
        let max_rss = Arc::new(AtomicU64::new(first));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (max_rss.clone(), stop.clone());
        // A plain thread: sampling must go on even when the runtime's workers are saturated.
        let spawned = std::thread::Builder::new()
            .name("bench-rss".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match rss_of(&pid_list) {
                        Some(kib) => {
                            m.fetch_max(kib, Ordering::Relaxed);
                        }
                        None => break,
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        spawned.ok()?;
        Some(BrokerWatch {
            pids: pids.to_vec(),
            max_rss,
            stop,
        })
    }

    pub fn max_rss_kib(&self) -> u64 {
        self.max_rss.load(Ordering::Relaxed)
    }
}

impl Drop for BrokerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// CPU used by this process and (optionally) the broker between two instants.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pub at: Instant,
    pub own: f64,
    pub broker: Option<f64>,
    /// The engine under a cluster (its NATS servers), when watched.
    pub engine: Option<f64>,
}

impl CpuMark {
    pub fn now(broker_pids: &[u32], engine_pids: &[u32]) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            own: own_cpu_secs(),
            broker: cpu_of(broker_pids),
            engine: cpu_of(engine_pids),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(proc_rss_kib(pid).is_some_and(|k| k > 0));
        assert!(proc_cpu_secs(pid).is_some());
        assert!(own_cpu_secs() >= 0.0);
        assert!(proc_rss_kib(u32::MAX).is_none());
        assert!(cpu_of(&[pid, pid]).is_some());
        assert!(cpu_of(&[]).is_none());
        assert!(rss_of(&[pid, u32::MAX]).is_none());
    }
}
