//! Sources of dataset rows, behind one trait: `rows(offset, count)` gives
//! the texts of rows `offset..offset + count` of the whole dataset.
//!
//! [`ParquetRows`] reads fineweb-shaped parquet files, local or over HTTP
//! with range requests (the bundled sample, or the dataset's own files on
//! the hub): it maps a global row index to (file, row group, row) from the
//! files' footers and reads only the `text` column of only the row groups it
//! needs (over HTTP: one range request per column chunk).

use super::http::RetryPolicy;
use super::http_file::{HttpFile, SharedHttpFile};
use super::{DataError, io_err};
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub trait RowSource: Send + Sync {
    /// Rows in the dataset.
    fn num_rows(&self) -> u64;
    /// Texts of rows `offset..offset + count`, in order.
    fn rows(&self, offset: u64, count: usize) -> Result<Vec<String>, DataError>;
}

/// Texts of rows `rows` (any order, checked against the source's size),
/// one request per contiguous run.
pub fn fetch_rows(src: &dyn RowSource, rows: &[u64]) -> Result<Vec<String>, DataError> {
    let n = src.num_rows();
    if let Some(bad) = rows.iter().find(|&&r| r >= n) {
        return Err(DataError::Shape(format!("row {bad} beyond the dataset's {n} rows")));
    }
    let mut texts = Vec::with_capacity(rows.len());
    let mut i = 0;
    while i < rows.len() {
        let mut j = i + 1;
        while j < rows.len() && rows[j] == rows[j - 1] + 1 {
            j += 1;
        }
        texts.extend(src.rows(rows[i], j - i)?);
        i = j;
    }
    Ok(texts)
}

struct ParquetFile {
    /// The file's path, or its URL.
    path: PathBuf,
    reader: Box<dyn FileReader>,
    /// Set for remote files: column chunks are fetched whole before reading.
    remote: Option<Arc<HttpFile>>,
    /// Global index of the file's first row.
    first: u64,
    /// Rows in each row group.
    groups: Vec<u64>,
    text_column: usize,
}

/// A file's name, its reader, and (for remote files) the HTTP file under it.
type Opened = (PathBuf, Box<dyn FileReader>, Option<Arc<HttpFile>>);

/// Parquet files read as one dataset, in the order given.
pub struct ParquetRows {
    files: Vec<ParquetFile>,
    total: u64,
}

fn parquet_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> DataError + '_ {
    move |e| DataError::Invalid { path: path.into(), msg: format!("parquet: {e}") }
}

impl ParquetRows {
    /// Opens local files (reading their footers).
    pub fn open(paths: &[PathBuf]) -> Result<ParquetRows, DataError> {
        let mut readers: Vec<Opened> = Vec::new();
        for path in paths {
            let f = std::fs::File::open(path).map_err(io_err(path))?;
            readers.push((path.clone(), Box::new(SerializedFileReader::new(f).map_err(parquet_err(path))?), None));
        }
        ParquetRows::from_readers(readers)
    }

    /// Opens remote files by URL, with range requests.
    pub fn open_urls(urls: &[String], policy: &RetryPolicy) -> Result<ParquetRows, DataError> {
        let mut readers: Vec<Opened> = Vec::new();
        for url in urls {
            let file = Arc::new(HttpFile::open(url, policy.clone())?);
            let path = PathBuf::from(url);
            let reader = SerializedFileReader::new(SharedHttpFile(file.clone())).map_err(parquet_err(&path))?;
            readers.push((path, Box::new(reader), Some(file)));
        }
        ParquetRows::from_readers(readers)
    }

    /// Checks each file has a `text` column of strings and indexes its row groups.
    fn from_readers(readers: Vec<Opened>) -> Result<ParquetRows, DataError> {
        let mut files = Vec::new();
        let mut total = 0u64;
        for (path, reader, remote) in readers {
            let path = &path;
            let meta = reader.metadata();
            let schema = meta.file_metadata().schema_descr();
            let text_column = (0..schema.num_columns())
                .find(|&i| schema.column(i).path().string() == "text")
                .ok_or_else(|| DataError::Invalid { path: path.clone(), msg: "no `text` column".into() })?;
            if schema.column(text_column).physical_type() != parquet::basic::Type::BYTE_ARRAY {
                return Err(DataError::Invalid { path: path.clone(), msg: "the `text` column does not hold strings".into() });
            }
            let groups: Vec<u64> = meta.row_groups().iter().map(|g| g.num_rows().max(0) as u64).collect();
            let rows: u64 = groups.iter().sum();
            files.push(ParquetFile { path: path.clone(), reader, remote, first: total, groups, text_column });
            total += rows;
        }
        Ok(ParquetRows { files, total })
    }

    /// All `.parquet` files of a directory, in name order.
    pub fn open_dir(dir: &Path) -> Result<ParquetRows, DataError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        if paths.is_empty() {
            return Err(DataError::Invalid { path: dir.into(), msg: "no .parquet files".into() });
        }
        paths.sort();
        ParquetRows::open(&paths)
    }
}

