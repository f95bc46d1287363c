//! The held-out part of a dataset: rows no miner is ever assigned or may
//! choose, on which `dtrain eval` and the master validator measure how good
//! a model is.
//!
//! It is the dataset's *tail*: the last 1/20 of its rows, at most
//! [`MAX_HELD_OUT`] (fineweb's 519M rows: the last 10,000; the bundled
//! sample's 374: the last 19). A tail rather than scattered rows because
//! the validator and the reference's miners take *runs* of consecutive
//! rows, which scattered holes would cut short; the dataset's order is a
//! crawl order, unrelated to content, so the tail is as good a sample as
//! any. Nodes see only [`TrainRows`], a view of the rows before it: an
//! assignment past it is refused by the miner (its row is "beyond the
//! dataset") and a miner claiming one fails the validator's check the
//! same way.

use super::DataError;
use super::source::RowSource;
use std::ops::Range;

/// Most rows held out, however large the dataset.
pub const MAX_HELD_OUT: u64 = 10_000;
/// One row in this many is held out (up to `MAX_HELD_OUT`).
pub const HELD_OUT_EVERY: u64 = 20;

/// The held-out rows of a dataset of `rows` rows (empty only for a dataset
/// of one row, which has nothing to spare).
pub fn held_out(rows: u64) -> Range<u64> {
    let n = rows.div_ceil(HELD_OUT_EVERY).min(MAX_HELD_OUT);
    let n = if rows > 1 { n } else { 0 };
    rows - n..rows
}

/// The rows a network trains on: every row of `inner` before its held-out
/// tail.
pub struct TrainRows<S: RowSource> {
    inner: S,
    rows: u64,
}

impl<S: RowSource> TrainRows<S> {
    pub fn new(inner: S) -> TrainRows<S> {
        let rows = held_out(inner.num_rows()).start;
        TrainRows { inner, rows }
    }
}

impl<S: RowSource> RowSource for TrainRows<S> {
    fn num_rows(&self) -> u64 {
        self.rows
    }

    fn rows(&self, offset: u64, count: usize) -> Result<Vec<String>, DataError> {
        if offset.checked_add(count as u64).is_none_or(|end| end > self.rows) {
            return Err(DataError::Shape(format!(
                "rows {offset}..{offset}+{count}: only rows 0..{} are for training (the rest are held out)",
                self.rows
            )));
        }
        self.inner.rows(offset, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Numbered(u64);
    impl RowSource for Numbered {
        fn num_rows(&self) -> u64 {
            self.0
        }
        fn rows(&self, offset: u64, count: usize) -> Result<Vec<String>, DataError> {
            Ok((offset..offset + count as u64).map(|r| r.to_string()).collect())
        }
    }

    #[test]
    fn the_tail_is_held_out_and_the_train_view_stops_before_it() {
        assert_eq!(held_out(374), 355..374);
        assert_eq!(held_out(20), 19..20);
        assert_eq!(held_out(2), 1..2);
        assert_eq!(held_out(1), 1..1);
        assert_eq!(held_out(519_000_000), 518_990_000..519_000_000);
        let train = TrainRows::new(Numbered(374));
        assert_eq!(train.num_rows(), 355);
        assert_eq!(train.rows(353, 2).unwrap(), ["353", "354"]);
        assert!(train.rows(354, 2).is_err());
        assert!(train.rows(u64::MAX, 2).is_err());
    }
}
