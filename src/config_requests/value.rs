//! Value checks and formatting: whether a target is within an item's bounds
//! and representable by its register, whether a value read from the device
//! counts as the one wanted, and how a value is written in a reason, such as
//! "expected 22.0, device has 21.5". Pure functions of the item's spec.

use crate::decode;
use crate::model::{ItemSpec, ValueType};

/// The registers that make the item hold `target`, or why it cannot: outside
/// the item's bounds, or not representable in its register type.
pub(super) fn check_target(item: &ItemSpec, target: f64) -> Result<Vec<u16>, String> {
    if !item.table.is_writable() {
        return Err(format!("{} items cannot be written", item.table));
    }
    if let Some(lo) = item.lower_bound().filter(|lo| target < *lo) {
        return Err(format!(
            "target {} is below the lower bound {}",
            format_at_item_precision(item, target),
            format_at_item_precision(item, lo)
        ));
    }
    if let Some(hi) = item.upper_bound().filter(|hi| target > *hi) {
        return Err(format!(
            "target {} is above the upper bound {}",
            format_at_item_precision(item, target),
            format_at_item_precision(item, hi)
        ));
    }
    decode::encode_item(item, target).map_err(|e| e.to_string())
}

/// Decimals of a number on the grid of `x` (0.1 -> 1, 0.25 -> 2, 5 -> 0).
fn grid_decimals(x: f64) -> usize {
    (0..=6)
        .find(|&d| {
            let s = x * 10f64.powi(d as i32);
            (s - s.round()).abs() < 1e-6
        })
        .unwrap_or(6)
}

/// `v` with `digits` significant digits, shortest form.
fn significant(v: f64, digits: usize) -> String {
    let rounded: f64 = format!("{v:.prec$e}", prec = digits.saturating_sub(1))
        .parse()
        .unwrap_or(v);
    rounded.to_string()
}

/// A value in engineering units for a reason: an integer register's value
/// with as many decimals as its scale has (`22.0` for scale 0.1), a float's
/// with the precision it has.
pub fn format_at_item_precision(item: &ItemSpec, v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    match item.value_type {
        ValueType::F32 => significant(v, 7),
        ValueType::F64 => significant(v, 12),
        _ => {
            let d = grid_decimals(item.scale).max(grid_decimals(item.offset));
            let s = format!("{v:.d$}");
            match s.parse::<f64>() {
                Ok(p) if (p - v).abs() <= 1e-9 * v.abs().max(1.0) => s,
                _ => significant(v, 12),
            }
        }
    }
}

/// Whether the device's `found` counts as `want`: within half a register step
/// for integer and bool items, within the type's precision for floats.
pub fn same_value(item: &ItemSpec, found: f64, want: f64) -> bool {
    let magnitude = (want - item.offset).abs().max((found - item.offset).abs());
    let tol = match item.value_type {
        ValueType::F32 => (magnitude * 1e-6).max(f64::EPSILON * item.scale.abs()),
        ValueType::F64 => (magnitude * 1e-12).max(f64::EPSILON * item.scale.abs()),
        _ => item.scale.abs() / 2.0,
    };
    (found - want).abs() <= tol
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ByteOrder, Table};

    fn item(vt: ValueType, scale: f64) -> ItemSpec {
        let mut i = ItemSpec::new("k", Table::Holding, 0, vt);
        i.scale = scale;
        i.configurable = true;
        i
    }

    #[test]
    fn values_are_named_in_engineering_units() {
        let t = item(ValueType::I16, 0.1);
        assert_eq!(format_at_item_precision(&t, 22.0), "22.0");
        assert_eq!(format_at_item_precision(&t, 21.5), "21.5");
        assert_eq!(format_at_item_precision(&t, 0.05), "0.05");
        let u = item(ValueType::U16, 1.0);
        assert_eq!(format_at_item_precision(&u, 70000.0), "70000");
        let f = item(ValueType::F32, 1.0);
        assert_eq!(format_at_item_precision(&f, f64::from(0.1f32)), "0.1");
        assert_eq!(format_at_item_precision(&f, 21.5), "21.5");
    }

    #[test]
    fn targets_outside_bounds_or_unrepresentable_fail() {
        let mut t = item(ValueType::I16, 0.1);
        t.extra_mut().lower_bound = Some(-50.0);
        t.extra_mut().upper_bound = Some(80.0);
        assert_eq!(
            check_target(&t, 90.0).unwrap_err(),
            "target 90.0 is above the upper bound 80.0"
        );
        assert!(check_target(&t, -60.0)
            .unwrap_err()
            .contains("below the lower bound -50.0"));
        assert!(check_target(&t, 0.05)
            .unwrap_err()
            .contains("not a multiple of 0.1"));
        assert_eq!(check_target(&t, 22.5).unwrap(), vec![225]);
        let u = item(ValueType::U16, 1.0);
        assert!(check_target(&u, 70000.0)
            .unwrap_err()
            .contains("outside the u16 range"));
        let b = ItemSpec {
            configurable: true,
            ..ItemSpec::new("b", Table::Coil, 0, ValueType::Bool)
        };
        assert!(check_target(&b, 2.0).is_err());
        assert_eq!(check_target(&b, 1.0).unwrap(), vec![1]);
        let s = ItemSpec::new("s", Table::Input, 0, ValueType::U16);
        assert!(check_target(&s, 1.0).is_err());
    }

    #[test]
    fn comparisons_allow_half_a_step_or_float_precision() {
        let t = item(ValueType::I16, 0.1);
        assert!(same_value(&t, 22.0, 22.04));
        assert!(!same_value(&t, 21.5, 22.0));
        let mut f = item(ValueType::F32, 1.0);
        f.byte_order = ByteOrder::Cdab;
        assert!(same_value(&f, f64::from(21.7f32), 21.7));
        assert!(!same_value(&f, 21.7001, 21.7));
    }
}
