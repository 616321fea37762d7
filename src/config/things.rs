//! The upstream model's part of the file: `uuid` keys, `[[things]]`, the
//! `thing` keys of hosts and items, `[remote]`, and the checks across them
//! (unique ids, parents that exist, no cycles).

use std::collections::{HashMap, HashSet};

use toml::de::DeValue;
use toml::Spanned;

use super::array_of_tables;
use super::source::{is_name, At, Report, Section, Source};
use crate::diag::suggest_name;
use crate::model::{Config, RemoteSpec, SourcePos, ThingSpec, Uuid};

/// Keys of `[[things]]`.
pub(super) const THING_KEYS: [&str; 6] = ["id", "uuid", "name", "type", "tags", "parent"];

/// Keys of `[remote]`.
pub(super) const REMOTE_KEYS: [&str; 2] = ["config", "rollback_after"];

/// Where the upstream references of hosts and items were written, for the
/// checks that need the whole file.
#[derive(Debug, Default)]
pub(crate) struct UpstreamRefs {
    /// `thing = "..."` of a host or an item: (id, position, who).
    pub(crate) things: Vec<(At<String>, String)>,
    /// Every `uuid = "..."` with who gave it.
    pub(crate) uuids: Vec<(At<Uuid>, String)>,
}

/// `uuid = "..."`: a UUID in any of its usual spellings.
pub(super) fn read_uuid(section: &Section<'_, '_>, report: &mut Report) -> Option<At<Uuid>> {
    let text = section.string(report, "uuid")?;
    match Uuid::parse_str(text.value.trim()) {
        Ok(uuid) => Some(At {
            value: uuid,
            pos: text.pos,
        }),
        Err(_) => {
            section.error_at(
                report,
                &text.pos,
                &format!(
                    "uuid \"{}\" is not a UUID; write it like \"6ba7b811-9dad-11d1-80b4-00c04fd430c8\", or leave it out for the stable id the gateway derives",
                    text.value
                ),
            );
            None
        }
    }
}

/// `thing = "<id>"` of a host or item, remembered for the check against `[[things]]`.
pub(super) fn read_thing_ref(
    section: &Section<'_, '_>,
    who: &str,
    refs: &mut UpstreamRefs,
    report: &mut Report,
) -> Option<String> {
    let thing = section.nonempty_string(report, "thing")?;
    refs.things.push((thing.clone(), who.to_string()));
    Some(thing.value)
}

/// `[remote]`
pub(super) fn read_remote(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    report: &mut Report,
) -> RemoteSpec {
    let mut remote = RemoteSpec::default();
    let Some(section) = Section::of(src, value, "[remote]", String::new(), report) else {
        return remote;
    };
    section.check_keys(report, "[remote]", &REMOTE_KEYS);
    if let Some(on) = section.boolean(report, "config") {
        remote.config = on.value;
    }
    if let Some(d) = section.duration(report, "rollback_after", false) {
        remote.rollback_after = d.value;
    }
    remote
}

/// `[[things]]`, with the position of each entry's `id` and `parent`.
pub(super) fn read_things(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    refs: &mut UpstreamRefs,
    report: &mut Report,
) -> Vec<(ThingSpec, SourcePos, Option<SourcePos>)> {
    let Some(list) = array_of_tables(src, value, "things", report) else {
        return Vec::new();
    };
    let mut things = Vec::new();
    for (index, element) in list.iter().enumerate() {
        let context = format!("things[{}]: ", index + 1);
        let Some(section) = Section::of(src, element, "[[things]]", context, report) else {
            continue;
        };
        section.check_keys(report, "[[things]]", &THING_KEYS);
        let id = match section.string(report, "id") {
            Some(id) if is_name(&id.value, "_.-", 64) => id,
            Some(id) => {
                section.error_at(
                    report,
                    &id.pos,
                    &format!(
                        "thing id \"{}\" must be 1 to 64 characters from A-Z a-z 0-9 _ . -",
                        id.value
                    ),
                );
                continue;
            }
            None => {
                if section.raw("id").is_none() {
                    section.missing(report, "id", "[[things]]", " (e.g. id = \"circuit1\")");
                }
                continue;
            }
        };
        let uuid = read_uuid(&section, report);
        if let Some(u) = &uuid {
            refs.uuids
                .push((u.clone(), format!("thing \"{}\"", id.value)));
        }
        let parent = section.nonempty_string(report, "parent");
        let thing = ThingSpec {
            name: section
                .nonempty_string(report, "name")
                .map(|n| n.value)
                .unwrap_or_else(|| id.value.clone()),
            id: id.value,
            uuid: uuid.map(|u| u.value),
            kind: section.nonempty_string(report, "type").map(|t| t.value),
            tags: section.strings(report, "tags").unwrap_or_default(),
            parent: parent.as_ref().map(|p| p.value.clone()),
        };
        things.push((thing, id.pos, parent.map(|p| p.pos)));
    }
    things
}

