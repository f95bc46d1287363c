//! The wire between the test hosts: a userspace switch over their TUN
//! devices that gives each host's access link a rate (each way), a
//! propagation delay, jitter, loss and a finite buffer.
//!
//! Why in userspace: this kernel has `tbf`/`htb` but no `netem`, so delay
//! and loss need a delay line anyway (as mahimahi's mm-delay is), and
//! once every packet passes through one, shaping the rate there too is
//! exact in both directions (`tbf` shapes only egress: a host's download
//! would need an ifb device more). The devices' MTU is large (65000), so a
//! gigabit is ~2000 packets a second: little work for one thread.
//!
//! Model, per packet from host i to host j (`Link` of each):
//! i's uplink sends packets in order at i's rate (a packet waits behind
//! the ones before it; past `buffer` bytes of queue it is dropped, as a
//! drop-tail router does), loss drops it with i's probability, then it
//! travels i's delay plus j's (each access link's share of the round
//! trip) plus jitter (never reordering what i sent), then j's downlink
//! delivers it at j's rate behind what else arrived for j. Times are kept
//! virtually (each step from the last one's scheduled time), so the
//! threads' wake-up latency does not add up along the way.

use super::tun::readable;
use crate::rng::Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One host's access link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Bits per second, each way unless `up` says otherwise (`None`: as
    /// fast as the switch goes).
    pub rate: Option<f64>,
    /// One-way propagation delay of this access link.
    pub delay: Duration,
    /// Up to this much more delay, uniformly at random.
    pub jitter: Duration,
    /// Probability that a packet this host sends is lost.
    pub loss: f64,
    /// Bytes a direction's queue holds before it drops.
    pub buffer: usize,
    /// The uplink's rate and buffer where they differ from the downlink's
    /// (a home line: fast down, slow up).
    pub up: Option<(f64, usize)>,
}

impl Link {
    /// This link's sending direction.
    fn uplink(&self) -> Link {
        match self.up {
            Some((rate, buffer)) => Link { rate: Some(rate), buffer, up: None, ..*self },
            None => *self,
        }
    }

    fn tx(&self, bytes: usize) -> Duration {
        self.rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(bytes as f64 * 8.0 / r))
    }

    /// How long a packet may queue before the buffer is full.
    fn max_queue(&self) -> Duration {
        self.rate.map_or(Duration::MAX, |r| Duration::from_secs_f64(self.buffer as f64 * 8.0 / r))
    }
}

/// Packets and bytes through the switch.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub delivered_bytes: AtomicU64,
    /// Dropped by the loss setting.
    pub lost: AtomicU64,
    /// Dropped at a full queue.
    pub overflowed: AtomicU64,
    /// Not IPv4 to another host of this net (IPv6 chatter, say).
    pub ignored: AtomicU64,
    /// Dropped because the link between the two hosts is cut.
    pub cut: AtomicU64,
    /// CPU time the switch's threads took, in nanoseconds (its cost).
    pub cpu_ns: AtomicU64,
}

/// Adds the calling thread's CPU time since `*last` to `stats.cpu_ns`.
fn account(stats: &Stats, last: &mut u64) {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    let now = t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
    stats.cpu_ns.fetch_add(now.saturating_sub(*last), AtomicOrdering::Relaxed);
    *last = now;
}

enum Stage {
    /// At the destination's downlink.
    Arrive,
    /// Out of the downlink, into the destination.
    Deliver,
}

struct Event {
    at: Instant,
    seq: u64,
    stage: Stage,
    src: usize,
    dst: usize,
    data: Vec<u8>,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Queue {
    events: BinaryHeap<Reverse<Event>>,
    seq: u64,
    /// When each host's downlink is free again.
    down_free: Vec<Instant>,
}

/// The running switch; stops (and closes the devices) when dropped.
pub struct Switch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<Stats>,
    /// Per ordered pair of hosts (i·n + j): whether i's packets to j are
    /// dropped (a cut link, a partition).
    blocked: Arc<Vec<AtomicBool>>,
    hosts: usize,
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

impl Switch {
    /// Forwards between `tuns` (host i's device is `tuns[i]`, its address
    /// `prefix`.(i+1)) over `links`.
    pub fn start(tuns: Vec<File>, links: Vec<Link>, prefix: [u8; 3], seed: u64) -> std::io::Result<Switch> {
        let n = tuns.len();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let now = Instant::now();
        let shared: Shared = Arc::new((Mutex::new(Queue { events: BinaryHeap::new(), seq: 0, down_free: vec![now; n] }), Condvar::new()));
        let outs: Vec<File> = tuns.iter().map(File::try_clone).collect::<Result<_, _>>()?;
        let links = Arc::new(links);
        let blocked: Arc<Vec<AtomicBool>> = Arc::new((0..n * n).map(|_| AtomicBool::new(false)).collect());
        let mut threads = Vec::new();
        for (i, tun) in tuns.into_iter().enumerate() {
            let (stop, stats, shared, links, blocked) = (stop.clone(), stats.clone(), shared.clone(), links.clone(), blocked.clone());
            let seed = seed ^ (i as u64 + 1);
            threads.push(std::thread::spawn(move || uplink(i, tun, &links, &blocked, prefix, seed, &stop, &stats, &shared)));
        }
        {
            let (stop, stats, shared, blocked) = (stop.clone(), stats.clone(), shared.clone(), blocked.clone());
            threads.push(std::thread::spawn(move || downlinks(outs, &links, &blocked, &stop, &stats, &shared)));
        }
        Ok(Switch { stop, threads, stats, blocked, hosts: n })
    }

