//! `misc_check`: a script's exit code (with `misc_dynamic`, codes 2 and up
//! set the weight).

use std::time::Duration;

use super::Outcome;

/// Longest output kept from a script.
const MAX_SCRIPT_OUTPUT: usize = 4096;

pub(super) async fn misc(argv: &[String], dynamic: bool, timeout: Duration) -> Outcome {
    use crate::scripts::{Ended, Leftovers, run};
    let program = argv.first().map(String::as_str).unwrap_or("");
    match run(argv, timeout, MAX_SCRIPT_OUTPUT, Leftovers::Kill).await {
        Err(e) => Outcome::fail(e),
        Ok(r) => match r.ended {
            Ended::TimedOut => Outcome::fail(format!("{program} killed after {timeout:?}")),
            Ended::Signalled => Outcome::fail(format!("{program} killed by a signal")),
            Ended::Exited(0) => Outcome::ok(),
            Ended::Exited(code) if dynamic && code >= 2 => Outcome {
                ok: true,
                weight: Some(code as u32 - 2),
                error: None,
            },
            Ended::Exited(code) => Outcome::fail(format!("{program} exited {code}")),
        },
    }
}
