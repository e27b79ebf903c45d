//! Measurement helpers of the load generator: the process-wide monotonic clock origin shared by
//! publisher and subscribers, HDR latency histograms and their summaries, and readers of `/proc`
//! for the CPU time (utime + stime) of the server, of this process and of each generator thread,
//! and of the server's resident memory. It must not drive sockets or decide what a scenario does;
//! it only reads clocks and files and turns numbers into JSON.

use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::sys;

/// Largest latency a histogram records, in microseconds (larger values saturate here).
pub const LATENCY_MAX_US: u64 = 60_000_000;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the monotonic clock since this process's origin (the same origin for every
/// thread, so a time stamped by the publisher can be compared with one read by a subscriber).
pub fn now_ns() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A latency histogram: 1 µs to [`LATENCY_MAX_US`], three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// `{count, min, mean, p50, p90, p99, p99.9, max}` in microseconds.
pub fn latency_json(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": histogram.len(),
        "min": histogram.min(),
        "mean": (histogram.mean() * 10.0).round() / 10.0,
        "p50": histogram.value_at_quantile(0.50),
        "p90": histogram.value_at_quantile(0.90),
        "p99": histogram.value_at_quantile(0.99),
        "p99_9": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
    })
}

/// Points of a percentile curve: (x = -log10(1 - q), latency in ms), from the median to max.
pub fn percentile_curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut x = 0.0;
    while x <= 5.0 + 1e-9 {
        let q = 1.0 - 10f64.powf(-x);
        points.push((x, histogram.value_at_quantile(q) as f64 / 1000.0));
        x += 0.05;
    }
    points
}

/// utime + stime in clock ticks from a `/proc/.../stat` file (fields 14 and 15).
fn stat_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Time the process's threads spent on a CPU, in ns: the sum of `se.sum_exec_runtime` over
/// `/proc/PID/task/*/sched`. Exact (the scheduler's own clock), where utime + stime are sampled
/// at each timer tick; like them, on a kernel without IRQ time accounting it includes the
/// softirq work done while the thread ran. None when the files are missing.
pub fn runtime_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("sched")) else {
            continue;
        };
        if let Some(ns) = parse_sum_exec_runtime(&text) {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// Time one thread of this process spent on a CPU, in ns (its `se.sum_exec_runtime`, as in
/// [`runtime_ns`]). None when the file is missing.
pub fn thread_runtime_ns(tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).ok()?;
    parse_sum_exec_runtime(&text)
}

/// `se.sum_exec_runtime : 1234.567890` (milliseconds, six decimals) as nanoseconds.
fn parse_sum_exec_runtime(sched: &str) -> Option<u64> {
    let line = sched
        .lines()
        .find(|line| line.starts_with("se.sum_exec_runtime"))?;
    let value = line.split(':').nth(1)?.trim();
    let (ms, fraction) = value.split_once('.').unwrap_or((value, "0"));
    let fraction = format!("{fraction:0<6}");
    Some(ms.parse::<u64>().ok()? * 1_000_000 + fraction.get(..6)?.parse::<u64>().ok()?)
}

/// Local ports one source address can use towards one destination
/// (`net.ipv4.ip_local_port_range`; Linux's default range when unreadable).
pub fn ephemeral_port_count() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<usize>);
            match (bounds.next(), bounds.next()) {
                (Some(Ok(low)), Some(Ok(high))) if high >= low => Some(high - low + 1),
                _ => None,
            }
        })
        .unwrap_or(60999 - 32768 + 1)
}

/// Resident memory of a process in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU times at one instant: the server's, this process's and each generator thread's (ticks),
/// and the server's exact run time (ns).
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at_ns: u64,
    server: Option<u64>,
    server_runtime_ns: Option<u64>,
    own: Option<u64>,
    threads: Vec<Option<u64>>,
}

impl CpuSnapshot {
    pub fn take(server_pid: Option<u32>, thread_ids: &[i32]) -> CpuSnapshot {
        CpuSnapshot {
            at_ns: now_ns(),
            server: server_pid.and_then(|pid| stat_ticks(&format!("/proc/{pid}/stat"))),
            server_runtime_ns: server_pid.and_then(runtime_ns),
            own: stat_ticks("/proc/self/stat"),
            threads: thread_ids
                .iter()
                .map(|tid| stat_ticks(&format!("/proc/self/task/{tid}/stat")))
                .collect(),
        }
    }
}

/// CPU used between two snapshots.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    pub secs: f64,
    pub server_cpu_secs: Option<f64>,
    /// The same from the scheduler's exact run time (see [`runtime_ns`]).
    pub server_runtime_secs: Option<f64>,
    pub own_cpu_secs: Option<f64>,
    pub thread_cpu_secs: Vec<Option<f64>>,
}

/// A generator thread busier than this share of one core is flagged as the bottleneck.
pub const BOTTLENECK_SHARE: f64 = 0.9;