/// Checks the hierarchy and the ids of the whole config: thing ids unique
/// and not a host's, parents and `thing =` references that exist, no
/// cycles, every configured uuid used once.
pub(super) fn check_upstream(
    config: &Config,
    things: &[(ThingSpec, SourcePos, Option<SourcePos>)],
    refs: &UpstreamRefs,
    report: &mut Report,
) {
    let mut ids: HashMap<&str, &SourcePos> = HashMap::new();
    for (thing, pos, _) in things {
        if let Some(first) = ids.get(thing.id.as_str()) {
            report.error(
                pos,
                format!(
                    "thing \"{}\" is already defined at line {}; thing ids must be unique",
                    thing.id, first.line
                ),
            );
        } else if config.host(&thing.id).is_some() {
            report.error(
                pos,
                format!(
                    "thing id \"{}\" is also a host's id; a parent = \"{}\" would be ambiguous, so use another id",
                    thing.id, thing.id
                ),
            );
        } else {
            ids.insert(&thing.id, pos);
        }
    }
    let thing_ids: Vec<&str> = things.iter().map(|(t, _, _)| t.id.as_str()).collect();
    for (thing, _, parent_pos) in things {
        let (Some(parent), Some(pos)) = (&thing.parent, parent_pos) else {
            continue;
        };
        if parent == &thing.id {
            report.error(
                pos,
                format!("thing \"{}\" cannot be its own parent", thing.id),
            );
        } else if !thing_ids.contains(&parent.as_str()) && config.host(parent).is_none() {
            let mut known: Vec<&str> = thing_ids.clone();
            known.extend(config.hosts.iter().map(|h| h.host.as_str()));
            report.error(
                pos,
                format!(
                    "parent \"{parent}\" is neither a [[things]] id nor a host{}",
                    hint(parent, &known)
                ),
            );
        }
    }
    check_cycles(config, things, report);
    for (reference, who) in &refs.things {
        if !thing_ids.contains(&reference.value.as_str()) {
            report.error(
                &reference.pos,
                format!(
                    "{who}: thing \"{}\" is not a [[things]] id{}",
                    reference.value,
                    hint(&reference.value, &thing_ids)
                ),
            );
        }
    }
    let mut seen: HashSet<Uuid> = HashSet::new();
    for (uuid, who) in &refs.uuids {
        if !seen.insert(uuid.value) {
            report.error(
                &uuid.pos,
                format!(
                    "{who}: uuid {} is already given to another thing or item; ids must be unique",
                    uuid.value
                ),
            );
        }
    }
}

/// `; did you mean "x"?`, or the known names when there are few.
fn hint(word: &str, known: &[&str]) -> String {
    match suggest_name(word, known) {
        Some(k) => format!("; did you mean \"{k}\"?"),
        None if known.is_empty() => "; define it with [[things]] id = \"...\"".to_string(),
        None => String::new(),
    }
}

/// Reports a chain of parents that comes back to where it started (things
/// whose parent is a host that joins a thing of the chain included).
fn check_cycles(
    config: &Config,
    things: &[(ThingSpec, SourcePos, Option<SourcePos>)],
    report: &mut Report,
) {
    let parent_of = |id: &str| -> Option<String> {
        if let Some((t, _, _)) = things.iter().find(|(t, _, _)| t.id == id) {
            return t.parent.clone();
        }
        config.host(id).and_then(|h| h.thing.clone())
    };
    for (thing, _, parent_pos) in things {
        let Some(pos) = parent_pos else {
            continue;
        };
        let mut at = thing.parent.clone();
        let mut steps = 0;
        while let Some(id) = at {
            if id == thing.id {
                report.error(
                    pos,
                    format!(
                        "thing \"{}\" is its own ancestor through its parents; the hierarchy must be a tree",
                        thing.id
                    ),
                );
                break;
            }
            steps += 1;
            if steps > things.len() + config.hosts.len() {
                break;
            }
            at = parent_of(&id);
        }
    }
}
