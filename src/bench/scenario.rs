//! The four scenarios as the main thread runs them: build each thread's plan, start the
//! threads, move them through the phases (connect → run → stop) while printing progress on
//! stderr and sampling a timeline, take CPU and memory snapshots at the edges of the measured
//! window, then merge the threads' results and do the exact accounting (expected deliveries per
//! accepted publish × subscribers of its channel). It must not touch sockets (the engine does)
//! nor print the result (`mod.rs` does).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use super::engine::{
    PHASE_RUN, PHASE_STOP, PublishMode, PublisherPlan, PublisherResult, ReconnectPlan, STEPS_MAX,
    Shared, Stats, Target, Worker, WorkerPlan, WorkerResult,
};
use super::measure::{
    CpuSnapshot, CpuWindow, ephemeral_port_count, latency_json, new_histogram, now_ns,
    percentile_curve, round1, round3, rss_bytes,
};
use super::reconnect::Policy;
use super::report::{self, Series};
use super::{
    BenchError, Common, FanoutArgs, IdleArgs, Outcome, PublishArgs, Setup, StormArgs,
    reserve_descriptors, usage, wire,
};

const SECOND: u64 = 1_000_000_000;
/// How often the main thread looks at the counters.
const POLL: Duration = Duration::from_millis(20);
/// Timeline sampling interval.
const SAMPLE_NS: u64 = 250_000_000;
/// Delay between arming the run and the first scheduled publish.
const RUN_LEAD_NS: u64 = 20_000_000;

/// The threads of one run.
struct Run {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<WorkerResult>>,
    spawned_ns: u64,
    tids: Vec<i32>,
}

