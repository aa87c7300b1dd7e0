//! `perf-report`: renders one results file of `perf/compare/run.sh` as PNG
//! plots and a markdown table. No network, no system fonts.
//!
//! ```text
//! perf-report RESULTS.json [--readme-section FILE] [--link-prefix PREFIX]
//! ```
//!
//! For `DIR/<stem>.json` it writes `DIR/<stem>/throughput.png` (gets/s of
//! the flash-resident read run, second by second, with fio's IOPS on the
//! same file), `latency.png` (the run's get latency percentiles next to
//! fio's completion latency percentiles, log scale), `restart.png` (warm
//! and cold time to ready by record count, log scale), `redis-latency.png`
//! (p50/p99 of GET and SET, ospreyd next to redis-server, log scale) and
//! `ratios.png` (every ratio of the run, with 1.0 marked; the SPDK
//! comparison's figures are rows of it and of the table), and
//! `DIR/<stem>.md`: the machine, commit, load and a table of every figure
//! with its baseline and ratio, then the plots (linked relative to `DIR`). A plot whose
//! comparison did not run is left out and the table says why.
//! `--readme-section FILE` writes the same markdown with links prefixed by
//! `--link-prefix` (run.sh puts it into README.md between its markers).
//!
//! Text in the plots is drawn with a small built-in 3x5 pixel font
//! (upper case, digits, a little punctuation): plotters' own text needs
//! its `ttf` feature, which needs fontconfig and installed fonts, and
//! without it plotters panics on any text. So charts are built with no
//! caption, mesh labels or legend from plotters; [`PixelFont`] draws them.
//!
//! Exit codes: 0 written, 1 unreadable or malformed results, 2 bad flags.
#![deny(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

const USAGE: &str =
    "usage: perf-report RESULTS.json [--readme-section FILE] [--link-prefix PREFIX]";
const WIDTH_PX: u32 = 960;
const HEIGHT_PX: u32 = 480;
const OSPREY_COLOR: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const BASELINE_COLOR: RGBColor = RGBColor(0xe0, 0x7b, 0x10);
const GRID_COLOR: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const TEXT_COLOR: RGBColor = RGBColor(0x20, 0x20, 0x20);
/// Order of the comparisons in the table and the ratio plot.
const COMPARISONS: [(&str, &str); 5] = [
    ("device_limit", "device limit (storage-bench vs fio)"),
    ("redis", "server efficiency (ospreyd vs redis)"),
    ("flash_reads", "flash-resident reads (ospreyd vs fio)"),
    ("restart", "restart: warm vs cold, cold scan vs fio"),
    (
        "spdk",
        "SPDK backend (spdk-bench vs spdk_nvme_perf, and vs uring)",
    ),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

// ---- options ----------------------------------------------------------------

struct Options {
    results: PathBuf,
    readme_section: Option<PathBuf>,
    link_prefix: String,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut results = None;
    let mut readme_section = None;
    let mut link_prefix = String::new();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--readme-section" | "--link-prefix" => {
                let value = args
                    .get(i + 1)
                    .ok_or_else(|| format!("{flag} needs a value"))?;
                if flag == "--readme-section" {
                    readme_section = Some(PathBuf::from(value));
                } else {
                    link_prefix = value.clone();
                }
                i += 2;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            _ if results.is_none() => {
                results = Some(PathBuf::from(flag));
                i += 1;
            }
            _ => return Err(format!("one results file only, got another: {flag}")),
        }
    }
    let results = results.ok_or("a results file is required")?;
    if results.extension().and_then(|e| e.to_str()) != Some("json") {
        return Err(format!("{}: expected a .json file", results.display()));
    }
    Ok(Options {
        results,
        readme_section,
        link_prefix,
    })
}

// ---- a 3x5 pixel font -------------------------------------------------------

