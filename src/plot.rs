//! A line chart as a PNG, with no image library: the pixels go into zlib
//! "stored" blocks (no compression; a chart is small), framed by the CRC-32
//! and Adler-32 the formats require.

const W: usize = 640;
const H: usize = 400;
const MARGIN: usize = 40;

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

/// A 640×400 chart of `ys` against their index: axes, and the points joined.
pub fn line_chart(ys: &[f64]) -> Vec<u8> {
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
    let finite: Vec<f64> = ys.iter().copied().filter(|y| y.is_finite()).collect();
    if finite.len() >= 2 {
        let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &y| (l.min(y), h.max(y)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let px = |i: usize| MARGIN as f64 + (i as f64 / (ys.len() - 1) as f64) * (W - MARGIN - MARGIN / 2) as f64;
        let py = |y: f64| (H - MARGIN) as f64 - (y - lo) / span * (H - MARGIN - MARGIN / 2) as f64;
        for i in 1..ys.len() {
            let (a, b) = (ys[i - 1], ys[i]);
            if !(a.is_finite() && b.is_finite()) {
                continue;
            }
            let steps = 200;
            for s in 0..=steps {
                let f = s as f64 / steps as f64;
                let (x, y) = (px(i - 1) + f * (px(i) - px(i - 1)), py(a) + f * (py(b) - py(a)));
                put(x as usize, y as usize, [200, 30, 30]);
                put(x as usize, y as usize + 1, [200, 30, 30]);
            }
        }
    }
    png(W, H, &img)
}
