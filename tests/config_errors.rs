//! Broken configs and the exact diagnostics `config::load` must report for them.
//!
//! Each case is `tests/config_errors/NAME.toml` with its expected output in
//! `tests/config_errors/NAME.expected`: one `FILE:LINE:COL: message` line per
//! problem, FILE relative to the crate root. After changing messages on
//! purpose, regenerate the expectations with
//! `BLESS=1 cargo test --test config_errors` and review the diff.

use std::path::{Path, PathBuf};

use modbridge::config;

const DIR: &str = "tests/config_errors";

/// Loads `tests/config_errors/NAME.toml` and compares every diagnostic with
/// `NAME.expected`.
fn check(name: &str) {
    let path = PathBuf::from(format!("{DIR}/{name}.toml"));
    let actual = match config::load(&path) {
        Ok(_) => String::new(),
        Err(errors) => errors
            .0
            .iter()
            .map(|d| format!("{d}\n"))
            .collect::<String>(),
    };
    let expected_path = path.with_extension("expected");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected_path, &actual).expect("write .expected");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
    assert!(
        !actual.is_empty(),
        "{} loaded without errors",
        path.display()
    );
    assert_eq!(
        actual,
        expected,
        "diagnostics of {} differ from {}",
        path.display(),
        expected_path.display()
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*

        /// Every data file has a test, so none is forgotten.
        #[test]
        fn every_case_file_is_listed() {
            let listed = [$(stringify!($name)),*];
            for entry in std::fs::read_dir(DIR).expect("read tests/config_errors") {
                let path = entry.expect("dir entry").path();
                if path.extension().is_some_and(|e| e == "toml") {
                    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                    assert!(listed.contains(&stem), "{} has no test in cases!", path.display());
                }
            }
        }
    };
}

cases!(
    syntax_error,
    duplicate_key,
    no_gateway,
    bad_gateway,
    unknown_keys,
    unknown_section,
    wrong_types,
    bad_durations,
    bad_sizes,
    bad_severity,
    bad_mqtt,
    mqtt_tls_mismatch,
    bad_sparkplug,
    bad_sparkplug_ids,
    bad_api,
    dup_host,
    bad_host_values,
    serial_on_tcp,
    serial_conflicts,
    tcp_same_device,
    bad_tables_and_types,
    address_mistakes,
    bit_rules,
    overlaps,
    dup_keys,
    item_values,
    too_wide,
    configurable_read_only,
    heartbeat_and_deadband,
    bad_triggers,
    hosts_not_array,
    missing_profile,
    broken_profile,
    bad_expressions,
    serial_units_and_pacing,
    bad_things,
);

/// Every config shipped under `config/` loads without errors (including any
/// added later, such as `config/demo.toml`).
#[test]
fn shipped_configs_load() {
    let mut loaded = 0;
    for entry in std::fs::read_dir("config").expect("read config/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(errors) = config::load(&path) {
                panic!("{} does not load:\n{errors}", path.display());
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 1, "no config/*.toml found");
}

/// Profiles are plain data files too: each is used by at least one shipped
/// config, so `shipped_configs_load` has checked it.
#[test]
fn shipped_profiles_are_used() {
    let mut texts = String::new();
    for entry in std::fs::read_dir("config").expect("read config/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            texts.push_str(&std::fs::read_to_string(&path).expect("read config"));
        }
    }
    for entry in std::fs::read_dir(Path::new("config/profiles")).expect("read profiles") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            texts.contains(&format!("profiles/{name}")),
            "{} is not used by any config/*.toml",
            path.display()
        );
    }
}
