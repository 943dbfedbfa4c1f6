//! Test support, built only with the `testing` feature (the fuzz targets
//! and the test suite enable it; the daemon never does): `fuzzing` holds
//! the fuzz targets' invariants, so the normal test suite replays their
//! regressions with the same code.

pub mod fuzzing;
