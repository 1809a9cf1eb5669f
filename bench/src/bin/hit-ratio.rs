//! Trace-driven hit-ratio harness: replays real cache traces through tiered's
//! L1 and, in the same run, through moka (sync and future), quick_cache and
//! mini-moka, and prints one table per trace next to the published reference
//! rows from `shared/traces/README.md`.
//!
//! ```text
//! cargo run --release -p tiered-bench --bin hit-ratio                    # every shipped trace
//! cargo run --release -p tiered-bench --bin hit-ratio -- --only gli,loop # some of them
//! cargo run --release -p tiered-bench --bin hit-ratio -- \
//!     --trace FILE --format arc|lirs|cache2k|u64be --sizes 1000,5000     # any trace: CACHE SIZE HIT%
//! ```
//!
//! Every cache is sized in entries (each entry weighs 1) and sees the same keys
//! in the same order; a miss inserts the key. Replays run on two threads (one
//! cache instance per thread at a time): the figures are hit ratios, not speed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use tiered_bench::chart::{self, Panel, Series};
use tiered_bench::trace::{self, Format, KNOWN};

/// The caches compared, in table order.
const CACHES: &[&str] = &[
    "tiered",
    "moka-sync",
    "moka-future",
    "quick_cache",
    "mini-moka",
];

/// Replays `keys` through a fresh cache of `size` entries; returns the hit ratio in %.
fn replay(cache: &str, keys: &[u64], size: usize) -> f64 {
    let mut hits = 0u64;
    match cache {
        "tiered" => {
            let c = tiered::l1::L1Cache::<()>::with_expected_entries(size as u64, size as u64);
            let mut buf = String::new();
            for &k in keys {
                buf.clear();
                let _ = write!(buf, "{k}");
                if c.get(&buf).is_some() {
                    hits += 1;
                } else {
                    c.insert(&buf, (), 1);
                }
            }
        }
        "moka-sync" => {
            let c = moka::sync::Cache::<u64, ()>::new(size as u64);
            for &k in keys {
                if c.get(&k).is_some() {
                    hits += 1;
                } else {
                    c.insert(k, ());
                }
            }
        }
        "moka-future" => {
            let c = moka::future::Cache::<u64, ()>::new(size as u64);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            hits = runtime.block_on(async {
                let mut hits = 0;
                for &k in keys {
                    if c.get(&k).await.is_some() {
                        hits += 1;
                    } else {
                        c.insert(k, ()).await;
                    }
                }
                hits
            });
        }
        "quick_cache" => {
            let c = quick_cache::sync::Cache::<u64, ()>::new(size);
            for &k in keys {
                if c.get(&k).is_some() {
                    hits += 1;
                } else {
                    c.insert(k, ());
                }
            }
        }
        "mini-moka" => {
            let c = mini_moka::sync::Cache::<u64, ()>::new(size as u64);
            for &k in keys {
                if c.get(&k).is_some() {
                    hits += 1;
                } else {
                    c.insert(k, ());
                }
            }
        }
        other => unreachable!("unknown cache {other}"),
    }
    if keys.is_empty() {
        0.0
    } else {
        100.0 * hits as f64 / keys.len() as f64
    }
}

/// Runs every (cache, size) pair on two threads; returns cache → size → hit %.
fn run_all(
    caches: &[&'static str],
    keys: &[u64],
    sizes: &[usize],
) -> BTreeMap<&'static str, BTreeMap<usize, f64>> {
    let jobs: Mutex<Vec<(&'static str, usize)>> = Mutex::new(
        caches
            .iter()
            .flat_map(|&c| sizes.iter().map(move |&s| (c, s)))
            .rev()
            .collect(),
    );
    let results = Mutex::new(BTreeMap::<&'static str, BTreeMap<usize, f64>>::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let Some((cache, size)) = jobs.lock().expect("jobs").pop() else {
                    break;
                };
                let ratio = replay(cache, keys, size);
                results
                    .lock()
                    .expect("results")
                    .entry(cache)
                    .or_default()
                    .insert(size, ratio);
            });
        }
    });
    results.into_inner().expect("results")
}

struct Args {
    only: Option<Vec<String>>,
    chart: Option<PathBuf>,
    caches: Vec<&'static str>,
    trace: Option<(PathBuf, Format, Vec<usize>)>,
}

