//! `director import-keepalived FILE`: translates a keepalived.conf (with its
//! `include` files) into director's TOML. Every directive either becomes a
//! key or is reported as not translated, with its file and line: nothing is
//! dropped silently.
//!
//! keepalived's grammar: one statement per line (`keyword args...`),
//! `{ ... }` blocks, comments from `#` or `!`, double-quoted strings, and
//! `include GLOB` anywhere. `parse` reads it; `translate` walks it, with
//! `vrrp` and `lvs` translating their blocks.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

/// Errors that stop an import (everything else is a warning).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// The translation would not pass `check-config`: refused rather than
    /// printed.
    #[error(
        "{file}: cannot be imported: the translation is not a valid director config ({problem}); nothing was printed"
    )]
    Invalid { file: PathBuf, problem: String },
    /// A directive whose meaning director cannot keep and whose loss would
    /// be unsafe (for example AH authentication: dropping it would make the
    /// keepalived peer reject every advert, a split brain).
    #[error("{origin}: `{directive}` cannot be imported: {reason}; nothing was printed")]
    Refused {
        origin: Origin,
        directive: String,
        reason: String,
    },
}

/// Where an import reads its files (the disk, or memory for fuzzing).
pub trait Sources {
    /// The text of `path`.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// The files matching `pattern` (relative to `base` unless absolute;
    /// `*` and `?` in the last component), sorted.
    fn glob(&self, base: &Path, pattern: &str) -> std::io::Result<Vec<PathBuf>>;
}

/// The real file system.
pub struct Disk;

impl Sources for Disk {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn glob(&self, base: &Path, pattern: &str) -> std::io::Result<Vec<PathBuf>> {
        expand_glob(base, pattern, |dir| {
            Ok(std::fs::read_dir(dir)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect())
        })
    }
}

/// Files held in memory (`cargo xtask fuzz`: includes without the disk).
pub struct InMemory(pub std::collections::BTreeMap<PathBuf, String>);

impl Sources for InMemory {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn glob(&self, base: &Path, pattern: &str) -> std::io::Result<Vec<PathBuf>> {
        expand_glob(base, pattern, |dir| {
            Ok(self
                .0
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect())
        })
    }
}

/// Where a statement came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A directive that was not translated, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub origin: Origin,
    pub directive: String,
    pub reason: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: `{}` not translated: {}",
            self.origin, self.directive, self.reason
        )
    }
}

/// One statement: `keyword args... [{ children }]`.
#[derive(Debug, Clone)]
pub struct Node {
    pub keyword: String,
    pub args: Vec<String>,
    pub children: Option<Vec<Node>>,
    pub origin: Origin,
}

