//! Which dataset rows a miner has trained on: one bit per row in a
//! memory-mapped file (65 MB for fineweb's 519M rows), so the set survives
//! restarts and costs no load time.
//!
//! Each `Train` request takes the first run of `len` consecutive unused rows
//! at or after a random start (wrapping to the beginning once), marks it and
//! syncs the touched bytes to disk before the rows are reported, so a crash
//! can never hand the same rows out twice. The scan skips whole 64-row words
//! that are all used, so even a nearly full bitmap answers in milliseconds.

use super::{DataError, io_err};
use crate::rng::Rng;
use std::ops::Range;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DTRROWS1";
/// Magic, then the row count (u64 LE), then padding to 64 bytes.
const HEADER: usize = 64;

pub struct UsedRows {
    path: PathBuf,
    map: memmap2::MmapMut,
    rows: u64,
}

impl UsedRows {
    /// Opens the bitmap at `path`, creating an empty one for `rows` rows if
    /// there is none. An existing file must be for the same row count.
    pub fn open(path: &Path, rows: u64) -> Result<UsedRows, DataError> {
        let bad = |msg: String| DataError::Invalid { path: path.into(), msg };
        if rows == 0 || rows > 1 << 40 {
            return Err(bad(format!("row count {rows} out of range")));
        }
        let words = rows.div_ceil(64) as usize;
        let size = (HEADER + 8 * words) as u64;
        let existed = path.exists();
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if !existed || len == 0 {
            file.set_len(size).map_err(io_err(path))?;
        } else if len != size {
            return Err(bad(format!("{len} bytes, but a bitmap of {rows} rows has {size}: it belongs to another dataset")));
        }
        // SAFETY: the file is ours; nothing else maps it while we hold it.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(io_err(path))?;
        if !existed || len == 0 {
            map[..8].copy_from_slice(MAGIC);
            map[8..16].copy_from_slice(&rows.to_le_bytes());
            map.flush().map_err(io_err(path))?;
        } else if &map[..8] != MAGIC {
            return Err(bad("not a used-rows bitmap".into()));
        } else if map[8..16] != rows.to_le_bytes() {
            let theirs = u64::from_le_bytes(map[8..16].try_into().expect("8 bytes"));
            return Err(bad(format!("a bitmap of {theirs} rows, not {rows}: it belongs to another dataset")));
        }
        Ok(UsedRows { path: path.into(), map, rows })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn word(&self, i: usize) -> u64 {
        let b = HEADER + 8 * i;
        let w = u64::from_le_bytes(self.map[b..b + 8].try_into().expect("8 bytes"));
        // Rows past the end count as used, so no run reaches them.
        let last = (self.rows.div_ceil(64) - 1) as usize;
        let tail = self.rows % 64;
        if i == last && tail != 0 { w | (!0u64 << tail) } else { w }
    }

    fn set_word(&mut self, i: usize, w: u64) {
        let b = HEADER + 8 * i;
        self.map[b..b + 8].copy_from_slice(&w.to_le_bytes());
    }

    pub fn is_used(&self, row: u64) -> bool {
        row < self.rows && self.word((row / 64) as usize) >> (row % 64) & 1 == 1
    }

    /// Rows marked used so far.
    pub fn used(&self) -> u64 {
        let words = self.rows.div_ceil(64) as usize;
        let tail_pad = (words as u64 * 64) - self.rows;
        (0..words).map(|i| self.word(i).count_ones() as u64).sum::<u64>() - tail_pad
    }

    /// First run of `len` unused rows starting in `[from, to)`.
    fn find_run(&self, from: u64, to: u64, len: u64) -> Option<u64> {
        let (mut run_start, mut run) = (from, 0u64);
        let mut row = from;
        while row < to {
            let (wi, bit) = ((row / 64) as usize, row % 64);
            let w = self.word(wi) >> bit; // rows `row..` of this word in the low bits
            let avail = 64 - bit;
            if w == 0 {
                run += avail;
            } else if w == (!0u64 >> bit) {
                run = 0;
                run_start = row + avail;
            } else {
                for k in 0..avail {
                    if w >> k & 1 == 1 {
                        run = 0;
                        run_start = row + k + 1;
                    } else {
                        run += 1;
                        if run >= len {
                            return Some(run_start);
                        }
                    }
                }
            }
            if run >= len {
                return Some(run_start);
            }
            row += avail;
        }
        None
    }

    /// Takes the first run of `len` unused rows at or after a random start,
    /// wrapping around once, marks it used and syncs it to disk.
    pub fn take_run(&mut self, rng: &mut Rng, len: u64) -> Result<Range<u64>, DataError> {
        if len == 0 || len > self.rows {
            return Err(DataError::Invalid { path: self.path.clone(), msg: format!("cannot take a run of {len} of {} rows", self.rows) });
        }
        let start = rng.below(self.rows);
        let first = self.find_run(start, self.rows, len).or_else(|| self.find_run(0, self.rows, len)).ok_or_else(|| DataError::Invalid {
            path: self.path.clone(),
            msg: format!("no {len} consecutive unused rows are left ({} of {} rows used): the dataset is exhausted", self.used(), self.rows),
        })?;
        let run = first..first + len;
        self.mark(run.clone())?;
        Ok(run)
    }

    /// Marks `rows` used and syncs the touched bytes.
    pub fn mark(&mut self, rows: Range<u64>) -> Result<(), DataError> {
        if rows.end > self.rows {
            return Err(DataError::Invalid { path: self.path.clone(), msg: format!("rows {rows:?} beyond {}", self.rows) });
        }
        let mut row = rows.start;
        while row < rows.end {
            let (wi, bit) = ((row / 64) as usize, row % 64);
            let n = (64 - bit).min(rows.end - row);
            let bits = if n == 64 { !0 } else { ((1u64 << n) - 1) << bit };
            let w = self.word(wi) | bits;
            self.set_word(wi, w);
            row += n;
        }
        if rows.is_empty() {
            return Ok(());
        }
        let (a, b) = (HEADER + 8 * (rows.start / 64) as usize, HEADER + 8 * ((rows.end - 1) / 64) as usize + 8);
        self.map.flush_range(a, b - a).map_err(io_err(&self.path))
    }
}