fn parse_args() -> Result<Args, String> {
    let mut only = None;
    let mut chart = Some(PathBuf::from("target/hit-ratio.png"));
    let mut caches: Vec<&'static str> = CACHES.to_vec();
    let (mut file, mut format, mut sizes) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--only" => only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--chart" => chart = Some(PathBuf::from(value()?)),
            "--no-chart" => chart = None,
            "--caches" => {
                let wanted = value()?;
                caches = Vec::new();
                for name in wanted.split(',') {
                    match CACHES.iter().find(|c| **c == name) {
                        Some(c) => caches.push(c),
                        None => return Err(format!("unknown cache {name:?} (one of {CACHES:?})")),
                    }
                }
            }
            "--trace" => file = Some(PathBuf::from(value()?)),
            "--format" => format = Some(value()?.parse::<Format>()?),
            "--sizes" => {
                sizes = Some(
                    value()?
                        .split(',')
                        .map(|s| s.parse::<usize>().map_err(|e| format!("--sizes {s}: {e}")))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            "-h" | "--help" => {
                return Err(
                    "usage: hit-ratio [--only TRACES] [--caches CACHES] [--chart PNG | --no-chart] [--trace FILE --format arc|lirs|cache2k|u64be --sizes N,N]".into(),
                )
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let trace = match (file, format, sizes) {
        (Some(f), Some(fmt), Some(s)) if !s.is_empty() && !s.contains(&0) => Some((f, fmt, s)),
        (None, None, None) => None,
        _ => return Err("--trace needs --format and non-zero --sizes".into()),
    };
    Ok(Args {
        only,
        chart,
        caches,
        trace,
    })
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("hit-ratio: {e}");
        std::process::exit(2);
    });

    // Any trace by path: one line per cache and size.
    if let Some((path, format, sizes)) = args.trace {
        let keys = trace::read(&path, format).unwrap_or_else(|e| {
            eprintln!("hit-ratio: {}: {e}", path.display());
            std::process::exit(1);
        });
        let results = run_all(&args.caches, &keys, &sizes);
        for cache in &args.caches {
            for size in &sizes {
                println!("{cache} {size} {:.2}", results[cache][size]);
            }
        }
        return;
    }

    let dir = trace::traces_dir();
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap_or_default();
    let references = trace::reference_tables(&readme);
    let (mut met, mut total) = (0, 0);
    let mut panels = Vec::new();
    for known in KNOWN {
        if let Some(only) = &args.only {
            if !only.iter().any(|o| o.eq_ignore_ascii_case(known.name)) {
                continue;
            }
        }
        let path = dir.join(known.file);
        let keys = trace::read(&path, known.format).unwrap_or_else(|e| {
            eprintln!(
                "hit-ratio: {}: {e} (set TRACES_DIR to the traces folder)",
                path.display()
            );
            std::process::exit(1);
        });
        let results = run_all(&args.caches, &keys, known.sizes);
        let refs = references.get(known.name).cloned().unwrap_or_default();

        println!("\n## {} ({} requests)\n", known.name, keys.len());
        let mut header = format!("{:<48}", "cache");
        for s in known.sizes {
            let _ = write!(header, " | {s:>7}");
        }
        println!("{header}");
        let row = |name: &str, value: &dyn Fn(usize) -> Option<f64>| {
            let mut line = format!("{name:<48}");
            for &s in known.sizes {
                match value(s) {
                    Some(v) => {
                        let _ = write!(line, " | {v:>7.2}");
                    }
                    None => {
                        let _ = write!(line, " | {:>7}", "-");
                    }
                }
            }
            println!("{line}");
        };
        for cache in &args.caches {
            row(cache, &|s| results[cache].get(&s).copied());
        }
        for (policy, values) in &refs {
            row(&format!("ref: {policy}"), &|s| {
                values.iter().find(|(size, _)| *size == s).map(|v| v.1)
            });
        }
        // The L1 issue's targets: within 1.0 point of the best of the LRU,
        // S3-FIFO and W-TinyLFU (1%) rows, and at least moka.
        let mut verdicts = Vec::new();
        for &s in known.sizes {
            let best = refs
                .iter()
                .filter(|(p, _)| p == "LRU" || p == "S3-FIFO" || p == "W-TinyLFU (1%)")
                .filter_map(|(_, v)| v.iter().find(|(size, _)| *size == s).map(|v| v.1))
                .fold(f64::NAN, f64::max);
            let Some(&ours) = results.get("tiered").and_then(|r| r.get(&s)) else {
                continue;
            };
            let moka = ["moka-sync", "moka-future"]
                .iter()
                .filter_map(|c| results.get(c).and_then(|r| r.get(&s)).copied())
                .fold(f64::NAN, f64::max);
            let ok = (best.is_nan() || ours >= best - 1.0) && (moka.is_nan() || ours >= moka);
            total += 1;
            met += usize::from(ok);
            verdicts.push(format!("{s}: {}", if ok { "met" } else { "MISSED" }));
        }
        println!(
            "\ntarget (>= best of LRU/S3-FIFO/W-TinyLFU(1%) - 1.0, and >= moka): {}",
            verdicts.join(", ")
        );
        let mut series: Vec<Series> = args
            .caches
            .iter()
            .map(|c| Series {
                label: (*c).to_string(),
                points: results[c].iter().map(|(&s, &v)| (s, v)).collect(),
                reference: false,
            })
            .collect();
        series.extend(refs.iter().map(|(policy, values)| Series {
            label: format!("ref: {policy}"),
            points: values.clone(),
            reference: true,
        }));
        panels.push(Panel {
            title: format!("{} ({} requests)", known.name, keys.len()),
            sizes: known.sizes.to_vec(),
            series,
        });
    }
    println!("\ntargets met: {met}/{total}");
    if let Some(path) = args.chart {
        match chart::draw(&path, &panels) {
            Ok(()) => println!("chart: {}", path.display()),
            Err(e) => eprintln!("hit-ratio: no chart: {e}"),
        }
    }
}
