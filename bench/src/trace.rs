//! Cache traces: decompression on the fly, the four key formats, and the
//! reference hit-ratio tables shipped beside them.
//!
//! Formats (see `shared/traces/README.md`):
//! * `arc`: text lines `start count x y`, expanding to keys `start..start+count`;
//! * `lirs`: text, one integer key per line; a `*` line is a no-op;
//! * `cache2k`: binary, 4-byte big-endian keys;
//! * `u64be`: binary, 8-byte big-endian keys.
//!
//! Compression is chosen by file extension: `.zst`, `.gz`, `.xz`, or none.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How a trace file encodes its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `start count x y` lines.
    Arc,
    /// One integer per line, `*` ignored.
    Lirs,
    /// 4-byte big-endian integers.
    Cache2k,
    /// 8-byte big-endian integers.
    U64Be,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "arc" => Ok(Format::Arc),
            "lirs" => Ok(Format::Lirs),
            "cache2k" => Ok(Format::Cache2k),
            "u64be" => Ok(Format::U64Be),
            other => Err(format!(
                "unknown format {other:?} (arc, lirs, cache2k, u64be)"
            )),
        }
    }
}

/// A trace shipped in `shared/traces`, with the sizes its README lists.
pub struct Known {
    /// The name used on the command line and in the README's tables.
    pub name: &'static str,
    /// The file name.
    pub file: &'static str,
    /// Its format.
    pub format: Format,
    /// The cache sizes to test.
    pub sizes: &'static [usize],
}

/// The shipped traces, in the README's order.
pub const KNOWN: &[Known] = &[
    Known {
        name: "OLTP",
        file: "OLTP.lis.zst",
        format: Format::Arc,
        sizes: &[250, 500, 1000, 2000],
    },
    Known {
        name: "P3",
        file: "P3.lis.zst",
        format: Format::Arc,
        sizes: &[25_000, 50_000, 100_000, 200_000],
    },
    Known {
        name: "gli",
        file: "lirs_gli.trace.gz",
        format: Format::Lirs,
        sizes: &[250, 500, 1000, 1500, 2000],
    },
    Known {
        name: "loop",
        file: "lirs_loop.trace.gz",
        format: Format::Lirs,
        sizes: &[250, 500, 750, 1000],
    },
    Known {
        name: "orm-busy",
        file: "cache2k_orm-busy.trace.xz",
        format: Format::Cache2k,
        sizes: &[1000, 5000, 10_000, 20_000],
    },
];

/// Where the shared traces are: `$TRACES_DIR`, else `shared/traces` beside the
/// workspace (as on the development machines and in CI).
pub fn traces_dir() -> PathBuf {
    match std::env::var_os("TRACES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"),
    }
}

fn open(path: &Path) -> io::Result<Box<dyn Read>> {
    let file = BufReader::new(File::open(path)?);
    let name = path.to_string_lossy();
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    Ok(if name.ends_with(".zst") {
        Box::new(ruzstd::decoding::StreamingDecoder::new(file).map_err(|e| invalid(e.to_string()))?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if name.ends_with(".xz") {
        // lzma-rs has no streaming reader; a trace decompresses to tens of MB.
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut { file }, &mut out).map_err(|e| invalid(e.to_string()))?;
        Box::new(io::Cursor::new(out))
    } else {
        Box::new(file)
    })
}

/// Reads every key of a trace into memory (the largest shipped trace is ~5M keys).
///
/// # Errors
///
/// I/O errors, and malformed lines (with their line number).
pub fn read(path: &Path, format: Format) -> io::Result<Vec<u64>> {
    let mut input = open(path)?;
    let bad = |line: usize, text: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}:{line}: cannot parse {text:?}", path.display()),
        )
    };
    let mut keys = Vec::new();
    match format {
        Format::Arc | Format::Lirs => {
            for (n, line) in BufReader::new(input).lines().enumerate() {
                let line = line?;
                let line = line.trim();
                if line.is_empty() || line == "*" {
                    continue;
                }
                let mut fields = line.split_whitespace();
                let start: u64 = fields
                    .next()
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| bad(n + 1, line))?;
                if format == Format::Lirs {
                    keys.push(start);
                    continue;
                }
                let count: u64 = fields
                    .next()
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| bad(n + 1, line))?;
                keys.extend(start..start.saturating_add(count));
            }
        }
        Format::Cache2k | Format::U64Be => {
            let width = if format == Format::Cache2k { 4 } else { 8 };
            let mut bytes = Vec::new();
            input.read_to_end(&mut bytes)?;
            if bytes.len() % width != 0 {
                return Err(bad(
                    0,
                    &format!("{} bytes is not a multiple of {width}", bytes.len()),
                ));
            }
            for chunk in bytes.chunks_exact(width) {
                let mut b = [0u8; 8];
                b[8 - width..].copy_from_slice(chunk);
                keys.push(u64::from_be_bytes(b));
            }
        }
    }
    Ok(keys)
}

/// One reference row: a policy and its hit ratio (%) per listed size.
pub type ReferenceRow = (String, Vec<(usize, f64)>);

/// The reference rows for each trace, parsed from the README's tables, by trace name.
pub fn reference_tables(readme: &str) -> BTreeMap<String, Vec<ReferenceRow>> {
    let mut tables = BTreeMap::new();
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let is_header = cells.len() > 2
            && cells[1..].iter().all(|c| c.parse::<usize>().is_ok())
            && lines.peek().is_some_and(|l| l.starts_with("---"));
        if !is_header {
            continue;
        }
        let sizes: Vec<usize> = cells[1..].iter().filter_map(|c| c.parse().ok()).collect();
        lines.next(); // the --- line
        let mut rows = Vec::new();
        while let Some(row) = lines.peek() {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            if cells.len() != sizes.len() + 1 {
                break;
            }
            let values: Vec<(usize, f64)> = sizes
                .iter()
                .zip(&cells[1..])
                .filter_map(|(&size, v)| v.parse().ok().map(|v| (size, v)))
                .collect();
            rows.push((cells[0].to_string(), values));
            lines.next();
        }
        tables.insert(cells[0].to_string(), rows);
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_tables() {
        let md = "intro\n\nloop | 250 | 500\n---|---|---\nLRU | 0.00 | 1.50\nS3-FIFO | 22.21 | 44.42\n\nafter\n";
        let t = reference_tables(md);
        let rows = &t["loop"];
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].0, "S3-FIFO");
        assert_eq!(rows[1].1, vec![(250, 22.21), (500, 44.42)]);
    }

    #[test]
    fn reads_every_format() {
        let dir = std::env::temp_dir().join(format!("tiered-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let arc = dir.join("t.lis");
        std::fs::write(&arc, "10 3 0 0\n7 1 0 0\n").unwrap();
        assert_eq!(read(&arc, Format::Arc).unwrap(), vec![10, 11, 12, 7]);
        let lirs = dir.join("t.lirs");
        std::fs::write(&lirs, "5\n*\n6\n").unwrap();
        assert_eq!(read(&lirs, Format::Lirs).unwrap(), vec![5, 6]);
        let c2k = dir.join("t.c2k");
        std::fs::write(&c2k, [0, 0, 1, 0, 0, 0, 0, 2]).unwrap();
        assert_eq!(read(&c2k, Format::Cache2k).unwrap(), vec![256, 2]);
        let u = dir.join("t.u64");
        std::fs::write(&u, 9u64.to_be_bytes()).unwrap();
        assert_eq!(read(&u, Format::U64Be).unwrap(), vec![9]);
        std::fs::write(&lirs, "5\nnot-a-number\n").unwrap();
        assert!(read(&lirs, Format::Lirs).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
