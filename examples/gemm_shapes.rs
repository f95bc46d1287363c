use gemm::{Parallelism, gemm};
use std::time::Instant;
fn run(name: &str, m: usize, n: usize, k: usize, dst_rs: isize, lhs_rs: isize, lhs_cs: isize, rhs_rs: isize, rhs_cs: isize, acc: bool) {
    let a = vec![0.01f32; m * k];
    let b = vec![0.02f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        unsafe {
            gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                dst_rs,
                acc,
                a.as_ptr(),
                lhs_cs,
                lhs_rs,
                b.as_ptr(),
                rhs_cs,
                rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::Rayon(2),
            )
        };
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!("{name:30} {m:6}x{n:6}x{k:6}: {:7.1} ms {:6.1} GFLOP/s", best * 1e3, 2.0 * (m * n * k) as f64 / best / 1e9);
}
fn main() {
    let (nn, c, v) = (2048usize, 256usize, 50304usize);
    run("square 2048", 2048, 2048, 2048, 2048, 2048, 1, 2048, 1, false);
    run("cls fwd (rhs W^T strided)", nn, v, c, v as isize, c as isize, 1, 1, c as isize, false);
    run("cls fwd (rhs rowmajor)", nn, v, c, v as isize, c as isize, 1, v as isize, 1, false);
    run("cls dinp", nn, c, v, c as isize, v as isize, 1, c as isize, 1, false);
    run("cls dW (lhs dout^T)", v, c, nn, c as isize, 1, v as isize, c as isize, 1, true);
    run("fc fwd", nn, 4 * c, c, 4 * c as isize, c as isize, 1, 4 * c as isize, 1, true);
    run("fcproj fwd", nn, c, 4 * c, c as isize, 4 * c as isize, 1, c as isize, 1, true);
    run("fc dW", c, 4 * c, nn, 4 * c as isize, 1, c as isize, 4 * c as isize, 1, true);
}
