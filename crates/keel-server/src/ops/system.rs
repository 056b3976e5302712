//! What the machine and the process look like from inside: the process's CPU, memory and
//! file descriptors (read from `/proc/self`, the standard `process_*` metrics), the disk that
//! holds the data directory, the memory the process may use, and the database's size.
//! Everything returns `None` where the platform does not say (not Linux).

use std::path::Path;

pub struct Disk {
    pub total: u64,
    pub available: u64,
}

impl Disk {
    /// The share of the disk in use, from 0 to 1.
    pub fn used_ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            1.0 - self.available as f64 / self.total as f64
        }
    }
}

/// The filesystem holding `dir` (or its nearest existing parent).
pub fn disk(dir: &Path) -> Option<Disk> {
    let mut path = std::path::absolute(dir).ok()?;
    while !path.exists() {
        path = path.parent()?.to_path_buf();
    }
    let stat = rustix::fs::statvfs(&path).ok()?;
    Some(Disk {
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
        available: stat.f_bavail.saturating_mul(stat.f_frsize),
    })
}

/// The process's cgroup memory limit (v2, then v1), else the machine's memory.
pub fn memory_limit() -> Option<u64> {
    for file in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(limit) = text.trim().parse::<u64>()
            // v1 reports "no limit" as a huge number.
            && limit < (1 << 60)
        {
            return Some(limit);
        }
    }
    meminfo_total()
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's resident memory in bytes.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Clock ticks per second of `/proc/*/stat`: 100 on every Linux architecture Keel runs on
/// (USER_HZ is fixed by the kernel's ABI).
const TICKS_PER_SECOND: f64 = 100.0;

struct Process {
    cpu_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    start_seconds: f64,
    open_fds: usize,
    max_fds: Option<u64>,
}

fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field numbers of proc(5), minus 3 (pid and comm are gone, and it counts from 1).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_ticks = field(14)? + field(15)?;
    let start_ticks = field(22)?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok()))?;
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    });
    Some(Process {
        cpu_seconds: cpu_ticks as f64 / TICKS_PER_SECOND,
        virtual_bytes: field(23)?,
        resident_bytes: resident_memory()?,
        start_seconds: boot as f64 + start_ticks as f64 / TICKS_PER_SECOND,
        open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count(),
        max_fds,
    })
}

/// Appends the standard `process_*` metrics (as Prometheus client libraries name them) to a
/// text exposition.
pub fn process_metrics(out: &mut String) {
    use std::fmt::Write;
    let Some(process) = process() else {
        return;
    };
    let mut metric = |name: &str, kind: &str, value: f64| {
        let help = crate::http::catalogue::find(name).map_or("", |m| m.help);
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
    };
    metric("process_cpu_seconds_total", "counter", process.cpu_seconds);
    metric("process_resident_memory_bytes", "gauge", process.resident_bytes as f64);
    metric("process_virtual_memory_bytes", "gauge", process.virtual_bytes as f64);
    metric("process_open_fds", "gauge", process.open_fds as f64);
    if let Some(max) = process.max_fds {
        metric("process_max_fds", "gauge", max as f64);
    }
    metric("process_start_time_seconds", "gauge", process.start_seconds);
}

/// The database's size on disk: the SQLite file and its WAL, or the app schema's tables
/// with their indexes and TOAST on PostgreSQL.
pub async fn database_size(db: &keel_store::Db) -> Result<u64, keel_store::StoreError> {
    if let Some(path) = db.sqlite_path() {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
        return Ok(size(path) + size(&wal));
    }
    let sql = db.portable(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'm')",
        vec![],
    );
    Ok(db
        .query_one(&sql)
        .await?
        .and_then(|row| row.first().and_then(|c| c.int()))
        .unwrap_or(0)
        .max(0) as u64)
}
