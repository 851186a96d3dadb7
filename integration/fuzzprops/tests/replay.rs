//! Replays every committed fuzz corpus file (`filters/fuzz/corpus/<target>/`) and every
//! crash regression (`filters/fuzz/regressions/<target>/`) through the target's property
//! body, on stable, in `make test`. A target without a committed corpus fails: the corpus
//! is what makes this test mean something.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filters/fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    v.sort();
    v
}

fn replay(kind: &str, each: impl Fn(&str) -> usize) {
    let mut total = 0;
    for (name, _) in sg_fuzzprops::TARGETS {
        total += each(name);
    }
    eprintln!("{kind}: {total} inputs replayed");
}

fn run(name: &str, dir: &Path) -> usize {
    let f = sg_fuzzprops::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap();
    let inputs = files(dir);
    let failed: Vec<String> = inputs
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap();
            std::panic::catch_unwind(|| f(&data)).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: these inputs violate its property: {failed:#?}"
    );
    inputs.len()
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus() {
    for (name, _) in sg_fuzzprops::TARGETS {
        let src = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&src).unwrap_or_default();
        assert!(
            text.contains(&format!("sg_fuzzprops::{name}(")),
            "{} does not call sg_fuzzprops::{name}",
            src.display()
        );
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "{name}: no committed corpus");
    }
    let listed: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for l in &listed {
        assert!(
            sg_fuzzprops::TARGETS.iter().any(|(n, _)| n == l),
            "fuzz target {l} is not in sg_fuzzprops::TARGETS"
        );
    }
}

#[test]
fn the_corpora_keep_every_property() {
    replay("corpus", |name| {
        run(name, &fuzz_dir().join("corpus").join(name))
    });
}

#[test]
fn the_crash_regressions_keep_every_property() {
    replay("regressions", |name| {
        run(name, &fuzz_dir().join("regressions").join(name))
    });
}
