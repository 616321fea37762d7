//! The gateway as the upstream platform sees it: Things (the gateway, every
//! host, every `[[things]]` group) in a hierarchy, and a Time-series for
//! every item, each with a stable id.
//!
//! Ids: a `uuid = "..."` from the config wins; otherwise the UUID version 5
//! in the URL namespace of `modbridge://<gateway id>` (the gateway),
//! `modbridge://<gateway id>/hosts/<host>` (a host),
//! `modbridge://<gateway id>/things/<id>` (a group),
//! `modbridge://<gateway id>/hosts/<host>/items/<key>` (an item) and
//! `modbridge://<gateway id>/datasets/<name>` (a Dataset). Pure functions of
//! the config (and, for a Thing's `state`, the hosts' live link state).

use std::collections::BTreeMap;

use crate::model::{Config, HostSpec, ItemSpec, ThingSpec, Uuid};
use crate::poll::HostLive;
use crate::snapshot::Snapshot;
use crate::wire::{ThingObject, TimeSeriesObject};

/// The Thing type of the gateway.
pub const GATEWAY_TYPE: &str = "gateway/modbus";

fn derived(url: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, url.as_bytes())
}

/// The gateway Thing's uuid.
pub fn gateway_uuid(config: &Config) -> Uuid {
    config
        .gateway
        .uuid
        .unwrap_or_else(|| derived(&format!("modbridge://{}", config.gateway.id)))
}

/// A host Thing's uuid.
pub fn host_uuid(config: &Config, host: &HostSpec) -> Uuid {
    host.uuid.unwrap_or_else(|| {
        derived(&format!(
            "modbridge://{}/hosts/{}",
            config.gateway.id, host.host
        ))
    })
}

/// A `[[things]]` group's uuid.
pub fn thing_uuid(config: &Config, thing: &ThingSpec) -> Uuid {
    thing.uuid.unwrap_or_else(|| {
        derived(&format!(
            "modbridge://{}/things/{}",
            config.gateway.id, thing.id
        ))
    })
}

/// An item's Time-series id.
pub fn item_uuid(config: &Config, host: &HostSpec, item: &ItemSpec) -> Uuid {
    item.upstream().and_then(|u| u.uuid).unwrap_or_else(|| {
        derived(&format!(
            "modbridge://{}/hosts/{}/items/{}",
            config.gateway.id, host.host, item.key
        ))
    })
}

/// A Dataset's uuid (`name` as in the Dataset: `modbridge.toml`, `profiles/x.toml`).
pub fn dataset_uuid(gateway_id: &str, name: &str) -> Uuid {
    derived(&format!("modbridge://{gateway_id}/datasets/{name}"))
}

/// An item's unit as its SI symbol: `degC` -> `°C`, `degF` -> `°F`,
/// `m3/h` -> `m³/h`, `m3` -> `m³`; others as given; None without a unit.
pub fn si_unit(item: &ItemSpec) -> Option<String> {
    if let Some(own) = item.upstream().and_then(|u| u.si_unit.clone()) {
        return Some(own);
    }
    let symbol = match item.unit() {
        "" => return None,
        "degC" => "°C",
        "degF" => "°F",
        "m3/h" => "m³/h",
        "m3" => "m³",
        other => other,
    };
    Some(symbol.to_string())
}

/// Where a Thing hangs: a group's or host's parent, by uuid.
fn parent_uuid(config: &Config, parent: Option<&str>) -> Uuid {
    let by_thing = |id: &str| config.things.iter().find(|t| t.id == id);
    match parent {
        Some(id) => match (by_thing(id), config.host(id)) {
            (Some(thing), _) => thing_uuid(config, thing),
            (None, Some(host)) => host_uuid(config, host),
            // The loader refuses unknown parents; the gateway is the fallback.
            (None, None) => gateway_uuid(config),
        },
        None => gateway_uuid(config),
    }
}

/// A host Thing's state: `starting` before its first poll cycle ends, then
/// its link: `online` or `offline`.
pub fn host_state(live: Option<&HostLive>) -> &'static str {
    match live {
        Some(l) if l.polls > 0 && l.link_up => "online",
        Some(l) if l.polls > 0 => "offline",
        _ => "starting",
    }
}

