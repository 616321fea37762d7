//! Pure: registers <-> engineering values, for every type and byte order.
//!
//! # Layout
//!
//! Byte orders name the bytes of a 32-bit value from the most significant
//! (`A`) as they arrive in the registers:
//!
//! | order | 32-bit words     | 64-bit words                 | 16-bit word |
//! |-------|------------------|------------------------------|-------------|
//! | ABCD  | `AB CD`          | `AB CD EF GH` (big-endian)   | as is       |
//! | CDAB  | `CD AB`          | `GH EF CD AB` (words reversed) | as is     |
//! | BADC  | `BA DC`          | `BA DC FE HG` (bytes swapped in each word) | bytes swapped |
//! | DCBA  | `DC BA`          | `HG FE DC BA` (little-endian) | bytes swapped |
//!
//! That is: `CDAB` and `DCBA` reverse the order of the words, `BADC` and
//! `DCBA` swap the two bytes inside every word. A 16-bit value has one word,
//! so only the byte swap applies: `ABCD`/`CDAB` leave a `u16`/`i16` as is,
//! `DCBA`/`BADC` swap its two bytes (a device that is little-endian throughout
//! is little-endian in its 16-bit registers too).
//!
//! A `bool` taken from a register reads bit `bit` (0 = least significant) of
//! the register *as received*: byte order does not renumber bits. A register
//! `bool` without a bit number reads the whole register: non-zero is 1.
//!
//! Values are `f64`. `u64`/`i64` beyond ±2^53 lose precision (the nearest
//! `f64`); encoding such a target writes the integer the `f64` holds.
//!
//! Engineering value = raw * scale + offset.

use std::fmt::Write as _;

use crate::model::{ByteOrder, ItemSpec, Table, ValueType};

/// Why registers cannot be decoded. Device data never makes the decoders
/// panic; a short read is an error rather than a made-up value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer words than the type occupies.
    #[error("{vt} needs {need} register(s) but only {got} were read")]
    TooShort {
        vt: ValueType,
        need: usize,
        got: usize,
    },
    /// A register bit number outside 0..=15.
    #[error("bit {0} is outside 0..15 of a 16-bit register")]
    BadBit(u8),
}

/// Why a target value cannot be written to an item. Every message names
/// values in engineering units.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// NaN or infinite target.
    #[error("target {0} is not a finite number")]
    NotFinite(f64),
    /// The item's scale is 0 or not finite, or its offset not finite: no
    /// target maps back to a raw value.
    #[error(
        "this item's scale {scale} and offset {offset} cannot be inverted, so it cannot be written"
    )]
    BadScale { scale: f64, offset: f64 },
    /// Outside the range of the register type (after scale and offset).
    #[error("{0}")]
    OutOfRange(String),
    /// Not on the grid `offset + k * scale` of an integer register.
    #[error("{0}")]
    NotMultiple(String),
    /// A `bool` item takes only its two values.
    #[error("{0}")]
    NotBool(String),
}

/// Word-level transform for `order`: reverse the words (CDAB, DCBA), swap the
/// bytes inside each word (BADC, DCBA). It is its own inverse.
fn reorder(words: &mut [u16], order: ByteOrder) {
    if matches!(order, ByteOrder::Cdab | ByteOrder::Dcba) {
        words.reverse();
    }
    if matches!(order, ByteOrder::Badc | ByteOrder::Dcba) {
        for w in words.iter_mut() {
            *w = w.swap_bytes();
        }
    }
}

/// The big-endian integer of the first `n` words after undoing `order`.
fn gather(words: &[u16], n: usize, order: ByteOrder) -> u64 {
    let mut buf = [0u16; 4];
    let buf = &mut buf[..n];
    buf.copy_from_slice(&words[..n]);
    reorder(buf, order);
    buf.iter().fold(0u64, |acc, &w| (acc << 16) | u64::from(w))
}

/// The `n` words that hold the big-endian integer `bits` in `order`.
fn scatter(bits: u64, n: usize, order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = (0..n).rev().map(|i| (bits >> (16 * i)) as u16).collect();
    reorder(&mut words, order);
    words
}

/// The raw value (before scale and offset) of `vt` laid out in `words` in byte
/// order `order`; for `Bool`, `bit` of `words[0]` (the whole word, non-zero =
/// 1, when `bit` is `None`).
///
/// `words` must hold at least `vt.registers()` words; extra words are ignored,
/// so a caller may pass the rest of a request's registers.
pub fn decode_raw(
    words: &[u16],
    vt: ValueType,
    order: ByteOrder,
    bit: Option<u8>,
) -> Result<f64, DecodeError> {
    let need = usize::from(vt.registers());
    if words.len() < need {
        return Err(DecodeError::TooShort {
            vt,
            need,
            got: words.len(),
        });
    }
    let bits = gather(words, need, order);
    Ok(match vt {
        ValueType::U16 => bits as u16 as f64,
        ValueType::I16 => bits as u16 as i16 as f64,
        ValueType::U32 => bits as u32 as f64,
        ValueType::I32 => bits as u32 as i32 as f64,
        ValueType::U64 => bits as f64,
        ValueType::I64 => bits as i64 as f64,
        ValueType::F32 => f64::from(f32::from_bits(bits as u32)),
        ValueType::F64 => f64::from_bits(bits),
        ValueType::Bool => {
            let word = words[0];
            match bit {
                None => f64::from(u8::from(word != 0)),
                Some(b) if b < 16 => f64::from((word >> b) & 1),
                Some(b) => return Err(DecodeError::BadBit(b)),
            }
        }
    })
}

/// The engineering value of an item from its registers: raw * scale + offset.
///
/// For a register item, `words` starts at the item's address (extra words are
/// ignored). For a coil or discrete input, `words[0]` non-zero means on (the
/// shape [`encode_item`] produces); prefer [`decode_bit_item`] for those.
pub fn decode_item(item: &ItemSpec, words: &[u16]) -> Result<f64, DecodeError> {
    let raw = if item.table.is_bits() {
        match words.first() {
            Some(&w) => f64::from(u8::from(w != 0)),
            None => {
                return Err(DecodeError::TooShort {
                    vt: item.value_type,
                    need: 1,
                    got: 0,
                })
            }
        }
    } else {
        decode_raw(words, item.value_type, item.byte_order, item.bit)?
    };
    Ok(raw * item.scale + item.offset)
}

