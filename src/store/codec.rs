//! Compact encoding of history points, used by journal rows and history chunks.
//!
//! A *group* is the points of one item, in clock order:
//!
//! ```text
//! n      varint            number of points (>= 1)
//! mode   u8                how values are stored (see below)
//! clock0 zigzag varint     first clock minus the base clock
//! dclock varint x (n-1)    clock differences (wrapping, normally >= 1)
//! values                   per mode
//! ```
//!
//! Value modes:
//! - `RAW` (0): 8-byte little-endian f64 each.
//! - `F32` (1): every value is exactly an f32; zigzag varint of the difference
//!   of the f32 bit patterns (first one against 0).
//! - `DIV + k` (k = 0..=9): every value is exactly `m / 10^k` for an integer `m`;
//!   zigzag varint of the difference of the `m`s (first one against 0).
//!   `k = 0` covers every integral value.
//! - `MUL + k` (k = 1..=9): every value is exactly `m * 1e-k` (what `raw * 0.1`
//!   produces); same integer coding.
//!
//! A journal row: `version u8, base zigzag varint, then groups each preceded by
//! the item id difference to the previous group's item (varint, items ascending)`.
//! A history chunk: `version u8` then one group with base 0.

pub const VERSION: u8 = 1;

const RAW: u8 = 0;
const F32: u8 = 1;
const DIV: u8 = 0x10;
const MUL: u8 = 0x20;
const MAX_K: usize = 9;

const P10: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
const M10: [f64; 10] = [1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9];
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt blob: {0}")]
pub struct CodecError(pub &'static str);

#[inline]
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[inline]
pub fn put_zigzag(buf: &mut Vec<u8>, v: i64) {
    put_varint(buf, zigzag(v));
}

/// A reader over a blob.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(CodecError("varint too long"));
            }
        }
    }

    #[inline]
    pub fn zigzag(&mut self) -> Result<i64, CodecError> {
        Ok(unzigzag(self.varint()?))
    }

    #[inline]
    fn f64(&mut self) -> Result<f64, CodecError> {
        let end = self.pos + 8;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(CodecError("truncated f64"))?;
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(a))
    }
}

#[inline]
fn fits_div(v: f64, k: usize) -> Option<i64> {
    let x = v * P10[k];
    if x.is_nan() || x.abs() >= EXACT {
        return None;
    }
    let m = x.round();
    if m / P10[k] == v {
        Some(m as i64)
    } else {
        None
    }
}

#[inline]
fn fits_mul(v: f64, k: usize) -> Option<i64> {
    let x = v / M10[k];
    if x.is_nan() || x.abs() >= EXACT {
        return None;
    }
    let m = x.round();
    if m * M10[k] == v {
        Some(m as i64)
    } else {
        None
    }
}

/// Picks the most compact mode that stores every value exactly.
fn choose_mode(points: &[(i64, f64)]) -> u8 {
    // DIV: the smallest k that fits every value (fitting k implies fitting k+1).
    let mut k = 0usize;
    let mut ok = true;
    for &(_, v) in points {
        while fits_div(v, k).is_none() {
            k += 1;
            if k > MAX_K {
                ok = false;
                break;
            }
        }
        if !ok {
            break;
        }
    }
    if ok && points.iter().all(|&(_, v)| fits_div(v, k).is_some()) {
        return DIV + k as u8;
    }
    for k in 1..=MAX_K {
        if points.iter().all(|&(_, v)| fits_mul(v, k).is_some()) {
            return MUL + k as u8;
        }
    }
    if points
        .iter()
        .all(|&(_, v)| (v as f32) as f64 == v || v.is_nan())
    {
        return F32;
    }
    RAW
}

/// Encodes the values of one point after `prev` (state carried between points).
#[inline]
fn put_value(buf: &mut Vec<u8>, mode: u8, v: f64, prev: &mut i64) {
    match mode {
        RAW => buf.extend_from_slice(&v.to_le_bytes()),
        F32 => {
            let bits = i64::from((v as f32).to_bits());
            put_zigzag(buf, bits.wrapping_sub(*prev));
            *prev = bits;
        }
        m if m >= MUL => {
            let x = fits_mul(v, usize::from(m - MUL)).unwrap_or(0);
            put_zigzag(buf, x.wrapping_sub(*prev));
            *prev = x;
        }
        m => {
            let x = fits_div(v, usize::from(m - DIV)).unwrap_or(0);
            put_zigzag(buf, x.wrapping_sub(*prev));
            *prev = x;
        }
    }
}

#[inline]
fn get_value(r: &mut Reader<'_>, mode: u8, prev: &mut i64) -> Result<f64, CodecError> {
    match mode {
        RAW => r.f64(),
        F32 => {
            let bits = prev.wrapping_add(r.zigzag()?);
            *prev = bits;
            Ok(f64::from(f32::from_bits(bits as u32)))
        }
        m if (MUL + 1..=MUL + MAX_K as u8).contains(&m) => {
            let x = prev.wrapping_add(r.zigzag()?);
            *prev = x;
            Ok(x as f64 * M10[usize::from(m - MUL)])
        }
        m if (DIV..=DIV + MAX_K as u8).contains(&m) => {
            let x = prev.wrapping_add(r.zigzag()?);
            *prev = x;
            Ok(x as f64 / P10[usize::from(m - DIV)])
        }
        _ => Err(CodecError("unknown value mode")),
    }
}

