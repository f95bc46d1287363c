//! The master validator's dashboard (`--dashboard HOST:PORT`): one page
//! that follows the network while it runs — train and held-out loss per
//! epoch, each miner's weight and score over time, every all-reduce's
//! time against its link bound, its bytes and who failed and why.
//!
//! Everything is drawn on the validator (the charts are SVG from
//! `plot::svg_chart`, the tables plain HTML) from the same per-epoch
//! records metrics.jsonl gets, so the page needs nothing from any other
//! server, and a browser with scripts off still sees a complete page. The
//! page's one small script fetches `/panel` every few seconds and swaps it
//! in. Served by `endpoint` (GET only, bounded, its own port). Failure
//! reasons come from peers: every string is escaped.

use super::endpoint::{Endpoint, Reply};
use crate::plot::{XySeries, svg_chart};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Epochs kept (the oldest go first): a long run's page stays small.
pub const MAX_EPOCHS: usize = 2000;
/// All-reduce rows shown in the table, newest first.
const TABLE_ROWS: usize = 50;
/// How often the page asks for a fresh panel.
const REFRESH_MS: u32 = 3000;
const CHART: (u32, u32) = (560, 320);

/// The epochs' records, as metrics.jsonl has them.
#[derive(Default)]
pub struct History {
    epochs: VecDeque<Value>,
}

impl History {
    pub fn push(&mut self, record: Value) {
        if self.epochs.len() == MAX_EPOCHS {
            self.epochs.pop_front();
        }
        self.epochs.push_back(record);
    }

    fn series(&self, field: &str) -> Vec<(f64, f64)> {
        self.epochs.iter().map(|e| (num(&e["epoch"]), num(&e[field]))).collect()
    }

    /// One series per key of the map `field` (a uid's weight, score…), a
    /// gap where an epoch lacks it.
    fn per_key(&self, field: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
        let mut keys: Vec<String> = self.epochs.iter().filter_map(|e| e[field].as_object()).flat_map(|m| m.keys().cloned()).collect();
        keys.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
        keys.dedup();
        keys.into_iter().map(|k| (k.clone(), self.epochs.iter().map(|e| (num(&e["epoch"]), num(&e[field][&k]))).collect())).collect()
    }
}

fn xy(v: &[(String, Vec<(f64, f64)>)]) -> Vec<XySeries<'_>> {
    v.iter().map(|(n, p)| XySeries { name: n, points: p }).collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// `&`, `<`, `>`, `"` and `'` as entities.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() { format!("{v:.digits$}") } else { "–".into() }
}

/// The part of the page that changes: a status line, the charts, the
/// all-reduce table.
pub fn panel(h: &History) -> String {
    let mut out = String::new();
    let Some(last) = h.epochs.back() else {
        return "<p id=\"status\">waiting for the first epoch…</p>".into();
    };
    let _ = write!(
        out,
        "<p id=\"status\" data-epoch=\"{}\">epoch <b>{}</b> · train loss <b>{}</b> · held-out loss <b>{}</b> · {} miners weighted</p>",
        last["epoch"].as_u64().unwrap_or(0),
        last["epoch"].as_u64().unwrap_or(0),
        fmt(num(&last["loss"]), 4),
        fmt(num(&last["eval_loss"]), 4),
        last["weights"].as_object().map_or(0, |m| m.len()),
    );
    let (train, held) = (h.series("loss"), h.series("eval_loss"));
    let mut loss = vec![XySeries { name: "train", points: &train }];
    if held.iter().any(|p| p.1.is_finite()) {
        loss.push(XySeries { name: "held-out", points: &held });
    }
    let (weights, scores) = (h.per_key("weights"), h.per_key("scores"));
    let per_uid = |m: &BTreeMap<String, Vec<(f64, f64)>>| -> Vec<(String, Vec<(f64, f64)>)> {
        m.iter().map(|(k, v)| (format!("uid {k}"), v.clone())).collect()
    };
    let (weights, scores) = (per_uid(&weights), per_uid(&scores));
    let (ar, bound) = (h.series("allreduce_s"), h.series("allreduce_bound_s"));
    let mut allreduce = vec![XySeries { name: "all-reduce", points: &ar }];
    if bound.iter().any(|p| p.1.is_finite()) {
        allreduce.push(XySeries { name: "link bound", points: &bound });
    }
    out.push_str("<div class=\"charts\">");
    for (id, chart) in [
        ("loss", svg_chart(&loss, "Loss", "epoch", "loss", CHART)),
        ("weights", svg_chart(&xy(&weights), "Weight per miner", "epoch", "weight", CHART)),
        ("scores", svg_chart(&xy(&scores), "Score per miner", "epoch", "score", CHART)),
        ("allreduce", svg_chart(&allreduce, "All-reduce time", "epoch", "seconds", CHART)),
    ] {
        let _ = write!(out, "<figure id=\"chart-{id}\">{chart}</figure>");
    }
    out.push_str("</div>");
    out.push_str(
        "<h2>All-reduces</h2><table id=\"allreduces\"><tr><th>epoch</th><th>seconds</th><th>link bound s</th><th>× bound</th>\
         <th>MB in</th><th>failed</th></tr>",
    );
    for e in h.epochs.iter().rev().take(TABLE_ROWS) {
        let (t, b) = (num(&e["allreduce_s"]), num(&e["allreduce_bound_s"]));
        let failed: Vec<String> = e["allreduce_failed"]
            .as_array()
            .map(|v| v.iter().map(|f| format!("{}: {}", escape(f["id"].as_str().unwrap_or("?")), escape(f["why"].as_str().unwrap_or("?")))).collect())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e["epoch"].as_u64().unwrap_or(0),
            fmt(t, 2),
            fmt(b, 2),
            fmt(t / b, 2),
            fmt(num(&e["allreduce_bytes_in"]) / 1e6, 2),
            if failed.is_empty() { "none".into() } else { failed.join("<br>") },
        );
    }
    out.push_str("</table>");
    out
}