impl CpuWindow {
    pub fn between(start: &CpuSnapshot, end: &CpuSnapshot) -> CpuWindow {
        let tick = sys::clock_ticks_per_sec() as f64;
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / tick),
            _ => None,
        };
        CpuWindow {
            secs: end.at_ns.saturating_sub(start.at_ns) as f64 / 1e9,
            server_cpu_secs: delta(start.server, end.server),
            server_runtime_secs: match (start.server_runtime_ns, end.server_runtime_ns) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
                _ => None,
            },
            own_cpu_secs: delta(start.own, end.own),
            thread_cpu_secs: start
                .threads
                .iter()
                .zip(&end.threads)
                .map(|(a, b)| delta(*a, *b))
                .collect(),
        }
    }

    /// The busiest generator thread's share of one core over the window.
    pub fn busiest_thread_share(&self) -> f64 {
        if self.secs <= 0.0 {
            return 0.0;
        }
        self.thread_cpu_secs
            .iter()
            .flatten()
            .fold(0.0f64, |max, secs| max.max(secs / self.secs))
    }

    /// Whether a generator thread was (nearly) saturated: its numbers then measure the
    /// generator, not the server.
    pub fn generator_bottleneck(&self) -> bool {
        self.busiest_thread_share() >= BOTTLENECK_SHARE
    }

    /// The `server` object of a report; `per` names the unit (`delivery`, `publish`, ...).
    pub fn server_json(&self, pid: Option<u32>, per: &str, count: u64) -> Value {
        let mut value = json!({
            "pid": pid,
            "window_secs": round3(self.secs),
            "cpu_secs": self.server_cpu_secs.map(round3),
            "cpu_percent_of_one_core": self.server_cpu_secs.map(|cpu| round1(pct(cpu, self.secs))),
        });
        let per_unit = |cpu: Option<f64>| match (cpu, count) {
            (Some(cpu), count) if count > 0 => Some(round3(cpu * 1e6 / count as f64)),
            _ => None,
        };
        value[format!("cpu_us_per_{per}")] = json!(per_unit(self.server_cpu_secs));
        // utime + stime advance in whole clock ticks (10 ms in /proc), too coarse for a window of
        // a few hundred ms; the scheduler's run time is exact.
        value["runtime_secs"] = json!(
            self.server_runtime_secs
                .map(|secs| (secs * 1e6).round() / 1e6)
        );
        value[format!("runtime_us_per_{per}")] = json!(per_unit(self.server_runtime_secs));
        value
    }

    /// The `generator` object of a report.
    pub fn generator_json(&self, threads: usize, per: &str, count: u64) -> Value {
        let per_unit = match (self.own_cpu_secs, count) {
            (Some(cpu), count) if count > 0 => Some(round3(cpu * 1e6 / count as f64)),
            _ => None,
        };
        let mut value = json!({
            "threads": threads,
            "cpu_secs": self.own_cpu_secs.map(round3),
            "thread_cpu_percent": self.thread_cpu_secs.iter()
                .map(|secs| secs.map(|secs| round1(pct(secs, self.secs))))
                .collect::<Vec<_>>(),
            "busiest_thread_percent": round1(self.busiest_thread_share() * 100.0),
            "bottleneck": self.generator_bottleneck(),
        });
        value[format!("cpu_us_per_{per}")] = json!(per_unit);
        value
    }
}

fn pct(cpu: f64, secs: f64) -> f64 {
    if secs > 0.0 { cpu / secs * 100.0 } else { 0.0 }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_and_status_parse() {
        assert!(stat_ticks("/proc/self/stat").is_some());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        let tid = sys::thread_id();
        assert!(stat_ticks(&format!("/proc/self/task/{tid}/stat")).is_some());
    }

    #[test]
    fn scheduler_run_time_parses() {
        let sched = "ringcast (42, #threads: 3)\n---\nse.exec_start : 5.000000\n\
                     se.sum_exec_runtime                          :          1234.056789\n";
        assert_eq!(parse_sum_exec_runtime(sched), Some(1_234_056_789));
        assert_eq!(
            parse_sum_exec_runtime("se.sum_exec_runtime : 7.5"),
            Some(7_500_000)
        );
        assert_eq!(parse_sum_exec_runtime("se.vruntime : 1.0"), None);
        assert!(runtime_ns(std::process::id()).is_some());
    }

    #[test]
    fn latency_summary_has_percentiles() {
        let mut histogram = new_histogram();
        for value in 1..=1000 {
            histogram.saturating_record(value);
        }
        let summary = latency_json(&histogram);
        assert_eq!(summary["count"], 1000);
        assert_eq!(summary["max"], 1000);
        assert!(summary["p99"].as_u64().unwrap() >= 989);
        assert!(!percentile_curve(&histogram).is_empty());
    }
}