/// The engineering value of a coil or discrete input item (0 or 1, then scale/offset).
pub fn decode_bit_item(item: &ItemSpec, bit: bool) -> f64 {
    f64::from(u8::from(bit)) * item.scale + item.offset
}

/// `word` with `bit` set to `on`, for the read-modify-write of a `bool` item
/// that lives in one bit of a holding register. A bit number above 15 leaves
/// the word unchanged (a validated config never has one).
pub fn encode_bit_into(word: u16, bit: u8, on: bool) -> u16 {
    match 1u16.checked_shl(u32::from(bit)) {
        Some(mask) if on => word | mask,
        Some(mask) => word & !mask,
        None => word,
    }
}

/// The range of an integer type as f64 bounds, and its text.
fn int_range(vt: ValueType) -> Option<(f64, f64, &'static str)> {
    Some(match vt {
        ValueType::U16 => (0.0, 65_535.0, "0..65535"),
        ValueType::I16 => (-32_768.0, 32_767.0, "-32768..32767"),
        ValueType::U32 => (0.0, 4_294_967_295.0, "0..4294967295"),
        ValueType::I32 => (-2_147_483_648.0, 2_147_483_647.0, "-2147483648..2147483647"),
        // 2^64 and ±2^63 as f64: a raw value at the very top saturates to
        // u64::MAX / i64::MAX when converted.
        ValueType::U64 => (0.0, u64::MAX as f64, "0..18446744073709551615"),
        ValueType::I64 => (
            i64::MIN as f64,
            i64::MAX as f64,
            "-9223372036854775808..9223372036854775807",
        ),
        _ => return None,
    })
}

/// A number for a message: integers without a fraction, others with at most
/// 12 significant digits so that `3 * 0.1` reads `0.3`.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let rounded: f64 = format!("{x:.11e}").parse().unwrap_or(x);
    if rounded == 0.0 {
        "0".to_string()
    } else if !(1e-6..1e15).contains(&rounded.abs()) {
        format!("{rounded:e}")
    } else {
        rounded.to_string()
    }
}

/// The registers to write so that the item reads back as `target`
/// (engineering units): raw = (target - offset) / scale, which must be
/// representable in the item's type.
///
/// * integer types: raw must be an integer in the type's range. The tolerance
///   is 1e-9 of a register step (so `0.3` on a scale `0.1` register is raw 3
///   although `0.3 / 0.1` is `2.9999999999999996`), widened to a few f64 ulps
///   for huge raw values;
/// * `f32`: raw within ±`f32::MAX` (it is then rounded to the nearest `f32`;
///   see [`written_value`] for what the device will hold); `f64`: finite;
/// * `bool`: raw 0 or 1, returned as one word `0` or `1`. For a coil the caller
///   uses write_single_coil; for a bit of a register it reads the register and
///   writes [`encode_bit_into`]`(word, bit, w != 0)`; a register `bool` without
///   a bit number is written as the whole word.
///
/// Bounds (`lower_bound`/`upper_bound`) are the caller's check, not this one's.
pub fn encode_item(item: &ItemSpec, target: f64) -> Result<Vec<u16>, EncodeError> {
    if !target.is_finite() {
        return Err(EncodeError::NotFinite(target));
    }
    let (scale, offset) = (item.scale, item.offset);
    if scale == 0.0 || !scale.is_finite() || !offset.is_finite() {
        return Err(EncodeError::BadScale { scale, offset });
    }
    let raw = (target - offset) / scale;
    let vt = item.value_type;
    let after = format!("after scale {}, offset {}", num(scale), num(offset));
    if !raw.is_finite() {
        return Err(EncodeError::OutOfRange(format!(
            "target {} is outside what this {vt} register can hold ({after})",
            num(target)
        )));
    }
    let order = item.byte_order;
    let n = usize::from(vt.registers());
    match vt {
        ValueType::F32 => {
            if raw.abs() > f64::from(f32::MAX) {
                return Err(EncodeError::OutOfRange(format!(
                    "target {} is outside the f32 range of this register ({after})",
                    num(target)
                )));
            }
            Ok(scatter(u64::from((raw as f32).to_bits()), n, order))
        }
        ValueType::F64 => Ok(scatter(raw.to_bits(), n, order)),
        ValueType::Bool => {
            let r = raw.round();
            if (raw - r).abs() > 1e-9 || !(r == 0.0 || r == 1.0) {
                let (off, on) = (num(offset), num(scale + offset));
                return Err(EncodeError::NotBool(format!(
                    "target {} is not a value of this on/off item: it takes {off} (off) or {on} (on)",
                    num(target)
                )));
            }
            Ok(vec![u16::from(r == 1.0)])
        }
        _ => {
            let Some((min, max, text)) = int_range(vt) else {
                return Err(EncodeError::OutOfRange(format!("{vt} cannot be written")));
            };
            // 1e-9 of one step of the register; for huge raw values the f64
            // spacing of the division's result dominates instead.
            let tol = (raw.abs() * 4.0 * f64::EPSILON).max(1e-9);
            let r = raw.round();
            let on_grid = (raw - r).abs() <= tol;
            let checked = if on_grid { r } else { raw };
            if checked < min || checked > max {
                let mut msg = format!(
                    "target {} is outside the {vt} range {text} of this register ({after})",
                    num(target)
                );
                if scale != 1.0 || offset != 0.0 {
                    let (a, b) = (min * scale + offset, max * scale + offset);
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    let _ = write!(msg, "; it can hold {}..{}", num(lo), num(hi));
                }
                return Err(EncodeError::OutOfRange(msg));
            }
            if !on_grid {
                let mut near: Vec<f64> = [raw.floor(), raw.ceil()]
                    .into_iter()
                    .filter(|k| (min..=max).contains(k))
                    .map(|k| k * scale + offset)
                    .collect();
                near.sort_by(f64::total_cmp);
                let near: Vec<String> = near.into_iter().map(num).collect();
                let grid = if offset == 0.0 {
                    format!("a multiple of {} (this register's scale)", num(scale))
                } else {
                    format!(
                        "{} plus a multiple of {} (this register's offset and scale)",
                        num(offset),
                        num(scale)
                    )
                };
                return Err(EncodeError::NotMultiple(format!(
                    "target {} is not {grid}; the nearest values it can hold are {}",
                    num(target),
                    near.join(" and ")
                )));
            }
            let bits = match vt {
                ValueType::I16 => u64::from(r as i16 as u16),
                ValueType::I32 => u64::from(r as i32 as u32),
                ValueType::I64 => r as i64 as u64,
                // u16, u32, u64: in range and non-negative; `as` saturates at
                // the top of u64 where 2^64 - 1 rounds up to 2^64 in f64.
                _ => r as u64,
            };
            Ok(scatter(bits, n, order))
        }
    }
}

