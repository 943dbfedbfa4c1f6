//! Every checked-in fuzz input - the seed corpora (`fuzz/corpus/TARGET`)
//! and every crash a fuzzer ever found (`fuzz/regressions/TARGET`) - runs
//! through the same invariant checks as the fuzz targets, in the normal
//! test suite.

use std::path::Path;

#[test]
fn corpora_and_regressions_keep_the_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, check) in director::testing::fuzzing::TARGETS {
        let mut seeds = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).expect("read");
                eprintln!("{name}: {}", e.path().display());
                check(&data);
                seeds += 1;
            }
        }
        assert!(seeds > 0, "no checked-in inputs for fuzz target {name}");
    }
}