impl Node {
    fn text(&self) -> String {
        let mut s = self.keyword.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// The result of an import.
#[derive(Debug)]
pub struct Import {
    pub toml: String,
    pub warnings: Vec<Warning>,
    /// Translations worth knowing about that lose nothing (printed, not
    /// counted as untranslated).
    pub notes: Vec<String>,
}

mod lvs;
mod parse;
mod translate;
mod vrrp;

use self::{parse::*, translate::*};

/// Reads `path` (and its includes) and translates it for this machine:
/// keepalived's conditional lines (`@ID ...`) apply as keepalived would
/// apply them here, with the host name (up to the first dot) as config id.
pub fn import(path: &Path) -> Result<Import, ImportError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let id = host.split('.').next().unwrap_or_default().to_string();
    import_for(&Disk, path, &id)
}

/// Reads `path` (and its includes) from `src` and translates it for config
/// id `config_id` (keepalived's `-i`): `@ID line` is kept when ID is the
/// config id, `@^ID line` when it is not; the others are left out (noted).
pub fn import_for(src: &dyn Sources, path: &Path, config_id: &str) -> Result<Import, ImportError> {
    let text = src.read(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    import_text_for(src, path, &text, config_id)
}

/// Keeps the nodes keepalived applies for `id` (conditional lines) and
/// strips their `@ID` prefix.
fn apply_conditions(nodes: Vec<Node>, id: &str, t: &mut Translator) -> Vec<Node> {
    let mut out = Vec::new();
    for mut n in nodes {
        if let Some(cond) = n.keyword.strip_prefix('@') {
            let (negate, name) = match cond.strip_prefix('^') {
                Some(name) => (true, name),
                None => (false, cond),
            };
            if (name == id) == negate {
                let applies = if negate {
                    format!("every config id but `{name}`")
                } else {
                    format!("config id `{name}`")
                };
                t.notes.push(format!(
                    "{}: note: `{}` applies to {applies}, not to this import's `{id}` (set with --config-id): left out",
                    n.origin,
                    n.text(),
                ));
                continue;
            }
            if n.args.is_empty() {
                t.warn(&n, "a conditional prefix with nothing after it");
                continue;
            }
            n.keyword = n.args.remove(0);
        }
        n.children = n.children.map(|c| apply_conditions(c, id, t));
        out.push(n);
    }
    out
}

/// Reads `path` (and its includes) from `src` and translates it. The
/// result always passes `check-config`: a translation that would not is
/// refused ([`ImportError::Invalid`]).
pub fn import_from(src: &dyn Sources, path: &Path) -> Result<Import, ImportError> {
    import_for(src, path, "")
}

/// Translates `text`, as read from `path` (includes are relative to it,
/// read from the disk).
pub fn import_text(path: &Path, text: &str) -> Result<Import, ImportError> {
    import_text_for(&Disk, path, text, "")
}

fn import_text_for(
    src: &dyn Sources,
    path: &Path,
    text: &str,
    config_id: &str,
) -> Result<Import, ImportError> {
    let mut toks = Vec::new();
    tokens_of(src, path, text, 0, &mut toks)?;
    let nodes = parse(&toks)?;
    let mut t = Translator::default();
    let nodes = apply_conditions(nodes, config_id, &mut t);
    t.run(&nodes);
    if let Some(w) = t.refused {
        return Err(ImportError::Refused {
            origin: w.origin,
            directive: w.directive,
            reason: w.reason,
        });
    }
    let mut out = format!(
        "# Imported from {} by `director import-keepalived`.\n# Check it with `director check-config --config FILE`.\n",
        path.display()
    );
    let lines = t
        .warnings
        .iter()
        .map(ToString::to_string)
        .chain(t.notes.iter().cloned())
        .collect::<Vec<_>>();
    for w in &lines {
        // Escaped: a comment cannot hold control characters.
        let line: String = w
            .chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect();
        out.push_str(&format!("# {line}\n"));
    }
    out.push('\n');
    out.push_str(&toml::to_string(&t.doc).unwrap_or_default());
    // The contract: what is printed passes check-config.
    if let Err(e) = crate::config::Config::parse(Path::new("imported.toml"), &out) {
        return Err(ImportError::Invalid {
            file: path.to_path_buf(),
            problem: e.to_string(),
        });
    }
    Ok(Import {
        toml: out,
        warnings: t.warnings,
        notes: t.notes,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn includes_come_from_the_sources_given() {
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            PathBuf::from("/m/keepalived.conf"),
            "include conf.d/*.conf\nvrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n  virtual_ipaddress {\n    10.0.0.100\n  }\n}\n".to_string(),
        );
        files.insert(
            PathBuf::from("/m/conf.d/vs.conf"),
            "virtual_server 10.0.0.100 80 {\n  protocol TCP\n  real_server 10.0.0.20 80 {\n  }\n}\n".to_string(),
        );
        let imp = import_from(&InMemory(files), Path::new("/m/keepalived.conf")).expect("imports");
        let cfg: toml::Table = toml::from_str(&imp.toml).expect("toml");
        assert_eq!(
            cfg["virtual_server"][0]["real_server"][0]["address"].as_str(),
            Some("10.0.0.20")
        );
        // Nothing is read from the disk: a missing include is an error.
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            PathBuf::from("/m/k.conf"),
            "include /etc/hostname\n".to_string(),
        );
        assert!(matches!(
            import_from(&InMemory(files), Path::new("/m/k.conf")),
            Err(ImportError::Read { .. })
        ));
    }

    /// keepalived's `script_user USER [GROUP]` and `enable_script_security`
    /// come across as the same settings (they were dropped with a warning).
    #[test]
    fn script_user_and_script_security_come_across() {
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            PathBuf::from("/m/k.conf"),
            "global_defs {\n  script_user nobody nogroup\n  enable_script_security\n}\nvrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n  virtual_ipaddress {\n    10.0.0.100\n  }\n}\n".to_string(),
        );
        let imp = import_from(&InMemory(files), Path::new("/m/k.conf")).expect("imports");
        let cfg: toml::Table = toml::from_str(&imp.toml).expect("toml");
        assert_eq!(
            cfg["global"]["script_user"].as_str(),
            Some("nobody nogroup")
        );
        assert_eq!(
            cfg["global"]["enable_script_security"].as_bool(),
            Some(true)
        );
        assert!(
            !imp.warnings.iter().any(|w| w.directive.contains("script")),
            "{:?}",
            imp.warnings
        );
    }

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("director-import-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn lexes_comments_quotes_and_braces() {
        let toks = lex("vrrp_script chk{ # comment\n script \"/bin/pidof nginx\" ! more\n}");
        let words: Vec<Tok> = toks.into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            words,
            vec![
                Tok::Word("vrrp_script".into()),
                Tok::Word("chk".into()),
                Tok::Open,
                Tok::EndOfLine,
                Tok::Word("script".into()),
                Tok::Word("/bin/pidof nginx".into()),
                Tok::EndOfLine,
                Tok::Close,
                Tok::EndOfLine,
            ]
        );
        assert!(wildcard("*.conf", "a.conf") && !wildcard("*.conf", "a.conf.bak"));
        assert!(wildcard("vs-??.conf", "vs-01.conf"));
    }