/// Glyphs of 3 columns x 5 rows, row by row, `#` = ink.
const GLYPHS: &[(char, &str)] = &[
    ('0', "#### ## ## ####"),
    ('1', " # ##  #  # ###"),
    ('2', "###  #####  ###"),
    ('3', "###  ####  ####"),
    ('4', "# ## ####  #  #"),
    ('5', "####  ###  ####"),
    ('6', "####  #### ####"),
    ('7', "###  #  # #  # "),
    ('8', "#### ##### ####"),
    ('9', "#### ####  ####"),
    ('A', " # # ##### ## #"),
    ('B', "## # ### # ### "),
    ('C', " ###  #  #   ##"),
    ('D', "## # ## ## ### "),
    ('E', "####  ## #  ###"),
    ('F', "####  ## #  #  "),
    ('G', " ###  # ## # ##"),
    ('H', "# ## ##### ## #"),
    ('I', "### #  #  # ###"),
    ('J', "  #  #  ## # # "),
    ('K', "# ## ### # ## #"),
    ('L', "#  #  #  #  ###"),
    ('M', "# ####### ## ##"),
    ('N', "## # ## ## ## #"),
    ('O', " # # ## ## # # "),
    ('P', "## # ### #  #  "),
    ('Q', " # # ## ###   #"),
    ('R', "## # ### # ## #"),
    ('S', " ###   #   ### "),
    ('T', "### #  #  #  # "),
    ('U', "# ## ## ## ####"),
    ('V', "# ## ## ## # # "),
    ('W', "# ## ######## #"),
    ('X', "# ## # # # ## #"),
    ('Y', "# ## # #  #  # "),
    ('Z', "###  # # #  ###"),
    (' ', "               "),
    ('.', "             # "),
    (',', "          #  # "),
    ('/', "  #  # # #  #  "),
    ('%', "# #  # # #  # #"),
    ('-', "      ###      "),
    (':', "    #     #    "),
    ('(', "  # #  #  #   #"),
    (')', "#   #  #  # #  "),
    ('=', "   ###   ###   "),
    ('<', "  # # #   #   #"),
    ('>', "#   #   # # #  "),
    ('_', "            ###"),
    ('+', "    # ### #    "),
    ('?', "###  # #     # "),
];

/// Draws text with [`GLYPHS`], each pixel a `scale` x `scale` square.
struct PixelFont {
    scale: i32,
}

impl PixelFont {
    const GLYPH_W: i32 = 3;
    const GLYPH_H: i32 = 5;

    fn glyph(c: char) -> &'static str {
        let c = c.to_ascii_uppercase();
        GLYPHS
            .iter()
            .find(|(g, _)| *g == c)
            .or_else(|| GLYPHS.iter().find(|(g, _)| *g == '?'))
            .map(|(_, rows)| *rows)
            .unwrap_or("")
    }

    /// Pixels of `text` across (a glyph plus one column of space each).
    fn width(&self, text: &str) -> i32 {
        text.chars().count() as i32 * (Self::GLYPH_W + 1) * self.scale
    }

    fn height(&self) -> i32 {
        Self::GLYPH_H * self.scale
    }

    /// Draws `text` with its top-left corner at `(x, y)`.
    fn draw(&self, area: &Area, (x, y): (i32, i32), text: &str, color: RGBColor) {
        let s = self.scale;
        for (i, c) in text.chars().enumerate() {
            let left = x + i as i32 * (Self::GLYPH_W + 1) * s;
            for (p, ink) in Self::glyph(c).chars().enumerate() {
                if ink != '#' {
                    continue;
                }
                let (col, row) = (p as i32 % Self::GLYPH_W, p as i32 / Self::GLYPH_W);
                let (px, py) = (left + col * s, y + row * s);
                // A pixel outside the image is clipped, not an error worth stopping for.
                let _ = area.draw(&Rectangle::new(
                    [(px, py), (px + s - 1, py + s - 1)],
                    color.filled(),
                ));
            }
        }
    }

    /// Draws `text` centred on `x`, top at `y`.
    fn draw_centred(&self, area: &Area, (x, y): (i32, i32), text: &str, color: RGBColor) {
        self.draw(area, (x - self.width(text) / 2, y), text, color);
    }

    /// Draws `text` ending at `x`, vertically centred on `y`.
    fn draw_right(&self, area: &Area, (x, y): (i32, i32), text: &str, color: RGBColor) {
        self.draw(
            area,
            (x - self.width(text), y - self.height() / 2),
            text,
            color,
        );
    }
}

const TITLE: PixelFont = PixelFont { scale: 3 };
const LABEL: PixelFont = PixelFont { scale: 2 };

// ---- numbers ----------------------------------------------------------------

/// `v` with 3 significant digits and a k/M/G suffix.
fn si(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = match scaled.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 1.0 => 2,
        _ => 3,
    };
    format!("{scaled:.digits$}{suffix}")
}

/// A ratio with two decimals, or two significant digits below 0.1.
fn ratio_text(r: f64) -> String {
    if r.abs() < 0.095 && r != 0.0 {
        let decimals = (1 - r.abs().log10().floor() as i32).max(2) as usize;
        format!("{r:.decimals$}")
    } else {
        format!("{r:.2}")
    }
}

