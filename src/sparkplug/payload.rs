//! Sparkplug B payloads (Eclipse Tahu's protobuf, types from `srad-types`):
//! the metrics of births and data, the datatypes of items, and the values of
//! commands. Pure: no I/O, no clock.

use srad_types::payload::{
    metric::Value, property_value, DataType, Message, Metric, Payload, PropertySet, PropertyValue,
};

use crate::model::{ItemSpec, ValueType};

/// The node metric that asks for a rebirth.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The node metric carrying the session number.
pub const BD_SEQ: &str = "bdSeq";
/// The gateway's version, a node metric of NBIRTH.
pub const VERSION: &str = "Properties/Version";

/// The Sparkplug datatype of an item: its value type, or Double when `scale`
/// or `offset` make the engineering value fractional.
pub fn datatype(item: &ItemSpec) -> DataType {
    if item.scale != 1.0 || item.offset != 0.0 {
        return DataType::Double;
    }
    match item.value_type {
        ValueType::U16 => DataType::UInt16,
        ValueType::I16 => DataType::Int16,
        ValueType::U32 => DataType::UInt32,
        ValueType::I32 => DataType::Int32,
        ValueType::U64 => DataType::UInt64,
        ValueType::I64 => DataType::Int64,
        ValueType::F32 => DataType::Float,
        ValueType::F64 => DataType::Double,
        ValueType::Bool => DataType::Boolean,
    }
}

/// An engineering value as the metric value of `datatype`. Integer types
/// are rounded and saturated; signed ones go into the unsigned fields in
/// two's complement (sign-extended to 32 bits for Int8..Int32).
pub fn value(datatype: DataType, v: f64) -> Value {
    match datatype {
        DataType::Boolean => Value::BooleanValue(v != 0.0),
        DataType::Float => Value::FloatValue(v as f32),
        DataType::Double => Value::DoubleValue(v),
        DataType::UInt16 => Value::IntValue(v.round().clamp(0.0, f64::from(u16::MAX)) as u32),
        DataType::UInt32 => Value::IntValue(v.round().clamp(0.0, f64::from(u32::MAX)) as u32),
        DataType::Int16 => Value::IntValue(
            (v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i32) as u32,
        ),
        DataType::Int32 => Value::IntValue(
            (v.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32) as u32,
        ),
        DataType::UInt64 => Value::LongValue(v.round().max(0.0) as u64),
        DataType::Int64 => Value::LongValue((v.round() as i64) as u64),
        _ => Value::DoubleValue(v),
    }
}

/// A metric value of a command as an engineering value for an item of
/// `datatype`; None for a kind of value that does not fit it (a string, a
/// boolean for a number, a number for a boolean, an integer field for a
/// floating-point item is accepted).
pub fn command_value(datatype: DataType, v: &Value) -> Option<f64> {
    let signed32 = matches!(datatype, DataType::Int8 | DataType::Int16 | DataType::Int32);
    match (datatype, v) {
        (DataType::Boolean, Value::BooleanValue(b)) => Some(if *b { 1.0 } else { 0.0 }),
        (DataType::Boolean, _) => None,
        (_, Value::BooleanValue(_)) => None,
        (_, Value::IntValue(i)) if signed32 => Some(f64::from(*i as i32)),
        (_, Value::IntValue(i)) => Some(f64::from(*i)),
        (DataType::Int64, Value::LongValue(l)) => Some(*l as i64 as f64),
        (_, Value::LongValue(l)) => Some(*l as f64),
        (_, Value::FloatValue(f)) if f.is_finite() => Some(f64::from(*f)),
        (_, Value::DoubleValue(d)) if d.is_finite() => Some(*d),
        _ => None,
    }
}

fn property(kind: DataType, value: property_value::Value) -> PropertyValue {
    PropertyValue {
        r#type: Some(kind as u32),
        is_null: None,
        value: Some(value),
    }
}

/// The PropertySet of an item's birth metric: `engUnit` (the configured
/// unit), `engLow`/`engHigh` (the bounds, where set), `configurable`.
pub fn properties(item: &ItemSpec) -> PropertySet {
    let mut set = PropertySet::default();
    set.keys.push("engUnit".into());
    set.values.push(property(
        DataType::String,
        property_value::Value::StringValue(item.unit().to_string()),
    ));
    for (key, bound) in [
        ("engLow", item.lower_bound()),
        ("engHigh", item.upper_bound()),
    ] {
        if let Some(b) = bound {
            set.keys.push(key.into());
            set.values.push(property(
                DataType::Double,
                property_value::Value::DoubleValue(b),
            ));
        }
    }
    set.keys.push("configurable".into());
    set.values.push(property(
        DataType::Boolean,
        property_value::Value::BooleanValue(item.configurable),
    ));
    set
}

/// An item's metric in DBIRTH: name, alias, datatype, current value (or
/// `is_null`), its poll timestamp (else `now_ms`), properties.
pub fn birth_metric(
    item: &ItemSpec,
    alias: u64,
    current: Option<(i64, f64)>,
    now_ms: u64,
) -> Metric {
    let dt = datatype(item);
    let (timestamp, value, is_null) = match current {
        Some((clock, v)) if v.is_finite() => (clock_ms(clock), Some(value(dt, v)), None),
        _ => (now_ms, None, Some(true)),
    };
    Metric {
        name: Some(item.key.clone()),
        alias: Some(alias),
        timestamp: Some(timestamp),
        datatype: Some(dt as u32),
        is_null,
        properties: Some(properties(item)),
        value,
        ..Metric::default()
    }
}

