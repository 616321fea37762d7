//! Hosts and items in the seed's shapes: the HTTP API's answers and the
//! retained `R/hosts/<host>` MQTT messages.

use serde::Serialize;

use super::ConfigObject;
use crate::model::HostSpec;

/// A host; `items` is left out where the contract says "hosts without items".
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostObject {
    pub name: String,
    pub host: String,
    /// The newest `lastclock` of its items; null before any data.
    pub lastclock: Option<i64>,
    /// The TCP device's address; null for serial hosts.
    pub ip: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemObject>>,
}

/// A sensor or configurable item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemObject {
    pub name: String,
    pub unit: String,
    pub lastclock: Option<i64>,
    pub lastvalue: Option<f64>,
    pub key: String,
    pub configurable: bool,
    /// Only on configurable items: the latest config request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigObject>,
    pub lower_bound: Option<f64>,
    pub upper_bound: Option<f64>,
    pub tags: Vec<String>,
    /// `ok`, `error`, or `unknown` before the first read since start-up.
    pub state: &'static str,
    /// The last read's error while `state` is `error`.
    pub error: Option<String>,
}

/// What an item object shows of the item's live state (the poller's
/// `ItemLive`, passed in so that the shapes here depend on no running part).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ItemView<'a> {
    pub value: Option<f64>,
    pub clock: Option<i64>,
    /// `ok`, `error` or `unknown`.
    pub state: &'static str,
    pub error: Option<&'a str>,
}

/// A host object; `lastclock` is the newest of its items'; `items` given:
/// with those items, else without.
pub fn host_object(
    spec: &HostSpec,
    lastclock: Option<i64>,
    items: Option<Vec<ItemObject>>,
) -> HostObject {
    HostObject {
        name: spec.name.clone(),
        host: spec.host.clone(),
        lastclock,
        ip: spec.ip().map(str::to_string),
        kind: spec.kind.clone(),
        tags: spec.tags.clone(),
        items,
    }
}

/// The item at `index` of a host, showing `l`. `config` is the item's latest config
/// request (only used for configurable items; None: none received yet).
pub fn item_object(
    spec: &HostSpec,
    index: usize,
    l: ItemView<'_>,
    config: Option<ConfigObject>,
) -> Option<ItemObject> {
    let item = spec.items.get(index)?;
    Some(ItemObject {
        name: item.name().to_string(),
        unit: item.unit().to_string(),
        lastclock: l.clock,
        lastvalue: l.value.filter(|v| v.is_finite()),
        key: item.key.clone(),
        configurable: item.configurable,
        config: item
            .configurable
            .then(|| config.unwrap_or_else(ConfigObject::none)),
        lower_bound: item.lower_bound(),
        upper_bound: item.upper_bound(),
        tags: item.tags().to_vec(),
        state: l.state,
        error: l.error.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Table, ValueType};
    use crate::poll::{HostLive, ItemLive, ItemState};

    #[test]
    fn a_configurable_item_without_requests_has_the_seed_config_object() {
        let mut host = crate::model::HostSpec::tcp("pump", "10.0.0.1", 502, Vec::new());
        let mut item = crate::model::ItemSpec::new("k", Table::Holding, 3, ValueType::U16);
        item.configurable = true;
        item.extra_mut().unit = "degC".into();
        host.items.push(item);
        host.items.push(crate::model::ItemSpec::new(
            "s",
            Table::Input,
            3,
            ValueType::I16,
        ));
        let mut live = HostLive::new(2);
        live.items[0] = ItemLive {
            value: Some(46.0),
            clock: Some(1416586606),
            state: ItemState::Ok,
            error: None,
        };
        let it = item_object(&host, 0, live.view(0), None).unwrap();
        let v = serde_json::to_value(&it).unwrap();
        assert_eq!(
            v["config"],
            serde_json::json!({"audit": [], "target": null, "lastclock": null,
                "status": "SUCCESS", "expected": null, "reason": null, "id": null})
        );
        assert_eq!(v["lastvalue"], 46.0);
        assert_eq!(v["configurable"], true);
        let s = serde_json::to_value(item_object(&host, 1, live.view(1), None).unwrap()).unwrap();
        assert!(s.get("config").is_none());
        assert_eq!(s["lastvalue"], serde_json::Value::Null);
        assert_eq!(s["state"], "unknown");
        let h = serde_json::to_value(host_object(&host, live.lastclock(), None)).unwrap();
        assert_eq!(h["lastclock"], 1416586606);
        assert_eq!(h["ip"], "10.0.0.1");
        assert!(h.get("items").is_none());
    }
}