    /// Cuts (or restores) what host `from` sends host `to`; packets
    /// already on their way when it is cut are lost too.
    pub fn block(&self, from: usize, to: usize, blocked: bool) {
        self.blocked[from * self.hosts + to].store(blocked, AtomicOrdering::SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, AtomicOrdering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Host `i`'s uplink: reads what it sends, queues it at its rate, applies
/// loss, delay and jitter, and hands it to the destination's downlink.
#[allow(clippy::too_many_arguments)]
fn uplink(
    i: usize,
    mut tun: File,
    links: &[Link],
    blocked: &[AtomicBool],
    prefix: [u8; 3],
    seed: u64,
    stop: &AtomicBool,
    stats: &Stats,
    shared: &Shared,
) {
    let me = links[i].uplink();
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 16];
    let (mut free, mut last) = (Instant::now(), Instant::now());
    let mut cpu = 0;
    while !stop.load(AtomicOrdering::Relaxed) {
        account(stats, &mut cpu);
        if !readable(&tun, 50) {
            continue;
        }
        let len = match tun.read(&mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let p = &buf[..len];
        let dst =
            (len >= 20 && p[0] >> 4 == 4 && p[16..19] == prefix).then(|| usize::from(p[19])).filter(|&d| d >= 1 && d <= links.len()).map(|d| d - 1);
        let Some(dst) = dst.filter(|&d| d != i) else {
            stats.ignored.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        };
        if blocked[i * links.len() + dst].load(AtomicOrdering::Relaxed) {
            stats.cut.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        }
        let now = Instant::now();
        if me.loss > 0.0 && rng.uniform() < me.loss {
            stats.lost.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        }
        let start = free.max(now);
        if start - now > me.max_queue() {
            stats.overflowed.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        }
        free = start + me.tx(len);
        let jitter = me.jitter.mul_f64(rng.uniform());
        // (Never ahead of what this host sent before: no reordering.)
        last = (free + me.delay + links[dst].delay + jitter).max(last);
        let (lock, cv) = &**shared;
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        q.seq += 1;
        let seq = q.seq;
        q.events.push(Reverse(Event { at: last, seq, stage: Stage::Arrive, src: i, dst, data: p.to_vec() }));
        cv.notify_one();
    }
}

/// Every downlink: packets arrive in time order, queue at the destination's
/// rate and are written into its device when due.
fn downlinks(mut outs: Vec<File>, links: &[Link], blocked: &[AtomicBool], stop: &AtomicBool, stats: &Stats, shared: &Shared) {
    let (lock, cv) = &**shared;
    let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut cpu = 0;
    while !stop.load(AtomicOrdering::Relaxed) {
        account(stats, &mut cpu);
        let now = Instant::now();
        let wait = match q.events.peek() {
            None => Duration::from_millis(50),
            Some(Reverse(e)) if e.at > now => (e.at - now).min(Duration::from_millis(50)),
            Some(_) => Duration::ZERO,
        };
        if !wait.is_zero() {
            q = cv.wait_timeout(q, wait).unwrap_or_else(|p| p.into_inner()).0;
            continue;
        }
        let Reverse(e) = q.events.pop().expect("peeked");
        if blocked[e.src * links.len() + e.dst].load(AtomicOrdering::Relaxed) {
            stats.cut.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        }
        match e.stage {
            Stage::Arrive => {
                let link = links[e.dst];
                let start = q.down_free[e.dst].max(e.at);
                if start - e.at > link.max_queue() {
                    stats.overflowed.fetch_add(1, AtomicOrdering::Relaxed);
                    continue;
                }
                let at = start + link.tx(e.data.len());
                q.down_free[e.dst] = at;
                q.seq += 1;
                let seq = q.seq;
                q.events.push(Reverse(Event { at, seq, stage: Stage::Deliver, ..e }));
            }
            Stage::Deliver => {
                drop(q);
                // A full device queue drops, as a link would.
                if outs[e.dst].write(&e.data).is_ok() {
                    stats.delivered.fetch_add(1, AtomicOrdering::Relaxed);
                    stats.delivered_bytes.fetch_add(e.data.len() as u64, AtomicOrdering::Relaxed);
                } else {
                    stats.overflowed.fetch_add(1, AtomicOrdering::Relaxed);
                }
                q = lock.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}
