//! `director import-keepalived FILE`: translates a keepalived.conf (with its
//! `include` files) into director's TOML. Every directive either becomes a
//! key or is reported as not translated, with its file and line: nothing is
//! dropped silently.
//!
//! keepalived's grammar: one statement per line (`keyword args...`),
//! `{ ... }` blocks, comments from `#` or `!`, double-quoted strings, and
//! `include GLOB` anywhere.

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
        expand_glob(base, pattern)
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
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            base.join(pattern)
        };
        let name = full
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if !name.contains(['*', '?']) {
            return Ok(vec![full]);
        }
        let dir = full.parent().unwrap_or(Path::new("."));
        Ok(self
            .0
            .keys()
            .filter(|p| {
                p.parent() == Some(dir)
                    && p.file_name()
                        .is_some_and(|n| wildcard(&name, &n.to_string_lossy()))
            })
            .cloned()
            .collect())
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

/// Deepest `include` nesting followed.
const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Open,
    Close,
    EndOfLine,
}

/// Splits one file into tokens with their line numbers.
fn lex(text: &str) -> Vec<(Tok, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let mut chars = line.chars().peekable();
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut Vec<(Tok, usize)>| {
            if !word.is_empty() {
                out.push((Tok::Word(std::mem::take(word)), line_no));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' | '!' if word.is_empty() => break,
                '"' => {
                    // A quoted string is one word (quotes removed).
                    for q in chars.by_ref() {
                        if q == '"' {
                            break;
                        }
                        word.push(q);
                    }
                    out.push((Tok::Word(std::mem::take(&mut word)), line_no));
                }
                '{' => {
                    flush(&mut word, &mut out);
                    out.push((Tok::Open, line_no));
                }
                '}' => {
                    flush(&mut word, &mut out);
                    out.push((Tok::Close, line_no));
                }
                c if c.is_whitespace() => flush(&mut word, &mut out),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut out);
        out.push((Tok::EndOfLine, line_no));
    }
    out
}

/// A token with its origin, after includes are expanded.
type Token = (Tok, Origin);

/// Reads `path`, expanding `include` statements in place.
fn tokens(
    src: &dyn Sources,
    path: &Path,
    depth: usize,
    out: &mut Vec<Token>,
) -> Result<(), ImportError> {
    let text = src.read(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    tokens_of(src, path, &text, depth, out)
}

/// The tokens of `text` (read from `path`), expanding includes.
fn tokens_of(
    src: &dyn Sources,
    path: &Path,
    text: &str,
    depth: usize,
    out: &mut Vec<Token>,
) -> Result<(), ImportError> {
    let toks = lex(text);
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        let origin = Origin {
            file: path.to_path_buf(),
            line: *line,
        };
        let starts_line = i == 0 || matches!(toks[i - 1].0, Tok::EndOfLine | Tok::Open);
        if starts_line && *tok == Tok::Word("include".into()) {
            let Some((Tok::Word(pattern), _)) = toks.get(i + 1) else {
                return Err(ImportError::Syntax {
                    file: origin.file,
                    line: origin.line,
                    message: "include needs a file name".into(),
                });
            };
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(ImportError::Syntax {
                    file: origin.file,
                    line: origin.line,
                    message: format!("includes nested deeper than {MAX_INCLUDE_DEPTH}"),
                });
            }
            let base = path.parent().unwrap_or(Path::new("."));
            for file in src
                .glob(base, pattern)
                .map_err(|source| ImportError::Read {
                    path: base.join(pattern),
                    source,
                })?
            {
                tokens(src, &file, depth + 1, out)?;
            }
            // Skip to the end of the include line.
            while i < toks.len() && toks[i].0 != Tok::EndOfLine {
                i += 1;
            }
            continue;
        }
        out.push((tok.clone(), origin));
        i += 1;
    }
    Ok(())
}

/// The files matching `pattern` (relative to `base` unless absolute);
/// `*` and `?` are allowed in the last component. Sorted.
fn expand_glob(base: &Path, pattern: &str) -> std::io::Result<Vec<PathBuf>> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![full]);
    }
    let dir = full.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// Shell-style `*` / `?` matching.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Builds the statement tree.
fn parse(toks: &[Token]) -> Result<Vec<Node>, ImportError> {
    let mut pos = 0;
    let nodes = parse_block(toks, &mut pos, 0)?;
    if pos < toks.len() {
        let o = &toks[pos].1;
        return Err(ImportError::Syntax {
            file: o.file.clone(),
            line: o.line,
            message: "unexpected `}`".into(),
        });
    }
    Ok(nodes)
}

/// Deepest `{` nesting accepted (keepalived's deepest is 4).
const MAX_NESTING: usize = 16;

