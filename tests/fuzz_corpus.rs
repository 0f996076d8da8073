//! The fuzz targets' corpora (`tests/fuzz/corpus/<target>/`, what cargo-afl's
//! runs kept as covering distinct paths) and the crashes they found
//! (`tests/fuzz/crashes/<target>/`, fixed since) replayed through the same entry
//! points the targets call, so that `cargo test` catches a regression
//! without AFL.

use std::path::Path;

#[test]
fn every_corpus_and_crash_input_keeps_its_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fuzz");
    let mut failed = Vec::new();
    for &(target, run) in geolb::fuzzing::TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "crashes"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                inputs += 1;
                if std::panic::catch_unwind(|| run(&data)).is_err() {
                    failed.push(path.display().to_string());
                }
            }
        }
        // A corpus lost (a bad merge, a moved directory) would pass quietly.
        assert!(
            inputs >= 3,
            "{target}: only {inputs} inputs under {}",
            root.display()
        );
    }
    assert!(
        failed.is_empty(),
        "failed (see the panics above): {failed:#?}"
    );
}
