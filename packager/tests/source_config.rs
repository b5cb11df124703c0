//! `slipway.toml`, excludes and the payload layout rule, end to end; and
//! `inspect` / `diff` on what they produce.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn manifest_paths(archive: &Path) -> Vec<String> {
    let out = pack()
        .arg("inspect")
        .arg(archive)
        .arg("--json")
        .output()
        .expect("inspect");
    assert!(out.status.success(), "{:?}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    m["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect()
}

#[test]
fn unknown_key_in_slipway_toml_is_refused_naming_key_and_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    fs::write(
        src.join("slipway.toml"),
        "app = \"bot\"\n[hooks]\ncheck = [\"true\"]\nrestart = [\"x\"]\n",
    )
    .expect("toml");
    let repo = tmp.path().join("repo");
    let out = pack()
        .arg("build")
        .arg(&src)
        .args(["--version", "1.0.0", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&repo)
        .output()
        .expect("build");
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let err = text(&out).1;
    assert!(err.contains("restart"), "{err}");
    assert!(
        err.contains(&src.join("slipway.toml").display().to_string()),
        "{err}"
    );
    assert!(files_under(&repo).is_empty());
}

#[test]
fn excludes_from_flags_toml_and_slipwayignore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    write_tree(
        &src,
        &[
            ("app/bot/__pycache__/main.cpython-311.pyc", "x", 0o644),
            ("app/bot/stale.pyc", "x", 0o644),
            ("app/secrets/token", "s", 0o600),
            ("app/logs/today.log", "l", 0o644),
            ("app/keep.txt", "k", 0o644),
        ],
    );
    fs::write(
        src.join("slipway.toml"),
        "app = \"bot\"\n[build]\nexclude = [\"**/__pycache__/**\", \"*.pyc\"]\n",
    )
    .expect("toml");
    fs::write(
        src.join(".slipwayignore"),
        "# secrets never ship\nsecrets/\n\n",
    )
    .expect("ignore");
    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &key, "1.0.0", &["--exclude", "app/logs/**"]);
    let paths = manifest_paths(&archive(&repo, &id));
    assert!(paths.contains(&"app/keep.txt".to_string()), "{paths:?}");
    for gone in [
        "__pycache__",
        ".pyc",
        "secrets",
        "logs",
        "slipway.toml",
        ".slipwayignore",
    ] {
        assert!(
            !paths.iter().any(|p| p.contains(gone)),
            "{gone} packed: {paths:?}"
        );
    }
}

#[test]
fn whole_directory_layout_without_app_subdir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &[
            ("bot/main.py", "print(1)\n", 0o644),
            ("schema/VERSION", "2\n", 0o644),
            (
                "slipway.toml",
                "app = \"bot\"\n[schema]\nversion = 2\nmin_compatible = 1\n",
                0o644,
            ),
            (".slipwayignore", "*.tmp\n", 0o644),
            (".git/HEAD", "ref: x\n", 0o644),
            ("scratch.tmp", "x", 0o644),
        ],
    );
    // The output repository inside the tree is not packed into itself.
    let repo = src.join("dist");
    let first = build(&src, &repo, &key, "1.0.0", &[]);
    let second = build(&src, &repo, &key, "1.0.0", &[]);
    assert_eq!(
        first, second,
        "the previous archive in dist/ leaked into the build"
    );
    let paths = manifest_paths(&archive(&repo, &first));
    assert_eq!(
        paths,
        [
            "app",
            "app/bot",
            "app/bot/main.py",
            "schema",
            "schema/VERSION"
        ],
    );
    let out = pack()
        .arg("inspect")
        .arg(archive(&repo, &first))
        .output()
        .expect("inspect");
    let summary = text(&out).0;
    assert!(
        summary.contains("schema:    version 2 (reads data from 1)"),
        "{summary}"
    );
}

