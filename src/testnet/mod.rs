//! Test hosts: N network namespaces on this machine, each with its own
//! address and an internet-shaped access link (rate both ways, delay,
//! jitter, loss; see `switch`), for the tests, `dtrain bench allreduce`
//! and the swarm to run peers between hosts instead of on one loopback.
//!
//! Host i is namespace `dtn-<pid>-<k>-h<i>` with TUN device `dt0` at
//! 10.77.0.(i+1)/24 (the namespaces are apart, so every net may use the
//! same addresses). A thread enters a host with [`Net::enter`] (its sockets
//! then live there); a process runs on one with [`Net::command`].
//! Everything is torn down when the `Net` is dropped (a panic included);
//! the devices vanish with the process whatever happens, and namespaces a
//! killed run left behind are removed by the next one (their pid is
//! gone). It needs root (CAP_NET_ADMIN), iproute2's `ip` and /dev/net/tun,
//! and says which is missing.

pub mod drill;
pub mod switch;
pub mod tun;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
pub use switch::{Link, Stats};

/// The hosts' /24.
pub const PREFIX: [u8; 3] = [10, 77, 0];
/// The devices' MTU unless a profile says `mtu=`: large, so the switch
/// moves few packets per byte. (The internet's paths carry 1500: TCP under
/// loss does far worse there, its throughput scaling with the segment.)
pub const MTU: u32 = 65000;
/// Each host's one network device (a TUN device); programs that pick an
/// interface by name (gloo: GLOO_SOCKET_IFNAME) are given this.
pub const DEVICE: &str = "dt0";
/// Hosts a net may have (one /24).
pub const MAX_HOSTS: usize = 250;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// What the machine lacks for test hosts (a test then says SKIPPED).
    #[error("test hosts unavailable: {0}")]
    Unavailable(String),
    #[error("setting up test hosts: {0}")]
    Setup(String),
    #[error("bad network profile {0:?}: {1}")]
    Profile(String, String),
}

/// Every host's access link, as `rate=1gbit,rtt=40ms,jitter=1ms,loss=0.1%,buffer=4mb,slow=1:100mbit`:
/// `rtt` is the round trip between two hosts (each access link carries a
/// quarter of it each way), `jitter` up to that much more delay per
/// packet, `loss` the chance that a packet is lost on its way (each way),
/// `slow=i:rate` gives host i another rate, `up=i:rate` host i another
/// uplink rate only (a home line), `mtu` the devices' MTU (default
/// [`MTU`]; 1500 as on the internet costs the switch 40× the packets),
/// and `buffer` each queue's size
/// (default: a round trip or 100 ms at the rate, at least 8 packets).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    pub rate: Option<f64>,
    pub rtt: Duration,
    pub jitter: Duration,
    pub loss: f64,
    pub buffer: Option<usize>,
    pub slow: Vec<(usize, f64)>,
    pub up: Vec<(usize, f64)>,
    pub mtu: Option<u32>,
}

fn parse_rate(s: &str) -> Option<f64> {
    let s = s.to_ascii_lowercase();
    let s = s.strip_suffix("bit").or_else(|| s.strip_suffix("bps")).unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1e3),
        'm' => (&s[..s.len() - 1], 1e6),
        'g' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|v| v * mult).filter(|v| v.is_finite() && *v > 0.0)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "ms"), |i| s.split_at(i));
    let v: f64 = num.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    let secs = match unit {
        "us" => v * 1e-6,
        "ms" => v * 1e-3,
        "s" => v,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    let (num, mult) = match s.trim_end_matches('b').chars().last()? {
        'k' => (&s[..s.trim_end_matches('b').len() - 1], 1 << 10),
        'm' => (&s[..s.trim_end_matches('b').len() - 1], 1 << 20),
        _ => (s.trim_end_matches('b'), 1),
    };
    num.parse::<usize>().ok().map(|v| v * mult).filter(|&v| v > 0)
}

