//! `cargo bench --bench row_sources`: rows/s of the bundled sample through
//! the three row sources, side by side in one run: local parquet files,
//! the same files over HTTP with range requests, and the rows endpoint (100
//! rows per request, as the reference used it). Both servers run on
//! 127.0.0.1 in this process (tests/common/servers.rs), so the network is
//! loopback and the comparison is of the protocols and their parsing.

// The fault injection the tests use is idle here.
#[allow(dead_code)]
#[path = "../tests/common/servers.rs"]
mod servers;

use dtrain::data::http::RetryPolicy;
use dtrain::data::rows_api::{RowsApi, RowsApiConfig};
use dtrain::data::source::{ParquetRows, RowSource};
use std::time::{Duration, Instant};

fn rows_per_s(src: &dyn RowSource, runs: usize) -> f64 {
    let n = src.num_rows() as usize;
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t0 = Instant::now();
        assert_eq!(src.rows(0, n).expect("rows").len(), n);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    n as f64 / best
}

fn main() {
    let runs = 5;
    let policy = RetryPolicy { tries: 1, delay: Duration::ZERO, timeout: Duration::from_secs(30) };
    let files = servers::files::serve();
    let rows = servers::rows::serve();
    let urls: Vec<String> = ["part-00000.parquet", "part-00001.parquet"].iter().map(|f| format!("{}/{f}", files.base)).collect();

    let local = ParquetRows::open_dir(&servers::files::sample_dir()).expect("sample");
    let remote = ParquetRows::open_urls(&urls, &policy).expect("remote parquet");
    let api = RowsApi::new(RowsApiConfig { base_url: rows.base.clone(), num_rows: local.num_rows(), retry: policy, ..RowsApiConfig::default() });

    let l = rows_per_s(&local, runs);
    println!("row sources, {} rows of the bundled sample, best of {runs}:", local.num_rows());
    println!("  local parquet:                 {l:10.0} rows/s");
    // Loopback alone, then with a 20 ms round trip added to every answer:
    // what a request costs over a wide-area link.
    for latency in [0, 20] {
        servers::set_latency(latency);
        let (r, a) = (rows_per_s(&remote, runs), rows_per_s(&api, runs));
        println!("  + {latency:2} ms per request: parquet over HTTP (ranges) {r:8.0} rows/s, rows endpoint {a:8.0} rows/s: {:.1}×", r / a);
    }
}