/// The engineering value the device will hold after writing `target`: what
/// [`encode_item`] writes, decoded again. Equal to `target` except for `f32`
/// (rounded to the nearest `f32`), integers within the 1e-9 tolerance, and
/// 64-bit integers beyond 2^53. Compare a read-back with this, not with
/// `target`.
pub fn written_value(item: &ItemSpec, target: f64) -> Result<f64, EncodeError> {
    let words = encode_item(item, target)?;
    if item.value_type == ValueType::Bool {
        let raw = f64::from(words.first().copied().unwrap_or(0));
        return Ok(raw * item.scale + item.offset);
    }
    decode_item(item, &words).map_err(|e| EncodeError::OutOfRange(e.to_string()))
}

/// Every plausible decoding of registers starting at each offset, for `probe`:
/// (offset, label, value). Labels: `u16`, `i16` at every offset; `u32 ABCD`,
/// `i32 ABCD`, `f32 ABCD` and the same for `DCBA`, `BADC`, `CDAB` where two
/// words remain; `u64 ABCD`, `i64 ABCD`, `f64 ABCD`, ... where four remain.
/// Orders follow [`ByteOrder::ALL`].
pub fn all_decodings(words: &[u16]) -> Vec<(usize, String, f64)> {
    decodings(words)
        .into_iter()
        .map(|(off, vt, order, v)| match order {
            Some(o) => (off, format!("{vt} {o}"), v),
            None => (off, vt.name().to_string(), v),
        })
        .collect()
}

/// [`all_decodings`] typed: (offset, type, byte order for 32/64-bit types, raw value).
fn decodings(words: &[u16]) -> Vec<(usize, ValueType, Option<ByteOrder>, f64)> {
    let mut out = Vec::new();
    for off in 0..words.len() {
        let rest = &words[off..];
        for vt in [ValueType::U16, ValueType::I16] {
            if let Ok(v) = decode_raw(rest, vt, ByteOrder::Abcd, None) {
                out.push((off, vt, None, v));
            }
        }
        for group in [
            [ValueType::U32, ValueType::I32, ValueType::F32],
            [ValueType::U64, ValueType::I64, ValueType::F64],
        ] {
            for order in ByteOrder::ALL {
                for vt in group {
                    if let Ok(v) = decode_raw(rest, vt, order, None) {
                        out.push((off, vt, Some(order), v));
                    }
                }
            }
        }
    }
    out
}

/// The scales `probe --expect` tries.
pub const EXPECT_SCALES: [f64; 4] = [1.0, 0.1, 0.01, 0.001];

/// One register layout that decodes to the value a technician expects.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The 0-based address of its first register.
    pub address: u16,
    pub value_type: ValueType,
    /// For 32/64-bit types only.
    pub byte_order: Option<ByteOrder>,
    pub scale: f64,
    /// raw * scale.
    pub value: f64,
    /// |value - expected| / |expected| (absolute when expected is 0).
    pub error: f64,
}

/// Every (address, type, byte order, scale among [`EXPECT_SCALES`]) of
/// `words` (read from `start` on) that decodes to `expected` within
/// `tolerance` (absolute), best first: smallest error; ties go to the
/// address `asked` for, then to fewer registers, then to the order types,
/// byte orders and scales are listed in.
pub fn matching_layouts(
    start: u16,
    words: &[u16],
    asked: u16,
    expected: f64,
    tolerance: f64,
) -> Vec<Layout> {
    let mut found = Vec::new();
    for (off, vt, order, raw) in decodings(words) {
        let Ok(address) = u16::try_from(usize::from(start) + off) else {
            continue;
        };
        for scale in EXPECT_SCALES {
            let value = raw * scale;
            let diff = (value - expected).abs();
            if !value.is_finite() || diff > tolerance {
                continue;
            }
            let error = if expected == 0.0 {
                diff
            } else {
                diff / expected.abs()
            };
            found.push(Layout {
                address,
                value_type: vt,
                byte_order: order,
                scale,
                value,
                error,
            });
        }
    }
    let rank = |l: &Layout| {
        (
            l.address != asked,
            vt_rank(l.value_type),
            l.byte_order
                .and_then(|o| ByteOrder::ALL.iter().position(|&a| a == o))
                .unwrap_or(0),
            EXPECT_SCALES
                .iter()
                .position(|&s| s == l.scale)
                .unwrap_or(0),
        )
    };
    found.sort_by(|a, b| {
        a.error
            .total_cmp(&b.error)
            .then_with(|| rank(a).cmp(&rank(b)))
    });
    found
}

/// Smaller types first, signed before unsigned.
fn vt_rank(vt: ValueType) -> u8 {
    match vt {
        ValueType::I16 => 0,
        ValueType::U16 => 1,
        ValueType::I32 => 2,
        ValueType::U32 => 3,
        ValueType::F32 => 4,
        ValueType::I64 => 5,
        ValueType::U64 => 6,
        ValueType::F64 => 7,
        ValueType::Bool => 8,
    }
}