/// Every Thing: the gateway first, then the groups, then the hosts.
pub fn things(running: &Snapshot) -> Vec<ThingObject> {
    let config = &running.config;
    let gateway = gateway_uuid(config).to_string();
    let mut list = vec![ThingObject {
        uuid: gateway.clone(),
        name: config.gateway.name.clone(),
        state: "online",
        kind: Some(GATEWAY_TYPE.to_string()),
        created_by: None,
        tags: Vec::new(),
        parent: None,
        children: Vec::new(),
        host: None,
        id: None,
    }];
    for thing in &config.things {
        list.push(ThingObject {
            uuid: thing_uuid(config, thing).to_string(),
            name: thing.name.clone(),
            state: "online",
            kind: thing.kind.clone(),
            created_by: None,
            tags: thing.tags.clone(),
            parent: Some(parent_uuid(config, thing.parent.as_deref()).to_string()),
            children: Vec::new(),
            host: None,
            id: Some(thing.id.clone()),
        });
    }
    for host in &config.hosts {
        let state = match running.hosts.get(&host.host) {
            Some(live) => host_state(Some(&live.lock())),
            None => host_state(None),
        };
        list.push(ThingObject {
            uuid: host_uuid(config, host).to_string(),
            name: host.name.clone(),
            state,
            kind: host.kind.clone(),
            created_by: None,
            tags: host.tags.clone(),
            parent: Some(parent_uuid(config, host.thing.as_deref()).to_string()),
            children: Vec::new(),
            host: Some(host.host.clone()),
            id: None,
        });
    }
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for thing in &list {
        if let Some(parent) = &thing.parent {
            children
                .entry(parent.clone())
                .or_default()
                .push(thing.uuid.clone());
        }
    }
    for thing in &mut list {
        thing.children = children.remove(&thing.uuid).unwrap_or_default();
    }
    list
}

/// The Time-series of one item.
pub fn timeseries_of(config: &Config, host: &HostSpec, item: &ItemSpec) -> TimeSeriesObject {
    let thing = item
        .upstream()
        .and_then(|u| u.thing.as_deref())
        .and_then(|id| config.things.iter().find(|t| t.id == id))
        .map_or_else(|| host_uuid(config, host), |t| thing_uuid(config, t));
    TimeSeriesObject {
        id: item_uuid(config, host, item).to_string(),
        thing_uuid: thing.to_string(),
        created_by: None,
        name: item.name().to_string(),
        si_unit: si_unit(item),
        lower_bound: item.lower_bound(),
        upper_bound: item.upper_bound(),
        tags: item.tags().to_vec(),
        host: host.host.clone(),
        key: item.key.clone(),
    }
}

/// Every item's Time-series, host by host in config order.
pub fn timeseries(config: &Config) -> Vec<TimeSeriesObject> {
    config
        .hosts
        .iter()
        .flat_map(|h| h.items.iter().map(move |i| timeseries_of(config, h, i)))
        .collect()
}

/// The host and item of a Time-series id.
pub fn find_timeseries<'c>(config: &'c Config, id: &str) -> Option<(&'c HostSpec, &'c ItemSpec)> {
    let wanted = Uuid::parse_str(id).ok()?;
    config.hosts.iter().find_map(|h| {
        h.items
            .iter()
            .find(|i| item_uuid(config, h, i) == wanted)
            .map(|i| (&**h, i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        crate::config::load_str(Path::new("/tmp/modbridge.toml"), text).unwrap()
    }

    const TEXT: &str = r#"
[gateway]
id = "box-1"
[[things]]
id = "circuit1"
name = "Heating circuit 1"
type = "heating/circuit"
[[things]]
id = "valves"
parent = "pump"
[[hosts]]
host = "pump"
connection = "tcp://127.0.0.1:1502"
thing = "circuit1"
[[hosts.items]]
key = "t"
table = "input"
address = 0
unit = "degC"
[[hosts.items]]
key = "flow"
table = "input"
address = 1
unit = "m3/h"
thing = "valves"
[[hosts.items]]
key = "p"
table = "input"
address = 2
unit = "bar"
si_unit = "kPa"
"#;

    #[test]
    fn si_units_are_symbols() {
        let c = config(TEXT);
        let units: Vec<_> = c.hosts[0].items.iter().map(si_unit).collect();
        assert_eq!(
            units,
            [Some("°C".into()), Some("m³/h".into()), Some("kPa".into())]
        );
    }

    #[test]
    fn hierarchy_follows_things_and_hosts() {
        let c = config(TEXT);
        let snapshot = Snapshot {
            config: std::sync::Arc::new(c.clone()),
            hosts: BTreeMap::new(),
        };
        let list = things(&snapshot);
        let by_name = |n: &str| list.iter().find(|t| t.name == n).unwrap().clone();
        let gw = by_name("box-1");
        let circuit = by_name("Heating circuit 1");
        let pump = by_name("pump");
        let valves = by_name("valves");
        assert_eq!(gw.children, vec![circuit.uuid.clone()]);
        assert_eq!(circuit.children, vec![pump.uuid.clone()]);
        assert_eq!(pump.children, vec![valves.uuid.clone()]);
        assert_eq!(pump.state, "starting");
        let ts = timeseries(&c);
        assert_eq!(ts[0].thing_uuid, pump.uuid);
        assert_eq!(ts[1].thing_uuid, valves.uuid);
    }
}
