//! Line charts with `plotters`: PNG files (a swarm's loss.png, the DiLoCo
//! benchmark's charts) and SVG for the dashboard's page, from one drawing
//! routine so both look alike.
//!
//! Text is drawn with DejaVu Sans, bundled (assets/fonts: cut to Latin-1
//! and a few symbols, 54 KB) and registered with plotters' `ab_glyph`
//! backend: a PNG needs glyphs, and a machine running a validator has no
//! fonts to count on. The SVG only names the family; the browser draws it.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::Once;

/// Pixels of a PNG chart.
const W: u32 = 640;
const H: u32 = 400;
/// The family the bundled font is registered under.
const FAMILY: &str = "sans-serif";
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // (The bundled file is a valid font: a unit test draws with it.)
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the bundled chart font did not load: charts will have no text");
        }
    });
}

/// One line of a chart: its name (in the legend) and its points.
pub struct Series<'a> {
    pub name: &'a str,
    pub ys: &'a [f64],
}

/// One line of an x–y chart: its name and its (x, y) points, in order.
pub struct XySeries<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

/// The lines' colours, in order (then plotters' palette).
const COLOURS: [RGBColor; 3] = [RGBColor(200, 30, 30), RGBColor(30, 80, 200), RGBColor(30, 150, 60)];

fn colour(k: usize) -> RGBColor {
    match COLOURS.get(k) {
        Some(&c) => c,
        None => {
            let (r, g, b) = Palette99::pick(k).rgb();
            RGBColor(r, g, b)
        }
    }
}

/// A 640×400 PNG chart of each series' `ys` against x = `first_x`,
/// `first_x + 1`, … on common axes named `x_name` and `y_name`, each series
/// in its own colour, a legend naming them when there are several.
pub fn line_chart(series: &[Series], first_x: usize, x_name: &str, y_name: &str) -> Vec<u8> {
    let points: Vec<Vec<(f64, f64)>> = series.iter().map(|s| s.ys.iter().enumerate().map(|(i, &y)| ((first_x + i) as f64, y)).collect()).collect();
    let xy: Vec<XySeries> = series.iter().zip(&points).map(|(s, p)| XySeries { name: s.name, points: p }).collect();
    xy_chart(&xy, x_name, y_name)
}

/// [`line_chart`] with each point's own x (tokens, seconds, bytes…).
pub fn xy_chart(series: &[XySeries], x_name: &str, y_name: &str) -> Vec<u8> {
    let rgb = xy_pixels(series, None, x_name, y_name);
    encode_png(W, H, &rgb)
}

/// The chart as an SVG document of `w`×`h`, titled `title` (the
/// dashboard's).
pub fn svg_chart(series: &[XySeries], title: &str, x_name: &str, y_name: &str, (w, h): (u32, u32)) -> String {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        if let Err(e) = draw(&root, series, Some(title), x_name, y_name) {
            tracing::warn!("drawing the chart {title:?}: {e}");
        }
        let _ = root.present();
    }
    out
}

/// RGB pixels (W×H) of the chart.
fn xy_pixels(series: &[XySeries], title: Option<&str>, x_name: &str, y_name: &str) -> Vec<u8> {
    register_font();
    let mut rgb = vec![255u8; (3 * W * H) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (W, H)).into_drawing_area();
        if let Err(e) = draw(&root, series, title, x_name, y_name) {
            tracing::warn!("drawing a chart of {y_name}: {e}");
        }
        let _ = root.present();
    }
    rgb
}

/// PNG bytes of an RGB image (`rgb.len() == 3·w·h`).
pub fn encode_png(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // Writing into memory fails only on a size mismatch, a bug here.
    let mut writer = enc.write_header().expect("PNG header");
    writer.write_image_data(rgb).expect("an RGB image of the stated size");
    writer.finish().expect("PNG end");
    out
}