/// One point in DDATA: by alias, with its poll timestamp.
pub fn data_metric(alias: u64, dt: DataType, clock: i64, v: f64, historical: bool) -> Metric {
    Metric {
        alias: Some(alias),
        timestamp: Some(clock_ms(clock)),
        datatype: Some(dt as u32),
        is_historical: historical.then_some(true),
        value: Some(value(dt, v)),
        ..Metric::default()
    }
}

/// Unix seconds as Sparkplug milliseconds (clocks before 1970 as 0).
pub fn clock_ms(clock: i64) -> u64 {
    u64::try_from(clock).unwrap_or(0).saturating_mul(1000)
}

/// The `bdSeq` metric (Int64).
pub fn bd_seq_metric(bd_seq: u8, now_ms: u64) -> Metric {
    Metric {
        name: Some(BD_SEQ.into()),
        timestamp: Some(now_ms),
        datatype: Some(DataType::Int64 as u32),
        value: Some(Value::LongValue(u64::from(bd_seq))),
        ..Metric::default()
    }
}

/// NBIRTH: `seq` 0, `bdSeq`, `Node Control/Rebirth` = false (no alias), the
/// gateway's version.
pub fn nbirth(bd_seq: u8, now_ms: u64) -> Payload {
    let metrics = vec![
        bd_seq_metric(bd_seq, now_ms),
        Metric {
            name: Some(REBIRTH.into()),
            timestamp: Some(now_ms),
            datatype: Some(DataType::Boolean as u32),
            value: Some(Value::BooleanValue(false)),
            ..Metric::default()
        },
        Metric {
            name: Some(VERSION.into()),
            timestamp: Some(now_ms),
            datatype: Some(DataType::String as u32),
            value: Some(Value::StringValue(env!("CARGO_PKG_VERSION").into())),
            ..Metric::default()
        },
    ];
    Payload {
        timestamp: Some(now_ms),
        metrics,
        seq: Some(0),
        ..Payload::default()
    }
}

/// NDEATH (the Will, and at a clean end): `bdSeq` only, no `seq`.
pub fn ndeath(bd_seq: u8, now_ms: u64) -> Payload {
    Payload {
        timestamp: Some(now_ms),
        metrics: vec![bd_seq_metric(bd_seq, now_ms)],
        ..Payload::default()
    }
}

/// A payload of the node's sequence.
pub fn with_seq(metrics: Vec<Metric>, seq: u8, now_ms: u64) -> Payload {
    Payload {
        timestamp: Some(now_ms),
        metrics,
        seq: Some(u64::from(seq)),
        ..Payload::default()
    }
}

/// The protobuf encoding.
pub fn encode(payload: &Payload) -> Vec<u8> {
    payload.encode_to_vec()
}

/// A command's payload; None if it is not a Sparkplug payload.
pub fn decode(bytes: &[u8]) -> Option<Payload> {
    Payload::decode(bytes).ok()
}

/// Whether an NCMD asks for a rebirth.
pub fn asks_rebirth(payload: &Payload) -> bool {
    payload.metrics.iter().any(|m| {
        m.name.as_deref() == Some(REBIRTH) && matches!(m.value, Some(Value::BooleanValue(true)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Table;

    #[test]
    fn datatypes_follow_value_type_and_scaling() {
        let mut item = ItemSpec::new("t", Table::Holding, 0, ValueType::I16);
        assert_eq!(datatype(&item), DataType::Int16);
        item.scale = 0.1;
        assert_eq!(datatype(&item), DataType::Double);
        let item = ItemSpec::new("c", Table::Coil, 0, ValueType::Bool);
        assert_eq!(datatype(&item), DataType::Boolean);
    }

    #[test]
    fn signed_values_are_twos_complement_and_commands_read_back() {
        assert_eq!(value(DataType::Int16, -2.0), Value::IntValue(0xFFFF_FFFE));
        assert_eq!(
            command_value(DataType::Int16, &Value::IntValue(0xFFFF_FFFE)),
            Some(-2.0)
        );
        assert_eq!(value(DataType::Int64, -1.0), Value::LongValue(u64::MAX));
        assert_eq!(
            command_value(DataType::Int64, &Value::LongValue(u64::MAX)),
            Some(-1.0)
        );
        assert_eq!(value(DataType::UInt16, 70000.0), Value::IntValue(65535));
        assert_eq!(
            command_value(DataType::UInt16, &Value::StringValue("1".into())),
            None
        );
        assert_eq!(
            command_value(DataType::UInt16, &Value::BooleanValue(true)),
            None
        );
        assert_eq!(
            command_value(DataType::Double, &Value::IntValue(7)),
            Some(7.0)
        );
    }

    #[test]
    fn births_round_trip() {
        let p = nbirth(7, 1000);
        let back = decode(&encode(&p)).unwrap();
        assert_eq!(back.seq, Some(0));
        assert_eq!(back.metrics[0].value, Some(Value::LongValue(7)));
        assert!(back.metrics[1].alias.is_none());
        assert!(!asks_rebirth(&back));
        assert!(ndeath(7, 1).seq.is_none());
    }
}