/// A figure's value in its unit, for the table.
fn with_unit(v: f64, unit: &str) -> String {
    match unit {
        "ops/s" => format!("{} /s", si(v)),
        "records/s" => format!("{} rec/s", si(v)),
        "bytes/s" => format!("{:.0} MB/s", v / 1e6),
        "us" => format!("{} µs", si(v)),
        "s" => format!("{v:.3} s"),
        _ => format!("{} {unit}", si(v)),
    }
}

/// About `count` round tick values covering `lo..hi`.
fn linear_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let mut ticks = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        ticks.push(t);
        t += step;
    }
    ticks
}

/// Powers of ten (and 2x, 5x when few decades) inside `lo..hi`.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let multiples: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    (a..=b)
        .flat_map(|e| multiples.iter().map(move |m| m * 10f64.powi(e)))
        .filter(|t| *t >= lo * 0.999 && *t <= hi * 1.001)
        .collect()
}

/// The log axis range around `values` (padded, positive).
fn log_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo <= hi).then(|| {
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
        (lo, hi)
    })
}

// ---- the results --------------------------------------------------------------

struct Figure {
    comparison: &'static str,
    name: String,
    unit: String,
    osprey: f64,
    baseline: f64,
    baseline_what: String,
    ratio: f64,
    better: String,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn figures(doc: &Value) -> Vec<Figure> {
    let mut out = Vec::new();
    for (key, _) in COMPARISONS {
        let Some(list) = doc["comparisons"][key]["figures"].as_array() else {
            continue;
        };
        for f in list {
            if let (Some(osprey), Some(baseline), Some(ratio)) =
                (num(&f["osprey"]), num(&f["baseline"]), num(&f["ratio"]))
            {
                out.push(Figure {
                    comparison: key,
                    name: text(&f["name"]),
                    unit: text(&f["unit"]),
                    osprey,
                    baseline,
                    baseline_what: text(&f["baseline_what"]),
                    ratio,
                    better: text(&f["better"]),
                });
            }
        }
    }
    out
}

// ---- plots --------------------------------------------------------------------

fn plot_err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Title on top, then `body`'s chart area below it.
fn frame<'a>(path: &'a Path, title: &str) -> Result<Area<'a>, String> {
    let root = BitMapBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    TITLE.draw_centred(&root, (WIDTH_PX as i32 / 2, 12), title, TEXT_COLOR);
    Ok(root)
}

/// Legend entries (colour, text) ending at `right_x`, from `top_y` down.
fn legend(area: &Area, right_x: i32, top_y: i32, entries: &[(RGBColor, &str)]) {
    let widest = entries
        .iter()
        .map(|(_, t)| LABEL.width(t))
        .max()
        .unwrap_or(0);
    legend_at(area, right_x - widest - 24, top_y, entries);
}

/// Legend entries (colour, text) starting at `left`, from `top_y` down.
fn legend_at(area: &Area, left: i32, top_y: i32, entries: &[(RGBColor, &str)]) {
    for (i, (color, label)) in entries.iter().enumerate() {
        let y = top_y + i as i32 * 16;
        let _ = area.draw(&Rectangle::new(
            [(left, y), (left + 12, y + 9)],
            color.filled(),
        ));
        LABEL.draw(area, (left + 18, y), label, TEXT_COLOR);
    }
}