impl std::str::FromStr for Profile {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Profile, NetError> {
        let bad = |why: &str| NetError::Profile(s.to_string(), why.to_string());
        let mut p = Profile::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| bad(&format!("{item:?} is not key=value")))?;
            match k {
                "rate" => p.rate = Some(parse_rate(v).ok_or_else(|| bad("rate is like 100mbit or 1gbit"))?),
                "rtt" => p.rtt = parse_duration(v).ok_or_else(|| bad("rtt is like 40ms"))?,
                "jitter" => p.jitter = parse_duration(v).ok_or_else(|| bad("jitter is like 1ms"))?,
                "loss" => {
                    let (num, scale) = v.strip_suffix('%').map_or((v, 1.0), |n| (n, 0.01));
                    p.loss = num
                        .parse::<f64>()
                        .ok()
                        .map(|l| l * scale)
                        .filter(|l| (0.0..1.0).contains(l))
                        .ok_or_else(|| bad("loss is like 0.1% or 0.001"))?;
                }
                "buffer" => p.buffer = Some(parse_bytes(v).ok_or_else(|| bad("buffer is like 4mb"))?),
                "mtu" => p.mtu = Some(v.parse().ok().filter(|m| (576..=65000).contains(m)).ok_or_else(|| bad("mtu is 576 to 65000"))?),
                "slow" | "up" => {
                    let (host, rate) = v.split_once(':').ok_or_else(|| bad(&format!("{k} is like 1:100mbit")))?;
                    let host = host.parse().map_err(|_| bad(&format!("{k}'s host is an index")))?;
                    let rate = parse_rate(rate).ok_or_else(|| bad(&format!("{k}'s rate is like 100mbit")))?;
                    if k == "slow" { &mut p.slow } else { &mut p.up }.push((host, rate));
                }
                _ => return Err(bad(&format!("unknown key {k:?} (rate, rtt, jitter, loss, buffer, slow, up, mtu)"))),
            }
        }
        Ok(p)
    }
}

impl Profile {
    /// Host `i`'s access link.
    pub fn link(&self, i: usize) -> Link {
        let rate = self.slow.iter().rev().find(|s| s.0 == i).map(|s| s.1).or(self.rate);
        // A round trip's worth or 100 ms at the rate (a home router's
        // queue), at least 8 packets: several senders into one host (every
        // all-reduce) overflow fewer at zero delay — 256 KiB (4 packets)
        // measured 1.43× the bound for 4 peers at 100 Mbit/s, 2 MiB 1.11×
        // (tbf: 1.15×) — while seconds of queue on a slow link delay its
        // acks behind its data (2 MiB at 10 Mbit/s: 1.66× the optimum).
        let time = self.rtt.max(Duration::from_millis(100)).as_secs_f64();
        let buffer = |rate: Option<f64>| self.buffer.unwrap_or((rate.map_or(0.0, |r| r / 8.0 * time) as usize).max(8 * self.mtu() as usize));
        let up = self.up.iter().rev().find(|s| s.0 == i).map(|&(_, r)| (r, buffer(Some(r))));
        Link { rate, delay: self.rtt / 4, jitter: self.jitter, loss: self.loss, buffer: buffer(rate), up }
    }

    /// The devices' MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(MTU)
    }

    /// Host `i`'s slower direction (bits/s; infinite when unshaped): what
    /// bounds an all-reduce, where every member sends and receives alike.
    pub fn min_rate(&self, i: usize) -> f64 {
        let l = self.link(i);
        l.rate.unwrap_or(f64::INFINITY).min(l.up.map_or(f64::INFINITY, |u| u.0))
    }
}

/// The running hosts (see the module doc).
pub struct Net {
    names: Vec<String>,
    switch: Option<switch::Switch>,
}