/// Appends one group (points of one item, in clock order, non-empty).
pub fn put_group(buf: &mut Vec<u8>, base: i64, points: &[(i64, f64)]) {
    let mode = choose_mode(points);
    put_group_mode(buf, base, points, mode);
}

fn put_group_mode(buf: &mut Vec<u8>, base: i64, points: &[(i64, f64)], mode: u8) {
    put_varint(buf, points.len() as u64);
    buf.push(mode);
    let mut prev_clock = base;
    for (i, &(c, _)) in points.iter().enumerate() {
        if i == 0 {
            put_zigzag(buf, c.wrapping_sub(base));
        } else {
            put_varint(buf, c.wrapping_sub(prev_clock) as u64);
        }
        prev_clock = c;
    }
    let mut prev = 0i64;
    for &(_, v) in points {
        put_value(buf, mode, v, &mut prev);
    }
    // A value that did not round-trip (cannot happen: modes are chosen by the
    // same test) would silently become 0; guard in debug builds.
    debug_assert!(
        mode == RAW
            || mode == F32
            || points.iter().all(|&(_, v)| {
                if mode >= MUL {
                    fits_mul(v, usize::from(mode - MUL)).is_some()
                } else {
                    fits_div(v, usize::from(mode - DIV)).is_some()
                }
            })
    );
}

/// Decodes one group, calling `f(clock, value)` for each point.
pub fn get_group(
    r: &mut Reader<'_>,
    base: i64,
    mut f: impl FnMut(i64, f64),
) -> Result<usize, CodecError> {
    let n = r.varint()? as usize;
    if n == 0 || n > r.buf.len() {
        return Err(CodecError("bad point count"));
    }
    let mode = r.u8()?;
    // Clocks first, then values: decode clocks into a small stack-friendly vec.
    let mut clocks = Vec::with_capacity(n);
    let mut c = base;
    for i in 0..n {
        if i == 0 {
            c = base.wrapping_add(r.zigzag()?);
        } else {
            c = c.wrapping_add(r.varint()? as i64);
        }
        clocks.push(c);
    }
    let mut prev = 0i64;
    for &c in &clocks {
        let v = get_value(r, mode, &mut prev)?;
        f(c, v);
    }
    Ok(n)
}

/// The longest time one history chunk covers, seconds.
pub const CHUNK_MAX_SPAN: i64 = 86_400;

/// Size estimate of one point in the message JSON `[clock,value],` (upper bound).
pub const JSON_POINT_BYTES: usize = 48;

/// Builds journal rows (one host, items ascending).
pub struct RowBuilder {
    pub buf: Vec<u8>,
    pub n: usize,
    pub clock_min: i64,
    pub clock_max: i64,
    pub json_bytes: usize,
    base: i64,
    last_item: u32,
}

