//! The Debian package: `cargo deb` packages the binary under test, and
//! dpkg-deb shows what a technician's `apt install ./modbridge_*.deb` gets:
//! the binary, the unit, the sysusers file, the default config as a
//! conffile that `modbridge check` accepts, examples, profiles and schemas,
//! and maintainer scripts that create the user and reload systemd.
//!
//! Skipped where cargo-deb or dpkg-deb is missing, except under CI
//! (`.ci/run` installs cargo-deb).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_modbridge");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// True when the tools are there; otherwise the test is skipped (it fails under CI).
fn tools_present() -> bool {
    let deb = Command::new(cargo()).args(["deb", "--version"]).output();
    let dpkg = Command::new("dpkg-deb").arg("--version").output();
    let present =
        matches!(&deb, Ok(o) if o.status.success()) && matches!(&dpkg, Ok(o) if o.status.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "cargo-deb and dpkg-deb are needed: cargo install cargo-deb --locked"
        );
        eprintln!("skipped: cargo-deb or dpkg-deb is missing (cargo install cargo-deb --locked)");
    }
    present
}

/// Builds the .deb around the binary under test (cargo deb packages
/// `$CARGO_TARGET_DIR/release/modbridge`: a target directory of its own
/// holds a copy) and returns its path.
fn build_deb(work: &Path) -> PathBuf {
    let target = work.join("target");
    std::fs::create_dir_all(target.join("release")).expect("mkdir");
    std::fs::copy(BIN, target.join("release/modbridge")).expect("copy binary");
    let out = work.join("out");
    let stdout = succeeded(
        "cargo deb",
        Command::new(cargo())
            .args([
                "deb",
                "--no-build",
                "--locked",
                "--fast",
                "--quiet",
                "--output",
            ])
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(root())
            .output()
            .expect("cargo deb"),
    );
    let deb = PathBuf::from(stdout.trim().lines().last().unwrap_or_default());
    assert!(deb.is_file(), "no .deb at {deb:?}");
    deb
}

#[test]
fn the_deb_installs_what_a_field_box_needs() {
    if !tools_present() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(work.path());
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(
        name.starts_with(&format!("modbridge_{}-", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );

    // The changelog's newest entry is this version (bump both together).
    let changelog = std::fs::read_to_string(root().join("debian/changelog")).expect("changelog");
    assert!(
        changelog.starts_with(&format!("modbridge ({}-", env!("CARGO_PKG_VERSION"))),
        "debian/changelog does not start with this version: {}",
        changelog.lines().next().unwrap_or_default()
    );

    // Control data.
    let info = succeeded(
        "dpkg-deb -I",
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .output()
            .expect("dpkg-deb"),
    );
    for field in [
        "Package: modbridge",
        "Section: net",
        "systemd | systemd-standalone-sysusers | systemd-sysusers",
    ] {
        assert!(info.contains(field), "control lacks {field:?}:\n{info}");
    }

    // Files, with their modes.
    let listing = succeeded(
        "dpkg-deb -c",
        Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .expect("dpkg-deb"),
    );
    let entry = |path: &str| -> String {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("the package lacks /{path}:\n{listing}"))
            .to_string()
    };
    assert!(entry("usr/bin/modbridge").starts_with("-rwxr-xr-x"));
    for path in [
        "usr/lib/systemd/system/modbridge.service",
        "usr/lib/sysusers.d/modbridge.conf",
        "etc/modbridge/modbridge.toml",
        "etc/modbridge/modbridge.schema.json",
        "etc/modbridge/profile.schema.json",
        "usr/share/modbridge/example.toml",
        "usr/share/modbridge/modbridge.schema.json",
        "usr/share/modbridge/profile.schema.json",
        "usr/share/modbridge/profiles/nibe-f1345.toml",
        "usr/share/modbridge/profiles/regin-corrigo.toml",
        "usr/share/doc/modbridge/README.md",
        "usr/share/doc/modbridge/copyright",
        "usr/share/doc/modbridge/changelog.Debian.gz",
    ] {
        assert!(entry(path).starts_with("-rw-r--r--"), "{}", entry(path));
    }

    // Maintainer scripts and conffiles.
    let control = work.path().join("control");
    succeeded(
        "dpkg-deb -e",
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(&control)
            .output()
            .expect("dpkg-deb"),
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/modbridge/modbridge.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    for part in [
        "systemd-sysusers",
        "modbridge.conf",
        "deb-systemd-helper enable modbridge.service",
        "[ -d /run/systemd/system ]",
        "daemon-reload",
    ] {
        assert!(
            postinst.contains(part),
            "postinst lacks {part:?}:\n{postinst}"
        );
    }
    let postrm = std::fs::read_to_string(control.join("postrm")).expect("postrm");
    assert!(postrm.contains("rm -rf /var/lib/modbridge"), "{postrm}");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        if path.exists() {
            succeeded(
                &format!("sh -n {script}"),
                Command::new("sh")
                    .arg("-n")
                    .arg(&path)
                    .output()
                    .expect("sh"),
            );
        }
    }

    // The installed tree: the files are the repository's, the default config
    // passes `check`, and every `#:schema` directive finds its schema.
    let tree = work.path().join("tree");
    succeeded(
        "dpkg-deb -x",
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&tree)
            .output()
            .expect("dpkg-deb"),
    );
    for (installed, source) in [
        ("etc/modbridge/modbridge.toml", "config/modbridge.toml"),
        (
            "usr/lib/systemd/system/modbridge.service",
            "systemd/modbridge.service",
        ),
        (
            "usr/lib/sysusers.d/modbridge.conf",
            "systemd/modbridge.sysusers",
        ),
        (
            "etc/modbridge/modbridge.schema.json",
            "config/modbridge.schema.json",
        ),
    ] {
        assert_eq!(
            std::fs::read(tree.join(installed)).expect("installed file"),
            std::fs::read(root().join(source)).expect("source file"),
            "/{installed} is not {source}"
        );
    }
    let default_config = tree.join("etc/modbridge/modbridge.toml");
    let config = modbridge::config::load(&default_config).expect("the default config loads");
    assert_eq!(
        config.gateway.data_dir,
        Path::new("/var/lib/modbridge"),
        "the unit's StateDirectory"
    );
    for config in [
        default_config,
        tree.join("usr/share/modbridge/example.toml"),
    ] {
        succeeded(
            "modbridge check",
            Command::new(tree.join("usr/bin/modbridge"))
                .arg("check")
                .arg("-c")
                .arg(&config)
                .output()
                .expect("modbridge check"),
        );
    }
    let mut directives = 0;
    for dir in [
        "etc/modbridge",
        "usr/share/modbridge",
        "usr/share/modbridge/profiles",
    ] {
        for file in std::fs::read_dir(tree.join(dir)).expect("dir") {
            let path = file.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("toml");
                let schema = text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("#:schema "))
                    .unwrap_or_else(|| panic!("{} names no schema", path.display()));
                let target = path.parent().expect("parent").join(schema);
                assert!(target.is_file(), "{}: {schema} is missing", path.display());
                directives += 1;
            }
        }
    }
    assert!(directives >= 4, "{directives}");
}
