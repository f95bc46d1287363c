//! `cargo bench --bench cpu_train [-- ARGS]`: the same side-by-side run as
//! `dtrain bench train ARGS` (dtrain's step, PyTorch's step, the GEMM ceiling).

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    bench: dtrain::bench::TrainBenchArgs,
}

fn main() -> anyhow::Result<()> {
    // cargo passes `--bench`; drop it before parsing.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    dtrain::bench::train_bench(&args.bench)
}