/// The finite range of `v`, widened when empty or flat so an axis can be
/// drawn.
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    match (lo.is_finite(), hi > lo) {
        (false, _) => (0.0, 1.0),
        (true, true) => (lo, hi),
        (true, false) => (lo - 0.5 * lo.abs().max(1e-9), hi + 0.5 * hi.abs().max(1e-9)),
    }
}

/// An axis label on an axis spanning `span`, short but with the digits
/// that tell neighbouring ticks apart: 12, 3.5, 0.498, 2.1e6.
fn label(x: f64, span: f64) -> String {
    let a = x.abs();
    if a >= 1e5 || (a > 0.0 && a < 1e-3 && span < 1e-2) {
        return format!("{x:.2e}");
    }
    // Ticks are about span/6 apart: one digit finer than that.
    let digits = (1.0 - (span / 6.0).log10().floor()).clamp(0.0, 6.0) as usize;
    let s = format!("{x:.digits$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

/// Axes, grid, labels, each series' finite points joined (a gap where a
/// point is missing) and, with several series, a legend.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[XySeries],
    title: Option<&str>,
    x_name: &str,
    y_name: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let (x_lo, x_hi) = range(series.iter().flat_map(|s| s.points.iter().filter(finite).map(|p| p.0)));
    let (y_lo, y_hi) = range(series.iter().flat_map(|s| s.points.iter().filter(finite).map(|p| p.1)));
    let pad = (y_hi - y_lo) * 0.05;
    let mut builder = ChartBuilder::on(root);
    builder.margin(12).x_label_area_size(38).y_label_area_size(58);
    if let Some(t) = title {
        builder.caption(t, (FAMILY, 18));
    }
    let mut chart = builder.build_cartesian_2d(x_lo..x_hi, (y_lo - pad)..(y_hi + pad))?;
    // Whole x values (epochs) get whole ticks only.
    let whole = series.iter().flat_map(|s| s.points.iter().filter(finite)).all(|p| p.0.fract() == 0.0);
    let x_ticks = if whole { ((x_hi - x_lo) as usize + 1).clamp(2, 6) } else { 6 };
    let (x_span, y_span) = (x_hi - x_lo, y_hi - y_lo + 2.0 * pad);
    chart
        .configure_mesh()
        .x_desc(x_name)
        .y_desc(y_name)
        .x_labels(x_ticks)
        .y_labels(6)
        .x_label_formatter(&|x| label(*x, x_span))
        .y_label_formatter(&|y| label(*y, y_span))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    for (k, s) in series.iter().enumerate() {
        let c = colour(k);
        // Runs of finite points, each its own line.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for p in s.points {
            match finite(&p) {
                true => runs.last_mut().expect("one run at least").push(*p),
                false if !runs.last().expect("one run at least").is_empty() => runs.push(Vec::new()),
                false => {}
            }
        }
        let mut first = true;
        for run in runs.into_iter().filter(|r| !r.is_empty()) {
            let marks = run.len() == 1;
            let drawn = chart.draw_series(LineSeries::new(run.clone(), c.stroke_width(2)))?;
            if first {
                drawn.label(s.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(3)));
                first = false;
            }
            if marks {
                // A lone point is no line: mark it.
                chart.draw_series(run.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
            }
        }
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FAMILY, 13))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(img: &[u8], x: u32, y: u32) -> [u8; 3] {
        let i = (3 * (y * W + x)) as usize;
        [img[i], img[i + 1], img[i + 2]]
    }

    fn count(img: &[u8], c: RGBColor) -> usize {
        img.chunks_exact(3).filter(|p| *p == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn a_chart_has_text_from_the_bundled_font_on_both_axes() {
        let img = xy_pixels(&[XySeries { name: "train", points: &[(1.0, 3.2), (2.0, 2.5), (3.0, 2.1)] }], None, "epoch", "loss");
        let dark = |x0: u32, x1: u32, y0: u32, y1: u32| (y0..y1).any(|y| (x0..x1).any(|x| pixel(&img, x, y)[0] < 100));
        // Left of the y axis: its labels and name; below the x axis: its.
        assert!(dark(0, 50, 20, H - 60), "y labels");
        assert!(dark(80, W, H - 40, H), "x labels and name");
        assert!(count(&img, COLOURS[0]) > 200, "the curve");
        let png = line_chart(&[], 1, "x", "y");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    }

    #[test]
    fn pngs_decode_to_the_pixels_drawn() {
        let s = [Series { name: "train", ys: &[3.0, 2.0, 1.5] }];
        let png = line_chart(&s, 1, "epoch", "loss");
        let mut reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (W, H, png::ColorType::Rgb));
        let points: Vec<(f64, f64)> = [3.0, 2.0, 1.5].iter().enumerate().map(|(i, &y)| ((1 + i) as f64, y)).collect();
        assert_eq!(&buf[..info.buffer_size()], &xy_pixels(&[XySeries { name: "train", points: &points }], None, "epoch", "loss")[..]);
    }

    #[test]
    fn xy_points_land_where_their_x_says() {
        // The second series spans only the first tenth of the x range.
        let a = [(0.0, 1.0), (1000.0, 0.0)];
        let b = [(0.0, 0.0), (100.0, 1.0)];
        let img = xy_pixels(&[XySeries { name: "a", points: &a }, XySeries { name: "b", points: &b }], None, "tokens", "loss");
        let columns = |c: RGBColor| {
            let want = [c.0, c.1, c.2];
            let xs: Vec<u32> = (0..W).filter(|&x| (0..H).any(|y| pixel(&img, x, y) == want)).collect();
            (xs[0], *xs.last().unwrap())
        };
        let ((a0, a1), (b0, b1)) = (columns(COLOURS[0]), columns(COLOURS[1]));
        // (The legend's swatches sit top right: count only the plot's part.)
        assert!(a1 > W - 40, "the long series reaches the right: {a1}");
        assert!(b0 < 90 && b0 >= a0.saturating_sub(2), "both start at the left: {a0} {b0}");
        let plot_b = (0..W).filter(|&x| x < b1 && (H / 3..H - 40).any(|y| pixel(&img, x, y) == [COLOURS[1].0, COLOURS[1].1, COLOURS[1].2])).max();
        assert!(plot_b.is_some_and(|x| x < 140), "the short series stays within its tenth: {plot_b:?}");
        assert_eq!(label(2.5e6, 1e7), "2.50e6");
        assert_eq!(label(12.0, 10.0), "12");
        assert_eq!(label(0.25, 1.0), "0.25");
        // Ticks 0.004 apart stay apart.
        assert_eq!((label(0.496, 0.02), label(0.5, 0.02), label(0.504, 0.02)), ("0.496".into(), "0.5".into(), "0.504".into()));
    }

    #[test]
    fn missing_points_leave_gaps_and_several_series_get_a_legend() {
        let one = xy_pixels(&[XySeries { name: "train", points: &[(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)] }], None, "epoch", "loss");
        assert_eq!(count(&one, COLOURS[1]), 0, "one series: one colour");
        let held = [(1.0, 3.1), (2.0, 2.4), (3.0, f64::NAN)];
        let two = xy_pixels(
            &[XySeries { name: "train", points: &[(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)] }, XySeries { name: "held-out", points: &held }],
            None,
            "epoch",
            "loss",
        );
        assert!(count(&two, COLOURS[1]) > 200, "the second line and its swatch");
        // Nothing of it right of x = 2 but the legend's swatch (top right).
        let right_of_2 = (W / 2 + 60..W - 20).any(|x| (H / 2..H - 40).any(|y| pixel(&two, x, y) == [COLOURS[1].0, COLOURS[1].1, COLOURS[1].2]));
        assert!(!right_of_2, "the NaN point is a gap");
        let svg = svg_chart(&[XySeries { name: "uid 3", points: &held }], "Weights", "epoch", "weight", (480, 300));
        assert!(svg.starts_with("<svg") && svg.contains("Weights") && svg.contains("epoch"), "{svg}");
    }
}