#[test]
fn app_and_version_come_from_toml_and_tag() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let out = pack()
        .arg("build")
        .arg(&src)
        .args(["--tag", "v2.3.4", "--commit", "0123abc", "--json", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&repo)
        .output()
        .expect("build");
    assert!(out.status.success(), "{:?}", text(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for k in [
        "id",
        "app",
        "version",
        "channel",
        "archive",
        "signature",
        "size",
        "files",
        "bytes",
        "schema_version",
    ] {
        assert!(built.get(k).is_some(), "missing {k}: {built}");
    }
    assert_eq!(built["app"], "bot");
    assert_eq!(built["version"], "2.3.4");
    assert_eq!(built["channel"], "stable");
    assert_eq!(built["files"], 5);
    let archive = Path::new(built["archive"].as_str().expect("archive"));
    let m: serde_json::Value = serde_json::from_slice(
        &pack()
            .arg("inspect")
            .arg(archive)
            .arg("--json")
            .output()
            .expect("inspect")
            .stdout,
    )
    .expect("json");
    assert_eq!(m["source"]["commit"], "0123abc");
    assert_eq!(m["source"]["tag"], "v2.3.4");
    assert_eq!(m["hooks"]["check"][2], "compileall");

    // A version that disagrees with the tag is a usage error.
    let out = pack()
        .arg("build")
        .arg(&src)
        .args(["--tag", "v2.3.4", "--version", "2.3.5", "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&repo)
        .output()
        .expect("build");
    assert_eq!(out.status.code(), Some(2));
    // No version at all.
    let out = pack()
        .arg("build")
        .arg(&src)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&repo)
        .output()
        .expect("build");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--version"), "{:?}", text(&out));
}

#[test]
fn diff_lists_added_removed_changed_and_schema() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let old = build(&src, &repo, &key, "1.0.0", &[]);
    fs::write(src.join("app/bot/main.py"), "print('changed')\n").expect("edit");
    fs::remove_file(src.join("app/bot/__init__.py")).expect("rm");
    write_tree(
        &src,
        &[
            ("app/bot/new.py", "n\n", 0o644),
            ("schema/migrations/002.sql", "--\n", 0o644),
        ],
    );
    fs::set_permissions(
        src.join("schema/VERSION"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let new = build(&src, &repo, &key, "1.1.0", &["--schema-version", "2"]);
    let out = pack()
        .arg("diff")
        .arg(archive(&repo, &old))
        .arg(archive(&repo, &new))
        .arg("--json")
        .output()
        .expect("diff");
    assert!(out.status.success(), "{:?}", text(&out));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let paths = |key: &str| -> Vec<String> {
        d[key]
            .as_array()
            .expect("list")
            .iter()
            .map(|e| e["path"].as_str().expect("path").to_string())
            .collect()
    };
    assert_eq!(
        paths("added"),
        ["app/bot/new.py", "schema/migrations/002.sql"]
    );
    assert_eq!(paths("removed"), ["app/bot/__init__.py"]);
    assert_eq!(paths("changed"), ["app/bot/main.py", "schema/VERSION"]);
    assert_eq!(d["changed"][0]["changes"][0]["what"], "content");
    assert_eq!(d["changed"][1]["changes"][0]["what"], "mode");
    assert_eq!(d["schema"]["old_version"], 1);
    assert_eq!(d["schema"]["new_version"], 2);
    assert_eq!(d["old_version"], "1.0.0");
    assert_eq!(d["new_version"], "1.1.0");
    let out = pack()
        .arg("diff")
        .arg(archive(&repo, &old))
        .arg(archive(&repo, &new))
        .output()
        .expect("diff");
    let human = text(&out).0;
    assert!(
        human.contains("+ app/bot/new.py") && human.contains("- app/bot/__init__.py"),
        "{human}"
    );
}

#[test]
fn bad_hooks_and_schema_in_slipway_toml_name_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let toml = src.join("slipway.toml");
    for (content, words) in [
        ("app = \"bot\"\n[hooks]\nmigrate = []\n", "[hooks] migrate"),
        (
            "app = \"bot\"\n[schema]\nversion = 1\nmin_compatible = 2\n",
            "min_compatible 2",
        ),
        ("app = \"Bot!\"\n", "app:"),
        ("app = \"bot\"\n[schema]\nversion = \"one\"\n", "version"),
    ] {
        fs::write(&toml, content).expect("toml");
        let out = pack()
            .arg("build")
            .arg(&src)
            .args(["--version", "1.0.0", "--key"])
            .arg(&key)
            .arg("--out")
            .arg(tmp.path().join("repo"))
            .output()
            .expect("build");
        assert_eq!(out.status.code(), Some(2), "{content}: {:?}", text(&out));
        let err = text(&out).1;
        assert!(
            err.contains(words) && err.contains(&toml.display().to_string()),
            "{content}: {err}"
        );
    }
}

#[test]
fn runtime_paths_from_slipway_toml_reach_the_manifest_and_bad_ones_name_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let toml = src.join("slipway.toml");
    fs::write(
        &toml,
        "app = \"bot\"\nruntime_paths = [\"**/__pycache__/**\", \"app/cache/**\"]\n",
    )
    .expect("toml");
    let repo = tmp.path().join("repo");
    let id = build(&src, &repo, &key, "1.0.0", &[]);
    let out = pack()
        .arg("inspect")
        .arg(archive(&repo, &id))
        .arg("--json")
        .output()
        .expect("inspect");
    assert!(out.status.success(), "{:?}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        m["runtime_paths"],
        serde_json::json!(["**/__pycache__/**", "app/cache/**"])
    );
    let out = pack()
        .arg("inspect")
        .arg(archive(&repo, &id))
        .output()
        .expect("inspect");
    assert!(
        text(&out)
            .0
            .contains("runtime:   **/__pycache__/** app/cache/**"),
        "{:?}",
        text(&out)
    );

    for (pattern, words) in [
        ("*.pyc", "no '/'"),
        ("bot/x/**", "outside the payload"),
        ("**/*", "matches any path"),
    ] {
        fs::write(
            &toml,
            format!("app = \"bot\"\nruntime_paths = [{pattern:?}]\n"),
        )
        .expect("toml");
        let out = pack()
            .arg("build")
            .arg(&src)
            .args(["--version", "1.0.1", "--key"])
            .arg(&key)
            .arg("--out")
            .arg(tmp.path().join("repo2"))
            .output()
            .expect("build");
        assert_eq!(out.status.code(), Some(2), "{pattern}: {:?}", text(&out));
        let err = text(&out).1;
        assert!(
            err.contains("runtime_paths")
                && err.contains(words)
                && err.contains(&toml.display().to_string()),
            "{pattern}: {err}"
        );
    }
}

#[test]
fn a_release_declares_probation_in_slipway_toml_and_the_manifest_carries_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (key, _) = keygen(tmp.path(), "k");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let repo = tmp.path().join("repo");
    let inspect = |id: &str| -> serde_json::Value {
        let out = pack()
            .arg("inspect")
            .arg(archive(&repo, id))
            .arg("--json")
            .output()
            .expect("inspect");
        assert!(out.status.success(), "{:?}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    fs::write(src.join("slipway.toml"), "app = \"bot\"\n").expect("toml");
    let plain = build(&src, &repo, &key, "1.0.0", &[]);
    assert!(
        inspect(&plain).get("probation").is_none(),
        "omitted when false"
    );
    fs::write(
        src.join("slipway.toml"),
        "app = \"bot\"\n[health]\nprobation = true\n",
    )
    .expect("toml");
    let declared = build(&src, &repo, &key, "2.0.0", &[]);
    assert_eq!(inspect(&declared)["probation"], true);
}