fn parse_block(toks: &[Token], pos: &mut usize, depth: usize) -> Result<Vec<Node>, ImportError> {
    let nested = depth > 0;
    if depth > MAX_NESTING {
        let o = &toks[pos.saturating_sub(1).min(toks.len().saturating_sub(1))].1;
        return Err(ImportError::Syntax {
            file: o.file.clone(),
            line: o.line,
            message: format!("blocks nested deeper than {MAX_NESTING}"),
        });
    }
    let mut nodes = Vec::new();
    while *pos < toks.len() {
        let (tok, origin) = &toks[*pos];
        match tok {
            Tok::EndOfLine => *pos += 1,
            Tok::Close => {
                if nested {
                    *pos += 1;
                    return Ok(nodes);
                }
                return Ok(nodes);
            }
            Tok::Open => {
                // A block with no keyword: its statements join ours.
                *pos += 1;
                nodes.extend(parse_block(toks, pos, depth + 1)?);
            }
            Tok::Word(w) => {
                let mut node = Node {
                    keyword: w.clone(),
                    args: Vec::new(),
                    children: None,
                    origin: origin.clone(),
                };
                *pos += 1;
                // Arguments to the end of the line, or a block.
                loop {
                    match toks.get(*pos) {
                        Some((Tok::Word(a), _)) => {
                            node.args.push(a.clone());
                            *pos += 1;
                        }
                        Some((Tok::EndOfLine, _)) => {
                            // `keyword args` then `{` on the next line.
                            let next = toks[*pos + 1..].iter().find(|(t, _)| *t != Tok::EndOfLine);
                            if matches!(next, Some((Tok::Open, _))) {
                                while toks[*pos].0 == Tok::EndOfLine {
                                    *pos += 1;
                                }
                                continue;
                            }
                            *pos += 1;
                            break;
                        }
                        Some((Tok::Open, _)) => {
                            *pos += 1;
                            node.children = Some(parse_block(toks, pos, depth + 1)?);
                            break;
                        }
                        Some((Tok::Close, _)) | None => break,
                    }
                }
                nodes.push(node);
            }
        }
    }
    if nested {
        let o = toks.last().map(|t| t.1.clone());
        return Err(ImportError::Syntax {
            file: o.as_ref().map(|o| o.file.clone()).unwrap_or_default(),
            line: o.map(|o| o.line).unwrap_or(0),
            message: "a `{` block is never closed".into(),
        });
    }
    Ok(nodes)
}

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

#[derive(Default)]
struct Translator {
    doc: Table,
    warnings: Vec<Warning>,
    notes: Vec<String>,
    /// A scheduler only IPVS has was asked for: `dataplane = "ipvs"`.
    needs_ipvs: bool,
    /// global_defs values that become per-instance defaults.
    instance_defaults: Vec<(String, Value)>,
    /// The first directive that stops the import.
    refused: Option<Warning>,
}

/// Why a keepalived directive has no translation, with what to use.
fn no_equivalent(keyword: &str) -> &'static str {
    match keyword {
        "lvs_sync_daemon" | "lvs_sync_daemon_interface" | "lvs_sync_daemon_inet" => {
            "IPVS connection sync: director shares its flows between directors with `global.flow_sync` (set it on both)"
        }
        "lvs_flush" | "lvs_flush_onstop" => {
            "director owns only the services it creates; `director flush` removes them"
        }
        _ => "no director equivalent",
    }
}

/// Converts one keepalived argument to a TOML value.
type Conv = fn(&str) -> Option<Value>;

fn int(v: &str) -> Option<Value> {
    v.parse::<i64>().ok().map(Value::Integer)
}

fn num(v: &str) -> Option<Value> {
    match v.parse::<i64>() {
        Ok(i) => Some(Value::Integer(i)),
        Err(_) => v.parse::<f64>().ok().map(Value::Float),
    }
}

fn string(v: &str) -> Value {
    Value::String(v.to_string())
}

impl Translator {
    /// Stops the import at `n` (the first such directive is reported).
    fn refuse(&mut self, n: &Node, reason: impl Into<String>) {
        if self.refused.is_none() {
            self.refused = Some(Warning {
                origin: n.origin.clone(),
                directive: n.text(),
                reason: reason.into(),
            });
        }
    }

    fn warn(&mut self, n: &Node, reason: impl Into<String>) {
        self.warnings.push(Warning {
            origin: n.origin.clone(),
            directive: n.text(),
            reason: reason.into(),
        });
    }

    /// The single argument of `n` through `conv`, or a warning.
    fn one(&mut self, n: &Node, conv: Conv) -> Option<Value> {
        match n.args.as_slice() {
            [a] => {
                let v = conv(a);
                if v.is_none() {
                    self.warn(n, format!("`{a}` is not a valid value"));
                }
                v
            }
            _ => {
                self.warn(n, "expected exactly one value");
                None
            }
        }
    }

