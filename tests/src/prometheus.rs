//! A real Prometheus (Debian's `prometheus`) in a lab namespace: it scrapes
//! directors' `metrics_address` every second and evaluates the shipped
//! alerting rules; the test reads its HTTP API.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{Netns, Proc, http};

/// The shipped alerting rules (`packaging/prometheus-alerts.yml`).
pub fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus-alerts.yml")
}

/// The shipped Grafana dashboard (`packaging/grafana-dashboard.json`).
pub fn shipped_dashboard() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana-dashboard.json")
}

/// A running Prometheus. Dropping it kills it.
pub struct Prometheus {
    /// The name of the namespace it runs in.
    ns: String,
    addr: SocketAddr,
    _proc: Proc,
}

/// One alert as `/api/v1/alerts` reports it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
    pub labels: serde_json::Map<String, serde_json::Value>,
}

impl Alert {
    /// The value of label `k`, `""` when absent.
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).and_then(|v| v.as_str()).unwrap_or("")
    }
}

impl Prometheus {
    /// Starts Prometheus in `ns` (on its loopback, port 9090; data under
    /// `dir`) scraping `targets` as job `job` every second, with the
    /// rule files `rules` evaluated every second; waits for its API.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        job: &str,
        targets: &[String],
        rules: &[PathBuf],
    ) -> Result<Prometheus> {
        let data = dir.join("prometheus-data");
        std::fs::create_dir_all(&data)?;
        let quoted = |v: &[String]| {
            v.iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rule_files: Vec<String> = rules.iter().map(|r| r.display().to_string()).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            quoted(&rule_files),
            quoted(targets)
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr: SocketAddr = ([127, 0, 0, 1], 9090).into();
        ns.ip(&["link", "set", "lo", "up"])?;
        let proc = ns.spawn(
            "prometheus",
            &[
                &format!("--config.file={}", config_path.display()),
                &format!("--storage.tsdb.path={}", data.display()),
                &format!("--web.listen-address={addr}"),
            ],
            &dir.join("prometheus.log"),
        )?;
        let p = Prometheus {
            ns: ns.name().to_string(),
            addr,
            _proc: proc,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match p.get("/-/ready") {
                Ok(r) if r.status == 200 => return Ok(p),
                _ if Instant::now() > deadline => bail!(
                    "Prometheus never became ready; its log:\n{}",
                    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `GET path` from inside its namespace.
    fn get(&self, path: &str) -> Result<http::Response> {
        let (addr, path) = (self.addr, path.to_string());
        crate::netns::spawn_in(&self.ns, move || {
            http::get(addr, &path, Duration::from_secs(5))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the request thread panicked"))??
    }

    /// `GET path` on the API, its `data` (the call must succeed).
    fn api(&self, path: &str) -> Result<serde_json::Value> {
        let r = self.get(path)?;
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .with_context(|| format!("{path}: not JSON: {}", r.body))?;
        ensure!(
            r.status == 200 && v["status"] == "success",
            "{path}: {} {}",
            r.status,
            r.body
        );
        Ok(v["data"].clone())
    }

    /// An instant query's result vector (each `{metric, value}`).
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .with_context(|| format!("query `{expr}`"))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of label `name` across the series matching `selector`.
    pub fn label_values(&self, name: &str, selector: &str) -> Result<Vec<String>> {
        let data = self.api(&format!(
            "/api/v1/label/{name}/values?match[]={}",
            encode(selector)
        ))?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The active (pending or firing) alerts.
    pub fn alerts(&self) -> Result<Vec<Alert>> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| {
                        let labels = v["labels"].as_object().cloned().unwrap_or_default();
                        Alert {
                            name: labels
                                .get("alertname")
                                .and_then(|n| n.as_str())
                                .unwrap_or("")
                                .to_string(),
                            state: v["state"].as_str().unwrap_or("").to_string(),
                            labels,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until `pred` holds for the active alerts; the last list when
    /// it does.
    pub fn wait_alerts(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Alert]) -> bool,
    ) -> Result<Vec<Alert>> {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.alerts()?;
            if pred(&a) {
                return Ok(a);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {timeout:?}; alerts now: {a:#?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until every target of the job is up (as many `up == 1`
    /// series as `n`).
    pub fn wait_up(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.query("up == 1")?;
            if up.len() == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} targets up after {timeout:?}: {:?}",
                    up.len(),
                    self.query("up")?
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Whether `alerts` has `name` firing with label `k` = `v`.
pub fn firing(alerts: &[Alert], name: &str, k: &str, v: &str) -> bool {
    alerts
        .iter()
        .any(|a| a.name == name && a.state == "firing" && a.label(k) == v)
}

/// Percent-encoding of a query parameter (RFC 3986 unreserved kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `promtool check metrics` on an exposition: its complaints (empty when
/// clean).
pub fn promtool_check_metrics(text: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("promtool (cargo xtask setup installs Debian's prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(if out.status.success() {
        said.trim().to_string()
    } else {
        format!("exit {:?}: {said}", out.status.code())
    })
}