static NETS: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip").args(args).output().map_err(|e| NetError::Unavailable(format!("running `ip` (iproute2): {e}")))?;
    if !out.status.success() {
        return Err(NetError::Setup(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Removes namespaces of runs whose process is gone (killed before its
/// teardown).
fn sweep() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("dtn-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Net {
    /// `n` hosts with `profile`'s links.
    pub fn create(n: usize, profile: &Profile) -> Result<Net, NetError> {
        if !(2..=MAX_HOSTS).contains(&n) {
            return Err(NetError::Setup(format!("{n} hosts: 2 to {MAX_HOSTS} are supported")));
        }
        if let Some((h, _)) = profile.slow.iter().chain(&profile.up).find(|s| s.0 >= n) {
            return Err(NetError::Setup(format!("host {h} (slow= or up=) is not among the {n} hosts")));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetError::Unavailable("network namespaces and TUN devices need root (CAP_NET_ADMIN)".into()));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(NetError::Unavailable("/dev/net/tun is missing (no TUN support)".into()));
        }
        ip(&["-V"])?;
        sweep();
        let k = NETS.fetch_add(1, Ordering::SeqCst);
        let mut net = Net { names: Vec::new(), switch: None };
        let mut tuns = Vec::new();
        // A sandbox that forbids namespaces or TUN devices (no
        // CAP_SYS_ADMIN, say) makes test hosts unavailable, not broken.
        let denied = |e: NetError| match e {
            NetError::Setup(why) if why.contains("not permitted") || why.contains("Permission denied") => NetError::Unavailable(why),
            e => e,
        };
        for i in 0..n {
            let name = format!("dtn-{}-{k}-h{i}", std::process::id());
            ip(&["netns", "add", &name]).map_err(denied)?;
            net.names.push(name.clone());
            let tun = tun::open_tun_in(&name, DEVICE).map_err(|e| denied(NetError::Setup(format!("TUN device in {name}: {e}"))))?;
            tuns.push(tun);
            let addr = format!("{}/24", net_addr(i));
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            ip(&["-n", &name, "addr", "add", &addr, "dev", DEVICE])?;
            ip(&["-n", &name, "link", "set", DEVICE, "mtu", &profile.mtu().to_string(), "up"])?;
        }
        let links = (0..n).map(|i| profile.link(i)).collect();
        let seed = (std::process::id() as u64) << 16 | k as u64;
        net.switch = Some(switch::Switch::start(tuns, links, PREFIX, seed).map_err(|e| NetError::Setup(format!("starting the switch: {e}")))?);
        Ok(net)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        net_addr(i)
    }

    /// Host `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Moves the calling thread onto host `i` (for good: use a thread of
    /// its own).
    pub fn enter(&self, i: usize) -> std::io::Result<()> {
        tun::enter(&self.names[i])
    }

    /// `program` to run on host `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i], program]);
        c
    }

    /// Cuts host `i` off from every other host (`false`: restores it).
    pub fn cut(&self, i: usize, cut: bool) {
        for j in (0..self.len()).filter(|&j| j != i) {
            self.partition(&[i], &[j], cut);
        }
    }

    /// Cuts (or restores) every link between hosts `a` and hosts `b`, both
    /// ways: a partition, and its healing.
    pub fn partition(&self, a: &[usize], b: &[usize], cut: bool) {
        let switch = self.switch.as_ref().expect("running");
        for &i in a {
            for &j in b {
                switch.block(i, j, cut);
                switch.block(j, i, cut);
            }
        }
    }

    /// What the switch forwarded and dropped so far.
    pub fn stats(&self) -> &Stats {
        &self.switch.as_ref().expect("running").stats
    }
}

fn net_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(PREFIX[0], PREFIX[1], PREFIX[2], i as u8 + 1)
}

impl Drop for Net {
    fn drop(&mut self) {
        drop(self.switch.take());
        for name in &self.names {
            if let Err(e) = ip(&["netns", "del", name]) {
                tracing::warn!("removing test host {name}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_as_documented() {
        let p: Profile = "rate=1gbit,rtt=40ms,loss=0.1%,jitter=2ms,slow=1:100mbit".parse().unwrap();
        assert_eq!(p.rate, Some(1e9));
        assert_eq!(p.rtt, Duration::from_millis(40));
        assert!((p.loss - 0.001).abs() < 1e-12);
        assert_eq!(p.slow, vec![(1, 1e8)]);
        let (fast, slow) = (p.link(0), p.link(1));
        assert_eq!((fast.rate, slow.rate), (Some(1e9), Some(1e8)));
        // Two access links each way make the round trip; a packet is lost
        // with the profile's probability on its way (data and acks alike).
        assert_eq!(fast.delay * 4, p.rtt);
        assert_eq!(fast.loss, p.loss);
        assert_eq!((fast.buffer, slow.buffer), (12_500_000, 1_250_000));
        assert_eq!("buffer=4mb".parse::<Profile>().unwrap().buffer, Some(4 << 20));
        assert_eq!("rate=250kbit".parse::<Profile>().unwrap().rate, Some(250e3));
        // A home line: host 1 sends at 10 Mbit/s, receives at 100.
        let p: Profile = "rate=100mbit,up=1:10mbit".parse().unwrap();
        let (other, home) = (p.link(0), p.link(1));
        assert_eq!((other.up, home.rate, home.up), (None, Some(1e8), Some((1e7, 8 * MTU as usize))));
        assert_eq!((p.min_rate(0), p.min_rate(1)), (1e8, 1e7));
        let p: Profile = "rate=100mbit,mtu=1500".parse().unwrap();
        assert_eq!((p.mtu(), p.link(0).buffer), (1500, 1_250_000));
        assert_eq!("rate=1kbit,mtu=1500".parse::<Profile>().unwrap().link(0).buffer, 8 * 1500);
        for bad in ["rate=fast", "rtt=40parsecs", "loss=150%", "slow=x:1mbit", "up=1", "mtu=9", "mtu=100000", "speed=1", "rate"] {
            assert!(bad.parse::<Profile>().is_err(), "{bad}");
        }
    }
}
