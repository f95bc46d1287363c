//! `dtrain bench allreduce`: N peers as separate processes on 127.0.0.1,
//! timed side by side with torch.distributed's gloo all-reduce
//! (`benches/anchors/gloo_bench.py`) and a plain TCP pump (the loopback
//! ceiling), all in one run. Also the hidden `dtrain allreduce-peer`, one
//! peer process, which the benchmark and the fault-injection tests drive
//! over stdin/stdout with one JSON line per step.

use super::median;
use crate::allreduce::codec::Codec;
use crate::allreduce::plan::{DEFAULT_CHUNK_BYTES, link_fractions};
use crate::allreduce::{Fault, Group, Identity, Member, Peer, Settings};
use crate::rng::Rng;
use crate::testnet::{Net, Profile};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// `64M`, `16K`, `1G` or a plain count.
pub fn parse_count(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(|| format!("not a count: {s:?} (e.g. 1048576, 64M)"))
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    let (what, bytes) = if s == "garbage" {
        ("garbage", "0")
    } else {
        s.split_once(':').ok_or("expected exit-scatter:BYTES, exit-gather:BYTES, stall-scatter:BYTES, stall-gather:BYTES or garbage")?
    };
    let bytes: u64 = bytes.parse().map_err(|e| format!("{e}"))?;
    Ok(match what {
        "exit-scatter" => Fault::ExitAfter { gather: false, bytes },
        "exit-gather" => Fault::ExitAfter { gather: true, bytes },
        "stall-scatter" => Fault::StallAfter { gather: false, bytes },
        "stall-gather" => Fault::StallAfter { gather: true, bytes },
        "garbage" => Fault::Garbage,
        _ => return Err(format!("unknown fault {what:?}")),
    })
}

/// Deterministic 32-byte key seed from a number.
pub fn key_seed(n: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, c) in seed.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(n ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    }
    seed
}

/// The vector peer `index` contributes: `pattern` makes the mean checkable
/// without the others' data ((index+1)·g(e), mean g(e)·(N+1)/2 for equal
/// weights); `random` is normal noise seeded by the index (tests recompute it).
pub fn fill(kind: &str, index: usize, len: usize) -> Vec<f32> {
    match kind {
        "pattern" => (0..len).map(|e| (index + 1) as f32 * pattern(e)).collect(),
        _ => {
            let mut rng = Rng::new(1000 + index as u64);
            (0..len).map(|_| rng.normal()).collect()
        }
    }
}

fn pattern(e: usize) -> f32 {
    ((e % 1000) as f32 - 500.0) / 1000.0
}

#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Deterministic key: the seed number.
    #[arg(long)]
    pub key_seed: u64,
    /// This peer's index (selects its data).
    #[arg(long)]
    pub index: usize,
    #[arg(long, value_parser = parse_count)]
    pub elems: usize,
    #[arg(long, default_value = "fp16")]
    pub codec: Codec,
    #[arg(long, default_value_t = crate::allreduce::plan::DEFAULT_CHUNK_BYTES)]
    pub chunk_bytes: usize,
    #[arg(long, default_value_t = 1.0)]
    pub weight: f32,
    /// `pattern` or `random`.
    #[arg(long, default_value = "random")]
    pub fill: String,
    /// Put a NaN at this element (before the round).
    #[arg(long)]
    pub nan_at: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Round id of the first round.
    #[arg(long, default_value_t = 1)]
    pub round: u64,
    #[arg(long, default_value_t = 60.0)]
    pub deadline_s: f64,
    #[arg(long, default_value_t = 10.0)]
    pub connect_s: f64,
    #[arg(long, default_value_t = 10.0)]
    pub stall_s: f64,
    #[arg(long)]
    pub socket_buffer: Option<usize>,
    /// Fault injection: exit-scatter:BYTES, exit-gather:BYTES, stall-…
    #[arg(long, value_parser = parse_fault)]
    pub fault: Option<Fault>,
    /// Write the final vector here (f32 little-endian).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prepare the verified all-reduce (`allreduce::audit`): every member
    /// is credited with the projections of its own fill (which every peer
    /// can compute); a round whose go line says `audit` runs verified, the
    /// verdict part of the timed round.
    #[arg(long)]
    pub audit: bool,
    /// Address to listen on (a test host's under `bench allreduce --net`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: std::net::SocketAddr,
    /// Dial every round's connections anew instead of keeping them.
    #[arg(long)]
    pub fresh_connections: bool,
    /// TCP congestion control of the connections ("default": the kernel's).
    #[arg(long, default_value = "bbr")]
    pub congestion_control: String,
}