/// The whole page: the panel as it is now, and the script that keeps it
/// fresh.
pub fn page(h: &History) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dtrain dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; }}
figure {{ margin: 0; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.2em 0.8em; text-align: right; }}
td:last-child {{ text-align: left; }}
#live {{ color: #777; font-size: 0.9em; }}
</style></head>
<body>
<h1>dtrain</h1>
<p id="live">live: refreshed every {secs} s</p>
<div id="panel">{panel}</div>
<script>
(function () {{
  const live = document.getElementById("live");
  async function refresh() {{
    try {{
      const r = await fetch("/panel", {{ cache: "no-store" }});
      if (!r.ok) throw new Error("HTTP " + r.status);
      document.getElementById("panel").innerHTML = await r.text();
      live.textContent = "live: updated " + new Date().toLocaleTimeString();
      live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
    }} catch (e) {{
      live.textContent = "the validator does not answer (" + e.message + "); retrying";
    }}
  }}
  setInterval(refresh, {ms});
  refresh();
}})();
</script>
</body></html>
"#,
        secs = REFRESH_MS / 1000,
        ms = REFRESH_MS,
        panel = panel(h),
    )
}

/// The dashboard's listener and history; stops when dropped.
pub struct Dashboard {
    history: Arc<Mutex<History>>,
    endpoint: Endpoint,
}

impl Dashboard {
    /// Serves the dashboard on `addr` (port 0 picks one).
    pub fn start(addr: SocketAddr) -> std::io::Result<Dashboard> {
        let history = Arc::new(Mutex::new(History::default()));
        let h = history.clone();
        let handler = move |path: &str| {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            match path.split('?').next().unwrap_or("") {
                "/" | "/index.html" => Reply::ok("text/html; charset=utf-8", page(&h)),
                "/panel" => Reply::ok("text/html; charset=utf-8", panel(&h)),
                "/history.json" => Reply::ok("application/json", serde_json::to_string(&h.epochs).unwrap_or_default()),
                _ => Reply::not_found("the dashboard is at /"),
            }
        };
        let endpoint = Endpoint::start(addr, "dashboard", Arc::new(handler))?;
        Ok(Dashboard { history, endpoint })
    }

    /// [`Dashboard::start`] for a node: the address logged and written to
    /// `state`/dashboard.url (where `dtrain swarm` reads it).
    pub fn serve(addr: SocketAddr, state: &std::path::Path) -> anyhow::Result<Dashboard> {
        use anyhow::Context;
        let d = Dashboard::start(addr).with_context(|| format!("--dashboard {addr}"))?;
        let url = format!("http://{}/", d.addr());
        std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
        crate::subnet::node::write_atomic(&state.join("dashboard.url"), url.as_bytes())?;
        tracing::info!("dashboard at {url}");
        Ok(d)
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    /// One more epoch's record (metrics.jsonl's line).
    pub fn record(&self, record: Value) {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_panel_shows_each_epoch_and_escapes_what_peers_said() {
        let mut h = History::default();
        assert!(panel(&h).contains("waiting"));
        for e in 1..=3u64 {
            h.push(json!({
                "epoch": e, "loss": 11.0 - e as f64, "eval_loss": if e == 2 { Value::Null } else { json!(11.5 - e as f64) },
                "weights": {"1": 0.5, "2": 0.5}, "scores": {"1": 0.1 * e as f64, "2": 0.2},
                "allreduce_s": 2.0, "allreduce_bound_s": 1.6, "allreduce_bytes_in": 3.0e6,
                "allreduce_failed": if e == 3 { json!([{"id": "7", "why": "<script>alert(1)</script>"}]) } else { json!([]) },
            }));
        }
        let p = panel(&h);
        assert!(p.contains("data-epoch=\"3\"") && p.contains("train loss <b>8.0000</b>") && p.contains("held-out loss <b>8.5000</b>"), "{p}");
        for id in ["chart-loss", "chart-weights", "chart-scores", "chart-allreduce"] {
            assert!(p.contains(id), "{id}");
        }
        assert!(p.contains("uid 1") && p.contains("uid 2") && p.contains("held-out") && p.contains("link bound"));
        // Newest first; × bound 2.0/1.6.
        assert!(p.find("<td>3</td>").unwrap() < p.find("<td>1</td>").unwrap());
        assert!(p.contains("<td>1.25</td>") && p.contains("<td>3.00</td>"));
        assert!(!p.contains("<script>alert") && p.contains("7: &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page(&h).contains(&p));
    }

    #[test]
    fn history_keeps_the_newest_epochs() {
        let mut h = History::default();
        for e in 0..MAX_EPOCHS as u64 + 5 {
            h.push(json!({"epoch": e}));
        }
        assert_eq!(h.epochs.len(), MAX_EPOCHS);
        assert_eq!(h.epochs[0]["epoch"], 5);
    }
}
