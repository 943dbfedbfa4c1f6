//! VRRP behaviour as data, in the spirit of holo's conformance tests: each
//! file in `tests/vrrp-scenarios/` describes one router (its parameters),
//! then numbered steps - an input event at a time on a virtual clock
//! (received adverts, timer firings, tracking and link changes, BFD) and
//! the actions the state machine must answer with, in order, and
//! optionally its state and next deadline afterwards. The scenarios come
//! from RFC 5798 / RFC 3768 and from keepalived interop; a new behaviour
//! gets a new file, not new code.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use director::{
    config::Version,
    vrrp::fsm::{Action, Event, Machine, Params, State},
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    /// Where the expected behaviour comes from.
    source: String,
    router: Router,
    step: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Router {
    version: u8,
    priority: u8,
    /// Seconds.
    advert_int: f64,
    #[serde(default = "yes")]
    preempt: bool,
    #[serde(default)]
    preempt_delay: f64,
    #[serde(default)]
    start_as_master: bool,
    address: IpAddr,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Seconds on the virtual clock.
    at: f64,
    /// startup, shutdown, advert, timer, fault, recover, priority,
    /// master_down, starved, follow.
    event: String,
    /// advert: the sender, its priority and interval (seconds).
    from: Option<IpAddr>,
    priority: Option<u8>,
    interval: Option<f64>,
    /// follow: the state a sync-group peer entered.
    state_of_peer: Option<String>,
    /// The actions, in order: `advert N`, `add_addresses`, `announce`,
    /// `remove_addresses`, `transition FROM TO`, `split_brain FROM`.
    #[serde(default)]
    expect: Vec<String>,
    /// The state afterwards.
    state: Option<String>,
    /// The next deadline afterwards, seconds on the virtual clock (none:
    /// `"none"`).
    deadline: Option<toml::Value>,
}

fn state_of(s: &str) -> State {
    match s {
        "init" => State::Init,
        "backup" => State::Backup,
        "master" => State::Master,
        "fault" => State::Fault,
        other => panic!("unknown state `{other}`"),
    }
}

fn show(a: &Action) -> String {
    match a {
        Action::SendAdvert(p) => format!("advert {p}"),
        Action::AddAddresses => "add_addresses".into(),
        Action::Announce => "announce".into(),
        Action::RemoveAddresses => "remove_addresses".into(),
        Action::Transition { from, to } => format!("transition {} {}", from.as_str(), to.as_str()),
        Action::SplitBrain { other, .. } => format!("split_brain {other}"),
    }
}

fn centis(seconds: f64) -> u16 {
    (seconds * 100.0).round() as u16
}

/// Replays one scenario; the error names the file, the step and what
/// differed.
fn replay(path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let sc: Scenario = toml::from_str(&text).map_err(|e| format!("{e}"))?;
    assert!(!sc.description.is_empty() && !sc.source.is_empty());
    let r = &sc.router;
    let mut m = Machine::new(Params {
        version: Version::try_from(r.version)?,
        priority: r.priority,
        advert_interval_cs: centis(r.advert_int),
        preempt: r.preempt,
        preempt_delay: Duration::from_secs_f64(r.preempt_delay),
        start_as_master: r.start_as_master,
        primary: r.address,
    });
    let t0 = Instant::now();
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let mut last = 0.0;
    for (n, st) in sc.step.iter().enumerate() {
        let n = n + 1;
        let fail = |what: String| format!("step {n} ({} at {} s): {what}", st.event, st.at);
        if st.at < last {
            return Err(fail("steps go back in time".into()));
        }
        last = st.at;
        let now = at(st.at);
        let event = match st.event.as_str() {
            "startup" => Event::Startup,
            "shutdown" => Event::Shutdown,
            "advert" => Event::Advert {
                src: st.from.ok_or_else(|| fail("advert needs `from`".into()))?,
                priority: st
                    .priority
                    .ok_or_else(|| fail("advert needs `priority`".into()))?,
                interval_cs: centis(st.interval.unwrap_or(r.advert_int)),
            },
            "timer" => {
                // The timer fires only when it is due.
                match m.deadline() {
                    Some(d) if d <= now => Event::Timer,
                    d => {
                        return Err(fail(format!(
                            "the timer is not due (deadline {:?} s)",
                            d.map(|d| d.duration_since(t0).as_secs_f64())
                        )));
                    }
                }
            }
            "fault" => Event::Fault(true),
            "recover" => Event::Fault(false),
            "priority" => Event::Priority(
                st.priority
                    .ok_or_else(|| fail("priority needs `priority`".into()))?,
            ),
            "master_down" => Event::MasterDown,
            "starved" => Event::Starved,
            "follow" => Event::Follow(state_of(
                st.state_of_peer
                    .as_deref()
                    .ok_or_else(|| fail("follow needs `state_of_peer`".into()))?,
            )),
            other => return Err(fail(format!("unknown event `{other}`"))),
        };
        if !matches!(event, Event::Timer)
            && let Some(d) = m.deadline()
            && d < now
            && st.event != "startup"
            && st.event != "starved"
        {
            return Err(fail(format!(
                "the timer was due at {} s and no `timer` step fired it",
                d.duration_since(t0).as_secs_f64()
            )));
        }
        let got: Vec<String> = m.step(event, now).iter().map(show).collect();
        if got != st.expect {
            return Err(fail(format!("actions {got:?}, expected {:?}", st.expect)));
        }
        if let Some(s) = &st.state
            && m.state() != state_of(s)
        {
            return Err(fail(format!("state {}, expected {s}", m.state().as_str())));
        }
        match &st.deadline {
            None => {}
            Some(toml::Value::String(s)) if s == "none" => {
                if let Some(d) = m.deadline() {
                    return Err(fail(format!(
                        "deadline at {} s, expected none",
                        d.duration_since(t0).as_secs_f64()
                    )));
                }
            }
            Some(v) => {
                let want = v
                    .as_float()
                    .or_else(|| v.as_integer().map(|i| i as f64))
                    .ok_or_else(|| fail("deadline: seconds or \"none\"".into()))?;
                let got = m.deadline().map(|d| d.duration_since(t0).as_secs_f64());
                if got.is_none_or(|g| (g - want).abs() > 0.000_5) {
                    return Err(fail(format!("deadline at {got:?} s, expected {want} s")));
                }
            }
        }
    }
    Ok(sc.step.len())
}

#[test]
fn every_scenario_replays_as_written() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vrrp-scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenario directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "only {} scenarios", files.len());
    let mut failures = Vec::new();
    for f in &files {
        match replay(f) {
            Ok(steps) => eprintln!("{}: {steps} steps", f.display()),
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The replayer itself can fail: a scenario whose expectation is wrong is
/// reported with its step.
#[test]
fn a_wrong_expectation_is_reported() {
    let dir = std::env::temp_dir().join(format!("vrrp-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join("wrong.toml");
    std::fs::write(
        &f,
        "description = \"x\"\nsource = \"y\"\n[router]\nversion = 3\npriority = 100\nadvert_int = 1.0\naddress = \"10.0.0.2\"\n[[step]]\nat = 0.0\nevent = \"startup\"\nexpect = [\"transition init master\"]\n",
    )
    .expect("write");
    let e = replay(&f).expect_err("must fail");
    assert!(
        e.contains("step 1") && e.contains("transition init backup"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).expect("clean");
}