fn throughput_plot(doc: &Value, path: &Path) -> Result<bool, String> {
    let detail = &doc["comparisons"]["flash_reads"]["detail"];
    let Some(intervals) = detail["intervals"].as_array() else {
        return Ok(false);
    };
    let points: Vec<(f64, f64)> = intervals
        .iter()
        .filter_map(|i| Some((num(&i["elapsed_s"])?, num(&i["ops_per_s"])?)))
        .collect();
    let fio = doc["comparisons"]["flash_reads"]["figures"][0]["baseline"].as_f64();
    if points.is_empty() {
        return Ok(false);
    }
    let root = frame(path, "FLASH-RESIDENT READS: GETS/S OVER TIME VS FIO 4K")?;
    let x_hi = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_hi = points.iter().map(|p| p.1).chain(fio).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .margin_top(40)
        .margin_left(90)
        .margin_right(30)
        .margin_bottom(50)
        .build_cartesian_2d(0f64..x_hi, 0f64..y_hi)
        .map_err(|e| plot_err(path, e))?;
    let y_ticks = linear_ticks(0.0, y_hi, 6);
    let x_ticks = linear_ticks(0.0, x_hi, 10);
    for &t in &y_ticks {
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, t), (x_hi, t)],
            GRID_COLOR,
        )));
        let (px, py) = chart.backend_coord(&(0.0, t));
        LABEL.draw_right(&root, (px - 6, py), &si(t), TEXT_COLOR);
    }
    for &t in &x_ticks {
        let (px, py) = chart.backend_coord(&(t, 0.0));
        let decimals = if x_hi < 10.0 { 1 } else { 0 };
        LABEL.draw_centred(&root, (px, py + 6), &format!("{t:.decimals$}"), TEXT_COLOR);
    }
    let (cx, cy) = chart.backend_coord(&(x_hi / 2.0, 0.0));
    LABEL.draw_centred(&root, (cx, cy + 24), "SECONDS", TEXT_COLOR);
    if let Some(fio) = fio {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, fio), (x_hi, fio)],
                BASELINE_COLOR.stroke_width(2),
            )))
            .map_err(|e| plot_err(path, e))?;
    }
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            OSPREY_COLOR.stroke_width(2),
        ))
        .map_err(|e| plot_err(path, e))?;
    let (rx, ty) = chart.backend_coord(&(x_hi, y_hi));
    legend(
        &root,
        rx - 8,
        ty + 8,
        &[
            (OSPREY_COLOR, "OSPREY GETS/S (OSPREY-BENCH RU,100)"),
            (BASELINE_COLOR, "FIO RANDREAD 4K IOPS (MEAN)"),
        ],
    );
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(true)
}

fn latency_plot(doc: &Value, path: &Path) -> Result<bool, String> {
    let lat = &doc["comparisons"]["flash_reads"]["detail"]["latency_us"];
    let names = ["p50", "p90", "p99", "p99.9", "p99.99"];
    let series = |who: &str| -> Vec<(f64, f64)> {
        names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((i as f64, num(&lat[who][*n])?)))
            .filter(|(_, v)| *v > 0.0)
            .collect()
    };
    let (osprey, fio) = (series("osprey"), series("fio"));
    let Some((lo, hi)) = log_range(osprey.iter().chain(&fio).map(|p| p.1)) else {
        return Ok(false);
    };
    let root = frame(path, "FLASH-RESIDENT READS: LATENCY PERCENTILES (US)")?;
    let mut chart = ChartBuilder::on(&root)
        .margin_top(40)
        .margin_left(90)
        .margin_right(40)
        .margin_bottom(50)
        .build_cartesian_2d(-0.3f64..4.3f64, (lo..hi).log_scale())
        .map_err(|e| plot_err(path, e))?;
    for t in log_ticks(lo, hi) {
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            vec![(-0.3, t), (4.3, t)],
            GRID_COLOR,
        )));
        let (px, py) = chart.backend_coord(&(-0.3, t));
        LABEL.draw_right(&root, (px - 6, py), &si(t), TEXT_COLOR);
    }
    for (i, n) in names.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64, lo));
        LABEL.draw_centred(&root, (px, py + 6), n, TEXT_COLOR);
    }
    for (points, color) in [(&osprey, OSPREY_COLOR), (&fio, BASELINE_COLOR)] {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| plot_err(path, e))?;
    }
    let (lx, ty) = chart.backend_coord(&(-0.3, hi));
    legend_at(
        &root,
        lx + 12,
        ty + 8,
        &[
            (OSPREY_COLOR, "OSPREY GET (CLIENT-SIDE)"),
            (BASELINE_COLOR, "FIO RANDREAD 4K COMPLETION"),
        ],
    );
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(true)
}

/// A short label of a redis latency figure: "read p50 us (GET)" -> "GET P50".
fn redis_latency_label(name: &str) -> String {
    let kind = name
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(k, _)| k.trim().to_string());
    let pct = name
        .split_whitespace()
        .find(|w| w.starts_with('p') && w[1..].starts_with(|c: char| c.is_ascii_digit()));
    match (kind, pct) {
        (Some(k), Some(p)) => format!("{k} {p}").to_uppercase(),
        _ => name.to_uppercase(),
    }
}

