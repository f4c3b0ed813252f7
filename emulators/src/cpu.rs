//! CPU time spent by each part of a loadgen run, per 1,000 notifications, and how much of the
//! machine the hypervisor took meanwhile (steal).
//!
//! On a shared virtual machine the rate of the same code drifts by a third within minutes, with
//! the other tenants (bench/README). CPU time per notification does not: a process is charged
//! only for the time it ran. So two runs whose rates cannot be compared can still say which one
//! did less work, and where.
//!
//! Read from `/proc` (Linux), for processes on this machine only: the relay (its pid), this
//! process (loadgen, the in-process emulator and the completion check), its reaped children
//! (pgbench), and the Postgres server behind the run's database (the postmaster found as the
//! parent of our own backend, with every child of it, and the time of the children it reaped).
//! Redis is asked over its connection (`INFO cpu`), so a Redis elsewhere is measured too (on a
//! Cluster, only the node `redis.url` names: the others are not in the figure). A part
//! that cannot be read (a Postgres on another host) is left out of the report, never guessed.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

/// Clock ticks per second of the times in `/proc/<pid>/stat` and `/proc/stat` (`USER_HZ`: 100
/// on every architecture Linux runs these benchmarks on; the kernel converts to it).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds of each part, and the machine's counters, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSample {
    /// Seconds of CPU (user + system) per part, for the parts that could be read.
    pub parts: Vec<(&'static str, f64)>,
    /// `/proc/stat`'s first line: (steal, every state together) in ticks.
    pub machine: Option<(u64, u64)>,
    /// When it was taken (None in tests that build samples by hand).
    pub at: Option<Instant>,
}

/// What a run cost between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuReport {
    /// Milliseconds of CPU per 1,000 notifications, per part.
    pub per_1k_ms: Vec<(&'static str, f64)>,
    /// Share of the machine's time the hypervisor gave to others (0..1).
    pub steal: Option<f64>,
    /// Cores the parts kept busy on average (their CPU seconds over the seconds between the
    /// samples), and the cores the machine has: how close the run came to saturating it.
    pub cores_used: Option<f64>,
    pub cores: usize,
}

/// Where each part's time is read.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub relay: Option<u32>,
    /// A backend of the run's Postgres (`pg_backend_pid()`): its parent is the postmaster.
    pub postgres_backend: Option<u32>,
    /// pgbench is the producer: loadgen's reaped children are pgbench.
    pub pgbench: bool,
}

impl CpuSample {
    /// Reads every part now; `redis_info_cpu` is Redis's `INFO cpu` text, when it could be had.
    pub fn take(parts: Parts, redis_info_cpu: Option<&str>) -> CpuSample {
        let mut sample = CpuSample::default();
        let mut add = |name, secs: Option<f64>| {
            if let Some(secs) = secs {
                sample.parts.push((name, secs));
            }
        };
        add("relay", parts.relay.and_then(|pid| read_stat(pid).map(|s| s.own_secs())));
        let own = read_stat_of("self");
        add("loadgen", own.as_ref().map(Stat::own_secs));
        add("pgbench", own.as_ref().filter(|_| parts.pgbench).map(Stat::reaped_secs));
        add("postgres", parts.postgres_backend.and_then(postgres_secs));
        add("redis", redis_info_cpu.and_then(redis_secs));
        sample.machine = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_machine);
        sample.at = Some(Instant::now());
        sample
    }

    /// What happened between `self` (the earlier sample) and `later`, for `notifications`.
    pub fn until(&self, later: &CpuSample, notifications: u64) -> CpuReport {
        let before: HashMap<_, _> = self.parts.iter().copied().collect();
        let spent: Vec<(&'static str, f64)> =
            later.parts.iter().filter_map(|&(name, secs)| Some((name, (secs - before.get(name)?).max(0.0)))).collect();
        let per_1k_ms = spent.iter().map(|&(name, secs)| (name, secs * 1e6 / notifications.max(1) as f64)).collect();
        let cores_used = match (self.at, later.at) {
            (Some(t0), Some(t1)) if t1 > t0 => {
                Some(spent.iter().map(|(_, secs)| secs).sum::<f64>() / t1.duration_since(t0).as_secs_f64())
            }
            _ => None,
        };
        let steal = match (self.machine, later.machine) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => Some(s1.saturating_sub(s0) as f64 / (t1 - t0) as f64),
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        CpuReport { per_1k_ms, steal, cores_used, cores }
    }
}

impl CpuReport {
    /// The parts' sum, ms per 1,000 notifications.
    pub fn total_ms(&self) -> f64 {
        self.per_1k_ms.iter().map(|(_, ms)| ms).sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut parts: serde_json::Map<String, serde_json::Value> =
            self.per_1k_ms.iter().map(|(name, ms)| (name.to_string(), round1(*ms).into())).collect();
        parts.insert("total".into(), round1(self.total_ms()).into());
        serde_json::json!({
            "per_1k_ms": parts,
            "steal": self.steal.map(|s| (s * 1000.0).round() / 1000.0),
            "cores_used": self.cores_used.map(|c| (c * 100.0).round() / 100.0),
            "cores": self.cores,
        })
    }
}

