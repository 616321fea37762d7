//! Pure: registers <-> engineering values, for every type and byte order.

use crate::model::{ByteOrder, ItemSpec, ValueType};

/// Why a target value cannot be written to an item.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0}")]
    NotRepresentable(String),
}

/// Why registers could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Short(String),
}

/// The raw value (before scale and offset) of `vt` laid out in `words` (exactly
/// `vt.registers()` words) in byte order `order`; for `Bool`, `bit` of `words[0]`.
pub fn decode_raw(
    words: &[u16],
    vt: ValueType,
    order: ByteOrder,
    bit: Option<u8>,
) -> Result<f64, DecodeError> {
    let _ = (words, vt, order, bit);
    todo!()
}

/// The engineering value of a register item: raw * scale + offset.
pub fn decode_item(item: &ItemSpec, words: &[u16]) -> Result<f64, DecodeError> {
    let _ = (item, words);
    todo!()
}

/// The engineering value of a coil or discrete input item (0 or 1, then scale/offset).
pub fn decode_bit_item(item: &ItemSpec, bit: bool) -> f64 {
    let _ = (item, bit);
    todo!()
}

/// The registers to write so that the item reads back as `target` (engineering units).
pub fn encode_item(item: &ItemSpec, target: f64) -> Result<Vec<u16>, EncodeError> {
    let _ = (item, target);
    todo!()
}

/// Every plausible decoding of registers starting at each offset, for `probe`:
/// (offset, label such as `u32 CDAB`, value).
pub fn all_decodings(words: &[u16]) -> Vec<(usize, String, f64)> {
    let _ = words;
    todo!()
}

/// `word` with `bit` set to `on`.
pub fn encode_bit_into(word: u16, bit: u8, on: bool) -> u16 {
    let _ = (word, bit, on);
    todo!()
}

/// A text table of raw registers and their plausible decodings, for `probe`.
pub fn probe_table(start_address: u16, words: &[u16]) -> String {
    let _ = (start_address, words);
    todo!()
}