/// The redis comparison's latency figures (p50/p99 of GET and SET, µs):
/// Osprey's and Redis's bar side by side per figure, log scale.
fn redis_latency_plot(doc: &Value, path: &Path) -> Result<bool, String> {
    let Some(list) = doc["comparisons"]["redis"]["figures"].as_array() else {
        return Ok(false);
    };
    let rows: Vec<(String, f64, f64)> = list
        .iter()
        .filter(|f| f["unit"].as_str() == Some("us"))
        .filter_map(|f| {
            Some((
                redis_latency_label(f["name"].as_str()?),
                num(&f["osprey"]).filter(|v| *v > 0.0)?,
                num(&f["baseline"]).filter(|v| *v > 0.0)?,
            ))
        })
        .collect();
    paired_log_bars(
        path,
        &PairedBars {
            title: "CLIENT-SIDE LATENCY (US): OSPREYD VS REDIS-SERVER",
            rows,
            value_label: si,
            legend_left: true,
            legend: [
                (OSPREY_COLOR, "OSPREYD (MEASURED BY OSPREY-BENCH)"),
                (BASELINE_COLOR, "REDIS-SERVER (MEASURED BY REDIS-BENCHMARK)"),
            ],
        },
    )
}

fn restart_plot(doc: &Value, path: &Path) -> Result<bool, String> {
    let Some(points) = doc["comparisons"]["restart"]["detail"]["points"].as_array() else {
        return Ok(false);
    };
    let rows: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|p| {
            Some((
                num(&p["records"])?,
                num(&p["warm_ready_s"])?,
                num(&p["cold_ready_s"])?,
            ))
        })
        .collect();
    let rows = rows
        .into_iter()
        .map(|(records, warm, cold)| (format!("{} RECORDS", si(records)), warm, cold))
        .collect();
    paired_log_bars(
        path,
        &PairedBars {
            title: "RESTART: TIME TO READY (S), WARM VS COLD",
            rows,
            value_label: |value| format!("{value:.3}"),
            legend_left: false,
            legend: [
                (OSPREY_COLOR, "WARM (SHM INDEX RE-ATTACHED)"),
                (BASELINE_COLOR, "COLD (DEVICE SCANNED)"),
            ],
        },
    )
}

/// Pairs of bars on a log scale: for each row, its label under a bar of
/// the first value (osprey's colour) and one of the second (the
/// baseline's), each with its value above it.
struct PairedBars<'a> {
    title: &'a str,
    rows: Vec<(String, f64, f64)>,
    value_label: fn(f64) -> String,
    /// The legend in the top left corner (else the top right).
    legend_left: bool,
    legend: [(RGBColor, &'a str); 2],
}

/// Draws `bars` to `path`; `false` (nothing drawn) without a positive value.
fn paired_log_bars(path: &Path, bars: &PairedBars) -> Result<bool, String> {
    let rows = &bars.rows;
    let Some((lo, hi)) = log_range(rows.iter().flat_map(|r| [r.1, r.2])) else {
        return Ok(false);
    };
    let root = frame(path, bars.title)?;
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .margin_top(40)
        .margin_left(90)
        .margin_right(40)
        .margin_bottom(50)
        .build_cartesian_2d(0f64..n, (lo..hi).log_scale())
        .map_err(|e| plot_err(path, e))?;
    for t in log_ticks(lo, hi) {
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, t), (n, t)],
            GRID_COLOR,
        )));
        let (px, py) = chart.backend_coord(&(0.0, t));
        LABEL.draw_right(&root, (px - 6, py), &si(t), TEXT_COLOR);
    }
    for (i, (label, first, second)) in rows.iter().enumerate() {
        let x = i as f64;
        for (left, value, color) in [
            (x + 0.15, *first, OSPREY_COLOR),
            (x + 0.5, *second, BASELINE_COLOR),
        ] {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left, lo), (left + 0.35, value)],
                    color.filled(),
                )))
                .map_err(|e| plot_err(path, e))?;
            let (px, py) = chart.backend_coord(&(left + 0.175, value));
            LABEL.draw_centred(&root, (px, py - 14), &(bars.value_label)(value), TEXT_COLOR);
        }
        let (px, py) = chart.backend_coord(&(x + 0.5, lo));
        LABEL.draw_centred(&root, (px, py + 6), label, TEXT_COLOR);
    }
    if bars.legend_left {
        let (lx, ty) = chart.backend_coord(&(0.0, hi));
        legend_at(&root, lx + 12, ty + 8, &bars.legend);
    } else {
        let (rx, ty) = chart.backend_coord(&(n, hi));
        legend(&root, rx - 8, ty + 8, &bars.legend);
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(true)
}

