//! The config's JSON Schema (for editors) against the loader and the shipped files.
//!
//! `BLESS=1 cargo test --test schema` rewrites `config/*.schema.json` from the
//! types in `src/config/schema.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use modbridge::config::schema;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .toml files in {}", dir.display());
    files
}

/// A TOML file as the JSON value editors validate.
fn as_json(path: &Path) -> Value {
    let value: toml::Value =
        toml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(value).expect("json")
}

fn validator(schema_text: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(schema_text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn checked_in_schemas_are_the_generated_ones() {
    let bless = std::env::var_os("BLESS").is_some();
    for (file, generated) in [
        (schema::CONFIG_SCHEMA_FILE, schema::config_schema()),
        (schema::PROFILE_SCHEMA_FILE, schema::profile_schema()),
    ] {
        let path = root().join("config").join(file);
        if bless {
            std::fs::write(&path, &generated).expect("write schema");
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} is out of date; regenerate it with BLESS=1 cargo test --test schema",
            path.display()
        );
        // It is a schema a validator accepts.
        validator(&generated);
    }
}

/// Follows `$ref`s (`#/definitions/Name`) to the schema they name.
fn resolve<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    if let Some([only]) = node
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        node = only;
    }
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let pointer = r.trim_start_matches('#');
        node = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    node
}

/// The properties of the object schema at `path` (table names, `.` between levels;
/// arrays of tables are stepped through).
fn keys_at(doc: &Value, path: &str) -> BTreeSet<String> {
    let mut node = resolve(doc, doc);
    for part in path.split('.').filter(|p| !p.is_empty()) {
        node = resolve(doc, &node["properties"][part]);
        if node.get("type") == Some(&Value::from("array")) {
            node = resolve(doc, &node["items"]);
        }
    }
    assert_eq!(
        node.get("additionalProperties"),
        Some(&Value::Bool(false)),
        "{path:?}: unknown keys must be errors, as in the loader"
    );
    node["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{path:?} has no properties"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn schema_describes_exactly_the_keys_the_loader_accepts() {
    let config: Value = serde_json::from_str(&schema::config_schema()).expect("json");
    let profile: Value = serde_json::from_str(&schema::profile_schema()).expect("json");
    let mut problems = Vec::new();
    for (table, accepted) in modbridge::config::accepted_keys() {
        let described = match table.strip_prefix("profile") {
            Some(rest) => keys_at(&profile, rest),
            None => keys_at(&config, table),
        };
        let accepted: BTreeSet<String> = accepted.iter().map(|k| k.to_string()).collect();
        for missing in accepted.difference(&described) {
            problems.push(format!(
                "[{table}] {missing}: the loader accepts it, the schema lacks it"
            ));
        }
        for extra in described.difference(&accepted) {
            problems.push(format!(
                "[{table}] {extra}: the schema describes it, the loader refuses it"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the schema (src/config/schema.rs) and the loader disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn shipped_configs_name_the_schema_and_validate() {
    let config_schema = validator(&schema::config_schema());
    let profile_schema = validator(&schema::profile_schema());
    let mut checked = 0;
    for (dir, directive, validator, is_profile) in [
        (
            root().join("config"),
            "#:schema ./modbridge.schema.json",
            &config_schema,
            false,
        ),
        (
            root().join("config/profiles"),
            "#:schema ../profile.schema.json",
            &profile_schema,
            true,
        ),
    ] {
        for path in toml_files(&dir) {
            let text = read(&path);
            assert_eq!(
                text.lines().next(),
                Some(directive),
                "{}: the first line names the schema for editors",
                path.display()
            );
            let schema_path = dir.join(directive.trim_start_matches("#:schema "));
            assert!(schema_path.exists(), "{} is missing", schema_path.display());
            let problems = errors(validator, &as_json(&path));
            assert!(
                problems.is_empty(),
                "{} does not match the schema:\n{}",
                path.display(),
                problems.join("\n")
            );
            if !is_profile {
                // The loader agrees (it also reads the profiles these name).
                if let Err(e) = modbridge::config::load(&path) {
                    panic!("{}: {e}", path.display());
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked}");
}

#[test]
fn schema_refuses_unknown_keys_and_wrong_types_like_the_loader() {
    let config_schema = validator(&schema::config_schema());
    let dir = root().join("tests/config_errors");
    for name in [
        "unknown_keys",
        "unknown_section",
        "wrong_types",
        "bad_tables_and_types",
        "no_gateway",
    ] {
        let path = dir.join(format!("{name}.toml"));
        assert!(
            modbridge::config::load(&path).is_err(),
            "{name}: the loader refuses it"
        );
        assert!(
            !errors(&config_schema, &as_json(&path)).is_empty(),
            "{name}: the schema lets it pass"
        );
    }
    let profile_schema = validator(&schema::profile_schema());
    let broken = dir.join("profiles/broken.toml");
    if let Ok(text) = std::fs::read_to_string(&broken) {
        if let Ok(value) = toml::from_str::<toml::Value>(&text) {
            let json = serde_json::to_value(value).expect("json");
            assert!(
                !errors(&profile_schema, &json).is_empty(),
                "profiles/broken.toml: the schema lets it pass"
            );
        }
    }
}

#[test]
fn schema_values_follow_the_loader() {
    let v = validator(&schema::config_schema());
    let base = |extra: &str| -> Value {
        let text = format!("[gateway]\nid = \"box-1\"\n{extra}");
        serde_json::to_value(toml::from_str::<toml::Value>(&text).expect("toml")).expect("json")
    };
    let ok = [
        "[storage]\ncommit_interval = \"500ms\"\nmax_size = \"1GiB\"",
        "[severity]\n7 = \"Disaster\"",
        "[mqtt]\nurl = \"mqtts://broker:8883\"",
        "[api]\nlisten = \"[::]:8080\"",
        "[[hosts]]\nhost = \"p\"\nconnection = \"rtu:///dev/ttyUSB0\"\nparity = \"even\"\n[[hosts.items]]\ntable = \"holding\"\naddress = 0\ntype = \"f32\"\nbyte_order = \"CDAB\"",
        "[[triggers]]\ntriggerid = 1\nseverity = 5\nexpression = \"1 > 0\"",
    ];
    for extra in ok {
        let problems = errors(&v, &base(extra));
        assert!(problems.is_empty(), "{extra}: {problems:?}");
    }
    let bad = [
        "[storage]\ncommit_interval = \"1 s\"",
        "[storage]\nmax_size = \"1 GiB\"",
        "[severity]\nhigh = \"Disaster\"",
        "[mqtt]\nurl = \"http://broker\"",
        "[[hosts]]\nhost = \"p q\"\nconnection = \"tcp://h\"",
        "[[hosts]]\nhost = \"p\"\nconnection = \"udp://h\"",
        "[[hosts]]\nhost = \"p\"\nconnection = \"tcp://h\"\nunit = 256",
        "[[hosts]]\nhost = \"p\"\nconnection = \"tcp://h\"\n[[hosts.items]]\ntable = \"holding\"\naddress = 0\nbyte_order = \"abcd\"",
        "[[hosts]]\nhost = \"p\"\nconnection = \"tcp://h\"\n[[hosts.items]]\ntable = \"holding\"",
        "[[triggers]]\ntriggerid = 0\nseverity = 5\nexpression = \"1 > 0\"",
    ];
    for extra in bad {
        assert!(
            !errors(&v, &base(extra)).is_empty(),
            "the schema lets this pass:\n{extra}"
        );
    }
}
