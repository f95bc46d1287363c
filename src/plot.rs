//! A line chart as a PNG, with no image library: the pixels go into zlib
//! "stored" blocks (no compression; a chart is small), framed by the CRC-32
//! and Adler-32 the formats require.

const W: usize = 640;
const H: usize = 400;
const MARGIN: usize = 52;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// PNG bytes of an RGB image (`rgb.len() == 3·w·h`).
pub fn png(w: usize, h: usize, rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len(), 3 * w * h, "one RGB triple per pixel");
    let mut raw = Vec::with_capacity((3 * w + 1) * h);
    for row in rgb.chunks(3 * w) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&(b << 16 | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// 3×5 glyphs, one row of three bits per 3 bits, top row first: enough
/// for the numbers and names of a chart's axes.
fn glyph(c: char) -> Option<u16> {
    Some(match c {
        '0' => 0b111_101_101_101_111,
        '1' => 0b010_110_010_010_111,
        '2' => 0b111_001_111_100_111,
        '3' => 0b111_001_111_001_111,
        '4' => 0b101_101_111_001_001,
        '5' => 0b111_100_111_001_111,
        '6' => 0b111_100_111_101_111,
        '7' => 0b111_001_001_010_010,
        '8' => 0b111_101_111_101_111,
        '9' => 0b111_101_111_001_111,
        '.' => 0b000_000_000_000_010,
        '-' => 0b000_000_111_000_000,
        'a' => 0b000_011_101_101_011,
        'b' => 0b100_100_111_101_111,
        'c' => 0b000_111_100_100_111,
        'd' => 0b001_001_111_101_111,
        'e' => 0b111_101_111_100_111,
        'f' => 0b011_010_111_010_010,
        'g' => 0b111_101_111_001_111,
        'h' => 0b100_100_111_101_101,
        'i' => 0b010_000_010_010_010,
        'k' => 0b100_101_110_101_101,
        'l' => 0b100_100_100_100_011,
        'm' => 0b000_111_111_101_101,
        'n' => 0b000_110_101_101_101,
        'o' => 0b000_111_101_101_111,
        'p' => 0b111_101_111_100_100,
        'r' => 0b000_111_100_100_100,
        's' => 0b011_100_010_001_110,
        't' => 0b010_111_010_010_011,
        'u' => 0b000_101_101_101_111,
        'v' => 0b000_101_101_101_010,
        'w' => 0b000_101_101_111_111,
        'x' => 0b000_000_101_010_101,
        'y' => 0b000_101_101_011_110,
        'z' => 0b000_111_010_100_111,
        'B' => 0b110_101_110_101_110,
        'M' => 0b101_111_111_101_101,
        ' ' => 0,
        _ => return None,
    })
}

const SCALE: usize = 2;

/// Width in pixels of `text` as `text` draws it.
fn text_width(text: &str) -> usize {
    text.chars().count() * 4 * SCALE
}

/// Draws `text` with its top-left corner at (x, y); unknown characters
/// are left blank.
fn text(put: &mut impl FnMut(usize, usize, [u8; 3]), x: usize, y: usize, text: &str) {
    for (k, c) in text.chars().enumerate() {
        let bits = glyph(c).unwrap_or(0);
        for row in 0..5 {
            for col in 0..3 {
                if bits >> (14 - (row * 3 + col)) & 1 == 1 {
                    for (dx, dy) in (0..SCALE * SCALE).map(|d| (d % SCALE, d / SCALE)) {
                        put(x + (k * 4 + col) * SCALE + dx, y + row * SCALE + dy, [0, 0, 0]);
                    }
                }
            }
        }
    }
}

/// One line of a chart: its name (in the legend) and its points.
pub struct Series<'a> {
    pub name: &'a str,
    pub ys: &'a [f64],
}

/// The lines' colours, in order.
const COLOURS: [[u8; 3]; 3] = [[200, 30, 30], [30, 80, 200], [30, 150, 60]];

/// A 640×400 chart of each series' `ys` against x = `first_x`,
/// `first_x + 1`, …, on common axes named `x_name` and `y_name`, the ends
/// of both ranges written on them, each series' points joined in its own
/// colour, and a legend naming them when there are several.
pub fn line_chart(series: &[Series], first_x: usize, x_name: &str, y_name: &str) -> Vec<u8> {
    png(W, H, &chart_pixels(series, first_x, x_name, y_name))
}