fn ratios_plot(all: &[Figure], path: &Path) -> Result<bool, String> {
    if all.is_empty() {
        return Ok(false);
    }
    let height = (60 + all.len() as u32 * 26 + 50).max(200);
    let root = BitMapBackend::new(path, (WIDTH_PX + 200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    TITLE.draw_centred(
        &root,
        ((WIDTH_PX as i32 + 200) / 2, 12),
        "OSPREY / BASELINE, EVERY FIGURE (LOG SCALE, 1 = PARITY)",
        TEXT_COLOR,
    );
    // Log scale, bars drawn from 1.0: a ratio of 0.5 and one of 2 are as
    // far from parity, on either side.
    let finite = || {
        all.iter()
            .map(|f| f.ratio)
            .filter(|r| r.is_finite() && *r > 0.0)
    };
    let (lo, hi) = log_range(finite().chain([0.5, 2.0])).unwrap_or((0.1, 10.0));
    let rows = all.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .margin_top(40)
        .margin_left(430)
        .margin_right(60)
        .margin_bottom(40)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..rows)
        .map_err(|e| plot_err(path, e))?;
    for t in log_ticks(lo, hi) {
        let _ = chart.draw_series(std::iter::once(PathElement::new(
            vec![(t, 0.0), (t, rows)],
            GRID_COLOR,
        )));
        let (px, py) = chart.backend_coord(&(t, 0.0));
        LABEL.draw_centred(&root, (px, py + 6), &format!("{t}"), TEXT_COLOR);
    }
    for (i, f) in all.iter().enumerate() {
        let y = rows - i as f64 - 1.0;
        let color = if f.better == "lower" {
            BASELINE_COLOR
        } else {
            OSPREY_COLOR
        };
        let ratio = if f.ratio.is_finite() && f.ratio > 0.0 {
            f.ratio.clamp(lo, hi)
        } else {
            1.0
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(ratio.min(1.0), y + 0.2), (ratio.max(1.0), y + 0.8)],
                color.filled(),
            )))
            .map_err(|e| plot_err(path, e))?;
        let (px, py) = chart.backend_coord(&(lo, y + 0.5));
        let label = fit(&format!("{}: {}", short(f.comparison), f.name), px - 16);
        LABEL.draw_right(&root, (px - 8, py), &label, TEXT_COLOR);
        let value = ratio_text(f.ratio);
        let (vx, vy) = chart.backend_coord(&(ratio, y + 0.5));
        let vx = if ratio >= 1.0 {
            vx + 6
        } else {
            vx - 6 - LABEL.width(&value)
        };
        LABEL.draw(&root, (vx, vy - LABEL.height() / 2), &value, TEXT_COLOR);
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, 0.0), (1.0, rows)],
            BLACK.stroke_width(2),
        )))
        .map_err(|e| plot_err(path, e))?;
    let (rx, ty) = chart.backend_coord(&(hi, rows));
    legend(
        &root,
        rx - 8,
        ty + 4,
        &[
            (OSPREY_COLOR, "HIGHER IS BETTER"),
            (BASELINE_COLOR, "LOWER IS BETTER"),
        ],
    );
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(true)
}

/// `text` cut (ending in "..") to at most `width_px` in [`LABEL`]'s font.
fn fit(text: &str, width_px: i32) -> String {
    if LABEL.width(text) <= width_px {
        return text.to_string();
    }
    let mut cut: String = text.to_string();
    while !cut.is_empty() && LABEL.width(&cut) + LABEL.width("..") > width_px {
        cut.pop();
    }
    cut + ".."
}

fn short(comparison: &str) -> &'static str {
    match comparison {
        "device_limit" => "DEVICE",
        "redis" => "REDIS",
        "flash_reads" => "FLASH READS",
        "restart" => "RESTART",
        "spdk" => "SPDK",
        _ => "OTHER",
    }
}

// ---- markdown -------------------------------------------------------------------

