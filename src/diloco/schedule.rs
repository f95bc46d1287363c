//! The inner learning rate's schedule over epochs: constant, or a linear
//! warmup then a cosine decay to a tenth — the shape the DiLoCo papers and
//! the current subnet train with.
//!
//! The clock is the number of outer steps taken (`OuterState::steps`),
//! which is published with the model: a follower validator or a restarted
//! one computes the same rate for an epoch as the master did, and the
//! validator replays a miner's steps at the rate it sent it.

use std::fmt;
use std::str::FromStr;

/// The decay's floor, as a fraction of the base rate.
pub const FLOOR: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    Constant,
    /// Linear warmup over `warmup` epochs, then cosine decay reaching
    /// `FLOOR` × the base rate at epoch `epochs` and staying there.
    Cosine {
        epochs: u64,
        warmup: u64,
    },
}

impl LrSchedule {
    /// The factor on the base rate for the epoch after `steps` outer steps.
    pub fn factor(&self, steps: u64) -> f64 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine { epochs, warmup } => {
                if steps < warmup {
                    return (steps + 1) as f64 / (warmup + 1) as f64;
                }
                let span = epochs.saturating_sub(warmup).max(1) as f64;
                let t = ((steps - warmup) as f64 / span).min(1.0);
                FLOOR + (1.0 - FLOOR) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

impl FromStr for LrSchedule {
    type Err = String;

    /// `constant`, `cosine:EPOCHS` or `cosine:EPOCHS:WARMUP`.
    fn from_str(s: &str) -> Result<LrSchedule, String> {
        let bad = || format!("schedule {s:?}: constant, cosine:EPOCHS or cosine:EPOCHS:WARMUP (WARMUP < EPOCHS)");
        if s == "constant" {
            return Ok(LrSchedule::Constant);
        }
        let rest = s.strip_prefix("cosine:").ok_or_else(bad)?;
        let mut parts = rest.split(':').map(str::parse::<u64>);
        let epochs = parts.next().and_then(Result::ok).ok_or_else(bad)?;
        let warmup = match parts.next() {
            None => 0,
            Some(w) => w.map_err(|_| bad())?,
        };
        if parts.next().is_some() || epochs == 0 || warmup >= epochs {
            return Err(bad());
        }
        Ok(LrSchedule::Cosine { epochs, warmup })
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LrSchedule::Constant => write!(f, "constant"),
            LrSchedule::Cosine { epochs, warmup } => write!(f, "cosine:{epochs}:{warmup}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s: LrSchedule = "cosine:10:2".parse().unwrap();
        let f: Vec<f64> = (0..14).map(|e| s.factor(e)).collect();
        // Warmup: 1/3, 2/3, then the peak.
        assert!((f[0] - 1.0 / 3.0).abs() < 1e-12 && (f[1] - 2.0 / 3.0).abs() < 1e-12 && f[2] == 1.0);
        // Halfway through the decay (epoch 6 of 2..10): the mean of peak and floor.
        assert!((f[6] - (1.0 + FLOOR) / 2.0).abs() < 1e-12);
        assert!(f[2..=10].windows(2).all(|w| w[1] < w[0]), "{f:?}");
        assert!(f[10..].iter().all(|&x| (x - FLOOR).abs() < 1e-12), "{f:?}");
        assert_eq!(LrSchedule::Constant.factor(1000), 1.0);
    }

    #[test]
    fn schedules_parse_and_print_back() {
        for s in ["constant", "cosine:10:0", "cosine:100:5"] {
            assert_eq!(s.parse::<LrSchedule>().unwrap().to_string(), s);
        }
        assert_eq!("cosine:10".parse::<LrSchedule>(), Ok(LrSchedule::Cosine { epochs: 10, warmup: 0 }));
        for bad in ["cosine", "cosine:0", "cosine:5:5", "cosine:5:1:1", "linear", "cosine:x"] {
            assert!(bad.parse::<LrSchedule>().is_err(), "{bad}");
        }
    }
}