impl ParquetFile {
    /// Texts of rows `skip..skip + take` of row group `g`.
    fn read_group(&self, g: usize, skip: usize, take: usize, out: &mut Vec<String>) -> Result<(), DataError> {
        let path = &self.path;
        if let Some(remote) = &self.remote {
            let (start, len) = self.text_chunk(g);
            if !remote.covers(start, len) {
                remote.prefetch(start, len)?;
            }
        }
        let group = self.reader.get_row_group(g).map_err(parquet_err(path))?;
        let max_def = group.metadata().column(self.text_column).column_descr().max_def_level();
        let ColumnReader::ByteArrayColumnReader(mut col) = group.get_column_reader(self.text_column).map_err(parquet_err(path))? else {
            return Err(DataError::Invalid { path: path.clone(), msg: "the `text` column does not hold strings".into() });
        };
        if col.skip_records(skip).map_err(parquet_err(path))? != skip {
            return Err(DataError::Invalid { path: path.clone(), msg: format!("row group {g} is shorter than its footer says") });
        }
        let (mut values, mut defs) = (Vec::new(), Vec::new());
        let mut got = 0;
        while got < take {
            let (records, _, _) = col.read_records(take - got, Some(&mut defs), None, &mut values).map_err(parquet_err(path))?;
            if records == 0 {
                return Err(DataError::Invalid { path: path.clone(), msg: format!("row group {g} is shorter than its footer says") });
            }
            got += records;
        }
        if max_def > 0 && defs.iter().any(|&d| d < max_def) {
            return Err(DataError::Invalid { path: path.clone(), msg: format!("a row of row group {g} has no text") });
        }
        for v in values {
            let text = String::from_utf8(v.data().to_vec())
                .map_err(|_| DataError::Invalid { path: path.clone(), msg: format!("a row of row group {g} is not UTF-8") })?;
            out.push(text);
        }
        Ok(())
    }
}

impl ParquetFile {
    /// Byte range `(start, len)` of row group `g`'s `text` column chunk.
    fn text_chunk(&self, g: usize) -> (u64, u64) {
        self.reader.metadata().row_group(g).column(self.text_column).byte_range()
    }

    /// For a remote file, fetches the `text` chunks of row groups `groups`
    /// in one request when they lie close together (the other columns between
    /// them are small next to the text), instead of one request per group.
    fn prefetch_groups(&self, groups: std::ops::Range<usize>) -> Result<(), DataError> {
        const MAX_SPAN: u64 = 256 << 20;
        let Some(remote) = &self.remote else { return Ok(()) };
        if groups.len() < 2 {
            return Ok(());
        }
        let (first, _) = self.text_chunk(groups.start);
        let (last, last_len) = self.text_chunk(groups.end - 1);
        let text: u64 = groups.clone().map(|g| self.text_chunk(g).1).sum();
        let span = (last + last_len).saturating_sub(first);
        if last >= first && span <= MAX_SPAN && span <= 2 * text {
            remote.prefetch(first, span)?;
        }
        Ok(())
    }
}

impl RowSource for ParquetRows {
    fn num_rows(&self) -> u64 {
        self.total
    }

    fn rows(&self, offset: u64, count: usize) -> Result<Vec<String>, DataError> {
        let end = offset.checked_add(count as u64).filter(|&e| e <= self.total).ok_or_else(|| DataError::Invalid {
            path: self.files.first().map_or_else(PathBuf::new, |f| f.path.clone()),
            msg: format!("rows {offset}..{offset}+{count} are outside the dataset's {} rows", self.total),
        })?;
        let mut out = Vec::with_capacity(count.min(1 << 16));
        for file in &self.files {
            // Row groups of this file that hold wanted rows, fetched together.
            let mut start = file.first;
            let (mut lo_g, mut hi_g) = (usize::MAX, 0);
            for (g, &n) in file.groups.iter().enumerate() {
                if offset.max(start) < end.min(start + n) {
                    (lo_g, hi_g) = (lo_g.min(g), g + 1);
                }
                start += n;
            }
            if lo_g < hi_g {
                file.prefetch_groups(lo_g..hi_g)?;
            }
            let mut start = file.first;
            for (g, &n) in file.groups.iter().enumerate() {
                let (lo, hi) = (offset.max(start), end.min(start + n));
                if lo < hi {
                    file.read_group(g, (lo - start) as usize, (hi - lo) as usize, &mut out)?;
                }
                start += n;
            }
        }
        Ok(out)
    }
}

/// Local text files as rows: row `i` is the whole text of file `i`.
pub struct TextFiles {
    paths: Vec<PathBuf>,
}

impl TextFiles {
    /// Checks the files exist; they are read when their rows are asked for.
    pub fn open(paths: &[PathBuf]) -> Result<TextFiles, DataError> {
        for p in paths {
            if !std::fs::metadata(p).map_err(io_err(p))?.is_file() {
                return Err(DataError::Invalid { path: p.clone(), msg: "not a file".into() });
            }
        }
        Ok(TextFiles { paths: paths.to_vec() })
    }
}

impl RowSource for TextFiles {
    fn num_rows(&self) -> u64 {
        self.paths.len() as u64
    }

    fn rows(&self, offset: u64, count: usize) -> Result<Vec<String>, DataError> {
        let end = offset.checked_add(count as u64).filter(|&e| e <= self.num_rows()).ok_or_else(|| DataError::Invalid {
            path: self.paths.first().cloned().unwrap_or_default(),
            msg: format!("rows {offset}..{offset}+{count} are outside the {} files", self.paths.len()),
        })?;
        self.paths[offset as usize..end as usize].iter().map(|p| super::read_text(p)).collect()
    }
}