    #[test]
    fn includes_globs_and_reports_untranslated_lines() {
        let d = tmpdir("inc");
        std::fs::create_dir_all(d.join("conf.d")).expect("dir");
        write(
            &d.join("conf.d"),
            "b.conf",
            "virtual_server 10.0.0.100 80 {\n  lb_algo wrr\n  lb_kind DR\n  real_server 10.0.0.20 80 {\n    weight 2\n    FILE_CHECK {\n    }\n  }\n}\n",
        );
        let main = write(
            &d,
            "keepalived.conf",
            "global_defs {\n  router_id lb1\n  notification_email { ops@example.com }\n}\ninclude conf.d/*.conf\nvrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n  virtual_ipaddress {\n    10.0.0.100/24 dev eth0\n  }\n  bogus_keyword 1\n}\n",
        );
        let imp = import(&main).expect("import");
        let cfg: Table = toml::from_str(&imp.toml).expect("valid TOML");
        assert_eq!(cfg["global"]["router_id"].as_str(), Some("lb1"));
        assert_eq!(cfg["global"]["interface"].as_str(), Some("eth0"));
        assert_eq!(
            cfg["virtual_server"][0]["real_server"][0]["weight"].as_integer(),
            Some(2)
        );
        let lines: Vec<String> = imp.warnings.iter().map(ToString::to_string).collect();
        let has = |file: &str, line: usize, what: &str| {
            lines
                .iter()
                .any(|l| l.contains(&format!("{file}:{line}:")) && l.contains(what))
        };
        assert!(
            has("keepalived.conf", 3, "notification_email"),
            "{lines:#?}"
        );
        assert!(has("keepalived.conf", 12, "bogus_keyword"), "{lines:#?}");
        assert!(has("b.conf", 6, "FILE_CHECK"), "{lines:#?}");
        assert_eq!(lines.len(), 3, "{lines:#?}");
        // Every warning is in the output as a comment too.
        assert_eq!(imp.toml.matches("` not translated: ").count(), 3);
        // wrr is kept, with the IPVS dataplane, and said.
        assert_eq!(cfg["virtual_server"][0]["scheduler"].as_str(), Some("wrr"));
        assert_eq!(cfg["global"]["dataplane"].as_str(), Some("ipvs"));
        assert!(
            imp.notes
                .iter()
                .any(|n| n.contains("b.conf:2: note: `lb_algo wrr` kept"))
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn virtual_macs_come_across() {
        let text = "vrrp_instance A {\n  interface eth0\n  virtual_router_id 51\n  use_vmac\n  vmac_xmit_base\n  virtual_ipaddress {\n    10.0.0.100\n  }\n}\n\
vrrp_instance B {\n  interface eth0\n  virtual_router_id 52\n  use_vmac vm52\n  virtual_ipaddress {\n    10.0.0.101\n  }\n}\n\
vrrp_instance C {\n  interface eth0\n  virtual_router_id 53\n  use_vmac\n  virtual_ipaddress {\n    fd00::100\n  }\n}\n";
        let imp = import_text(Path::new("k.conf"), text).expect("import");
        let cfg: Table = toml::from_str(&imp.toml).expect("valid TOML");
        let vi = &cfg["vrrp_instance"];
        assert_eq!(vi[0]["use_vmac"].as_bool(), Some(true));
        assert_eq!(vi[0]["vmac_xmit_base"].as_bool(), Some(true));
        assert_eq!(vi[1]["use_vmac"].as_str(), Some("vm52"));
        assert_eq!(vi[2]["use_vmac"].as_bool(), Some(true), "IPv6 too");
        assert!(imp.warnings.is_empty(), "{:#?}", imp.warnings);
        crate::config::Config::parse(Path::new("imported.toml"), &imp.toml)
            .expect("passes check-config");
    }

    #[test]
    fn tunnelling_is_kept_with_ipvs_and_nat_is_named() {
        let text = "virtual_server 10.0.0.110 80 {\n  lb_kind TUN\n  real_server 10.0.0.20 80 {\n  }\n}\n\
virtual_server 10.0.0.111 80 {\n  lb_kind NAT\n  real_server 10.0.0.20 80 {\n  }\n}\n";
        let imp = import_text(Path::new("k.conf"), text).expect("import");
        let cfg: Table = toml::from_str(&imp.toml).expect("valid TOML");
        assert_eq!(cfg["virtual_server"][0]["lb_kind"].as_str(), Some("tun"));
        assert_eq!(cfg["global"]["dataplane"].as_str(), Some("ipvs"));
        assert!(
            imp.notes
                .iter()
                .any(|n| n.contains("k.conf:2: note: `lb_kind TUN` kept")),
            "{:?}",
            imp.notes
        );
        assert_eq!(cfg["virtual_server"][1]["lb_kind"].as_str(), Some("dr"));
        let lines: Vec<String> = imp.warnings.iter().map(ToString::to_string).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("k.conf:7:") && l.contains("lb_kind NAT")),
            "{lines:#?}"
        );
    }