/// One line of an x–y chart: its name and its (x, y) points, in order.
pub struct XySeries<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

/// [`line_chart`] with each point's own x (tokens, seconds, bytes…).
pub fn xy_chart(series: &[XySeries], x_name: &str, y_name: &str) -> Vec<u8> {
    png(W, H, &xy_pixels(series, x_name, y_name, format_x))
}

/// An x axis end, short: 12, 3.5, 2.1e6.
fn format_x(x: f64) -> String {
    if x.abs() >= 1e5 {
        format!("{x:.1e}")
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn chart_pixels(series: &[Series], first_x: usize, x_name: &str, y_name: &str) -> Vec<u8> {
    let points: Vec<Vec<(f64, f64)>> = series.iter().map(|s| s.ys.iter().enumerate().map(|(i, &y)| ((first_x + i) as f64, y)).collect()).collect();
    let xy: Vec<XySeries> = series.iter().zip(&points).map(|(s, p)| XySeries { name: s.name, points: p }).collect();
    xy_pixels(&xy, x_name, y_name, |x| format!("{x:.0}"))
}

fn xy_pixels(series: &[XySeries], x_name: &str, y_name: &str, x_label: impl Fn(f64) -> String) -> Vec<u8> {
    let mut img = vec![255u8; 3 * W * H];
    let mut put = |x: usize, y: usize, c: [u8; 3]| {
        if x < W && y < H {
            img[3 * (y * W + x)..3 * (y * W + x) + 3].copy_from_slice(&c);
        }
    };
    for x in MARGIN..W - MARGIN / 2 {
        put(x, H - MARGIN, [0, 0, 0]);
    }
    for y in MARGIN / 2..H - MARGIN {
        put(MARGIN, y, [0, 0, 0]);
    }
    text(&mut put, MARGIN + 6, MARGIN / 2 - 12, y_name);
    text(&mut put, W - MARGIN / 2 - text_width(x_name), H - MARGIN + 18, x_name);
    let range =
        |v: &mut dyn Iterator<Item = f64>| v.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    let (x_lo, x_hi) = range(&mut series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    if x_lo.is_finite() {
        text(&mut put, MARGIN, H - MARGIN + 6, &x_label(x_lo));
        let last = x_label(x_hi);
        text(&mut put, W - MARGIN / 2 - text_width(&last), H - MARGIN + 6, &last);
    }
    if series.len() > 1 {
        // The legend, top right: a swatch and the name of each line.
        for (k, s) in series.iter().enumerate() {
            let (x, y) = (W - MARGIN / 2 - 120, MARGIN / 2 + 4 + 16 * k);
            for (dx, dy) in (0..16 * 4).map(|d| (d % 16, d / 16)) {
                put(x + dx, y + 3 + dy, COLOURS[k % COLOURS.len()]);
            }
            text(&mut put, x + 22, y, s.name);
        }
    }
    let (lo, hi) = range(&mut series.iter().flat_map(|s| s.points.iter().filter(|p| p.0.is_finite()).map(|p| p.1)));
    if x_hi > x_lo && lo.is_finite() {
        let span = if hi > lo { hi - lo } else { 1.0 };
        let px = |x: f64| MARGIN as f64 + (x - x_lo) / (x_hi - x_lo) * (W - MARGIN - MARGIN / 2) as f64;
        let py = |y: f64| (H - MARGIN) as f64 - (y - lo) / span * (H - MARGIN - MARGIN / 2) as f64;
        // The range's ends, left of the axis, level with where they are drawn.
        for v in [lo, hi] {
            let label = format!("{v:.2}");
            text(&mut put, MARGIN.saturating_sub(4 + text_width(&label)), (py(v) as usize).saturating_sub(5), &label);
        }
        for (k, s) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            for w in s.points.windows(2) {
                let ((xa, a), (xb, b)) = (w[0], w[1]);
                if !(a.is_finite() && b.is_finite() && xa.is_finite() && xb.is_finite()) {
                    continue;
                }
                let steps = 200;
                for st in 0..=steps {
                    let f = st as f64 / steps as f64;
                    let (x, y) = (px(xa) + f * (px(xb) - px(xa)), py(a) + f * (py(b) - py(a)));
                    put(x as usize, y as usize, colour);
                    put(x as usize, y as usize + 1, colour);
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dark(img: &[u8], x: usize, y: usize) -> bool {
        img[3 * (y * W + x)] < 128
    }

    #[test]
    fn glyphs_are_drawn_bit_for_bit() {
        let mut img = vec![255u8; 3 * W * H];
        let mut put = |x: usize, y: usize, c: [u8; 3]| img[3 * (y * W + x)..3 * (y * W + x) + 3].copy_from_slice(&c);
        text(&mut put, 10, 10, "7");
        // 7: a full top row, then one column on the right, then the middle.
        let want = ["###", "..#", "..#", ".#.", ".#."];
        for (row, line) in want.iter().enumerate() {
            for (col, ch) in line.chars().enumerate() {
                let (x, y) = (10 + col * SCALE, 10 + row * SCALE);
                assert_eq!(dark(&img, x, y), ch == '#', "row {row} col {col}");
                assert_eq!(dark(&img, x + 1, y + 1), ch == '#', "row {row} col {col} (scaled)");
            }
        }
        assert!(!dark(&img, 10 + 3 * SCALE, 10), "nothing right of the glyph");
    }

    #[test]
    fn a_chart_labels_both_axes() {
        let img = chart_pixels(&[Series { name: "train", ys: &[3.2, 2.5, 2.1] }], 1, "epoch", "loss");
        let any_dark = |x0: usize, x1: usize, y0: usize, y1: usize| (y0..y1).any(|y| (x0..x1).any(|x| dark(&img, x, y)));
        assert!(any_dark(0, MARGIN - 2, MARGIN / 2, H - MARGIN), "y range labels");
        assert!(any_dark(MARGIN, W, H - MARGIN + 4, H), "x labels");
        assert!(any_dark(MARGIN + 4, W, 0, MARGIN / 2 - 1), "y axis name");
        assert!(img.contains(&30), "the curve");
        assert!(line_chart(&[], 1, "x", "y").starts_with(b"\x89PNG\r\n\x1a\n"));
    }

    #[test]
    fn xy_points_land_where_their_x_says() {
        let count = |img: &[u8], c: [u8; 3]| img.chunks_exact(3).filter(|p| *p == c).count();
        // The second series spans only the first tenth of the x range.
        let a = [(0.0, 1.0), (1000.0, 0.0)];
        let b = [(0.0, 0.0), (100.0, 1.0)];
        let img = xy_pixels(&[XySeries { name: "a", points: &a }, XySeries { name: "b", points: &b }], "tokens", "loss", format_x);
        let right = |c: [u8; 3]| (0..H).any(|y| (MARGIN + 100..W - MARGIN / 2).any(|x| img[3 * (y * W + x)..3 * (y * W + x) + 3] == c));
        assert!(right(COLOURS[0]), "the long series reaches the right");
        assert!(count(&img, COLOURS[1]) > 64, "the short series is drawn");
        let b_right =
            (MARGIN / 2 + 40..H).any(|y| (MARGIN + 120..W - MARGIN / 2 - 130).any(|x| img[3 * (y * W + x)..3 * (y * W + x) + 3] == COLOURS[1]));
        assert!(!b_right, "the short series stays within its tenth of the axis");
        assert_eq!(format_x(2.5e6), "2.5e6");
        assert_eq!(format_x(12.0), "12");
    }

    #[test]
    fn two_series_get_their_own_colours_and_a_legend() {
        let count = |img: &[u8], c: [u8; 3]| img.chunks_exact(3).filter(|p| *p == c).count();
        let one = chart_pixels(&[Series { name: "train", ys: &[3.0, 2.0, 1.5] }], 1, "epoch", "loss");
        assert_eq!(count(&one, COLOURS[1]), 0, "one series: one colour, no legend");
        let two = chart_pixels(
            &[Series { name: "train", ys: &[3.0, 2.0, 1.5] }, Series { name: "held-out", ys: &[3.1, 2.4, f64::NAN] }],
            1,
            "epoch",
            "loss",
        );
        // The second line (two segments' worth, the NaN skipped) and its swatch.
        assert!(count(&two, COLOURS[1]) > 64 + 200, "{}", count(&two, COLOURS[1]));
        assert!(count(&two, COLOURS[0]) > 64 + 400);
    }
}