    fn run(&mut self, nodes: &[Node]) {
        let mut global = Table::new();
        // Pass 1: global_defs (defaults other blocks use).
        for n in nodes.iter().filter(|n| n.keyword == "global_defs") {
            for c in n.children.iter().flatten() {
                self.global_def(c, &mut global);
            }
        }
        let mut scripts = Vec::new();
        let mut files = Vec::new();
        let mut processes = Vec::new();
        let mut bfds = Vec::new();
        let mut instances = Vec::new();
        let mut groups = Vec::new();
        let mut services = Vec::new();
        let mut vs_groups = Vec::new();
        for n in nodes {
            match n.keyword.as_str() {
                "global_defs" => {}
                "vrrp_script" => scripts.extend(self.vrrp_script(n)),
                "vrrp_track_file" => files.extend(self.track_file(n)),
                "vrrp_track_process" => processes.extend(self.track_process(n)),
                "bfd_instance" => bfds.extend(self.bfd_instance(n)),
                "vrrp_instance" => instances.extend(self.vrrp_instance(n).map(|t| (n, t))),
                "vrrp_sync_group" => groups.extend(self.sync_group(n).map(|t| (n, t))),
                "virtual_server" => services.extend(self.virtual_server(n).map(|t| (n, t))),
                "virtual_server_group" => vs_groups.extend(self.vs_group(n)),
                "static_ipaddress" | "static_routes" | "static_rules" => self.warn(
                    n,
                    "static addresses and routes belong to the system's network configuration",
                ),
                _ => self.warn(n, "unknown top-level block"),
            }
        }
        // A virtual server whose group did not come across goes too.
        let group_names: Vec<&str> = vs_groups
            .iter()
            .filter_map(|g: &Table| g.get("name").and_then(Value::as_str))
            .collect();
        let mut kept = Vec::new();
        for (n, t) in services {
            match t.get("group").and_then(Value::as_str) {
                Some(g) if !group_names.contains(&g) => self.warn(
                    n,
                    format!("skipped: its virtual_server_group `{g}` is not defined or did not come across"),
                ),
                _ => kept.push(t),
            }
        }
        let services = kept;
        // References to what did not come across (skipped, or left out by a
        // conditional line) go, each named.
        let names = |list: &[Table]| -> Vec<String> {
            list.iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(String::from))
                .collect()
        };
        let defined = [
            ("track_script", names(&scripts)),
            ("track_file", names(&files)),
            ("track_process", names(&processes)),
            ("track_bfd", names(&bfds)),
        ];
        for (n, t) in &mut instances {
            for (key, known) in &defined {
                let Some(Value::Array(items)) = t.get_mut(*key) else {
                    continue;
                };
                let mut gone = Vec::new();
                items.retain(|v| {
                    let name = match v {
                        Value::String(s) => s.as_str(),
                        Value::Table(t) => t.get("name").and_then(Value::as_str).unwrap_or(""),
                        _ => "",
                    };
                    let keep = known.iter().any(|k| k == name);
                    if !keep {
                        gone.push(name.to_string());
                    }
                    keep
                });
                for name in gone {
                    let line = n
                        .children
                        .iter()
                        .flatten()
                        .filter(|c| c.keyword == *key)
                        .flat_map(|c| c.children.iter().flatten())
                        .find(|c| c.keyword == name)
                        .unwrap_or(n)
                        .clone();
                    self.warn(
                        &line,
                        format!("skipped: `{name}` is not defined or did not come across"),
                    );
                }
            }
        }
        let instance_names: Vec<String> = instances
            .iter()
            .filter_map(|(_, t)| t.get("name").and_then(Value::as_str).map(String::from))
            .collect();
        let mut kept_groups = Vec::new();
        for (n, mut t) in groups {
            if let Some(Value::Array(members)) = t.get_mut("group") {
                let before: Vec<String> = members
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                members.retain(|v| {
                    v.as_str()
                        .is_some_and(|m| instance_names.iter().any(|i| i == m))
                });
                for m in before.iter().filter(|m| !instance_names.contains(m)) {
                    self.warn(
                        n,
                        format!("member `{m}` skipped: that vrrp_instance is not defined or did not come across"),
                    );
                }
                if members.is_empty() {
                    self.warn(n, "skipped: none of its members came across");
                    continue;
                }
            } else {
                self.warn(n, "skipped: a vrrp_sync_group needs a `group` block");
                continue;
            }
            kept_groups.push(t);
        }
        let groups = kept_groups;
        let instances: Vec<Table> = instances.into_iter().map(|(_, t)| t).collect();
        // The interface the dataplane attaches to: the first instance's.
        let interface = instances
            .iter()
            .find_map(|i: &Table| i.get("interface").cloned());
        match interface {
            Some(i) => {
                global.insert("interface".into(), i);
            }
            None => {
                global.insert("interface".into(), string("eth0"));
                self.warnings.push(Warning {
                    origin: Origin {
                        file: PathBuf::from("(import)"),
                        line: 0,
                    },
                    directive: "global.interface".into(),
                    reason: "keepalived has no such setting and no vrrp_instance names one: `eth0` was written, set the interface that receives the virtual IPs' traffic".into(),
                });
            }
        }
        if self.needs_ipvs {
            global.insert("dataplane".into(), string("ipvs"));
        }
        // Keep router_id first for readability.
        let mut g = Table::new();
        if let Some(r) = global.remove("router_id") {
            g.insert("router_id".into(), r);
        }
        g.extend(global);
        self.doc.insert("global".into(), Value::Table(g));
        for (key, list) in [
            ("vrrp_script", scripts),
            ("track_file", files),
            ("track_process", processes),
            ("bfd_instance", bfds),
            ("vrrp_instance", instances),
            ("vrrp_sync_group", groups),
            ("virtual_server_group", vs_groups),
            ("virtual_server", services),
        ] {
            if !list.is_empty() {
                self.doc.insert(
                    key.into(),
                    Value::Array(list.into_iter().map(Value::Table).collect()),
                );
            }
        }
    }

    fn global_def(&mut self, n: &Node, global: &mut Table) {
        let instance_key = match n.keyword.as_str() {
            "router_id" => {
                if let Some(v) = self.one(n, |a| Some(string(a))) {
                    global.insert("router_id".into(), v);
                }
                return;
            }
            "vrrp_version" => "version",
            "vrrp_garp_master_delay" => "garp_master_delay",
            "vrrp_garp_master_repeat" => "garp_master_repeat",
            "vrrp_garp_master_refresh" => "garp_master_refresh",
            "notification_email"
            | "notification_email_from"
            | "smtp_server"
            | "smtp_connect_timeout"
            | "smtp_helo_name"
            | "smtp_alert" => {
                self.warn(
                    n,
                    "director sends no mail: use notify scripts or the Prometheus metrics",
                );
                return;
            }
            "enable_script_security" | "script_user" => {
                self.warn(
                    n,
                    "scripts run as the daemon's user; run director as the user scripts need",
                );
                return;
            }
            "vrrp_skip_check_adv_addr" => {
                self.warn(
                    n,
                    "director always checks that adverts carry the configured addresses",
                );
                return;
            }
            "vrrp_strict" => {
                self.warn(
                    n,
                    "director always applies RFC checks (TTL 255, checksums); v2 authentication stays allowed",
                );
                return;
            }
            _ => {
                self.warn(n, no_equivalent(&n.keyword));
                return;
            }
        };
        if let Some(v) = self.one(n, int) {
            self.instance_defaults.push((instance_key.into(), v));
        }
    }

    fn vrrp_script(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a vrrp_script needs a name");
            return None;
        };
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        for c in n.children.iter().flatten() {
            let (key, conv): (&str, Conv) = match c.keyword.as_str() {
                "script" => ("script", |a| Some(string(a))),
                "interval" => ("interval", num),
                "timeout" => ("timeout", num),
                "weight" => ("weight", int),
                "rise" => ("rise", int),
                "fall" => ("fall", int),
                "user" => {
                    self.warn(c, "scripts run as the daemon's user");
                    continue;
                }
                _ => {
                    self.warn(c, "unknown vrrp_script keyword");
                    continue;
                }
            };
            // `script` may be given unquoted as several words.
            let v = if key == "script" && c.args.len() > 1 {
                Some(string(&c.args.join(" ")))
            } else {
                self.one(c, conv)
            };
            if let Some(v) = v {
                t.insert(key.into(), v);
            }
        }
        if !t.contains_key("script") {
            self.warn(n, "a vrrp_script without `script` was skipped");
            return None;
        }
        Some(t)
    }

    fn vrrp_instance(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a vrrp_instance needs a name");
            return None;
        };
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        let mut addresses = Vec::new();
        let mut vmac: Option<&Node> = None;
        for c in n.children.iter().flatten() {
            let simple: Option<(&str, Conv)> = match c.keyword.as_str() {
                "interface" => Some(("interface", |a| Some(string(a)))),
                "virtual_router_id" => Some(("virtual_router_id", int)),
                "priority" => Some(("priority", int)),
                "advert_int" => Some(("advert_int", num)),
                "version" => Some(("version", int)),
                "preempt_delay" => Some(("preempt_delay", num)),
                "unicast_src_ip" => Some(("unicast_src_ip", |a| Some(string(a)))),
                "notify_master" => Some(("notify_master", |a| Some(string(a)))),
                "notify_backup" => Some(("notify_backup", |a| Some(string(a)))),
                "notify_fault" => Some(("notify_fault", |a| Some(string(a)))),
                "notify_stop" => Some(("notify_stop", |a| Some(string(a)))),
                "notify" => Some(("notify", |a| Some(string(a)))),
                "garp_master_delay" => Some(("garp_master_delay", int)),
                "garp_master_repeat" => Some(("garp_master_repeat", int)),
                "garp_master_refresh" => Some(("garp_master_refresh", int)),
                _ => None,
            };
            if let Some((key, conv)) = simple {
                if let Some(v) = self.one(c, conv) {
                    t.insert(key.into(), v);
                }
                continue;
            }
            match c.keyword.as_str() {
                "state" => match c.args.first().map(|s| s.to_ascii_uppercase()).as_deref() {
                    Some("MASTER") => {
                        t.insert("state".into(), string("master"));
                    }
                    Some("BACKUP") => {
                        t.insert("state".into(), string("backup"));
                    }
                    _ => self.warn(c, "state must be MASTER or BACKUP"),
                },
                "nopreempt" => {
                    t.insert("nopreempt".into(), Value::Boolean(true));
                }
                "preempt" => {}
                "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                    if c.keyword == "virtual_ipaddress_excluded" {
                        self.warn(
                            c,
                            "excluded addresses are added to virtual_ipaddress (they are announced in adverts)",
                        );
                    }
                    for a in c.children.iter().flatten() {
                        let iface = t.get("interface").and_then(Value::as_str).map(String::from);
                        let v6 = |s: &str| s.contains(':');
                        let first = addresses.first().and_then(Value::as_str).map(v6);
                        if first.is_some_and(|f| f != v6(&a.keyword)) {
                            self.warn(
                                a,
                                "an instance holds one address family (keepalived ignores this address too): make a separate instance for it",
                            );
                            continue;
                        }
                        addresses.push(string(&a.keyword));
                        let mut rest = a.args.iter();
                        while let Some(opt) = rest.next() {
                            match (opt.as_str(), rest.next()) {
                                ("dev", Some(d)) if Some(d) == iface.as_ref() => {}
                                ("label", Some(_)) | ("brd", Some(_)) | ("scope", Some(_)) => {
                                    self.warn(a, format!("address option `{opt}` is ignored"));
                                }
                                _ => self.warn(
                                    a,
                                    format!("address option `{opt}`: addresses live on the instance's interface"),
                                ),
                            }
                        }
                    }
                }
                "unicast_peer" => {
                    let peers: Vec<Value> = c
                        .children
                        .iter()
                        .flatten()
                        .map(|p| {
                            if !p.args.is_empty() {
                                self.warn(p, "peer options are ignored");
                            }
                            string(&p.keyword)
                        })
                        .collect();
                    t.insert("unicast_peer".into(), Value::Array(peers));
                }
                "authentication" => {
                    let mut auth = Table::new();
                    for a in c.children.iter().flatten() {
                        match (a.keyword.as_str(), a.args.first()) {
                            ("auth_type", Some(v)) if v.eq_ignore_ascii_case("PASS") => {
                                auth.insert("auth_type".into(), string("PASS"));
                            }
                            ("auth_type", Some(_)) => self.refuse(
                                a,
                                "only PASS authentication exists (RFC 5798 removed AH); without it the keepalived peer would reject every advert and both would be master. Remove `authentication` from the keepalived peers (or switch them to PASS), then import",
                            ),
                            ("auth_pass", Some(v)) => {
                                auth.insert("auth_pass".into(), string(v));
                            }
                            _ => self.warn(a, "unknown authentication keyword"),
                        }
                    }
                    t.insert("authentication".into(), Value::Table(auth));
                }
                "track_interface" | "track_script" | "track_file" | "track_process"
                | "track_bfd" => {
                    let mut items = Vec::new();
                    for a in c.children.iter().flatten() {
                        items.push(self.tracked(a));
                    }
                    t.insert(c.keyword.clone(), Value::Array(items));
                }
                "virtual_routes" | "virtual_rules" => {
                    let v6 = addresses
                        .first()
                        .and_then(Value::as_str)
                        .is_some_and(|a| a.contains(':'));
                    let mut lines = Vec::new();
                    for a in c.children.iter().flatten() {
                        let line = std::iter::once(a.keyword.as_str())
                            .chain(a.args.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(" ");
                        let parsed = if c.keyword == "virtual_routes" {
                            crate::vrrp::routes::parse_route(&line, v6).map(|_| ())
                        } else {
                            crate::vrrp::routes::parse_rule(&line, v6).map(|_| ())
                        };
                        match parsed {
                            Ok(()) => lines.push(string(&line)),
                            Err(e) => self.warn(a, format!("skipped: {e}")),
                        }
                    }
                    t.insert(c.keyword.clone(), Value::Array(lines));
                }
                // Decided once the addresses are known (IPv4 only).
                "use_vmac" => vmac = Some(c),
                "vmac_xmit_base" => {
                    t.insert("vmac_xmit_base".into(), Value::Boolean(true));
                }
                "dont_track_primary" => {
                    t.insert("dont_track_primary".into(), Value::Boolean(true));
                }
                "smtp_alert" => self.warn(c, "director sends no mail"),
                "native_ipv6" => {}
                _ => self.warn(c, no_equivalent(&c.keyword)),
            }
        }
        if let Some(c) = vmac {
            let value = match c.args.first() {
                Some(name) => string(name),
                None => Value::Boolean(true),
            };
            t.insert("use_vmac".into(), value);
        }
        if !addresses.is_empty() {
            t.insert("virtual_ipaddress".into(), Value::Array(addresses));
        }
        for (k, v) in &self.instance_defaults {
            if !t.contains_key(k) {
                t.insert(k.clone(), v.clone());
            }
        }
        // v3 is the only version with sub-second intervals and IPv6.
        let ipv6 = t
            .get("virtual_ipaddress")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|v| v.as_str().is_some_and(|s| s.contains(':')))
            });
        if ipv6 && !t.contains_key("version") {
            t.insert("version".into(), Value::Integer(3));
        }
        Some(t)
    }

    /// One line of an instance's `track_*` block: `NAME` or `NAME weight W
    /// [reverse]`, as a name or a `{ name, weight }` table.
    fn tracked(&mut self, a: &Node) -> Value {
        match a.args.as_slice() {
            [] => string(&a.keyword),
            [w, v, rest @ ..] if w == "weight" => {
                if !rest.is_empty() {
                    self.warn(
                        a,
                        "`reverse` is not supported: the weight applies as written",
                    );
                }
                match int(v) {
                    Some(weight) => {
                        let mut t = Table::new();
                        t.insert("name".into(), string(&a.keyword));
                        t.insert("weight".into(), weight);
                        Value::Table(t)
                    }
                    None => {
                        self.warn(
                            a,
                            format!("`{v}` is not a valid weight: the item's own applies"),
                        );
                        string(&a.keyword)
                    }
                }
            }
            _ => {
                self.warn(
                    a,
                    "expected `NAME` or `NAME weight W`: the item's own weight applies",
                );
                string(&a.keyword)
            }
        }
    }

    /// `vrrp_track_file NAME { file PATH; weight W; init_file [V] [overwrite] }`.
    /// keepalived's `bfd_instance NAME { neighbor_ip ...; ... }`.
    fn bfd_instance(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a bfd_instance needs a name");
            return None;
        };
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        for c in n.children.iter().flatten() {
            let conv: Option<(&str, Conv)> = match c.keyword.as_str() {
                "neighbor_ip" => Some(("neighbor_ip", |a| Some(string(a)))),
                "source_ip" => Some(("source_ip", |a| Some(string(a)))),
                "min_rx" => Some(("min_rx", int)),
                "min_tx" => Some(("min_tx", int)),
                "idle_tx" => Some(("idle_tx", int)),
                "multiplier" => Some(("multiplier", int)),
                "ttl" | "max_hops" => Some(("ttl", int)),
                "weight" => Some(("weight", int)),
                _ => None,
            };
            match (c.keyword.as_str(), conv) {
                (_, Some((key, conv))) => {
                    if let Some(v) = self.one(c, conv) {
                        t.insert(key.into(), v);
                    }
                }
                ("passive", None) => {
                    t.insert("passive".into(), Value::Boolean(true));
                }
                _ => self.warn(c, "unknown bfd_instance keyword"),
            }
        }
        if !t.contains_key("neighbor_ip") {
            self.warn(n, "skipped: a bfd_instance needs neighbor_ip");
            return None;
        }
        Some(t)
    }

    fn track_file(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a vrrp_track_file needs a name");
            return None;
        };
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        for c in n.children.iter().flatten() {
            match c.keyword.as_str() {
                "file" => {
                    if let Some(v) = self.one(c, |a| Some(string(a))) {
                        t.insert("file".into(), v);
                    }
                }
                "weight" => {
                    if c.args.len() > 1 {
                        self.warn(
                            c,
                            "`reverse` is not supported: the weight applies as written",
                        );
                    }
                    if let Some(v) = c.args.first().and_then(|a| int(a)) {
                        t.insert("weight".into(), v);
                    } else {
                        self.warn(c, "expected a weight");
                    }
                }
                "init_file" => {
                    let mut value = Value::Boolean(true);
                    for a in &c.args {
                        if a == "overwrite" {
                            t.insert("init_file_overwrite".into(), Value::Boolean(true));
                        } else if let Some(v) = int(a) {
                            value = v;
                        } else {
                            self.warn(c, format!("`{a}` is not a value"));
                        }
                    }
                    t.insert("init_file".into(), value);
                }
                _ => self.warn(c, "unknown vrrp_track_file keyword"),
            }
        }
        if !t.contains_key("file") {
            self.warn(n, "a vrrp_track_file without `file` was skipped");
            return None;
        }
        Some(t)
    }

    /// `vrrp_track_process NAME { process P; parameters ...; ... }`.
    fn track_process(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a vrrp_track_process needs a name");
            return None;
        };
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        for c in n.children.iter().flatten() {
            let (key, conv): (&str, Conv) = match c.keyword.as_str() {
                "process" => ("process", |a| Some(string(a))),
                "parameters" => {
                    t.insert("parameters".into(), string(&c.args.join(" ")));
                    continue;
                }
                "param_match" => ("param_match", |a| {
                    matches!(a, "exact" | "initial" | "partial").then(|| string(a))
                }),
                "full_command" => {
                    t.insert("full_command".into(), Value::Boolean(true));
                    continue;
                }
                "quorum" => ("quorum", int),
                "quorum_max" => ("quorum_max", int),
                "weight" => {
                    if c.args.len() > 1 {
                        self.warn(
                            c,
                            "`reverse` is not supported: the weight applies as written",
                        );
                    }
                    if let Some(v) = c.args.first().and_then(|a| int(a)) {
                        t.insert("weight".into(), v);
                    } else {
                        self.warn(c, "expected a weight");
                    }
                    continue;
                }
                "delay" => ("delay", num),
                "fork_delay" => ("fork_delay", num),
                "terminate_delay" => ("terminate_delay", num),
                _ => {
                    self.warn(c, "unknown vrrp_track_process keyword");
                    continue;
                }
            };
            // `process` may carry its parameters on the same line.
            if key == "process" && c.args.len() > 1 {
                t.insert("process".into(), string(&c.args[0]));
                t.insert("parameters".into(), string(&c.args[1..].join(" ")));
                continue;
            }
            if let Some(v) = self.one(c, conv) {
                t.insert(key.into(), v);
            }
        }
        if !t.contains_key("process") {
            self.warn(n, "a vrrp_track_process without `process` was skipped");
            return None;
        }
        Some(t)
    }

    /// `virtual_server_group NAME { ADDR[-LAST] [PORT[-LAST]] ... }`.
    fn vs_group(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a virtual_server_group needs a name");
            return None;
        };
        let mut members = Vec::new();
        for c in n.children.iter().flatten() {
            if c.keyword == "fwmark" {
                self.warn(
                    c,
                    "a fwmark member matches what firewall rules mark, which keepalived.conf does not say: list its addresses and ports",
                );
                continue;
            }
            let line = std::iter::once(c.keyword.as_str())
                .chain(c.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            match crate::config::GroupMember::parse(&line) {
                Ok(m) => members.push(string(&m.to_string())),
                Err(e) => self.warn(c, format!("skipped: {e}")),
            }
        }
        if members.is_empty() {
            self.warn(n, "a virtual_server_group without members was skipped");
            return None;
        }
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        t.insert("members".into(), Value::Array(members));
        Some(t)
    }

    fn sync_group(&mut self, n: &Node) -> Option<Table> {
        let Some(name) = n.args.first() else {
            self.warn(n, "a vrrp_sync_group needs a name");
            return None;
        };
        let mut t = Table::new();
        t.insert("name".into(), string(name));
        for c in n.children.iter().flatten() {
            match c.keyword.as_str() {
                "group" => {
                    let members = c
                        .children
                        .iter()
                        .flatten()
                        .flat_map(|m| {
                            std::iter::once(&m.keyword)
                                .chain(&m.args)
                                .map(|s| string(s))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    t.insert("group".into(), Value::Array(members));
                }
                k @ ("notify_master" | "notify_backup" | "notify_fault" | "notify") => {
                    if let Some(v) = self.one(c, |a| Some(string(a))) {
                        t.insert(k.into(), v);
                    }
                }
                _ => self.warn(c, no_equivalent(&c.keyword)),
            }
        }
        Some(t)
    }

    fn virtual_server(&mut self, n: &Node) -> Option<Table> {
        let mut t = Table::new();
        // The virtual port ("" for a group: its members have theirs).
        let port = match n.args.as_slice() {
            [kind, mark] if kind == "fwmark" => {
                let Some(m) = int(mark).filter(|m| m.as_integer().is_some_and(|m| m > 0)) else {
                    self.warn(n, "the mark is not a positive number");
                    return None;
                };
                // Kept as an IPVS fwmark service: the firewall's marking
                // rules stay as they are.
                t.insert("fwmark".into(), m);
                self.needs_ipvs = true;
                self.notes.push(format!(
                    "{}: note: `{}` kept as an IPVS fwmark service, so `dataplane = \"ipvs\"` was written (the XDP dataplane does not see firewall marks: to use it, list the addresses and ports the rules mark in a virtual_server_group)",
                    n.origin,
                    n.text()
                ));
                String::new()
            }
            [kind, name] if kind == "group" => {
                t.insert("group".into(), string(name));
                String::new()
            }
            [a, p] => {
                t.insert("address".into(), string(a));
                let Some(port_v) = int(p) else {
                    self.warn(n, "the port is not a number");
                    return None;
                };
                t.insert("port".into(), port_v);
                p.clone()
            }
            _ => {
                self.warn(
                    n,
                    "expected `virtual_server ADDRESS PORT` or `virtual_server group NAME`",
                );
                return None;
            }
        };
        let mut real_servers = Vec::new();
        let mut check_defaults = Table::new();
        let mut virtualhost = None;
        let children = n.children.as_deref().unwrap_or_default();
        for c in children {
            match c.keyword.as_str() {
                "delay_loop" => {
                    if let Some(v) = self.one(c, num) {
                        t.insert("delay_loop".into(), v);
                    }
                }
                "lb_algo" | "lvs_sched" => {
                    let algo = c.args.first().map(|s| s.to_ascii_lowercase());
                    match algo.as_deref() {
                        Some("mh") => {
                            t.insert("scheduler".into(), string("mh"));
                        }
                        Some("sh") => {
                            t.insert("scheduler".into(), string("sh"));
                        }
                        Some(algo @ ("rr" | "wrr" | "lc" | "wlc")) => {
                            // Kept: the kernel's IPVS runs it.
                            t.insert("scheduler".into(), string(algo));
                            self.needs_ipvs = true;
                            self.notes.push(format!(
                                "{}: note: `{}` kept: it needs the kernel's IPVS, so `dataplane = \"ipvs\"` was written (the XDP dataplane schedules with Maglev: `mh`, or `sh`)",
                                c.origin,
                                c.text()
                            ));
                        }
                        Some(other) => {
                            t.insert("scheduler".into(), string("mh"));
                            self.warn(
                                c,
                                format!(
                                    "`{other}` has no XDP equivalent: Maglev hashing (`mh`) was written, which spreads new flows by weight and keeps them on one server"
                                ),
                            );
                        }
                        None => self.warn(c, "missing scheduler"),
                    }
                }
                "lb_kind" | "lvs_method" => match c.args.first().map(|s| s.to_ascii_uppercase()) {
                    Some(k) if k == "DR" => {
                        t.insert("lb_kind".into(), string("dr"));
                    }
                    Some(k) if k == "TUN" => {
                        t.insert("lb_kind".into(), string("tun"));
                        self.needs_ipvs = true;
                        self.notes.push(format!(
                            "{}: note: `{}` kept as `lb_kind = \"tun\"` (IP-in-IP), which the IPVS dataplane serves, so `dataplane = \"ipvs\"` was written",
                            c.origin,
                            c.text()
                        ));
                    }
                    _ => {
                        t.insert("lb_kind".into(), string("dr"));
                        self.warn(
                            c,
                            "only direct routing (DR) and tunnelling (TUN) exist: `dr` was written; real servers must hold the VIP on lo",
                        );
                    }
                },
                "ip_family" => match c.args.first().map(String::as_str) {
                    Some(f @ ("inet" | "inet6")) if t.contains_key("fwmark") => {
                        t.insert("ip_family".into(), string(f));
                    }
                    Some("inet") => {}
                    _ => self.warn(c, "ip_family is `inet` or `inet6`, for a fwmark service"),
                },
                "protocol" => match c.args.first().map(|s| s.to_ascii_uppercase()).as_deref() {
                    Some("TCP") => {
                        t.insert("protocol".into(), string("tcp"));
                    }
                    Some("UDP") => {
                        t.insert("protocol".into(), string("udp"));
                    }
                    _ => self.warn(c, "only TCP and UDP are supported"),
                },
                k @ ("persistence_timeout" | "quorum" | "hysteresis") => {
                    if let Some(v) = self.one(c, int) {
                        t.insert(k.into(), v);
                    }
                }
                k @ ("quorum_up" | "quorum_down") => {
                    if let Some(v) = self.one(c, |a| Some(string(a))) {
                        t.insert(k.into(), v);
                    }
                }
                "alpha" => {
                    t.insert("alpha".into(), Value::Boolean(true));
                }
                "sorry_server" => match c.args.as_slice() {
                    [a, p] => {
                        t.insert("sorry_server".into(), string(a));
                        if *p != port {
                            self.warn(
                                c,
                                "direct routing keeps the port: the sorry server is used on the virtual port",
                            );
                        }
                    }
                    [a] => {
                        t.insert("sorry_server".into(), string(a));
                    }
                    _ => self.warn(c, "expected `sorry_server ADDRESS PORT`"),
                },
                "virtualhost" => virtualhost = c.args.first().cloned(),
                k @ ("connect_timeout" | "retry" | "delay_before_retry" | "warmup") => {
                    if let Some(v) = self.one(c, num) {
                        check_defaults.insert(k.into(), v);
                    }
                }
                "real_server" => {}
                "persistence_granularity" | "persistence_engine" => {
                    self.warn(c, "persistence is per client address")
                }
                "omega"
                | "ha_suspend"
                | "ops"
                | "one_packet_scheduler"
                | "sorry_server_inhibit"
                | "sorry_server_lvs_method" => self.warn(c, "no director equivalent"),
                _ => self.warn(c, no_equivalent(&c.keyword)),
            }
        }
        for c in children.iter().filter(|c| c.keyword == "real_server") {
            if let Some(rs) = self.real_server(c, &port, &check_defaults, virtualhost.as_deref()) {
                real_servers.push(Value::Table(rs));
            }
        }
        if !real_servers.is_empty() {
            t.insert("real_server".into(), Value::Array(real_servers));
        }
        Some(t)
    }

    fn real_server(
        &mut self,
        n: &Node,
        vs_port: &str,
        defaults: &Table,
        virtualhost: Option<&str>,
    ) -> Option<Table> {
        let [address, port] = n.args.as_slice() else {
            self.warn(n, "expected `real_server ADDRESS PORT`");
            return None;
        };
        let mut t = Table::new();
        t.insert("address".into(), string(address));
        // Direct routing cannot change the port: checks keep probing the
        // real port.
        let mut defaults = defaults.clone();
        if vs_port.is_empty() {
            // A group's real server: checks probe its port.
            if let Some(p) = int(port).filter(|p| p.as_integer() != Some(0)) {
                defaults.insert("connect_port".into(), p);
            }
        } else if port != vs_port {
            self.warn(
                n,
                format!("direct routing keeps the virtual port {vs_port}: the real server gets traffic on it; checks still probe port {port}"),
            );
            if let Some(p) = int(port) {
                defaults.insert("connect_port".into(), p);
            }
        }
        for c in n.children.iter().flatten() {
            let checker = match c.keyword.as_str() {
                "weight" => {
                    if let Some(v) = self.one(c, int) {
                        t.insert("weight".into(), v);
                    }
                    continue;
                }
                "inhibit_on_failure" => {
                    t.insert("inhibit_on_failure".into(), Value::Boolean(true));
                    continue;
                }
                "TCP_CHECK" => "tcp_check",
                "HTTP_GET" => "http_get",
                "SSL_GET" => "ssl_get",
                "MISC_CHECK" => "misc_check",
                "DNS_CHECK" => "dns_check",
                "UDP_CHECK" => "udp_check",
                "PING_CHECK" => "ping_check",
                "SMTP_CHECK" => "smtp_check",
                "notify_up" | "notify_down" => {
                    self.warn(c, "per-server notify is not supported: the logs and metrics record health changes");
                    continue;
                }
                _ => {
                    self.warn(c, "no director equivalent");
                    continue;
                }
            };
            if t.contains_key(checker) {
                self.warn(c, "a second checker of the same kind is not supported");
                continue;
            }
            let mut check = defaults.clone();
            if (checker == "http_get" || checker == "ssl_get")
                && let Some(v) = virtualhost
            {
                check.insert("virtualhost".into(), string(v));
            }
            let mut urls = Vec::new();
            for k in c.children.iter().flatten() {
                self.check_key(checker, k, &mut check, &mut urls);
            }
            if !urls.is_empty() {
                check.insert("url".into(), Value::Array(urls));
            }
            if (checker == "http_get" || checker == "ssl_get") && !check.contains_key("url") {
                self.warn(c, "an HTTP check needs at least one url: skipped");
                continue;
            }
            if checker == "misc_check" && !check.contains_key("misc_path") {
                self.warn(c, "a MISC_CHECK needs misc_path: skipped");
                continue;
            }
            t.insert(checker.into(), Value::Table(check));
        }
        Some(t)
    }

    fn check_key(&mut self, checker: &str, k: &Node, check: &mut Table, urls: &mut Vec<Value>) {
        let http = checker == "http_get" || checker == "ssl_get";
        let key = match k.keyword.as_str() {
            "connect_timeout" | "delay_before_retry" | "delay_loop" | "warmup" => {
                k.keyword.as_str()
            }
            "retry" | "nb_get_retry" => "retry",
            "connect_port" => "connect_port",
            "connect_ip" | "bindto" => k.keyword.as_str(),
            "url" if http => {
                let mut u = Table::new();
                let mut codes = Vec::new();
                for f in k.children.iter().flatten() {
                    match (f.keyword.as_str(), f.args.first()) {
                        ("path", Some(p)) => {
                            u.insert("path".into(), string(p));
                        }
                        ("digest", Some(d)) => {
                            u.insert("digest".into(), string(d));
                        }
                        ("regex", Some(r)) => {
                            u.insert("regex".into(), string(r));
                        }
                        ("status_code", Some(_)) => {
                            for a in &f.args {
                                codes.push(int(a).unwrap_or_else(|| string(a)));
                            }
                        }
                        _ => self.warn(f, "no director equivalent"),
                    }
                }
                match codes.len() {
                    0 => {}
                    1 => {
                        u.insert("status_code".into(), codes.remove(0));
                    }
                    _ => {
                        u.insert("status_code".into(), Value::Array(codes));
                    }
                }
                if u.contains_key("path") {
                    urls.push(Value::Table(u));
                } else {
                    self.warn(k, "a url without a path was skipped");
                }
                return;
            }
            "virtualhost" if http => "virtualhost",
            "enable_sni" if checker == "ssl_get" => {
                check.insert("enable_sni".into(), Value::Boolean(true));
                return;
            }
            "misc_path" if checker == "misc_check" => {
                check.insert("misc_path".into(), string(&k.args.join(" ")));
                return;
            }
            "misc_timeout" if checker == "misc_check" => "misc_timeout",
            "misc_dynamic" if checker == "misc_check" => {
                check.insert("misc_dynamic".into(), Value::Boolean(true));
                return;
            }
            "type" if checker == "dns_check" => "type",
            "name" if checker == "dns_check" => "name",
            "payload" if checker == "udp_check" => "payload",
            "helo_name" if checker == "smtp_check" => "helo_name",
            "require_reply" if checker == "udp_check" => {
                check.insert("require_reply".into(), Value::Boolean(true));
                if !k.args.is_empty() {
                    self.warn(
                        k,
                        "the expected reply content is not checked, only that one came",
                    );
                }
                return;
            }
            "user" if checker == "misc_check" => {
                self.warn(k, "scripts run as the daemon's user");
                return;
            }
            _ => {
                self.warn(k, format!("no {checker} equivalent"));
                return;
            }
        };
        let conv: Conv = match key {
            "connect_ip" | "bindto" | "virtualhost" | "type" | "name" | "payload" | "helo_name" => {
                |a| Some(string(a))
            }
            "connect_port" | "retry" => int,
            _ => num,
        };
        if let Some(v) = self.one(k, conv) {
            check.insert(key.into(), v);
        }
    }
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