    #[test]
    fn tracked_files_processes_and_weights() {
        let text = "vrrp_script chk {\n  script \"/bin/true\"\n  weight -10\n}\n\
vrrp_track_file maint {\n  file /run/director/maint\n  weight -5\n  init_file 0 overwrite\n}\n\
vrrp_track_process nginx {\n  process nginx\n  parameters -g daemon off;\n  param_match initial\n  quorum 2\n  quorum_max 8\n  delay 1.5\n  weight 0\n}\n\
vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n  priority 100\n  virtual_ipaddress {\n    10.0.0.100/24\n  }\n\
  track_interface {\n    eth0\n    eth1 weight -20\n  }\n  track_script {\n    chk weight 30\n  }\n\
  track_file {\n    maint\n  }\n  track_process {\n    nginx weight -50\n  }\n}\n";
        let imp = import_text(Path::new("k.conf"), text).expect("import");
        assert!(imp.warnings.is_empty(), "{:#?}", imp.warnings);
        let cfg = crate::config::Config::parse(Path::new("d.toml"), &imp.toml)
            .expect("a valid configuration");
        let f = &cfg.track_file[0];
        assert_eq!((f.name.as_str(), f.weight), ("maint", -5));
        assert_eq!(f.file, PathBuf::from("/run/director/maint"));
        assert_eq!(f.init_file.and_then(|i| i.value()), Some(0));
        assert!(f.init_file_overwrite);
        let p = &cfg.track_process[0];
        assert_eq!(p.parameters.as_deref(), Some("-g daemon off;"));
        assert_eq!(p.param_match, crate::config::ParamMatch::Initial);
        assert_eq!((p.quorum, p.quorum_max, p.delay), (2, Some(8), Some(1.5)));
        let v = &cfg.vrrp_instance[0];
        let w = |t: &[crate::config::Tracked]| -> Vec<(String, Option<i32>)> {
            t.iter()
                .map(|t| (t.name().to_string(), t.weight()))
                .collect()
        };
        assert_eq!(
            w(&v.track_interface),
            [("eth0".to_string(), None), ("eth1".to_string(), Some(-20))]
        );
        assert_eq!(w(&v.track_script), [("chk".to_string(), Some(30))]);
        assert_eq!(w(&v.track_file), [("maint".to_string(), None)]);
        assert_eq!(w(&v.track_process), [("nginx".to_string(), Some(-50))]);
    }