impl fmt::Display for CpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.0} ms per 1k notifications (", self.total_ms())?;
        for (i, (name, ms)) in self.per_1k_ms.iter().enumerate() {
            write!(f, "{}{name} {ms:.0}", if i == 0 { "" } else { ", " })?;
        }
        write!(f, ")")?;
        if let Some(used) = self.cores_used {
            write!(f, "; {used:.2} of {} cores busy", self.cores)?;
        }
        if let Some(steal) = self.steal {
            write!(f, "; steal {:.1} % of the machine", steal * 100.0)?;
        }
        Ok(())
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The fields of `/proc/<pid>/stat` used here, in ticks.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    /// The command name (`comm`: `postgres` for every process of a Postgres server).
    name: String,
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl Stat {
    fn own_secs(&self) -> f64 {
        (self.utime + self.stime) as f64 / TICKS_PER_SEC
    }

    /// Children waited for (reaped): their whole time.
    fn reaped_secs(&self) -> f64 {
        (self.cutime + self.cstime) as f64 / TICKS_PER_SEC
    }
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself: the fields that follow are counted from its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let (open, close) = (line.find('(')?, line.rfind(')')?);
    let name = line.get(open + 1..close)?.to_string();
    let rest = &line[close + 1..];
    // After the name: state (field 3), ppid (4), … utime (14), stime (15), cutime (16), cstime (17).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        name,
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    read_stat_of(&pid.to_string())
}

fn read_stat_of(pid: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The whole server's CPU seconds: the postmaster (its own and its reaped children's) and every
/// live child of it.
fn postgres_secs(backend: u32) -> Option<f64> {
    // The pid came from the server: on another host it may name some process of this one.
    let is_postgres = |s: &Stat| s.name == "postgres";
    let postmaster = read_stat(backend).filter(is_postgres)?.ppid;
    let main = read_stat(postmaster).filter(is_postgres)?;
    let mut secs = main.own_secs() + main.reaped_secs();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process gone between the listing and the read is simply not counted now; its time
        // is in the postmaster's reaped time from then on.
        if let Some(stat) = read_stat(pid).filter(|s| s.ppid == postmaster) {
            secs += stat.own_secs();
        }
    }
    Some(secs)
}

/// `used_cpu_sys` + `used_cpu_user` (seconds) from `INFO cpu`.
fn redis_secs(info: &str) -> Option<f64> {
    let value = |key: &str| {
        info.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':')?.trim().parse::<f64>().ok())
    };
    Some(value("used_cpu_sys")? + value("used_cpu_user")?)
}

/// `/proc/stat`'s `cpu` line: (steal, the sum of every state), in ticks. Guest time is already
/// counted in user time, so it is not added again.
fn parse_machine(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    Some((*ticks.get(7)?, ticks.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_after_the_last_parenthesis_of_the_command_name() {
        let line = "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 5 0 0 0 150 30 7 3 20 0 1 0 100 0 0";
        let stat = Stat { name: "postgres: a (b) c".into(), ppid: 17, utime: 150, stime: 30, cutime: 7, cstime: 3 };
        assert_eq!(parse_stat(line), Some(stat));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0 1"), None, "a line cut short");
    }

    #[test]
    fn redis_cpu_is_its_system_and_user_seconds() {
        let info = "# CPU\r\nused_cpu_sys:1.50\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9.0\r\n";
        assert_eq!(redis_secs(info), Some(3.75));
        assert_eq!(redis_secs("# CPU\r\nused_cpu_sys:1\r\n"), None);
    }

    #[test]
    fn steal_is_its_share_of_every_tick_between_two_samples() {
        let first = parse_machine("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n");
        let later = parse_machine("cpu  200 0 100 1500 20 0 0 180 0 0\n");
        assert_eq!(first, Some((40, 1000)));
        let (a, b) = (
            CpuSample { machine: first, ..CpuSample::default() },
            CpuSample { machine: later, ..CpuSample::default() },
        );
        let report = a.until(&b, 1000);
        assert_eq!(report.steal, Some(140.0 / 1000.0));
        assert_eq!(parse_machine("intr 1 2 3"), None);
    }

    #[test]
    fn each_part_is_charged_per_thousand_notifications_and_unread_parts_are_left_out() {
        let t0 = Instant::now();
        let before = CpuSample { parts: vec![("relay", 1.0), ("postgres", 10.0)], machine: None, at: Some(t0) };
        let parts = vec![("relay", 3.0), ("postgres", 16.0), ("redis", 4.0)];
        let after = CpuSample { parts, machine: None, at: Some(t0 + std::time::Duration::from_secs(4)) };
        let report = before.until(&after, 2_000);
        // 2 s of relay CPU for 2,000 notifications: 1,000 ms per 1,000.
        assert_eq!(report.per_1k_ms, vec![("relay", 1000.0), ("postgres", 3000.0)]);
        assert_eq!(report.total_ms(), 4000.0);
        // 8 CPU seconds in 4 s: two cores kept busy.
        assert_eq!(report.cores_used, Some(2.0));
        let cores = report.cores;
        assert_eq!(
            report.to_string(),
            format!("4000 ms per 1k notifications (relay 1000, postgres 3000); 2.00 of {cores} cores busy")
        );
        assert_eq!(report.to_json()["per_1k_ms"]["total"], 4000.0);
        assert_eq!(report.to_json()["cores_used"], 2.0);
    }

    #[test]
    fn this_process_and_its_postgres_less_self_can_be_read() {
        let own = read_stat_of("self").expect("/proc/self/stat");
        assert!(own.ppid > 0);
        // A pid a remote server gave that names a local process other than Postgres: not read.
        assert_eq!(postgres_secs(std::process::id()), None);
        let parts = Parts { relay: Some(std::process::id()), postgres_backend: None, pgbench: true };
        let sample = CpuSample::take(parts, None);
        let names: Vec<_> = sample.parts.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, vec!["relay", "loadgen", "pgbench"], "postgres and redis unread: left out");
        let parts = Parts { pgbench: false, ..parts };
        assert!(!CpuSample::take(parts, None).parts.iter().any(|(n, _)| *n == "pgbench"));
        assert!(sample.machine.is_some());
    }
}