impl Run {
    fn spawn(plans: Vec<WorkerPlan>, shared: Arc<Shared>) -> Result<Run, BenchError> {
        let mut workers = Vec::with_capacity(plans.len());
        for plan in plans {
            let worker = Worker::new(plan, Arc::clone(&shared))
                .map_err(|e| BenchError::Run(format!("cannot create an event loop: {e}")))?;
            workers.push(worker);
        }
        let spawned_ns = now_ns();
        let mut handles = Vec::with_capacity(workers.len());
        for (index, worker) in workers.into_iter().enumerate() {
            match std::thread::Builder::new()
                .name(format!("bench-{index}"))
                .spawn(move || worker.run())
            {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    shared.phase.store(PHASE_STOP, Ordering::Release);
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(BenchError::Run(format!("cannot start a thread: {error}")));
                }
            }
        }
        let deadline = now_ns() + 5 * SECOND;
        let tids = loop {
            let tids: Vec<i32> = shared
                .workers
                .iter()
                .map(|c| c.tid.load(Ordering::Relaxed) as i32)
                .collect();
            if tids.iter().all(|tid| *tid != 0) || now_ns() > deadline {
                break tids;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        Ok(Run {
            shared,
            handles,
            spawned_ns,
            tids,
        })
    }

    /// Time from starting the threads to the last client ready.
    fn connect_ns(&self) -> u64 {
        self.shared
            .workers
            .iter()
            .map(|c| c.last_ready_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
            .saturating_sub(self.spawned_ns)
    }

    fn stop(self) -> Vec<WorkerResult> {
        self.shared.phase.store(PHASE_STOP, Ordering::Release);
        self.handles
            .into_iter()
            .map(|handle| handle.join().expect("a bench thread panicked"))
            .collect()
    }
}

/// Progress lines on stderr (one a second) and the timeline behind the time-series chart.
struct Monitor {
    quiet: bool,
    origin_ns: u64,
    last_print_ns: u64,
    last_sample_ns: u64,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    ready: u64,
    failed: u64,
    closed: u64,
    published: u64,
    accepted: u64,
    received: u64,
}

impl Monitor {
    fn new(quiet: bool, origin_ns: u64) -> Monitor {
        Monitor {
            quiet,
            origin_ns,
            last_print_ns: origin_ns,
            last_sample_ns: 0,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, shared: &Shared, now: u64) -> Sample {
        let publisher = &shared.publisher;
        Sample {
            t: now.saturating_sub(self.origin_ns) as f64 / 1e9,
            ready: shared.sum(|c| &c.ready),
            failed: shared.sum(|c| &c.failed),
            closed: shared.sum(|c| &c.closed),
            published: publisher.published.load(Ordering::Relaxed),
            accepted: publisher.accepted.load(Ordering::Relaxed),
            received: shared.sum(|c| &c.received),
        }
    }

    /// Samples the timeline when due and prints a progress line once a second.
    fn tick(&mut self, shared: &Shared, phase: &str) {
        let now = now_ns();
        if now >= self.last_sample_ns + SAMPLE_NS {
            self.last_sample_ns = now;
            let sample = self.sample(shared, now);
            self.samples.push(sample);
        }
        if !self.quiet && now >= self.last_print_ns + SECOND {
            self.last_print_ns = now;
            let s = self.sample(shared, now);
            let publisher = &shared.publisher;
            let rate = f64::from_bits(publisher.rate_bits.load(Ordering::Relaxed));
            let mut line = format!(
                "[{:7.1}s] {phase}: ready {} failed {} closed {}",
                s.t, s.ready, s.failed, s.closed
            );
            if s.published > 0 {
                line.push_str(&format!(
                    " | step {} rate {} | published {} accepted {} expected {} received {}",
                    publisher.step.load(Ordering::Relaxed),
                    if rate.is_finite() {
                        format!("{rate:.0}/s")
                    } else {
                        "closed-loop".to_string()
                    },
                    s.published,
                    s.accepted,
                    publisher.expected.load(Ordering::Relaxed),
                    s.received
                ));
            }
            eprintln!("{line}");
        }
    }

    fn finish(&mut self, shared: &Shared) {
        let now = now_ns();
        let sample = self.sample(shared, now);
        self.samples.push(sample);
    }

    fn timeline_json(&self) -> Value {
        Value::Array(
            self.samples
                .iter()
                .map(|s| {
                    json!({"t": round3(s.t), "ready": s.ready, "failed": s.failed,
                           "closed": s.closed, "published": s.published,
                           "accepted": s.accepted, "received": s.received})
                })
                .collect(),
        )
    }

    /// Per-interval rate of a cumulative counter, as chart points.
    fn rate_points(&self, field: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
        self.samples
            .windows(2)
            .filter(|w| w[1].t > w[0].t)
            .map(|w| {
                let rate = field(&w[1]).saturating_sub(field(&w[0])) as f64 / (w[1].t - w[0].t);
                (w[1].t, rate)
            })
            .collect()
    }

    fn level_points(&self, field: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .map(|s| (s.t, field(s) as f64))
            .collect()
    }

    fn end_t(&self) -> f64 {
        self.samples.last().map_or(1.0, |s| s.t.max(1.0))
    }
}

/// Waits until every client is ready or failed and `http_needed` REST connections are up, or
/// the timeout passes. Returns whether everything connected.
fn wait_connected(
    run: &Run,
    monitor: &mut Monitor,
    clients: usize,
    http_needed: u64,
    timeout_secs: f64,
) -> bool {
    let deadline = now_ns() + (timeout_secs * 1e9) as u64;
    loop {
        let shared = &run.shared;
        let settled = shared.sum(|c| &c.ready) + shared.sum(|c| &c.failed);
        let http = shared.publisher.connections_ready.load(Ordering::Relaxed);
        if settled >= clients as u64 && http >= http_needed {
            return true;
        }
        if now_ns() > deadline {
            return false;
        }
        monitor.tick(shared, "connect");
        std::thread::sleep(POLL);
    }
}

/// Arms the run phase: the publisher's schedule starts a moment from now.
fn start_run(shared: &Shared) -> u64 {
    let start = now_ns() + RUN_LEAD_NS;
    shared.run_start_ns.store(start, Ordering::Release);
    shared.phase.store(PHASE_RUN, Ordering::Release);
    start
}

/// Everything the threads measured, merged.
struct Merged {
    stats: Stats,
    publisher: Option<PublisherResult>,
}

fn merge(results: Vec<WorkerResult>) -> Merged {
    let mut merged = Merged {
        stats: Stats::new(0),
        publisher: None,
    };
    for result in results {
        merged.stats.absorb(result.stats);
        if result.publisher.is_some() {
            merged.publisher = result.publisher;
        }
    }
    merged
}

/// Exact delivery accounting over publishes `first..end`.
#[derive(Debug, Default, Clone, Copy)]
struct Accounting {
    expected: u64,
    received: u64,
    lost: u64,
    /// Deliveries beyond the subscriber count of an accepted publish, or of a publish that was
    /// not confirmed (refused, or its connection failed before the answer).
    unexpected: u64,
}

fn account(
    first: u64,
    end: u64,
    accepted: &[bool],
    counts: &[u32],
    subscribed: &[u64],
) -> Accounting {
    let mut total = Accounting::default();
    let channels = subscribed.len().max(1) as u64;
    for seq in first..end {
        let n = u64::from(counts.get(seq as usize).copied().unwrap_or(0));
        if accepted.get(seq as usize).copied().unwrap_or(false) {
            let subscribers = subscribed
                .get((seq % channels) as usize)
                .copied()
                .unwrap_or(0);
            let got = n.min(subscribers);
            total.expected += subscribers;
            total.received += got;
            total.lost += subscribers - got;
            total.unexpected += n - got;
        } else {
            total.unexpected += n;
        }
    }
    total
}

fn per_sec(count: u64, ns: u64) -> Option<f64> {
    (ns > 0).then(|| round1(count as f64 * 1e9 / ns as f64))
}

fn target_json(target: &Target) -> Value {
    json!({"ws": target.ws_addr.to_string(), "rest": target.rest_addr.to_string(),
           "app_id": target.app_id, "key": target.key})
}

fn warnings_for(window: &CpuWindow, common: &Common) -> Vec<String> {
    let mut warnings = Vec::new();
    if window.generator_bottleneck() {
        warnings.push(format!(
            "a generator thread was {:.0}% busy: the numbers measure the generator, not the \
             server (use --threads, or pin the generator to its own cores)",
            window.busiest_thread_share() * 100.0
        ));
    }
    if common.server_pid.is_none() {
        warnings.push("no --server-pid: server CPU and memory were not measured".to_string());
    } else if window.server_cpu_secs.is_none() {
        warnings.push("could not read the server's /proc/PID/stat".to_string());
    }
    warnings
}

fn channel_prefix() -> String {
    format!("rcb-{}-", std::process::id())
}

/// Splits clients round-robin over the threads.
fn clients_of(worker: usize, threads: usize, total: usize, channels: u32) -> Vec<Option<u32>> {
    (worker..total)
        .step_by(threads)
        .map(|j| (channels > 0).then(|| (j % channels as usize) as u32))
        .collect()
}

/// One plan per generator thread for `total` WebSocket clients spread round-robin over the
/// threads and over `channels`: no publisher, no latency bound, no sequence limit (a scenario
/// sets what it needs on the plans it gets back). `connect_rate` and `connect_concurrency`
/// are totals, split over the threads (0: unpaced / uncapped).
fn client_plans(
    target: &Arc<Target>,
    common: &Common,
    total: usize,
    channels: u32,
    connect_rate: f64,
    connect_concurrency: usize,
) -> Vec<WorkerPlan> {
    let threads = common.threads;
    let prefix = channel_prefix();
    let source_ips = source_ips(
        &common.source_ips,
        target.ws_addr.ip(),
        total,
        ephemeral_port_count(),
    );
    (0..threads)
        .map(|w| WorkerPlan {
            index: w,
            target: Arc::clone(target),
            clients: clients_of(w, threads, total, channels),
            channel_prefix: prefix.clone(),
            channels,
            connect_rate: connect_rate / threads as f64,
            connect_inflight_max: connect_concurrency.div_ceil(threads),
            source_ips: source_ips.clone(),
            latency_bound_us: u64::MAX,
            seq_limit: 0,
            publisher: None,
            reconnect: None,
        })
        .collect()
}

/// The addresses clients connect from: `--source-ips` when given; otherwise, for a loopback IPv4
/// server and more clients than a quarter of one address's ephemeral ports (`ports`), as many
/// 127.0.0.x addresses as keep each under that share; otherwise none (the kernel's choice). The
/// kernel's search for a free port gets slow long before the range is full: 15,000 connections
/// from one address cost the generator about 85 µs each, from three about 24 µs.
fn source_ips(explicit: &[IpAddr], server: IpAddr, total: usize, ports: usize) -> Vec<IpAddr> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    let IpAddr::V4(server) = server else {
        return Vec::new();
    };
    let per_address = (ports / 4).max(1);
    if !server.is_loopback() || total <= per_address {
        return Vec::new();
    }
    let count = total.div_ceil(per_address).min(254);
    (1..=count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect()
}

fn duration_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}

/// The publish phase as the main thread drives it: the name on its progress lines, how long
/// after the run start it waits for the publisher, and what it warns when that cap passes.
struct PublishPhase {
    name: &'static str,
    cap_ns: u64,
    cap_warning: &'static str,
}

/// The measured window of a publishing run.
struct PublishWindow {
    /// REST connections that were ready when the run was to be armed.
    ready: u64,
    /// When the publisher's schedule started (when the window started, if nothing was armed).
    run_start: u64,
    cpu: CpuWindow,
}

impl PublishWindow {
    /// The window's length: from the run start to `end_ns` (the publisher's last step, when
    /// it recorded one), else to the end of the CPU window.
    fn ns(&self, end_ns: Option<u64>) -> u64 {
        let end_ns = end_ns.unwrap_or(self.run_start + (self.cpu.secs * 1e9) as u64);
        end_ns.saturating_sub(self.run_start)
    }
}

/// Arms the run when a REST connection is ready and waits, ticking the monitor, until the
/// publisher is done or the phase's cap passes; CPU snapshots bound the window.
fn publish_window(
    run: &Run,
    monitor: &mut Monitor,
    server_pid: Option<u32>,
    phase: PublishPhase,
    warnings: &mut Vec<String>,
) -> PublishWindow {
    let shared = &run.shared;
    let ready = shared.publisher.connections_ready.load(Ordering::Relaxed);
    let before = CpuSnapshot::take(server_pid, &run.tids);
    let mut run_start = now_ns();
    if ready > 0 {
        run_start = start_run(shared);
        let hard_deadline = run_start + phase.cap_ns;
        while !shared.publisher.done.load(Ordering::Acquire) {
            if now_ns() > hard_deadline {
                warnings.push(phase.cap_warning.into());
                break;
            }
            monitor.tick(shared, phase.name);
            std::thread::sleep(POLL);
        }
    } else {
        warnings
            .push("no REST connection to the server could be opened: nothing was published".into());
    }
    let after = CpuSnapshot::take(server_pid, &run.tids);
    monitor.finish(shared);
    PublishWindow {
        ready,
        run_start,
        cpu: CpuWindow::between(&before, &after),
    }
}

/// Answered publishes by HTTP status, keyed by the status as text.
fn statuses_json(statuses: &BTreeMap<u16, u64>) -> serde_json::Map<String, Value> {
    statuses
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

fn check_fanout_args(args: &FanoutArgs) -> Result<(), BenchError> {
    if args.channels == 0 || args.channels > 100_000 {
        return usage("--channels must be 1..=100000");
    }
    if args.subscribers > 1_000_000 {
        return usage("--subscribers must be at most 1000000");
    }
    if args.publishers == 0 || args.publishers > 1024 {
        return usage("--publishers must be 1..=1024");
    }
    if args.payload > 1024 * 1024 {
        return usage("--payload must be at most 1 MiB");
    }
    if !(args.drain >= 0.0 && args.drain <= 60.0) {
        return usage("--drain must be 0..=60 seconds");
    }
    if args.connect_rate.is_nan() || args.connect_rate < 0.0 {
        return usage("--connect-rate must be >= 0");
    }
    Ok(())
}

/// How a fan-out run publishes: at a fixed `--rate`, or ramping (`--rate max`).
struct Schedule {
    ramp: bool,
    duration: f64,
    mode: PublishMode,
    /// Largest publish sequence the subscribers expect.
    seq_limit: u64,
    /// `--rate` as the result's parameters show it.
    rate_json: Value,
}

impl Schedule {
    fn of(args: &FanoutArgs) -> Result<Schedule, BenchError> {
        let ramp = args.rate.eq_ignore_ascii_case("max");
        let duration = args
            .common
            .duration
            .unwrap_or(if ramp { 120.0 } else { 10.0 });
        let (mode, seq_limit, rate_json) = if ramp {
            if !(args.start_rate > 0.0 && args.start_rate <= 1e7) {
                return usage("--start-rate must be > 0 and at most 10000000");
            }
            if !(args.ramp_factor > 1.0 && args.ramp_factor <= 10.0) {
                return usage("--ramp-factor must be > 1 and at most 10");
            }
            if !(args.step > 0.0 && args.step <= 60.0) {
                return usage("--step must be > 0 and at most 60 seconds");
            }
            if args.max_steps == 0 || args.max_steps > STEPS_MAX {
                return usage(format!("--max-steps must be 1..={STEPS_MAX}"));
            }
            (
                PublishMode::Ramp {
                    start_rate: args.start_rate,
                    factor: args.ramp_factor,
                    step_ns: duration_ns(args.step),
                    max_steps: args.max_steps,
                    duration_ns: duration_ns(duration),
                },
                wire::SEQ_MAX,
                json!("max"),
            )
        } else {
            let Ok(rate) = args.rate.parse::<f64>() else {
                return usage("--rate must be a number of publishes per second, or `max`");
            };
            if !(rate > 0.0 && rate <= 1e7) {
                return usage("--rate must be > 0 and at most 10000000");
            }
            let mut count = (rate * duration).ceil() as u64;
            if let Some(publishes) = args.publishes {
                if publishes == 0 {
                    return usage("--publishes must be at least 1");
                }
                count = count.min(publishes);
            }
            let count = count.clamp(1, wire::SEQ_MAX);
            (PublishMode::Fixed { rate, count }, count, json!(rate))
        };
        Ok(Schedule {
            ramp,
            duration,
            mode,
            seq_limit,
            rate_json,
        })
    }

    /// How long after the run start the main thread waits for the publisher.
    fn cap_ns(&self, args: &FanoutArgs) -> u64 {
        duration_ns(self.duration.min(super::DURATION_CAP_SECS))
            + duration_ns(args.drain)
            + if self.ramp {
                duration_ns(args.step + args.drain + 5.0)
            } else {
                duration_ns(self.duration)
            }
            + 30 * SECOND
    }
}

/// The subscribers' plans, with the publisher on the first thread.
fn fanout_plans(args: &FanoutArgs, target: &Arc<Target>, schedule: &Schedule) -> Vec<WorkerPlan> {
    let mut plans = client_plans(
        target,
        &args.common,
        args.subscribers,
        args.channels,
        args.connect_rate,
        args.connect_concurrency,
    );
    for plan in &mut plans {
        plan.latency_bound_us = (args.max_p99_ms * 1000.0) as u64;
        plan.seq_limit = schedule.seq_limit;
    }
    plans[0].publisher = Some(PublisherPlan {
        connections: args.publishers,
        payload_bytes: args.payload,
        mode: schedule.mode.clone(),
        drain_ns: duration_ns(args.drain),
    });
    plans
}

pub fn fanout(args: &FanoutArgs, setup: Setup) -> Result<Outcome, BenchError> {
    let common = &args.common;
    check_fanout_args(args)?;
    reserve_descriptors(args.subscribers + args.publishers, setup.nofile)?;
    let schedule = Schedule::of(args)?;
    let shared = Arc::new(Shared::new(common.threads, args.channels));
    let target = Arc::new(setup.target);
    let plans = fanout_plans(args, &target, &schedule);
    let run = Run::spawn(plans, Arc::clone(&shared))?;
    let mut monitor = Monitor::new(common.quiet, run.spawned_ns);
    let mut warnings = Vec::new();
    if !wait_connected(
        &run,
        &mut monitor,
        args.subscribers,
        args.publishers as u64,
        common.connect_timeout,
    ) {
        warnings.push(format!(
            "not every connection was ready after --connect-timeout {}s; running with those that were",
            common.connect_timeout
        ));
    }
    let connect_ns = run.connect_ns();
    let phase = PublishPhase {
        name: "fanout",
        cap_ns: schedule.cap_ns(args),
        cap_warning: "the run hit its hard time cap before the publisher finished: the server \
                      did not keep up with --rate (latency is measured from the schedule, so it \
                      shows the backlog)",
    };
    let publishing = publish_window(&run, &mut monitor, common.server_pid, phase, &mut warnings);
    let subscribed: Vec<u64> = shared
        .subscribed_per_channel
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let merged = merge(run.stop());
    let measured = FanoutMeasured {
        connect_ns,
        publishing,
        subscribed,
        merged,
        monitor,
        warnings,
    };
    Ok(fanout_report(args, &schedule, &target, measured))
}

/// What a fan-out run measured, for its report.
struct FanoutMeasured {
    connect_ns: u64,
    publishing: PublishWindow,
    /// Subscribers per channel index.
    subscribed: Vec<u64>,
    merged: Merged,
    monitor: Monitor,
    warnings: Vec<String>,
}

/// The fan-out result (with the exact accounting) and its latency chart.
fn fanout_report(
    args: &FanoutArgs,
    schedule: &Schedule,
    target: &Target,
    measured: FanoutMeasured,
) -> Outcome {
    let FanoutMeasured {
        connect_ns,
        publishing,
        subscribed,
        merged,
        monitor,
        mut warnings,
    } = measured;
    let common = &args.common;
    let publisher = merged.publisher.as_ref().expect("worker 0 publishes");
    let window = &publishing.cpu;

    let total = account(
        0,
        publisher.published,
        &publisher.accepted,
        &merged.stats.counts,
        &subscribed,
    );
    let window_ns = publishing.ns(publisher.steps.last().map(|s| s.drained_ns));
    let all_latency = merged
        .stats
        .latency
        .iter()
        .fold(new_histogram(), |mut all, h| {
            let _ = all.add(h);
            all
        });
    if total.lost > 0 {
        warnings.push(format!("{} deliveries were lost", total.lost));
    }
    if !merged.stats.failures.is_empty() {
        warnings.push(format!(
            "{} subscribers never became ready",
            merged.stats.failures.values().sum::<u64>()
        ));
    }
    warnings.extend(warnings_for(window, common));
    let mut result = json!({
        "scenario": "fanout",
        "target": target_json(target),
        "params": fanout_params(args, schedule),
        "connections": {
            "subscribers_ready": merged.stats.ready,
            "subscribers_failed": merged.stats.failures,
            "closed_during_run": merged.stats.closes,
            "connect_secs": round3(connect_ns as f64 / 1e9),
            "ready_latency_us": latency_json(&merged.stats.ready_latency),
        },
        "results": {
            "publishes_attempted": publisher.published,
            "publishes_accepted": publisher.accepted_count,
            "publish_statuses": statuses_json(&publisher.statuses),
            "publish_errors": publisher.errors,
            "deliveries_expected": total.expected,
            "deliveries_received": total.received,
            "deliveries_lost": total.lost,
            "deliveries_duplicated": merged.stats.duplicates,
            "deliveries_reordered": merged.stats.reordered,
            "deliveries_unexpected": total.unexpected + merged.stats.misrouted,
            "window_secs": round3(window_ns as f64 / 1e9),
            "publishes_per_sec": per_sec(publisher.accepted_count, window_ns),
            "deliveries_per_sec": per_sec(total.received, window_ns),
            "latency_us": latency_json(&all_latency),
            "publish_response_us": latency_json(&publisher.rest_latency),
            "publish_send_lag_us": latency_json(&publisher.send_lag),
            "pusher_errors": merged.stats.pusher_errors,
            "bytes_received": merged.stats.bytes_in,
        },
        "steps": steps_json(publisher, &merged.stats, &subscribed),
        "server": window.server_json(common.server_pid, "delivery", total.received),
        "generator": window.generator_json(common.threads, "delivery", total.received),
        "warnings": warnings,
        "timeline": monitor.timeline_json(),
    });
    if schedule.ramp {
        result["max"] = ramp_max(publisher, &result["steps"], args.max_steps);
    }
    let svg = report::line_chart(
        &format!(
            "fanout: {} subscribers, {} channels — publish→deliver latency",
            args.subscribers, args.channels
        ),
        &report::percentile_axis(),
        "latency (ms)",
        &latency_series(&merged.stats, publisher),
    );
    Outcome { json: result, svg }
}

/// The fan-out parameters as the result shows them.
fn fanout_params(args: &FanoutArgs, schedule: &Schedule) -> Value {
    json!({
        "subscribers": args.subscribers,
        "channels": args.channels,
        "rate": schedule.rate_json,
        "payload_bytes": args.payload.max(wire::STAMP_LEN),
        "publishes": match &schedule.mode { PublishMode::Fixed { count, .. } => json!(count), _ => Value::Null },
        "publishers": args.publishers,
        "threads": args.common.threads,
        "duration_secs": schedule.duration,
        "drain_secs": args.drain,
        "connect_rate": args.connect_rate,
        "max_p99_ms": args.max_p99_ms,
        "ramp": if schedule.ramp { json!({"start_rate": args.start_rate, "factor": args.ramp_factor,
                                           "step_secs": args.step, "max_steps": args.max_steps}) } else { Value::Null },
    })
}

/// One entry per publisher step: its publishes, the exact accounting of its deliveries, and
/// its latency.
fn steps_json(publisher: &PublisherResult, stats: &Stats, subscribed: &[u64]) -> Vec<Value> {
    publisher
        .steps
        .iter()
        .map(|step| {
            let acc = account(
                step.first_seq,
                step.end_seq,
                &publisher.accepted,
                &stats.counts,
                subscribed,
            );
            let step_ns = step.drained_ns.saturating_sub(step.start_ns);
            let latency = stats
                .latency
                .get(step.step as usize)
                .map_or(json!({"count": 0}), latency_json);
            json!({
                "step": step.step,
                "rate": round1(step.rate),
                "publishes": step.end_seq - step.first_seq,
                "publishes_accepted": step.accepted,
                "publishes_rejected": step.rejected,
                "publish_errors": step.errors,
                "deliveries_expected": acc.expected,
                "deliveries_received": acc.received,
                "deliveries_lost": acc.lost,
                "deliveries_per_sec": per_sec(acc.received, step_ns),
                "over_bound": step.over_bound,
                "publisher_behind": step.behind,
                "latency_us": latency,
                "verdict": step.verdict,
            })
        })
        .collect()
}

/// The ramp's answer: the fastest step that passed, its deliveries per second (from the
/// result's `steps`), and what ended the ramp.
fn ramp_max(publisher: &PublisherResult, steps: &Value, max_steps: u32) -> Value {
    let best = publisher.steps.iter().rev().find(|s| s.verdict == "ok");
    let last = publisher.steps.last();
    let stopped_by = match last {
        Some(s) if s.verdict != "ok" => s.verdict,
        Some(s) if s.step + 1 >= max_steps => "max_steps",
        Some(_) => "duration",
        None => "no_steps",
    };
    json!({
        "rate": best.map(|s| round1(s.rate)),
        "deliveries_per_sec": best.and_then(|s| {
            let idx = publisher.steps.iter().position(|x| x.step == s.step)?;
            steps[idx]["deliveries_per_sec"].as_f64()
        }),
        "stopped_by": stopped_by,
    })
}

/// The latency-percentile curve of each step that saw a delivery, the last eight at most.
fn latency_series(stats: &Stats, publisher: &PublisherResult) -> Vec<Series> {
    let series: Vec<Series> = stats
        .latency
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.is_empty())
        .map(|(step, h)| Series {
            label: publisher
                .steps
                .iter()
                .find(|s| s.step as usize == step)
                .map_or(format!("step {step}"), |s| {
                    format!("{:.0} publishes/s", s.rate)
                }),
            points: percentile_curve(h),
        })
        .collect();
    series[series.len().saturating_sub(8)..].to_vec()
}

/// The one publisher thread's plan: no WebSocket clients, `connections` REST connections.
fn publish_plan(args: &PublishArgs, target: &Arc<Target>, mode: PublishMode) -> WorkerPlan {
    WorkerPlan {
        index: 0,
        target: Arc::clone(target),
        clients: Vec::new(),
        channel_prefix: format!("{}pub-", channel_prefix()),
        channels: args.channels,
        connect_rate: 0.0,
        connect_inflight_max: 0,
        source_ips: Vec::new(),
        latency_bound_us: u64::MAX,
        seq_limit: wire::SEQ_MAX,
        publisher: Some(PublisherPlan {
            connections: args.connections,
            payload_bytes: args.payload,
            mode,
            drain_ns: 0,
        }),
        reconnect: None,
    }
}

pub fn publish(args: &PublishArgs, setup: Setup) -> Result<Outcome, BenchError> {
    let common = &args.common;
    if args.connections == 0 || args.connections > 4096 {
        return usage("--connections must be 1..=4096");
    }
    if args.channels == 0 || args.channels > 100_000 {
        return usage("--channels must be 1..=100000");
    }
    if args.payload > 1024 * 1024 {
        return usage("--payload must be at most 1 MiB");
    }
    reserve_descriptors(args.connections, setup.nofile)?;
    let duration = common.duration.unwrap_or(10.0);
    let mode = match args.rate {
        Some(rate) if rate > 0.0 && rate <= 1e7 => PublishMode::Fixed {
            rate,
            count: ((rate * duration).ceil() as u64).clamp(1, wire::SEQ_MAX),
        },
        Some(_) => return usage("--rate must be > 0 and at most 10000000"),
        None => PublishMode::ClosedLoop {
            duration_ns: duration_ns(duration),
        },
    };
    let mut warnings = Vec::new();
    if common.threads > 1 {
        warnings.push("publish runs its publisher on one thread; --threads is ignored".to_string());
    }
    let shared = Arc::new(Shared::new(1, args.channels));
    let target = Arc::new(setup.target);
    let plan = publish_plan(args, &target, mode);
    let run = Run::spawn(vec![plan], Arc::clone(&shared))?;
    let mut monitor = Monitor::new(common.quiet, run.spawned_ns);
    if !wait_connected(
        &run,
        &mut monitor,
        0,
        args.connections as u64,
        common.connect_timeout,
    ) {
        warnings.push("not every REST connection was ready; running with those that were".into());
    }
    let phase = PublishPhase {
        name: "publish",
        cap_ns: 2 * duration_ns(duration) + 30 * SECOND,
        cap_warning: "the run hit its hard time cap before the publisher finished",
    };
    let publishing = publish_window(&run, &mut monitor, common.server_pid, phase, &mut warnings);
    let window = &publishing.cpu;
    let merged = merge(run.stop());
    let publisher = merged.publisher.as_ref().expect("the worker publishes");
    let window_ns = publishing.ns(publisher.steps.last().map(|s| s.sent_end_ns));
    let answered: u64 = publisher.statuses.values().sum();
    warnings.extend(warnings_for(window, common));
    let result = json!({
        "scenario": "publish",
        "target": target_json(&target),
        "params": {
            "connections": args.connections,
            "channels": args.channels,
            "payload_bytes": args.payload.max(wire::STAMP_LEN),
            "rate": args.rate,
            "duration_secs": duration,
        },
        "results": {
            "connections_ready": publishing.ready,
            "requests_sent": publisher.published,
            "responses": answered,
            "accepted": publisher.accepted_count,
            "statuses": statuses_json(&publisher.statuses),
            "errors": publisher.errors,
            "reconnects": publisher.reconnects,
            "window_secs": round3(window_ns as f64 / 1e9),
            "requests_per_sec": per_sec(answered, window_ns),
            "accepted_per_sec": per_sec(publisher.accepted_count, window_ns),
            "latency_us": latency_json(&publisher.rest_latency),
        },
        "server": window.server_json(common.server_pid, "publish", publisher.accepted_count),
        "generator": window.generator_json(1, "publish", publisher.accepted_count),
        "warnings": warnings,
        "timeline": monitor.timeline_json(),
    });
    let svg = report::line_chart(
        &format!(
            "publish: {} keep-alive connections — accepted publishes per second",
            args.connections
        ),
        &report::time_axis(monitor.end_t()),
        "publishes/s",
        &[Series {
            label: "accepted/s".into(),
            points: monitor.rate_points(|s| s.accepted),
        }],
    );
    Ok(Outcome { json: result, svg })
}

pub fn idle(args: &IdleArgs, setup: Setup) -> Result<Outcome, BenchError> {
    let common = &args.common;
    if args.connections > 1_000_000 {
        return usage("--connections must be at most 1000000");
    }
    if args.channels > 100_000 {
        return usage("--channels must be at most 100000");
    }
    if args.connect_rate.is_nan() || args.connect_rate < 0.0 {
        return usage("--connect-rate must be >= 0");
    }
    reserve_descriptors(args.connections, setup.nofile)?;
    let hold = common.duration.unwrap_or(10.0);
    let rss_before = common.server_pid.and_then(rss_bytes);
    let shared = Arc::new(Shared::new(common.threads, args.channels));
    let target = Arc::new(setup.target);
    let plans = client_plans(
        &target,
        common,
        args.connections,
        args.channels,
        args.connect_rate,
        args.connect_concurrency,
    );
    let source_ips: Vec<String> = plans[0]
        .source_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    let run = Run::spawn(plans, Arc::clone(&shared))?;
    let connect_start = CpuSnapshot::take(common.server_pid, &run.tids);
    let mut monitor = Monitor::new(common.quiet, run.spawned_ns);
    let mut warnings = Vec::new();
    if !wait_connected(
        &run,
        &mut monitor,
        args.connections,
        0,
        common.connect_timeout,
    ) {
        warnings.push("not every connection was ready after --connect-timeout".to_string());
    }
    let connected = CpuSnapshot::take(common.server_pid, &run.tids);
    let rss_connected = common.server_pid.and_then(rss_bytes);
    let ready = shared.sum(|c| &c.ready);
    let connect_ns = run.connect_ns();
    let hold_end = now_ns() + duration_ns(hold);
    while now_ns() < hold_end {
        monitor.tick(&shared, "idle");
        std::thread::sleep(POLL);
    }
    let held = CpuSnapshot::take(common.server_pid, &run.tids);
    let rss_end = common.server_pid.and_then(rss_bytes);
    monitor.finish(&shared);
    let measured = IdleMeasured {
        source_ips,
        ready,
        connect_ns,
        connect_window: CpuWindow::between(&connect_start, &connected),
        hold_window: CpuWindow::between(&connected, &held),
        rss_before,
        rss_connected,
        rss_end,
        merged: merge(run.stop()),
        monitor,
        warnings,
    };
    Ok(idle_report(args, hold, &target, measured))
}

/// What an idle run measured, for its report.
struct IdleMeasured {
    source_ips: Vec<String>,
    ready: u64,
    connect_ns: u64,
    connect_window: CpuWindow,
    hold_window: CpuWindow,
    /// The server's resident memory before connecting, once connected, and after the hold.
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
    rss_end: Option<u64>,
    merged: Merged,
    monitor: Monitor,
    warnings: Vec<String>,
}

/// The idle result (with the server's memory per connection) and its chart of open
/// connections.
fn idle_report(args: &IdleArgs, hold: f64, target: &Target, measured: IdleMeasured) -> Outcome {
    let IdleMeasured {
        source_ips,
        ready,
        connect_ns,
        connect_window,
        hold_window,
        rss_before,
        rss_connected,
        rss_end,
        merged,
        monitor,
        mut warnings,
    } = measured;
    let common = &args.common;
    let still_open = ready.saturating_sub(merged.stats.closes.values().sum());
    let per_connection = match (rss_before, rss_connected) {
        (Some(before), Some(after)) if ready > 0 => {
            Some(round1((after as f64 - before as f64) / ready as f64))
        }
        _ => None,
    };
    warnings.extend(warnings_for(&connect_window, common));
    let mut server = hold_window.server_json(common.server_pid, "connection", still_open);
    server["rss_before_bytes"] = json!(rss_before);
    server["rss_connected_bytes"] = json!(rss_connected);
    server["rss_end_bytes"] = json!(rss_end);
    server["rss_per_connection_bytes"] = json!(per_connection);
    server["connect_window"] = connect_window.server_json(common.server_pid, "connection", ready);
    let result = json!({
        "scenario": "idle",
        "target": target_json(target),
        "params": {
            "connections": args.connections,
            "channels": args.channels,
            "connect_rate": args.connect_rate,
            "connect_concurrency": args.connect_concurrency,
            "source_ips": source_ips,
            "threads": common.threads,
            "hold_secs": hold,
        },
        "results": {
            "connections_ready": ready,
            "connections_failed": merged.stats.failures,
            "connect_secs": round3(connect_ns as f64 / 1e9),
            "connects_per_sec": per_sec(ready, connect_ns),
            "ready_latency_us": latency_json(&merged.stats.ready_latency),
            "hold_secs": round3(hold_window.secs),
            "closed_during_hold": merged.stats.closes,
            "still_open": still_open,
            "pings_answered": merged.stats.pings_answered,
        },
        "server": server,
        "generator": connect_window.generator_json(common.threads, "connection", ready),
        "warnings": warnings,
        "timeline": monitor.timeline_json(),
    });
    let svg = report::line_chart(
        &format!("idle: {} connections — connections ready", args.connections),
        &report::time_axis(monitor.end_t()),
        "connections",
        &[Series {
            label: "ready".into(),
            points: monitor.level_points(|s| s.ready.saturating_sub(s.closed)),
        }],
    );
    Outcome { json: result, svg }
}

pub fn storm(args: &StormArgs, setup: Setup) -> Result<Outcome, BenchError> {
    let common = &args.common;
    if args.clients > 1_000_000 {
        return usage("--clients must be at most 1000000");
    }
    if args.channels == 0 || args.channels > 100_000 {
        return usage("--channels must be 1..=100000");
    }
    let reconnect = reconnect_plan(args)?;
    reserve_descriptors(args.clients, setup.nofile)?;
    let limit = common.duration.unwrap_or(30.0);
    let threads = common.threads;
    let shared = Arc::new(Shared::new(threads, args.channels));
    let target = Arc::new(setup.target);
    let mut plans = client_plans(&target, common, args.clients, args.channels, 0.0, 0);
    for plan in &mut plans {
        if let Some(prefix) = &args.channel_prefix {
            plan.channel_prefix = prefix.clone();
        }
        plan.reconnect = reconnect.clone();
    }
    let run = Run::spawn(plans, Arc::clone(&shared))?;
    let before = CpuSnapshot::take(common.server_pid, &run.tids);
    let mut monitor = Monitor::new(common.quiet, run.spawned_ns);
    let mut warnings = Vec::new();
    let connected = if reconnect.is_some() {
        wait_subscribed(&run, &mut monitor, args.clients, limit)
    } else {
        wait_connected(&run, &mut monitor, args.clients, 0, limit)
    };
    if !connected {
        warnings.push(format!(
            "not every client was subscribed or failed within {limit}s"
        ));
    }
    let after = CpuSnapshot::take(common.server_pid, &run.tids);
    if reconnect.is_some() {
        if !common.quiet {
            eprintln!(
                "hold: {} of {} clients subscribed; holding {} s, reconnecting",
                subscribed_now(&shared),
                args.clients,
                args.hold_secs
            );
        }
        let hold_end = now_ns() + duration_ns(args.hold_secs);
        while now_ns() < hold_end {
            monitor.tick(&shared, "hold");
            std::thread::sleep(POLL);
        }
    }
    monitor.finish(&shared);
    let window = CpuWindow::between(&before, &after);
    let spawned_ns = run.spawned_ns;
    let merged = merge(run.stop());
    warnings.extend(warnings_for(&window, common));
    Ok(storm_report(
        args, &target, spawned_ns, merged, &window, &monitor, warnings,
    ))
}

/// The reconnect plan of `--hold-secs` (none without it), its fallbacks resolved.
fn reconnect_plan(args: &StormArgs) -> Result<Option<ReconnectPlan>, BenchError> {
    if !(args.hold_secs >= 0.0 && args.hold_secs <= super::DURATION_CAP_SECS) {
        return usage("--hold-secs must be 0..=600");
    }
    if args.hold_secs == 0.0 {
        if !args.fallback.is_empty() {
            return usage("--fallback needs --hold-secs");
        }
        return Ok(None);
    }
    if args.backoff_base_ms == 0 || args.backoff_max_ms < args.backoff_base_ms {
        return usage("--backoff-base-ms must be > 0 and at most --backoff-max-ms");
    }
    if args.backoff_max_ms > 600_000 || args.fallback.len() > 16 {
        return usage("--backoff-max-ms must be at most 600000, and --fallback at most 16");
    }
    let mut fallbacks = Vec::new();
    for address in &args.fallback {
        let resolved: Option<SocketAddr> = address
            .to_socket_addrs()
            .map_err(|e| BenchError::Run(format!("cannot resolve --fallback {address}: {e}")))?
            .next();
        let Some(resolved) = resolved else {
            return Err(BenchError::Run(format!(
                "--fallback {address} has no address"
            )));
        };
        fallbacks.push((resolved, address.clone()));
    }
    Ok(Some(ReconnectPlan {
        policy: Policy {
            targets: 1 + fallbacks.len(),
            backoff_base_ms: args.backoff_base_ms,
            backoff_max_ms: args.backoff_max_ms,
        },
        fallbacks,
    }))
}

/// Clients subscribed right now (every subscribe less every subscribed session that ended).
fn subscribed_now(shared: &Shared) -> u64 {
    shared
        .sum(|c| &c.ready)
        .saturating_sub(shared.sum(|c| &c.closed))
}

/// A reconnecting fleet's first connect: waits until all `clients` are subscribed at once, or
/// the timeout passes.
fn wait_subscribed(run: &Run, monitor: &mut Monitor, clients: usize, timeout_secs: f64) -> bool {
    let deadline = now_ns() + (timeout_secs * 1e9) as u64;
    loop {
        if subscribed_now(&run.shared) >= clients as u64 {
            return true;
        }
        if now_ns() > deadline {
            return false;
        }
        monitor.tick(&run.shared, "connect");
        std::thread::sleep(POLL);
    }
}

fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    round3(to_ns.saturating_sub(from_ns) as f64 / 1e6)
}

/// The storm result (with the reconnecting fleet's figures under `reconnect`) and its chart.
fn storm_report(
    args: &StormArgs,
    target: &Target,
    spawned_ns: u64,
    merged: Merged,
    window: &CpuWindow,
    monitor: &Monitor,
    warnings: Vec<String>,
) -> Outcome {
    let common = &args.common;
    let stats = &merged.stats;
    let last_ready_ns = stats.last_ready_ns.saturating_sub(spawned_ns);
    let all = stats.ready >= args.clients as u64;
    let subscribed_at_end = stats.ready.saturating_sub(stats.closes.values().sum());
    let reconnect = (args.hold_secs > 0.0).then(|| {
        json!({
            "hold_secs": args.hold_secs,
            "fallbacks": args.fallback,
            "backoff_base_ms": args.backoff_base_ms,
            "backoff_max_ms": args.backoff_max_ms,
            "drops": stats.drops,
            "resubscribed": stats.resubscribed,
            "subscribed_at_end": subscribed_at_end,
            "not_subscribed_at_end": (args.clients as u64).saturating_sub(subscribed_at_end),
            "drop_to_resubscribe_us": latency_json(&stats.resubscribe_latency),
            "first_drop_to_last_resubscribe_ms": (stats.first_drop_ns != 0
                && stats.last_resubscribed_ns != 0)
                .then(|| ms_between(stats.first_drop_ns, stats.last_resubscribed_ns)),
            "retries": stats.retries,
            "gave_up": stats.gave_up,
        })
    });
    let result = json!({
        "scenario": "storm",
        "target": target_json(target),
        "params": {
            "clients": args.clients,
            "channels": args.channels,
            "threads": common.threads,
            "limit_secs": common.duration.unwrap_or(30.0),
        },
        "results": {
            "subscribed": stats.ready,
            "failed": stats.failures,
            "failed_total": stats.failures.values().sum::<u64>(),
            "closed_after_subscribe": stats.closes,
            "all_subscribed": all,
            "time_to_all_subscribed_ms": all.then(|| round3(last_ready_ns as f64 / 1e6)),
            "time_to_last_subscribed_ms": (stats.ready > 0).then(|| round3(last_ready_ns as f64 / 1e6)),
            "subscribes_per_sec": per_sec(stats.ready, last_ready_ns),
            "subscribe_latency_us": latency_json(&stats.ready_latency),
            "other_messages": stats.other_messages,
            "reconnect": reconnect,
        },
        "server": window.server_json(common.server_pid, "connection", stats.ready),
        "generator": window.generator_json(common.threads, "connection", stats.ready),
        "warnings": warnings,
        "timeline": monitor.timeline_json(),
    });
    let svg = report::line_chart(
        &format!("storm: {} clients at once — subscribed", args.clients),
        &report::time_axis(monitor.end_t()),
        "clients",
        &[
            Series {
                label: "subscribed".into(),
                points: monitor.level_points(|s| s.ready.saturating_sub(s.closed)),
            },
            Series {
                label: "failed".into(),
                points: monitor.level_points(|s| s.failed),
            },
        ],
    );
    Outcome { json: result, svg }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_is_exact_per_publish() {
        // Two channels with 3 and 2 subscribers; publishes 0..4; publish 2 was refused.
        let accepted = [true, true, false, true];
        let counts = [3, 1, 1, 2];
        let subscribed = [3, 2];
        let total = account(0, 4, &accepted, &counts, &subscribed);
        assert_eq!(total.expected, 3 + 2 + 2);
        assert_eq!(total.received, 3 + 1 + 2);
        assert_eq!(total.lost, 1);
        assert_eq!(total.unexpected, 1);
    }

    #[test]
    fn clients_are_split_round_robin() {
        assert_eq!(clients_of(0, 2, 5, 2), vec![Some(0), Some(0), Some(0)]);
        assert_eq!(clients_of(1, 2, 5, 3), vec![Some(1), Some(0)]);
        assert_eq!(clients_of(0, 1, 2, 0), vec![None, None]);
    }

    #[test]
    fn source_addresses_spread_past_one_port_range() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let v4 = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        // 28,232 ports: 7,058 connections per address before a second one is used.
        assert!(source_ips(&[], loopback, 7_000, 28_232).is_empty());
        assert_eq!(
            source_ips(&[], loopback, 15_000, 28_232),
            vec![v4(1), v4(2), v4(3)]
        );
        // Explicit addresses win; a remote or IPv6 server gets the kernel's choice.
        assert_eq!(source_ips(&[v4(9)], loopback, 60_000, 28_232), vec![v4(9)]);
        assert!(source_ips(&[], "10.0.0.1".parse().unwrap(), 60_000, 28_232).is_empty());
        assert!(source_ips(&[], "::1".parse().unwrap(), 60_000, 28_232).is_empty());
    }
}