impl RowBuilder {
    pub fn new(base: i64) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.push(VERSION);
        put_zigzag(&mut buf, base);
        RowBuilder {
            buf,
            n: 0,
            clock_min: i64::MAX,
            clock_max: i64::MIN,
            json_bytes: 40,
            base,
            last_item: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Adds the points of `item` (ascending item ids, each item at most once).
    pub fn add(&mut self, item: u32, points: &[(i64, f64)], key_len: usize) {
        if points.is_empty() {
            return;
        }
        put_varint(&mut self.buf, u64::from(item.wrapping_sub(self.last_item)));
        self.last_item = item;
        put_group(&mut self.buf, self.base, points);
        self.n += points.len();
        for &(c, _) in points {
            self.clock_min = self.clock_min.min(c);
            self.clock_max = self.clock_max.max(c);
        }
        self.json_bytes += key_len + 8 + points.len() * JSON_POINT_BYTES;
    }
}

/// Decodes a journal row, calling `f(item, clock, value)` per point.
pub fn decode_row(blob: &[u8], mut f: impl FnMut(u32, i64, f64)) -> Result<usize, CodecError> {
    let mut r = Reader::new(blob);
    if r.u8()? != VERSION {
        return Err(CodecError("unknown row version"));
    }
    let base = r.zigzag()?;
    let mut item = 0u32;
    let mut total = 0;
    while !r.at_end() {
        item = item.wrapping_add(r.varint()? as u32);
        let it = item;
        total += get_group(&mut r, base, |c, v| f(it, c, v))?;
    }
    Ok(total)
}

/// Encodes one item's points into history chunks of about `target` bytes each.
/// Returns `(start, end, n, blob)` per chunk.
/// A chunk also ends before it would span more than [`CHUNK_MAX_SPAN`] seconds
/// (retention works on whole chunks).
pub fn encode_chunks(points: &[(i64, f64)], target: usize) -> Vec<(i64, i64, usize, Vec<u8>)> {
    let mut out = Vec::new();
    if points.is_empty() {
        return out;
    }
    let mode = choose_mode(points);
    // Estimate points per chunk from a sample encoding, then encode exact slices.
    let mut i = 0;
    while i < points.len() {
        // Grow the slice until the encoded size reaches the target.
        let mut body = Vec::with_capacity(target + 32);
        let mut prev_clock = 0i64;
        let mut prev = 0i64;
        let mut j = i;
        while j < points.len() && body.len() < target {
            let (c, v) = points[j];
            if j > i && c.wrapping_sub(points[i].0) > CHUNK_MAX_SPAN {
                break;
            }
            if j == i {
                put_zigzag(&mut body, c);
            } else {
                put_varint(&mut body, c.wrapping_sub(prev_clock) as u64);
            }
            prev_clock = c;
            // values are interleaved in the body while measuring; re-encode below
            put_value(&mut body, mode, v, &mut prev);
            j += 1;
        }
        // Never split a second: chunk starts are keys, and a chunk ending in
        // the second the next one starts would hide its points from a read
        // that begins in that second.
        while j < points.len() && points[j].0 == points[j - 1].0 {
            j += 1;
        }
        let slice = &points[i..j];
        let mut blob = Vec::with_capacity(body.len() + 8);
        blob.push(VERSION);
        put_group_mode(&mut blob, 0, slice, mode);
        out.push((slice[0].0, slice[slice.len() - 1].0, slice.len(), blob));
        i = j;
    }
    out
}

/// Decodes a history chunk.
pub fn decode_chunk(blob: &[u8], f: impl FnMut(i64, f64)) -> Result<usize, CodecError> {
    let mut r = Reader::new(blob);
    if r.u8()? != VERSION {
        return Err(CodecError("unknown chunk version"));
    }
    get_group(&mut r, 0, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(points: &[(i64, f64)]) -> usize {
        let chunks = encode_chunks(points, 900);
        let mut out = Vec::new();
        let mut bytes = 0;
        for (start, end, n, blob) in &chunks {
            bytes += blob.len();
            let mut got = Vec::new();
            decode_chunk(blob, |c, v| got.push((c, v))).unwrap();
            assert_eq!(got.len(), *n);
            assert_eq!(got[0].0, *start);
            assert_eq!(got[n - 1].0, *end);
            assert!(blob.len() < 960, "chunk of {} bytes", blob.len());
            out.extend(got);
        }
        assert_eq!(out.len(), points.len());
        for (a, b) in out.iter().zip(points) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{} vs {}", a.1, b.1);
        }
        bytes
    }

    #[test]
    fn codec_roundtrips_every_mode() {
        let t0 = 1_700_000_000i64;
        let decimal: Vec<_> = (0..1000)
            .map(|i| (t0 + i, f64::from(200 + (i % 7) as i32) / 10.0))
            .collect();
        let b = roundtrip(&decimal);
        assert!(b < 2200, "decimal: {b} bytes");
        let mul: Vec<_> = (0..1000)
            .map(|i| (t0 + i * 10, f64::from(200 + (i % 9) as i32) * 0.1))
            .collect();
        roundtrip(&mul);
        let ints: Vec<_> = (0..500)
            .map(|i| (t0 + i, (i * 37 % 65536) as f64))
            .collect();
        roundtrip(&ints);
        let f32s: Vec<_> = (0..500)
            .map(|i| (t0 + i, f64::from(21.3f32 + i as f32 * 0.01)))
            .collect();
        roundtrip(&f32s);
        let mut rng = fastrand::Rng::with_seed(7);
        let raw: Vec<_> = (0..2000).map(|i| (t0 + i, rng.f64() * 1e6 - 5e5)).collect();
        let b = roundtrip(&raw);
        assert!(b < 2000 * 10, "raw: {b} bytes");
        let odd = [
            (t0, -0.5),
            (t0 + 1, 1e300),
            (t0 + 2, -1e-300),
            (t0 + 3, 0.0),
            (t0 + 5, f64::MAX),
        ];
        roundtrip(&odd);
        let big = [(t0, 9.0e15), (t0 + 1, -9.0e15), (t0 + 2, 3.0)];
        roundtrip(&big);
    }

    #[test]
    fn codec_rows() {
        let t0 = 1_700_000_000i64;
        let mut rb = RowBuilder::new(t0);
        rb.add(3, &[(t0, 1.5), (t0 + 1, 1.6)], 4);
        rb.add(9, &[(t0 - 10, 7.0)], 4);
        rb.add(400, &[(t0 + 100, f64::from(1.1f32))], 4);
        let mut got = Vec::new();
        let n = decode_row(&rb.buf, |i, c, v| got.push((i, c, v))).unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            got,
            vec![
                (3, t0, 1.5),
                (3, t0 + 1, 1.6),
                (9, t0 - 10, 7.0),
                (400, t0 + 100, f64::from(1.1f32))
            ]
        );
        assert_eq!((rb.clock_min, rb.clock_max, rb.n), (t0 - 10, t0 + 100, 4));
        assert!(decode_row(&rb.buf[..rb.buf.len() - 1], |_, _, _| {}).is_err());
        assert!(decode_row(&[], |_, _, _| {}).is_err());
    }
}