/// The markdown: `json_prefix` goes before the results file's name and
/// `link_base` before each plot's file name.
fn markdown(
    doc: &Value,
    all: &[Figure],
    plots: &[(&str, &str)],
    json_prefix: &str,
    link_base: &str,
) -> String {
    let mut md = String::new();
    let m = &doc["machine"];
    let load = |k: &str| {
        doc["load_average"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| format!("{}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let commit = text(&doc["commit"]);
    let dirty = doc["dirty_files"].as_u64().unwrap_or(0);
    let _ = writeln!(
        md,
        "Generated by `bash perf/compare/run.sh` (`perf-report`) from `{json_prefix}{}.json`; \
         do not edit by hand.\n",
        text(&doc["stem"])
    );
    let _ = writeln!(
        md,
        "- run: {} mode, stem `{}`, {} s; commit `{}`{}",
        text(&doc["mode"]),
        text(&doc["stem"]),
        doc["elapsed_s"].as_u64().unwrap_or(0),
        &commit[..commit.len().min(12)],
        if dirty > 0 {
            format!(" with {dirty} uncommitted files in the work tree")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        md,
        "- machine: {}, {} cores, {} GiB RAM, kernel {}, device files on `{}`",
        text(&m["cpu"]),
        m["cores"].as_u64().unwrap_or(0),
        m["mem_gib"].as_f64().unwrap_or(0.0),
        text(&m["kernel"]),
        text(&m["disk"])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        md,
        "- load average (1/5/15 min) at start: {}, at end: {} — the 2 cores are shared with other \
         engineers' builds and benchmarks; servers ran on core 1, clients on core 0",
        load("start"),
        load("end")
    );
    let _ = writeln!(
        md,
        "- ratio = Osprey / baseline, both measured in this run on this machine\n"
    );
    let _ = writeln!(
        md,
        "| comparison | figure | Osprey | baseline | baseline is | ratio | better |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for f in all {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            short(f.comparison).to_lowercase(),
            f.name,
            with_unit(f.osprey, &f.unit),
            with_unit(f.baseline, &f.unit),
            f.baseline_what,
            ratio_text(f.ratio),
            f.better
        );
    }
    md.push('\n');
    for (key, title) in COMPARISONS {
        let c = &doc["comparisons"][key];
        let status = text(&c["status"]);
        if status != "ok" {
            let _ = writeln!(md, "- {title}: **{status}**: {}", text(&c["reason"]));
        }
    }
    let extra = &doc["comparisons"]["flash_reads"]["detail"];
    if let Some(per_get) = extra["device_bytes_read_per_get"].as_f64() {
        let _ = writeln!(
            md,
            "- flash-resident reads: {} records of 4,096-byte images ({} MiB, 4x the {} MiB \
             post-write cache), queue depth {}; the server read {:.0} device bytes per get \
             ({:.0} per get of a cached key)",
            extra["records"].as_u64().unwrap_or(0),
            extra["data_set_bytes"].as_u64().unwrap_or(0) >> 20,
            extra["post_write_cache_bytes"].as_u64().unwrap_or(0) >> 20,
            extra["queue_depth"].as_u64().unwrap_or(0),
            per_get,
            extra["cached_device_bytes_read_per_get"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
    }
    if let Some(points) = doc["comparisons"]["restart"]["detail"]["points"].as_array() {
        for p in points {
            let _ = writeln!(
                md,
                "- restart, {} records: load {} /s; warm ready {:.3} s (attach {:.3} s); cold ready \
                 {:.3} s (scan {:.3} s of {} MiB); fio read the same bytes in {:.3} s",
                si(p["records"].as_f64().unwrap_or(0.0)),
                si(p["load_ops_per_s"].as_f64().unwrap_or(0.0)),
                p["warm_ready_s"].as_f64().unwrap_or(f64::NAN),
                p["warm_attach_s"].as_f64().unwrap_or(f64::NAN),
                p["cold_ready_s"].as_f64().unwrap_or(f64::NAN),
                p["cold_scan_s"].as_f64().unwrap_or(f64::NAN),
                p["scanned_bytes"].as_u64().unwrap_or(0) >> 20,
                p["fio_seq_read_s"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let spdk = &doc["comparisons"]["spdk"]["detail"];
    if let (Some(s), Some(u)) = (
        spdk["engine_spdk"].as_object(),
        spdk["engine_uring"].as_object(),
    ) {
        let f = |m: &serde_json::Map<String, Value>, k: &str| {
            m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
        };
        let tgt = spdk["engine_spdk"]["nvmf_tgt"]["cpu_us_per_op"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "- SPDK: {} records of 4,096-byte images, queue depth {}; `nvmf_tgt` (aio bdev on a file, \
             NVMe/TCP on 127.0.0.1) on core {}, the engine and `spdk_nvme_perf` on core {}. CPU per get \
             (user + system): SPDK backend {:.2} + {:.2} µs (the NVMe/TCP initiator's socket calls are \
             the system part; on PCIe there are none), plus {:.2} µs in `nvmf_tgt`; uring backend over \
             the same file {:.2} + {:.2} µs",
            spdk["config"]["records"].as_u64().unwrap_or(0),
            spdk["config"]["queue_depth"].as_u64().unwrap_or(0),
            spdk["config"]["target_core"].as_u64().unwrap_or(0),
            spdk["config"]["core"].as_u64().unwrap_or(0),
            f(s, "user_us_per_op"),
            f(s, "sys_us_per_op"),
            tgt,
            f(u, "user_us_per_op"),
            f(u, "sys_us_per_op"),
        );
    }
    if let Some(pct) = doc["comparisons"]["device_limit"]["other_cpu_pct"].as_f64() {
        let _ = writeln!(
            md,
            "- during storage-bench other processes used {pct:.0}% of one core on average"
        );
    }
    md.push('\n');
    for (file, alt) in plots {
        let _ = writeln!(md, "![{alt}]({link_base}{file})");
    }
    md
}

// ---- main -------------------------------------------------------------------------

fn run(options: &Options) -> Result<(), String> {
    let raw = std::fs::read_to_string(&options.results)
        .map_err(|e| format!("{}: {e}", options.results.display()))?;
    let doc: Value =
        serde_json::from_str(&raw).map_err(|e| format!("{}: {e}", options.results.display()))?;
    if doc["schema"].as_u64() != Some(1) {
        return Err(format!(
            "{}: not a perf/compare/run.sh results file (schema 1)",
            options.results.display()
        ));
    }
    let stem = options
        .results
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("results file name is not UTF-8")?
        .to_string();
    let dir = options
        .results
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let plot_dir = dir.join(&stem);
    std::fs::create_dir_all(&plot_dir).map_err(|e| format!("{}: {e}", plot_dir.display()))?;
    let all = figures(&doc);
    let mut plots: Vec<(&str, &str)> = Vec::new();
    type Plot<'a> = (
        &'a str,
        &'a str,
        Box<dyn Fn(&Path) -> Result<bool, String> + 'a>,
    );
    let makers: Vec<Plot> = vec![
        (
            "ratios.png",
            "every ratio",
            Box::new(|p: &Path| ratios_plot(&all, p)),
        ),
        (
            "throughput.png",
            "flash-resident gets per second over time vs fio",
            Box::new(|p: &Path| throughput_plot(&doc, p)),
        ),
        (
            "latency.png",
            "get latency percentiles vs fio",
            Box::new(|p: &Path| latency_plot(&doc, p)),
        ),
        (
            "restart.png",
            "warm vs cold restart by record count",
            Box::new(|p: &Path| restart_plot(&doc, p)),
        ),
        (
            "redis-latency.png",
            "ospreyd vs redis-server p50/p99 latency, GET and SET",
            Box::new(|p: &Path| redis_latency_plot(&doc, p)),
        ),
    ];
    for (file, alt, make) in &makers {
        let path = plot_dir.join(file);
        if make(&path)? {
            println!("perf-report: wrote {}", path.display());
            plots.push((file, alt));
        } else {
            println!("perf-report: {file} skipped: its comparison has no data in this run");
        }
    }
    let md_path = dir.join(format!("{stem}.md"));
    let md = markdown(&doc, &all, &plots, "", &format!("{stem}/"));
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    println!("perf-report: wrote {}", md_path.display());
    if let Some(section) = &options.readme_section {
        let md = markdown(
            &doc,
            &all,
            &plots,
            &options.link_prefix,
            &format!("{}{stem}/", options.link_prefix),
        );
        std::fs::write(section, md).map_err(|e| format!("{}: {e}", section.display()))?;
        println!("perf-report: wrote {}", section.display());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("perf-report: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&options) {
        eprintln!("perf-report: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_three_by_five() {
        for (c, rows) in GLYPHS {
            assert_eq!(rows.len(), 15, "glyph {c:?}");
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            linear_ticks(0.0, 100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(log_ticks(1.0, 1000.0), vec![1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(si(62_200.0), "62.2k");
        assert_eq!(si(1_760_000.0), "1.76M");
        assert_eq!(ratio_text(0.75), "0.75");
        assert_eq!(fit("ABCDEF", LABEL.width("ABCD")), "AB..");
        assert_eq!(fit("ABC", LABEL.width("ABCD")), "ABC");
        assert_eq!(ratio_text(0.0025), "0.0025");
        assert_eq!(ratio_text(0.03), "0.030");
    }
}
