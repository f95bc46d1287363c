//! The master validator's dashboard in a real headless browser (Debian's
//! chromium, installed by scripts/chromium.sh): a running swarm's page
//! loads, its script refreshes it, the charts and the status line show
//! the run's own numbers (as metrics.jsonl has them), and the screenshot
//! is kept in target/test-artifacts/dashboard.png. Where chromium cannot
//! be installed the test says SKIPPED.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium.sh");
    let out = Command::new(script).stderr(Stdio::inherit()).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// The browser's run on `url`: `args` beside the headless ones.
fn browse(browser: &str, profile: &Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Time in the page runs ahead virtually (network waits are real):
        // several of the script's refreshes, however loaded the machine.
        .arg("--virtual-time-budget=10000")
        .args(args)
        .arg(url)
        .output()
        .expect("running chromium")
}

struct Swarm(Child);

impl Drop for Swarm {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; the swarm stops its nodes.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let t = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

fn epochs(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_running_swarms_dashboard_renders_its_numbers_in_a_browser() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no chromium (scripts/chromium.sh could not install it)");
        return;
    };
    let out = std::env::temp_dir().join(format!("dtrain-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut swarm = Swarm(
        Command::new(env!("CARGO_BIN_EXE_dtrain"))
            .args(["-q", "swarm", "--miners", "2", "--epochs", "100", "--rows", "2", "--dashboard", "127.0.0.1:0", "--data"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample"))
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The swarm prints the address; the validator's state holds it too.
    let stdout = swarm.0.stdout.take().unwrap();
    let (tx, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let url_file = out.join("nodes/validator-0/dashboard.url");
    while epochs(&out).len() < 2 || !url_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(600), "no two epochs");
        assert!(swarm.0.try_wait().unwrap().is_none(), "the swarm exited early");
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = std::fs::read_to_string(&url_file).unwrap();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with('/'), "{url}");
    assert!(printed.try_iter().any(|l| l == format!("dashboard: {url}")), "the swarm did not print the dashboard's address");
    let profile = out.join("chromium-profile");

    let dom = browse(&browser, &profile, &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    // The DOM after the script ran: it refreshed the panel at least once.
    assert!(dom.contains("data-updates="), "the page's script never refreshed it:\n{}", &dom[..dom.len().min(3000)]);
    for id in ["chart-loss", "chart-weights", "chart-scores", "chart-allreduce", "allreduces"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    assert!(dom.matches("<svg").count() >= 4, "the charts");
    // The run's numbers: the newest epoch the page shows is one the
    // validator recorded, with that epoch's losses and its miners.
    let shown: u64 = dom.split("data-epoch=\"").nth(1).and_then(|s| s.split('"').next()).and_then(|s| s.parse().ok()).expect("the status line");
    let rec = epochs(&out).into_iter().find(|e| e["epoch"].as_u64() == Some(shown)).expect("the shown epoch is in metrics.jsonl");
    let loss = format!("train loss <b>{:.4}</b>", rec["loss"].as_f64().unwrap());
    assert!(dom.contains(&loss), "{loss} not on the page");
    if let Some(h) = rec["eval_loss"].as_f64() {
        assert!(dom.contains(&format!("held-out loss <b>{h:.4}</b>")));
    }
    for uid in rec["weights"].as_object().unwrap().keys() {
        assert!(dom.contains(&format!("uid {uid}")), "miner {uid} not in the charts' legends");
    }
    // Every epoch shown so far has its all-reduce row.
    let rows = dom.split("id=\"allreduces\"").nth(1).unwrap();
    assert!(rows.matches("<tr>").count() > shown as usize, "a row per epoch and the header");

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let run = browse(&browser, &profile, &url, &[&arg, "--window-size=1280,1400"]);
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&run.stderr));
    // It shows the charts: the loss line's red, the second series' blue.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let count = |rgb: [u8; 3]| buf[..info.buffer_size()].chunks_exact(px).filter(|p| p[..3] == rgb).count();
    assert!(count([200, 30, 30]) > 100, "no loss line in the screenshot");
    assert!(count([30, 80, 200]) > 100, "no second series in the screenshot");
    eprintln!("screenshot: {}", shot.display());
    drop(swarm);
    std::fs::remove_dir_all(&out).unwrap();
}