/// A float with up to 6 significant digits (like C's `%g`); NaN and infinity
/// as `-`.
pub fn format_g6(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_string();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{x:.5e}"); // d.ddddde[-]x, correctly rounded
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..6).contains(&exp) {
        let decimals = usize::try_from(5 - exp).unwrap_or(0);
        trim(&format!("{x:.decimals$}"))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    }
}

fn render(headers: &[String], rows: &[Vec<String>], left: &[bool]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, &w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if left.get(i).copied().unwrap_or(false) {
                let _ = write!(s, "{cell:<w$}");
            } else {
                let _ = write!(s, "{cell:>w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, headers);
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    line(&mut out, &rule);
    for row in rows {
        line(&mut out, row);
    }
    out
}

/// The two bytes of a register as text: printable ASCII as is, others `.`.
fn chars(word: u16) -> String {
    word.to_be_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

/// [`probe_table_for`] without the Modicon reference column.
pub fn probe_table(start_address: u16, words: &[u16]) -> String {
    probe(None, start_address, words)
}

/// `modbridge probe`'s output: the registers read from `start_address` on,
/// one row per register, with every plausible decoding of the value starting
/// at that register, in two aligned tables:
///
/// 1. address, Modicon reference (`table` given), raw hex and decimal, `i16`,
///    the two bytes as text (to spot model names and serial numbers), and `f32`
///    in the four byte orders (no order is marked as likely: a plausible
///    looking float is often garbage while the real value is a scaled
///    integer; `probe --expect` finds the layout of a known value);
/// 2. address, raw hex, and `u32`/`i32` in the four byte orders (`i16`/`i32`
///    only where they differ from `u16`/`u32`, i.e. negative).
///
/// Floats show up to 6 significant digits; NaN and infinity show as `-`.
/// 32-bit columns are empty on the last register.
pub fn probe_table_for(table: Table, start_address: u16, words: &[u16]) -> String {
    probe(Some(table), start_address, words)
}

fn probe(table: Option<Table>, start: u16, words: &[u16]) -> String {
    if words.is_empty() {
        return "no registers read\n".to_string();
    }
    let head = |row: &mut Vec<String>, off: usize| {
        let addr = u32::from(start) + off as u32;
        row.push(addr.to_string());
        if let Some(t) = table {
            row.push(match u16::try_from(addr) {
                Ok(a) => t.modicon(a).to_string(),
                Err(_) => "-".to_string(),
            });
        }
        row.push(format!("0x{:04X}", words[off]));
    };
    let mut base: Vec<String> = vec!["addr".into()];
    if table.is_some() {
        base.push("ref".into());
    }
    base.push("hex".into());
    let n_head = base.len();

    // Table 1: 16-bit views and floats.
    let mut h1 = base.clone();
    h1.extend(["u16", "i16", "text"].map(String::from));
    h1.extend(ByteOrder::ALL.map(|o| format!("f32 {o}")));
    let mut left1 = vec![false; h1.len()];
    left1[n_head + 2] = true;
    let mut rows1 = Vec::new();
    // Table 2: 32-bit integers.
    let mut h2 = base;
    for o in ByteOrder::ALL {
        h2.push(format!("u32 {o}"));
        h2.push(format!("i32 {o}"));
    }
    let mut rows2 = Vec::new();

    for off in 0..words.len() {
        let w = words[off];
        let pair = words.get(off..off + 2).filter(|p| p.len() == 2);
        let mut r1 = Vec::new();
        head(&mut r1, off);
        r1.push(w.to_string());
        let signed = w as i16;
        r1.push(if signed < 0 {
            signed.to_string()
        } else {
            String::new()
        });
        r1.push(chars(w));
        let mut r2 = Vec::new();
        head(&mut r2, off);
        for order in ByteOrder::ALL {
            match pair {
                Some(p) => {
                    let bits = gather(p, 2, order) as u32;
                    let f = f32::from_bits(bits) as f64;
                    r1.push(format_g6(f));
                    r2.push(bits.to_string());
                    r2.push(if (bits as i32) < 0 {
                        (bits as i32).to_string()
                    } else {
                        String::new()
                    });
                }
                None => {
                    r1.push(String::new());
                    r2.push(String::new());
                    r2.push(String::new());
                }
            }
        }
        rows1.push(r1);
        rows2.push(r2);
    }
    let mut out = render(&h1, &rows1, &left1);
    out.push('\n');
    out.push_str(&render(&h2, &rows2, &[]));
    out.push_str("i16/i32 shown only where negative (otherwise equal to u16/u32)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteOrder::{Abcd, Badc, Cdab, Dcba};
    use ValueType::{Bool, F32, F64, I16, I32, I64, U16, U32, U64};

    fn item(table: Table, vt: ValueType, order: ByteOrder, scale: f64, offset: f64) -> ItemSpec {
        ItemSpec {
            byte_order: order,
            scale,
            offset,
            configurable: true,
            ..ItemSpec::new("k", table, 0, vt)
        }
    }

    /// Decodes `words` as `vt` in `order` and expects `raw`; then encodes
    /// `raw` (scale 1, offset 0) and expects the same words back.
    #[track_caller]
    fn check(vt: ValueType, order: ByteOrder, words: &[u16], raw: f64) {
        let got = decode_raw(words, vt, order, None);
        assert_eq!(got, Ok(raw), "decode {vt} {order} {words:04X?}");
        let it = item(Table::Holding, vt, order, 1.0, 0.0);
        assert_eq!(
            encode_item(&it, raw).as_deref(),
            Ok(words),
            "encode {vt} {order} {raw}"
        );
    }

    #[test]
    fn every_type_in_every_order() {
        let cases: &[(ValueType, ByteOrder, &[u16], f64)] = &[
            // 16-bit: ABCD/CDAB as is, DCBA/BADC swap the bytes.
            (U16, Abcd, &[0x1234], 4660.0),
            (U16, Cdab, &[0x1234], 4660.0),
            (U16, Dcba, &[0x3412], 4660.0),
            (U16, Badc, &[0x3412], 4660.0),
            (I16, Abcd, &[0xFFFE], -2.0),
            (I16, Cdab, &[0xFFFE], -2.0),
            (I16, Dcba, &[0xFEFF], -2.0),
            (I16, Badc, &[0xFEFF], -2.0),
            (I16, Abcd, &[0x8000], -32768.0),
            (I16, Abcd, &[0x7FFF], 32767.0),
            // u32 0x12345678
            (U32, Abcd, &[0x1234, 0x5678], 305_419_896.0),
            (U32, Cdab, &[0x5678, 0x1234], 305_419_896.0),
            (U32, Badc, &[0x3412, 0x7856], 305_419_896.0),
            (U32, Dcba, &[0x7856, 0x3412], 305_419_896.0),
            (U32, Abcd, &[0xFFFF, 0xFFFF], 4_294_967_295.0),
            // i32 -2 = 0xFFFFFFFE
            (I32, Abcd, &[0xFFFF, 0xFFFE], -2.0),
            (I32, Cdab, &[0xFFFE, 0xFFFF], -2.0),
            (I32, Badc, &[0xFFFF, 0xFEFF], -2.0),
            (I32, Dcba, &[0xFEFF, 0xFFFF], -2.0),
            // f32 1.0 = 0x3F800000
            (F32, Abcd, &[0x3F80, 0x0000], 1.0),
            (F32, Cdab, &[0x0000, 0x3F80], 1.0),
            (F32, Badc, &[0x803F, 0x0000], 1.0),
            (F32, Dcba, &[0x0000, 0x803F], 1.0),
            // f32 21.5 = 0x41AC0000, -2.5 = 0xC0200000
            (F32, Abcd, &[0x41AC, 0x0000], 21.5),
            (F32, Dcba, &[0x0000, 0x20C0], -2.5),
            // u64 0x00123456789ABCDE (below 2^53: exact in f64)
            (
                U64,
                Abcd,
                &[0x0012, 0x3456, 0x789A, 0xBCDE],
                5_124_095_576_030_430.0,
            ),
            (
                U64,
                Cdab,
                &[0xBCDE, 0x789A, 0x3456, 0x0012],
                5_124_095_576_030_430.0,
            ),
            (
                U64,
                Badc,
                &[0x1200, 0x5634, 0x9A78, 0xDEBC],
                5_124_095_576_030_430.0,
            ),
            (
                U64,
                Dcba,
                &[0xDEBC, 0x9A78, 0x5634, 0x1200],
                5_124_095_576_030_430.0,
            ),
            (U64, Abcd, &[0, 0, 0x0001, 0x0000], 65536.0),
            (U64, Abcd, &[0x0020, 0, 0, 0], 9_007_199_254_740_992.0), // 2^53
            // i64 -2
            (I64, Abcd, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2.0),
            (I64, Cdab, &[0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2.0),
            (I64, Badc, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], -2.0),
            (I64, Dcba, &[0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], -2.0),
            (I64, Abcd, &[0x8000, 0, 0, 0], -9_223_372_036_854_775_808.0),
            // f64 1.0 = 0x3FF0000000000000, -0.1 = 0xBFB999999999999A
            (F64, Abcd, &[0x3FF0, 0, 0, 0], 1.0),
            (F64, Cdab, &[0, 0, 0, 0x3FF0], 1.0),
            (F64, Badc, &[0xF03F, 0, 0, 0], 1.0),
            (F64, Dcba, &[0, 0, 0, 0xF03F], 1.0),
            (F64, Abcd, &[0xBFB9, 0x9999, 0x9999, 0x999A], -0.1),
            (F64, Cdab, &[0x999A, 0x9999, 0x9999, 0xBFB9], -0.1),
            (F64, Badc, &[0xB9BF, 0x9999, 0x9999, 0x9A99], -0.1),
            (F64, Dcba, &[0x9A99, 0x9999, 0x9999, 0xB9BF], -0.1),
        ];
        for &(vt, order, words, raw) in cases {
            check(vt, order, words, raw);
        }
    }

    #[test]
    fn big_64_bit_integers_are_the_nearest_f64() {
        // 2^64 - 1 and 2^53 + 1 are not f64 values: decoding rounds.
        let max = decode_raw(&[0xFFFF; 4], U64, Abcd, None);
        assert_eq!(max, Ok(18_446_744_073_709_551_616.0));
        let odd = decode_raw(&[0x0020, 0, 0, 1], U64, Abcd, None);
        assert_eq!(odd, Ok(9_007_199_254_740_992.0));
        // Encoding the top of the range saturates instead of failing.
        let it = item(Table::Holding, U64, Abcd, 1.0, 0.0);
        assert_eq!(
            encode_item(&it, 18_446_744_073_709_551_616.0),
            Ok(vec![0xFFFF; 4])
        );
        let it = item(Table::Holding, I64, Abcd, 1.0, 0.0);
        assert_eq!(
            encode_item(&it, 9_223_372_036_854_775_808.0),
            Ok(vec![0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF])
        );
        assert!(encode_item(&it, 1e19).is_err());
    }

    #[test]
    fn register_bits() {
        let w = [0b1000_0000_0000_0101u16];
        let cases: &[(Option<u8>, f64)] = &[
            (Some(0), 1.0),
            (Some(1), 0.0),
            (Some(2), 1.0),
            (Some(15), 1.0),
            (Some(14), 0.0),
            (None, 1.0),
        ];
        for &(bit, want) in cases {
            for order in ByteOrder::ALL {
                assert_eq!(decode_raw(&w, Bool, order, bit), Ok(want), "{bit:?}");
            }
        }
        assert_eq!(decode_raw(&[0], Bool, Abcd, None), Ok(0.0));
        assert_eq!(
            decode_raw(&w, Bool, Abcd, Some(16)),
            Err(DecodeError::BadBit(16))
        );
        let cases: &[(u16, u8, bool, u16)] = &[
            (0x0000, 0, true, 0x0001),
            (0x0001, 0, true, 0x0001),
            (0xFFFF, 3, false, 0xFFF7),
            (0x1234, 15, true, 0x9234),
            (0x9234, 15, false, 0x1234),
            (0x1234, 16, true, 0x1234),
        ];
        for &(word, bit, on, want) in cases {
            assert_eq!(
                encode_bit_into(word, bit, on),
                want,
                "{word:04X} {bit} {on}"
            );
        }
        // A register bit item: encode gives the bit's state, the caller merges it.
        let mut it = item(Table::Holding, Bool, Abcd, 1.0, 0.0);
        it.bit = Some(3);
        assert_eq!(encode_item(&it, 1.0), Ok(vec![1]));
        assert_eq!(encode_item(&it, 0.0), Ok(vec![0]));
        assert_eq!(decode_item(&it, &[0x0008]), Ok(1.0));
        assert_eq!(decode_item(&it, &[0xFFF7]), Ok(0.0));
    }

    #[test]
    fn coils_and_discrete_inputs() {
        let coil = item(Table::Coil, Bool, Abcd, 1.0, 0.0);
        assert_eq!(decode_bit_item(&coil, true), 1.0);
        assert_eq!(decode_bit_item(&coil, false), 0.0);
        assert_eq!(decode_item(&coil, &[1]), Ok(1.0));
        assert_eq!(decode_item(&coil, &[0xFF00]), Ok(1.0));
        assert_eq!(decode_item(&coil, &[0]), Ok(0.0));
        assert!(decode_item(&coil, &[]).is_err());
        assert_eq!(encode_item(&coil, 1.0), Ok(vec![1]));
        assert_eq!(encode_item(&coil, 0.0), Ok(vec![0]));
        let scaled = item(Table::Discrete, Bool, Abcd, 100.0, 5.0);
        assert_eq!(decode_bit_item(&scaled, true), 105.0);
        assert_eq!(decode_bit_item(&scaled, false), 5.0);
    }

    #[test]
    fn scale_and_offset() {
        let cases: &[(ValueType, f64, f64, &[u16], f64)] = &[
            (I16, 0.1, 0.0, &[0xFF38], -20.0),
            (I16, 0.1, 0.0, &[215], 21.5),
            (U16, 1.0, -40.0, &[100], 60.0),
            (U16, 0.5, 10.0, &[3], 11.5),
            (U32, 0.001, 0.0, &[0x0001, 0x86A0], 100.0),
            (F32, 2.0, 1.0, &[0x3F80, 0x0000], 3.0),
            (U16, -1.0, 0.0, &[5], -5.0),
        ];
        for &(vt, scale, offset, words, want) in cases {
            let it = item(Table::Input, vt, Abcd, scale, offset);
            let got = decode_item(&it, words).unwrap();
            assert!((got - want).abs() < 1e-9, "{vt} {words:?}: {got} != {want}");
            assert_eq!(encode_item(&it, want).as_deref(), Ok(words), "{vt} {want}");
        }
    }

    #[test]
    fn short_slices_are_errors() {
        for vt in [U16, I16, U32, I32, U64, I64, F32, F64, Bool] {
            let need = usize::from(vt.registers());
            let words = vec![0u16; need - 1];
            assert_eq!(
                decode_raw(&words, vt, Abcd, Some(0)),
                Err(DecodeError::TooShort {
                    vt,
                    need,
                    got: need - 1
                })
            );
            let it = item(Table::Holding, vt, Cdab, 1.0, 0.0);
            assert!(decode_item(&it, &words).is_err());
            // Longer slices are fine: extra words are ignored.
            assert_eq!(decode_raw(&[0u16; 6], vt, Abcd, Some(0)), Ok(0.0));
        }
        assert_eq!(
            DecodeError::TooShort {
                vt: F32,
                need: 2,
                got: 1
            }
            .to_string(),
            "f32 needs 2 register(s) but only 1 were read"
        );
    }

    #[test]
    fn encode_round_trips_every_type_and_order() {
        let mut rng = fastrand::Rng::with_seed(7);
        for vt in [U16, I16, U32, I32, U64, I64, F32, F64] {
            for order in ByteOrder::ALL {
                for (scale, offset) in [(1.0, 0.0), (0.1, 0.0), (0.5, -40.0), (-2.0, 3.0)] {
                    let it = item(Table::Holding, vt, order, scale, offset);
                    for _ in 0..200 {
                        let raw = match vt {
                            U16 => f64::from(rng.u16(..)),
                            I16 => f64::from(rng.i16(..)),
                            U32 => f64::from(rng.u32(..)),
                            I32 => f64::from(rng.i32(..)),
                            // Within 2^53 so the raw value is exact.
                            U64 => rng.u64(..1 << 53) as f64,
                            I64 => rng.i64(-(1 << 53)..1 << 53) as f64,
                            F32 => f64::from(f32::from_bits(rng.u32(..))).clamp(-1e30, 1e30),
                            _ => f64::from_bits(rng.u64(..)).clamp(-1e300, 1e300),
                        };
                        let raw = if raw.is_nan() { 1.5 } else { raw };
                        let target = raw * scale + offset;
                        let words = encode_item(&it, target)
                            .unwrap_or_else(|e| panic!("{vt} {order} {target}: {e}"));
                        assert_eq!(words.len(), usize::from(vt.registers()));
                        let back = decode_item(&it, &words).unwrap();
                        let tol = 1e-6 * target.abs().max(1.0);
                        assert!(
                            (back - target).abs() <= tol,
                            "{vt} {order} s{scale} o{offset}: {target} -> {words:04X?} -> {back}"
                        );
                        assert_eq!(written_value(&it, target), Ok(back));
                        // Raw words decode to the raw value in the same order.
                        if vt != F32 && vt != F64 && scale == 1.0 {
                            assert_eq!(decode_raw(&words, vt, order, None), Ok(raw));
                        }
                    }
                }
            }
        }
        // bool
        for (scale, offset) in [(1.0, 0.0), (10.0, 5.0), (-1.0, 1.0)] {
            let it = item(Table::Coil, Bool, Abcd, scale, offset);
            for on in [false, true] {
                let target = decode_bit_item(&it, on);
                assert_eq!(encode_item(&it, target), Ok(vec![u16::from(on)]));
                assert_eq!(written_value(&it, target), Ok(target));
            }
        }
        // f32 rounds to the nearest f32; written_value says what the device holds.
        let it = item(Table::Holding, F32, Abcd, 1.0, 0.0);
        assert_eq!(written_value(&it, 21.3), Ok(f64::from(21.3f32)));
        // 1e-9 tolerance on the integer grid: 0.1 * 3 is not exactly 0.3.
        let it = item(Table::Holding, U16, Abcd, 0.1, 0.0);
        assert_eq!(encode_item(&it, 0.3), Ok(vec![3]));
        assert_eq!(encode_item(&it, 0.1 * 3.0), Ok(vec![3]));
        assert_eq!(encode_item(&it, -0.0), Ok(vec![0]));
    }

    #[test]
    fn not_representable() {
        let h = |vt, scale, offset| item(Table::Holding, vt, Abcd, scale, offset);
        let cases: &[(ItemSpec, f64, &str)] = &[
            (
                h(U16, 1.0, 0.0),
                70000.0,
                "target 70000 is outside the u16 range 0..65535 of this register \
                 (after scale 1, offset 0)",
            ),
            (
                h(U16, 1.0, 0.0),
                -1.0,
                "target -1 is outside the u16 range 0..65535 of this register \
                 (after scale 1, offset 0)",
            ),
            (
                h(I16, 0.1, 0.0),
                4000.0,
                "target 4000 is outside the i16 range -32768..32767 of this register \
                 (after scale 0.1, offset 0); it can hold -3276.8..3276.7",
            ),
            (
                h(U16, 0.1, 0.0),
                0.05,
                "target 0.05 is not a multiple of 0.1 (this register's scale); \
                 the nearest values it can hold are 0 and 0.1",
            ),
            (
                h(I16, 0.5, 20.0),
                21.2,
                "target 21.2 is not 20 plus a multiple of 0.5 (this register's offset and scale); \
                 the nearest values it can hold are 21 and 21.5",
            ),
            (
                h(U16, 1.0, 0.0),
                1.5,
                "target 1.5 is not a multiple of 1 (this register's scale); \
                 the nearest values it can hold are 1 and 2",
            ),
            (
                h(U32, 1.0, 0.0),
                4_294_967_296.0,
                "target 4294967296 is outside the u32 range 0..4294967295 of this register \
                 (after scale 1, offset 0)",
            ),
            (
                h(I32, 1.0, 0.0),
                -2_147_483_649.0,
                "target -2147483649 is outside the i32 range -2147483648..2147483647 of this \
                 register (after scale 1, offset 0)",
            ),
            (
                h(U64, 1.0, 0.0),
                -1.0,
                "target -1 is outside the u64 range 0..18446744073709551615 of this register \
                 (after scale 1, offset 0)",
            ),
            (
                h(F32, 1.0, 0.0),
                1e39,
                "target 1e39 is outside the f32 range of this register (after scale 1, offset 0)",
            ),
            (
                h(F32, 1.0, 0.0),
                f64::NAN,
                "target NaN is not a finite number",
            ),
            (
                h(F64, 1.0, 0.0),
                f64::INFINITY,
                "target inf is not a finite number",
            ),
            (
                h(U16, 0.0, 0.0),
                1.0,
                "this item's scale 0 and offset 0 cannot be inverted, so it cannot be written",
            ),
            (
                h(F64, 1e-300, 0.0),
                1e300,
                "target 1e300 is outside what this f64 register can hold (after scale 1e-300, offset 0)",
            ),
            (
                item(Table::Coil, Bool, Abcd, 1.0, 0.0),
                2.0,
                "target 2 is not a value of this on/off item: it takes 0 (off) or 1 (on)",
            ),
            (
                item(Table::Coil, Bool, Abcd, 1.0, 0.0),
                0.5,
                "target 0.5 is not a value of this on/off item: it takes 0 (off) or 1 (on)",
            ),
        ];
        for (it, target, want) in cases {
            let got = encode_item(it, *target);
            assert_eq!(
                got.as_ref().map_err(|e| e.to_string()),
                Err(want.to_string()),
                "{} {target}",
                it.value_type
            );
        }
        assert!(matches!(
            encode_item(&h(U16, 0.1, 0.0), 0.05),
            Err(EncodeError::NotMultiple(_))
        ));
        assert!(matches!(
            encode_item(&h(U16, 1.0, 0.0), 70000.0),
            Err(EncodeError::OutOfRange(_))
        ));
    }

    #[test]
    fn g6_formatting() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (1.0, "1"),
            (21.5, "21.5"),
            (-2.5, "-2.5"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (1.23456789, "1.23457"),
            (-98765.4321, "-98765.4"),
            (999999.5, "1e+06"),
            (f64::from(f32::from_bits(1)), "1.4013e-45"),
            (f64::NAN, "-"),
            (f64::INFINITY, "-"),
            (f64::NEG_INFINITY, "-"),
        ];
        for &(x, want) in cases {
            assert_eq!(format_g6(x), want, "{x}");
        }
    }

    #[test]
    fn all_decodings_lists_every_fitting_type() {
        let words = [0x41AC, 0x0000, 0xFFFF];
        let got = all_decodings(&words);
        let at = |off: usize| -> Vec<&str> {
            got.iter()
                .filter(|d| d.0 == off)
                .map(|d| d.1.as_str())
                .collect()
        };
        let mut want0 = vec!["u16", "i16"];
        let labels: Vec<String> = ByteOrder::ALL
            .iter()
            .flat_map(|o| ["u32", "i32", "f32"].map(move |t| format!("{t} {o}")))
            .collect();
        want0.extend(labels.iter().map(String::as_str));
        assert_eq!(at(0), want0);
        assert_eq!(at(1), want0);
        assert_eq!(at(2), vec!["u16", "i16"]);
        let value =
            |off: usize, label: &str| got.iter().find(|d| d.0 == off && d.1 == label).map(|d| d.2);
        assert_eq!(value(0, "f32 ABCD"), Some(21.5));
        assert_eq!(value(2, "i16"), Some(-1.0));
        assert_eq!(value(1, "u32 CDAB"), Some(f64::from(0xFFFF_0000u32)));
        // 64-bit where four words remain.
        let long = all_decodings(&[0x3FF0, 0, 0, 0, 0]);
        assert!(long
            .iter()
            .any(|d| d.0 == 0 && d.1 == "f64 ABCD" && d.2 == 1.0));
        assert!(long.iter().any(|d| d.0 == 1 && d.1 == "u64 DCBA"));
        assert!(!long.iter().any(|d| d.0 == 2 && d.1.starts_with("u64")));
        assert_eq!(long.iter().filter(|d| d.0 == 0).count(), 2 + 12 + 12);
        assert!(all_decodings(&[]).is_empty());
    }

    #[test]
    fn probe_table_layout() {
        // 21.5 as f32 ABCD at 100, then "F1" as text, then -2 as i16.
        let words = [0x41AC, 0x0000, 0x4631, 0xFFFE];
        let out = probe_table_for(Table::Holding, 100, &words);
        let want = "\
addr    ref     hex    u16  i16  text     f32 ABCD      f32 DCBA      f32 BADC     f32 CDAB
----  -----  ------  -----  ---  ----  -----------  ------------  ------------  -----------
 100  40101  0x41AC  16812       A.           21.5   6.17931e-41  -2.74269e-12  2.35586e-41
 101  40102  0x0000      0       ..    2.51799e-41   2.88128e-09    1.7676e-41        11328
 102  40103  0x4631  17969       F1          11392  -1.69604e+38   2.89577e-09            -
 103  40104  0xFFFE  65534   -2  ..

addr    ref     hex    u32 ABCD  i32 ABCD    u32 DCBA   i32 DCBA    u32 BADC     i32 BADC    u32 CDAB  i32 CDAB
----  -----  ------  ----------  --------  ----------  ---------  ----------  -----------  ----------  --------
 100  40101  0x41AC  1101791232                 44097             2889940992  -1405026304       16812
 101  40102  0x0000       17969             826671104                  12614               1177616384
 102  40103  0x4631  1177681918            4278137158  -16830138   826736383               4294854193   -113103
 103  40104  0xFFFE
i16/i32 shown only where negative (otherwise equal to u16/u32)
";
        assert_eq!(out, want, "\n{out}");
        // Without a table: no ref column; one word: no 32-bit values, no panic.
        let one = probe_table(7, &[0x0001]);
        assert!(one.starts_with("addr     hex  u16"), "{one}");
        assert!(!one.contains('*'), "no layout is marked as likely: {one}");
        assert_eq!(probe_table(0, &[]), "no registers read\n");
        // The top of the address space does not overflow.
        let top = probe_table_for(Table::Input, 65535, &[1, 2]);
        assert!(top.contains("65536"), "{top}");
        // NaN shows as '-'.
        let nan = probe_table(0, &[0x7FC0, 0x0000]);
        assert!(nan.lines().nth(2).unwrap_or("").contains(" -"), "{nan}");
    }

    fn best(words: &[u16], start: u16, asked: u16, expected: f64) -> Layout {
        let tolerance = expected.abs() * 0.005;
        let found = matching_layouts(start, words, asked, expected, tolerance);
        found
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("no layout for {expected}"))
    }

    #[test]
    fn expect_finds_a_scaled_i16() {
        // The heat pump's outdoor temperature: 18.2 degC as i16 x 0.1, with a
        // neighbour that makes an f32 DCBA look plausible.
        let words = [0x0000, 182, 0xC202];
        let b = best(&words, 2, 3, 18.2);
        assert_eq!(
            (b.address, b.value_type, b.byte_order),
            (3, ValueType::I16, None)
        );
        assert_eq!(b.scale, 0.1);
        let neg = best(&[(-42i16) as u16], 7, 7, -4.2);
        assert_eq!(
            (neg.address, neg.value_type, neg.scale),
            (7, ValueType::I16, 0.1)
        );
        // Nothing within tolerance: nothing listed.
        assert!(matching_layouts(0, &[500], 0, 18.2, 0.09).is_empty());
    }

    #[test]
    fn expect_finds_u32_and_f32_cdab() {
        // 123456 as u32 ABCD at 10.
        let found = matching_layouts(10, &[0x0001, 0xE240], 10, 123_456.0, 617.0);
        let exact: Vec<_> = found.iter().filter(|l| l.error == 0.0).collect();
        assert_eq!(exact.len(), 2, "signed and unsigned: {found:?}");
        assert!(exact
            .iter()
            .all(|l| l.address == 10 && l.byte_order == Some(ByteOrder::Abcd) && l.scale == 1.0));
        assert_eq!(exact[1].value_type, ValueType::U32);
        // 21.5 as f32 CDAB at 20, neighbours on both sides.
        let words = [0x1234, 0x0000, 0x41AC, 0x5678];
        let b = best(&words, 19, 20, 21.5);
        assert_eq!((b.address, b.value_type), (20, ValueType::F32));
        assert_eq!(b.byte_order, Some(ByteOrder::Cdab));
        assert_eq!(b.error, 0.0);
    }

    #[test]
    fn expect_ranks_by_error_then_the_asked_address() {
        // 250 at 4 and 5: exact at both; the asked address (5) comes first.
        let found = matching_layouts(4, &[250, 250, 251], 5, 250.0, 2.0);
        assert_eq!(found[0].address, 5);
        assert_eq!(found[0].value_type, ValueType::I16);
        assert!(found.windows(2).all(|w| w[0].error <= w[1].error));
        let off = found.iter().position(|l| l.address == 4).unwrap_or(0);
        let inexact = found.iter().position(|l| l.value != 250.0).unwrap_or(0);
        assert!(off < inexact, "{found:?}");
        // A hit only one register off is still found.
        let b = best(&[0, 215, 0], 9, 11, 21.5);
        assert_eq!(b.address, 10);
    }
}