    #[test]
    fn virtual_routes_and_rules_come_across() {
        let text = "vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 51\n  virtual_ipaddress {\n    10.0.0.100/24\n  }\n\
  virtual_routes {\n    src 10.0.0.100 to 192.168.109.0/24 via 10.0.0.254 dev eth1\n    blackhole 192.168.114.0/24\n    192.168.2.0/24 nexthop via 10.0.0.1\n  }\n\
  virtual_rules {\n    from 10.0.0.100 table 100\n  }\n}\n";
        let imp = import_text(Path::new("k.conf"), text).expect("import");
        let cfg = crate::config::Config::parse(Path::new("d.toml"), &imp.toml).expect("valid");
        let v = &cfg.vrrp_instance[0];
        assert_eq!(
            v.virtual_routes,
            [
                "src 10.0.0.100 to 192.168.109.0/24 via 10.0.0.254 dev eth1",
                "blackhole 192.168.114.0/24"
            ]
        );
        assert_eq!(v.virtual_rules, ["from 10.0.0.100 table 100"]);
        // The multipath route is named, with its line.
        assert_eq!(imp.warnings.len(), 1, "{:#?}", imp.warnings);
        let w = imp.warnings[0].to_string();
        assert!(w.contains("k.conf:10:") && w.contains("nexthop"), "{w}");
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let d = tmpdir("syntax");
        let p = write(&d, "k.conf", "vrrp_instance VI_1 {\n  priority 100\n");
        let e = import(&p).expect_err("unclosed").to_string();
        assert!(e.contains("k.conf:2") && e.contains("never closed"), "{e}");
        let p = write(&d, "k2.conf", "}\n");
        assert!(import(&p).is_err());
        let p = write(&d, "k3.conf", "include missing.conf\n");
        assert!(
            import(&p)
                .expect_err("missing")
                .to_string()
                .contains("missing.conf")
        );
        let p = write(&d, "loop.conf", "include loop.conf\n");
        assert!(import(&p).expect_err("loop").to_string().contains("nested"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