fn read_line(input: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        bail!("stdin closed");
    }
    Ok(line)
}

/// One peer process: prints `{"listen", "key"}`, reads the group JSON,
/// then per round prints `{"ready"}`, waits for a line, runs the round and
/// prints `{"round", "time_s", "max_err", "report"}`.
pub fn peer_main(a: &PeerArgs) -> Result<()> {
    let mut peer = Peer::bind(Identity::from_seed(key_seed(a.key_seed)), a.bind).with_context(|| format!("listening on {}", a.bind))?;
    let mut stdout = std::io::stdout().lock();
    let mut stdin = std::io::stdin().lock();
    writeln!(stdout, "{}", serde_json::json!({"listen": peer.local_addr()?.to_string(), "key": peer.public_key().to_hex()}))?;
    stdout.flush()?;
    let group = Group::from_json(&read_line(&mut stdin)?)?;
    let settings = Settings {
        codec: a.codec,
        chunk_bytes: a.chunk_bytes,
        connect_timeout: Duration::from_secs_f64(a.connect_s),
        stall_timeout: Duration::from_secs_f64(a.stall_s),
        socket_buffer: a.socket_buffer,
        keep_connections: !a.fresh_connections,
        congestion_control: (a.congestion_control != "default").then(|| a.congestion_control.clone()),
        fault: a.fault,
        ..Settings::default()
    };
    let input = {
        let mut x = fill(&a.fill, a.index, a.elems);
        if let Some(i) = a.nan_at {
            x[i] = f32::NAN;
        }
        x
    };
    let audit = a.audit.then(|| {
        let challenge = [0x5a; 32];
        let p = crate::allreduce::projection::Projector::new(&challenge);
        let expected = (0..group.len()).map(|j| p.project(&fill(&a.fill, j, a.elems), 0)).collect();
        crate::allreduce::audit::Audit { challenge, weights: vec![a.weight; group.len()], expected, adjudicator: None }
    });
    let mut x = input.clone();
    for r in 0..a.rounds {
        x.copy_from_slice(&input);
        writeln!(stdout, "{}", serde_json::json!({"ready": r}))?;
        stdout.flush()?;
        let audited = read_line(&mut stdin)?.trim() == "audit";
        let audit = audit.as_ref().filter(|_| audited);
        let t = Instant::now();
        let deadline = t + Duration::from_secs_f64(a.deadline_s);
        let report = peer.all_reduce_audited(&group, a.round + r as u64, &mut x, a.weight, deadline, &settings, audit)?;
        if let Some(audit) = audit {
            let named = crate::allreduce::audit::verdict(audit, &report, a.codec);
            anyhow::ensure!(named.is_empty(), "round {r}: the verdict named {named:?}");
        }
        let time_s = t.elapsed().as_secs_f64();
        // With the pattern fill and equal weights, the mean is g(e)·(N+1)/2.
        let max_err = (a.fill == "pattern").then(|| {
            let k = (group.len() + 1) as f32 / 2.0;
            let want: Vec<f32> = (0..1000).map(|e| k * pattern(e)).collect();
            // NaN counts as an infinite error (f32::max would skip it).
            let err = |v: f32, w: f32| if (v - w).is_nan() { f32::INFINITY } else { (v - w).abs() };
            x.par_chunks(1000).map(|run| run.iter().zip(&want).fold(0f32, |m, (&v, &w)| m.max(err(v, w)))).reduce(|| 0.0, f32::max)
        });
        writeln!(stdout, "{}", serde_json::json!({"round": r, "time_s": time_s, "max_err": max_err, "report": report}))?;
        stdout.flush()?;
    }
    if let Some(path) = &a.out {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A running `dtrain allreduce-peer`.
pub struct PeerProcess {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub addr: String,
    pub key: String,
}

impl PeerProcess {
    /// Starts `exe allreduce-peer ARGS` and reads its address and key.
    pub fn spawn(exe: &std::path::Path, args: &[String]) -> Result<PeerProcess> {
        PeerProcess::spawn_on(exe, args, None)
    }

    /// [`PeerProcess::spawn`] on test host `host` of `net`, listening on
    /// its address.
    pub fn spawn_on(exe: &std::path::Path, args: &[String], host: Option<(&Net, usize)>) -> Result<PeerProcess> {
        let mut cmd = match host {
            Some((net, i)) => {
                let mut c = net.command(i, &exe.to_string_lossy());
                c.args(["-q", "allreduce-peer", "--bind", &format!("{}:0", net.addr(i))]);
                c
            }
            None => {
                let mut c = Command::new(exe);
                c.args(["-q", "allreduce-peer"]);
                c
            }
        };
        let mut child = cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().with_context(|| format!("starting {}", exe.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let hello: serde_json::Value = serde_json::from_str(&read_line(&mut stdout)?)?;
        let field = |k: &str| hello[k].as_str().map(str::to_string).with_context(|| format!("peer said {hello}"));
        Ok(PeerProcess { addr: field("listen")?, key: field("key")?, child, stdin, stdout })
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }

    pub fn recv(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&read_line(&mut self.stdout)?)?)
    }
}

/// The group of these processes with these span fractions, as JSON.
pub fn group_json(peers: &[(String, String)], fractions: &[f64]) -> String {
    let members: Vec<serde_json::Value> = peers
        .iter()
        .zip(fractions)
        .enumerate()
        .map(|(i, ((addr, key), f))| serde_json::json!({"id": format!("peer{i}"), "addr": addr, "key": key, "fraction": f}))
        .collect();
    serde_json::Value::Array(members).to_string()
}

#[derive(Debug, Clone, clap::Args)]
pub struct AllreduceBenchArgs {
    /// Group sizes to measure.
    #[arg(long, num_args = 1.., default_values_t = vec![2usize, 4])]
    pub peers: Vec<usize>,
    /// Vector lengths (f32 elements).
    #[arg(long, num_args = 1.., value_parser = parse_count, default_values = ["1M", "16M", "64M"])]
    pub elems: Vec<usize>,
    /// Wire codecs.
    #[arg(long, num_args = 1.., default_values = ["fp32", "fp16", "int8"])]
    pub codec: Vec<Codec>,
    /// Encoded bytes per chunk (default: 512 KiB; with --net, what the
    /// slowest link carries in 50 ms within that, as the validator picks
    /// it: `links::chunk_bytes_for`).
    #[arg(long)]
    pub chunk_bytes: Option<usize>,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// SO_SNDBUF/SO_RCVBUF (default: kernel autotuning).
    #[arg(long)]
    pub socket_buffer: Option<usize>,
    /// Skip the gloo anchor (run on 127.0.0.1, or one rank per test host
    /// with --net).
    #[arg(long)]
    pub no_gloo: bool,
    /// Python interpreter with torch (`scripts/torch-env.sh` installs one
    /// under target/ and prints its path).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Append the results as JSON lines to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also time every case with the verification on (`codec+audit`
    /// rows): plain and verified rounds alternate on the same peer
    /// processes, and the cost is the median of each pair's ratio.
    #[arg(long)]
    pub audit: bool,
    /// Run every peer on its own test host (root; see `testnet`), every
    /// access link shaped like this: `rate=1gbit,rtt=40ms,loss=0.1%,jitter=1ms,slow=1:100mbit`.
    /// Spans are split for the links (a member too slow to help owns
    /// nothing: `plan::link_fractions`), and rows give the time against
    /// the fastest any split can be (equal links: every member sends and
    /// receives 2(N−1)/N of the encoded vector) and the ratio.
    #[arg(long)]
    pub net: Option<Profile>,
    /// Dial every round's mesh anew (the default keeps a round's
    /// connections for the next: no dial, a warm congestion window).
    #[arg(long)]
    pub fresh_connections: bool,
    /// TCP congestion control the peers ask for on their connections
    /// (`default`: the kernel's; see `Settings::congestion_control`).
    #[arg(long, default_value = "bbr")]
    pub congestion_control: String,
}

/// Per timed round, the slowest peer's time (plain rounds, then with
/// `audit` the verified rounds, which alternate with the plain ones on the
/// same processes so that a shared machine's drift touches both alike),
/// and the worst error.
fn dtrain_round_times(
    a: &AllreduceBenchArgs,
    n: usize,
    elems: usize,
    codec: Codec,
    audit: bool,
    net: Option<&Net>,
    fractions: &[f64],
) -> Result<(Vec<f64>, Vec<f64>, f32)> {
    let exe = std::env::current_exe()?;
    let modes = if audit { 2 } else { 1 };
    let rounds = modes * (a.warmup + a.iters);
    let mut procs = (0..n)
        .map(|i| {
            let mut args: Vec<String> = [
                "--key-seed",
                &(77 + i).to_string(),
                "--index",
                &i.to_string(),
                "--elems",
                &elems.to_string(),
                "--codec",
                &codec.to_string(),
                "--chunk-bytes",
                &a.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES).to_string(),
                "--fill",
                "pattern",
                "--rounds",
                &rounds.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(b) = a.socket_buffer {
                args.extend(["--socket-buffer".into(), b.to_string()]);
            }
            if audit {
                args.push("--audit".into());
            }
            if a.fresh_connections {
                args.push("--fresh-connections".into());
            }
            args.extend(["--congestion-control".into(), a.congestion_control.clone()]);
            PeerProcess::spawn_on(&exe, &args, net.map(|net| (net, i)))
        })
        .collect::<Result<Vec<_>>>()?;
    let group = group_json(&procs.iter().map(|p| (p.addr.clone(), p.key.clone())).collect::<Vec<_>>(), fractions);
    for p in &mut procs {
        p.send(&group)?;
    }
    let (mut times, mut audited, mut max_err) = (Vec::new(), Vec::new(), 0f32);
    for r in 0..rounds {
        let verified = r % modes == 1;
        for p in &mut procs {
            p.recv()?; // ready
        }
        for p in &mut procs {
            p.send(if verified { "audit" } else { "go" })?;
        }
        let mut slowest = 0f64;
        for (i, p) in procs.iter_mut().enumerate() {
            let v = p.recv()?;
            let report = &v["report"];
            if let Some(f) = report["members"].as_array().and_then(|m| m.iter().find(|m| !m["failure"].is_null())) {
                bail!("peer {i} round {r}: a member failed: {f}");
            }
            slowest = slowest.max(v["time_s"].as_f64().context("time_s")?);
            max_err = max_err.max(v["max_err"].as_f64().unwrap_or(0.0) as f32);
        }
        if r >= modes * a.warmup {
            if verified { &mut audited } else { &mut times }.push(slowest);
        }
    }
    for mut p in procs {
        p.child.wait()?;
    }
    Ok((times, audited, max_err))
}

/// One-way loopback throughput of a single TCP stream, in GB/s: the
/// ceiling any TCP all-reduce on this machine works against.
pub fn tcp_pump_gbps(bytes: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 4 << 20];
        let mut total = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let buf = vec![1u8; 4 << 20];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        s.write_all(&buf[..n])?;
        left -= n;
    }
    drop(s);
    let got = reader.join().map_err(|_| anyhow::anyhow!("pump reader panicked"))??;
    anyhow::ensure!(got == bytes, "pump moved {got} of {bytes} bytes");
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// The wire floor of a round: the time for `n` peers on 127.0.0.1 to
/// exchange exactly an all-reduce's wire bytes (every peer sends
/// `2·bytes/n` to each other peer: its part of their spans, then its
/// averaged span) over a full TCP mesh, with no computation at all. The
/// bytes go from and to buffers of their full size, as a round's do (a
/// reused cache-sized buffer would hide the memory traffic of the
/// kernel's copies). The kernel's share of a round, which no
/// implementation moving these bytes can undercut; median of `iters`.
pub fn wire_floor_s(n: usize, bytes: usize, iters: usize) -> Result<f64> {
    use std::sync::Arc;
    let per_pair = 2 * bytes / n.max(1);
    // One source per peer (the same bytes go to each destination, as an
    // averaged span does) and one destination per connection, touched once
    // up front so that no round pays for page faults.
    let sources: Vec<Arc<Vec<u8>>> = (0..n).map(|_| Arc::new(vec![1u8; per_pair])).collect();
    let mut sinks: Vec<Vec<u8>> = (0..n * (n - 1)).map(|_| vec![0u8; per_pair]).collect();
    let mut times = Vec::new();
    for _ in 0..iters {
        // Connection i→j for every ordered pair: one writer thread per
        // peer sending to all its destinations in turn, one reader thread
        // per incoming connection.
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut outgoing: Vec<Vec<TcpStream>> = (0..n).map(|_| Vec::new()).collect();
        let mut incoming = Vec::new();
        for out in outgoing.iter_mut() {
            for _ in 1..n {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                out.push(s);
                incoming.push(listener.accept()?.0);
            }
        }
        let t = Instant::now();
        let readers: Vec<_> = incoming
            .into_iter()
            .zip(std::mem::take(&mut sinks))
            .map(|(mut s, mut sink)| {
                std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
                    let mut total = 0;
                    while total < per_pair {
                        let end = (total + (512 << 10)).min(per_pair);
                        match s.read(&mut sink[total..end])? {
                            0 => break,
                            k => total += k,
                        }
                    }
                    if total < per_pair {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{total} of {per_pair} bytes")));
                    }
                    Ok(sink)
                })
            })
            .collect();
        let writers: Vec<_> = outgoing
            .into_iter()
            .zip(&sources)
            .map(|(mut socks, src)| {
                let src = Arc::clone(src);
                std::thread::spawn(move || -> std::io::Result<()> {
                    for start in (0..per_pair).step_by(512 << 10) {
                        let piece = &src[start..(start + (512 << 10)).min(per_pair)];
                        for s in &mut socks {
                            s.write_all(piece)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.join().map_err(|_| anyhow::anyhow!("floor writer panicked"))??;
        }
        for r in readers {
            sinks.push(r.join().map_err(|_| anyhow::anyhow!("floor reader panicked"))??);
        }
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// The memory floor of a round: the time for `n` peers to read their
/// whole vector once and write it once (a plain copy between two
/// buffers of `elems` f32, all peers at once), which any all-reduce must
/// do on top of moving the wire bytes; median of `iters`.
pub fn memory_floor_s(n: usize, elems: usize, iters: usize) -> Result<f64> {
    let mut bufs: Vec<(Vec<f32>, Vec<f32>)> = (0..n).map(|_| (vec![1.0f32; elems], vec![0.0f32; elems])).collect();
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        std::thread::scope(|scope| {
            for (src, dst) in bufs.iter_mut() {
                scope.spawn(move || dst.copy_from_slice(src));
            }
        });
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// gloo's median times by (N, elems), from the anchor script.
fn gloo_times(a: &AllreduceBenchArgs) -> Result<Vec<(usize, usize, f64)>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/anchors/gloo_bench.py");
    let out = std::env::temp_dir().join(format!("dtrain-gloo-{}.json", std::process::id()));
    let status = Command::new(&a.python)
        .arg(&script)
        .arg("--world")
        .args(a.peers.iter().map(|n| n.to_string()))
        .arg("--sizes")
        .args(a.elems.iter().map(|n| n.to_string()))
        .args(["--iters", &a.iters.to_string(), "--warmup", &a.warmup.to_string(), "--json"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", a.python))?;
    anyhow::ensure!(status.success(), "{} exited with {status}", script.display());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let _ = std::fs::remove_file(&out);
    let rows = v.as_array().or_else(|| v["results"].as_array()).context("gloo JSON: expected a list of results")?;
    rows.iter()
        .map(|r| {
            let n = r["world"].as_u64().context("world")? as usize;
            let numel = r["numel"].as_u64().context("numel")? as usize;
            let t = r["median_s"].as_f64().context("median_s")?;
            Ok((n, numel, t))
        })
        .collect()
}

/// gloo's median time per element count on the test hosts of `net`: one
/// anchor process per host (`gloo_bench.py --rank`), rank 0's host the
/// rendezvous.
fn gloo_net_times(a: &AllreduceBenchArgs, net: &Net, n: usize, dtype: &str) -> Result<Vec<(usize, f64)>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/anchors/gloo_bench.py");
    let out = std::env::temp_dir().join(format!("dtrain-gloo-net-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let master = format!("{}:29500", net.addr(0));
    let mut ranks = Vec::new();
    for i in 0..n {
        let mut cmd = net.command(i, &a.python);
        // gloo picks its interface from the hostname otherwise: loopback.
        // (TORCH_CPP_LOG_LEVEL: c10d warns that a host has no hostname.)
        cmd.env("GLOO_SOCKET_IFNAME", crate::testnet::DEVICE)
            .env("TORCH_CPP_LOG_LEVEL", "ERROR")
            .arg(&script)
            .args(["--rank", &i.to_string(), "--world", &n.to_string(), "--master", &master, "--dtype", dtype, "--sizes"])
            .args(a.elems.iter().map(|e| e.to_string()))
            .args(["--iters", &a.iters.to_string(), "--warmup", &a.warmup.to_string()])
            .stdout(Stdio::null());
        if i == 0 {
            cmd.arg("--json").arg(&out);
        }
        ranks.push(cmd.spawn().with_context(|| format!("running {}", a.python))?);
    }
    for mut r in ranks {
        let status = r.wait()?;
        anyhow::ensure!(status.success(), "{} exited with {status}", script.display());
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let _ = std::fs::remove_file(&out);
    v.as_array()
        .context("gloo JSON: expected a list of results")?
        .iter()
        .map(|r| {
            anyhow::ensure!(r["correct"].as_bool() == Some(true), "gloo's sum was wrong: {r}");
            Ok((r["numel"].as_u64().context("numel")? as usize, r["median_s"].as_f64().context("median_s")?))
        })
        .collect()
}

pub fn allreduce_bench(a: &AllreduceBenchArgs) -> Result<()> {
    anyhow::ensure!(a.peers.iter().all(|&n| (1..=64).contains(&n)), "--peers: 1 to 64 processes");
    anyhow::ensure!(a.iters > 0, "--iters must be at least 1");
    if let Some(profile) = &a.net {
        return allreduce_bench_net(a, profile);
    }
    let pump = tcp_pump_gbps(2 << 30)?;
    println!("TCP pump (one loopback stream, one way): {pump:.2} GB/s");
    let gloo = if a.no_gloo {
        Vec::new()
    } else {
        match gloo_times(a) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gloo anchor skipped: {e:#}");
                Vec::new()
            }
        }
    };
    println!(
        "{:>3} {:>9} {:>8} {:>10} {:>12} {:>12} {:>14} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "N", "elems", "codec", "time ms", "algbw GB/s", "busbw GB/s", "wire busbw", "% of pump", "wire ms", "memory ms", "gloo ms", "vs gloo"
    );
    for &n in &a.peers {
        for &elems in &a.elems {
            for &codec in &a.codec {
                let (plain, audited, max_err) = dtrain_round_times(a, n, elems, codec, a.audit, None, &vec![1.0; n])?;
                if max_err > 0.01 {
                    bail!("N={n} {elems} {codec}: result off by {max_err} from the exact mean");
                }
                let ratios: Vec<f64> = plain.iter().zip(&audited).map(|(p, v)| v / p).collect();
                let rows = [(false, plain), (true, audited)];
                for (audit, times) in rows.into_iter().filter(|(_, t)| !t.is_empty()) {
                    let t = median(times);
                    let label = if audit { format!("{codec}+audit") } else { codec.to_string() };
                    let algbw = 4.0 * elems as f64 / t / 1e9;
                    let factor = if n > 1 { 2.0 * (n - 1) as f64 / n as f64 } else { 0.0 };
                    let wire = codec.encoded_len(elems) as f64 / t / 1e9 * factor;
                    let g = gloo.iter().find(|&&(gn, ge, _)| gn == n && ge == elems).map(|g| g.2);
                    let floor = if n > 1 { wire_floor_s(n, codec.encoded_len(elems), a.iters)? } else { 0.0 };
                    let memory = memory_floor_s(n, elems, a.iters)?;
                    println!(
                        "{n:>3} {elems:>9} {label:>8} {:>10.1} {algbw:>12.2} {:>12.2} {wire:>14.2} {:>9.0}% {:>9.1} {:>9.1} {:>9} {:>9}",
                        t * 1e3,
                        algbw * factor,
                        100.0 * wire / pump,
                        floor * 1e3,
                        memory * 1e3,
                        g.map_or("-".into(), |g| format!("{:.1}", g * 1e3)),
                        g.map_or("-".into(), |g| format!("{:.2}x", t / g)),
                    );
                    if let Some(path) = &a.json {
                        let line = serde_json::json!({
                            "bench": "allreduce", "peers": n, "elems": elems, "codec": codec.to_string(), "audit": audit, "time_s": t,
                            "algbw_gbps": algbw, "busbw_gbps": algbw * factor, "wire_busbw_gbps": wire, "pump_gbps": pump,
                            "gloo_s": g, "wire_floor_s": floor, "memory_floor_s": memory, "max_err": max_err, "chunk_bytes": a.chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES),
                            "audit_over_plain": (audit && !ratios.is_empty()).then(|| median(ratios.clone())),
                        });
                        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                        writeln!(f, "{line}")?;
                    }
                }
                if !ratios.is_empty() {
                    let (lo, hi) = ratios.iter().fold((f64::MAX, 0f64), |(l, h), &r| (l.min(r), h.max(r)));
                    println!(
                        "    {codec}+audit / {codec}: {:.3}x (median of {} paired rounds, {lo:.3}–{hi:.3})",
                        median(ratios.clone()),
                        ratios.len()
                    );
                }
            }
        }
    }
    println!("time: slowest peer, median of {} rounds; algbw = 4·elems/time; busbw = algbw·2(N-1)/N; wire busbw counts encoded bytes;", a.iters);
    println!("wire: the same wire bytes exchanged over a TCP mesh with no computation; memory: every peer copying its vector once");
    println!("(the two floors under any round on this machine, see wire_floor_s and memory_floor_s).");
    Ok(())
}

/// The all-reduce between test hosts: per case the median time, the link
/// bound and their ratio, and gloo's (fp32 and fp16, one anchor process
/// per host) beside them unless `--no-gloo` (hivemind on the hosts: not
/// yet).
fn allreduce_bench_net(a: &AllreduceBenchArgs, profile: &Profile) -> Result<()> {
    // Ctrl-C ends the peers (the terminal signals the whole group) while
    // this process returns an error, so the test hosts are torn down.
    crate::train::stop_on_interrupt();
    println!("test hosts, every access link: {profile:?}");
    println!("{:>3} {:>9} {:>12} {:>10} {:>10} {:>9} {:>12}", "N", "elems", "codec", "time ms", "bound ms", "x bound", "switch CPU %");
    for &n in &a.peers {
        anyhow::ensure!(n >= 2, "--net needs at least 2 peers");
        let net = Net::create(n, profile)?;
        // The fastest any split of the spans can be for these links (with
        // equal links: every member sends and receives 2(N−1)/N of the
        // encoded vector); the peers use that split.
        let rates: Vec<f64> = (0..n).map(|i| profile.min_rate(i)).collect();
        let (fractions, per_byte) = match rates.iter().all(|r| r.is_finite()) {
            true => link_fractions(&rates),
            false => (vec![1.0; n], 0.0), // (unshaped: equal spans, no bound)
        };
        let bytes_per_s: Vec<Option<f64>> = rates.iter().map(|r| Some(r / 8.0)).collect();
        let chunk = a.chunk_bytes.unwrap_or_else(|| crate::subnet::links::chunk_bytes_for(&bytes_per_s, DEFAULT_CHUNK_BYTES));
        println!("N={n}: chunks of {} KiB", chunk >> 10);
        let a = &AllreduceBenchArgs { chunk_bytes: Some(chunk), ..a.clone() };
        for &elems in &a.elems {
            for &codec in &a.codec {
                anyhow::ensure!(!crate::train::interrupted(), "interrupted");
                let cpu0 = net.stats().cpu_ns.load(std::sync::atomic::Ordering::Relaxed);
                let t0 = Instant::now();
                let (plain, audited, max_err) = dtrain_round_times(a, n, elems, codec, a.audit, Some(&net), &fractions)?;
                let cpu = (net.stats().cpu_ns.load(std::sync::atomic::Ordering::Relaxed) - cpu0) as f64 / 1e9 / t0.elapsed().as_secs_f64();
                if max_err > 0.01 {
                    bail!("N={n} {elems} {codec}: result off by {max_err} from the exact mean");
                }
                let bound = per_byte * codec.encoded_len(elems) as f64 * 8.0;
                for (audit, times) in [(false, plain), (true, audited)].into_iter().filter(|(_, t)| !t.is_empty()) {
                    let t = median(times);
                    let label = if audit { format!("{codec}+audit") } else { codec.to_string() };
                    let (b, r) = if bound > 0.0 { (format!("{:.1}", bound * 1e3), format!("{:.3}", t / bound)) } else { ("-".into(), "-".into()) };
                    println!("{n:>3} {elems:>9} {label:>12} {:>10.1} {b:>10} {r:>9} {:>11.0}%", t * 1e3, 100.0 * cpu);
                    if let Some(path) = &a.json {
                        let line = serde_json::json!({
                            "bench": "allreduce-net", "net": format!("{profile:?}"), "peers": n, "elems": elems, "codec": codec.to_string(),
                            "audit": audit, "time_s": t, "bound_s": (bound > 0.0).then_some(bound), "max_err": max_err, "switch_cpu": cpu,
                        });
                        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                        writeln!(f, "{line}")?;
                    }
                }
            }
        }
        // The anchor on the same hosts: gloo's ring over the same links
        // (its bound: the same split's, for 4 or 2 bytes a value).
        for dtype in ["fp32", "fp16"].into_iter().filter(|_| !a.no_gloo) {
            match gloo_net_times(a, &net, n, dtype) {
                Ok(rows) => {
                    for (elems, t) in rows {
                        let bytes = if dtype == "fp32" { 4 } else { 2 };
                        let bound = per_byte * (bytes * elems) as f64 * 8.0;
                        let r = if bound > 0.0 { format!("{:.3}", t / bound) } else { "-".into() };
                        println!("{n:>3} {elems:>9} {:>12} {:>10.1} {:>10.1} {r:>9} {:>12}", format!("gloo {dtype}"), t * 1e3, bound * 1e3, "");
                        if let Some(path) = &a.json {
                            let line = serde_json::json!({
                                "bench": "allreduce-net", "net": format!("{profile:?}"), "peers": n, "elems": elems, "codec": format!("gloo-{dtype}"),
                                "time_s": t, "bound_s": (bound > 0.0).then_some(bound),
                            });
                            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                            writeln!(f, "{line}")?;
                        }
                    }
                }
                Err(e) => eprintln!("gloo anchor on the test hosts skipped: {e:#}"),
            }
        }
    }
    println!("time: slowest peer, median of {} rounds; bound: the fastest any split of the spans can be over these links", a.iters);
    println!("(plan::link_fractions; equal links: 2(N-1)/N · encoded bytes / rate), and the peers use that split;");
    println!("switch CPU: the test hosts' userspace switch, as a share of one core over the case");
    Ok(())
}

/// A group of in-process peers' members (for tests and tools).
pub fn members_of(peers: &[Peer]) -> Result<Vec<Member>> {
    peers.iter().enumerate().map(|(i, p)| Ok(Member { id: format!("peer{i}"), addr: p.local_addr()?, key: p.public_key(), fraction: 1.0 })).collect()
}
