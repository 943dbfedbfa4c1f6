//! keepalived's grammar: tokens with their file and line, `include`
//! globs, `{ ... }` blocks.

use super::*;

/// Deepest `include` nesting followed.
pub(super) const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Word(String),
    Open,
    Close,
    EndOfLine,
}

/// Splits one file into tokens with their line numbers.
pub(super) fn lex(text: &str) -> Vec<(Tok, usize)> {
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
pub(super) type Token = (Tok, Origin);

/// Reads `path`, expanding `include` statements in place.
pub(super) fn tokens(
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
pub(super) fn tokens_of(
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
/// `*` and `?` are allowed in the last component. Sorted. `files` lists
/// the files of a directory (the disk's, or those held in memory).
pub(super) fn expand_glob(
    base: &Path,
    pattern: &str,
    files: impl FnOnce(&Path) -> std::io::Result<Vec<PathBuf>>,
) -> std::io::Result<Vec<PathBuf>> {
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
    let mut out: Vec<PathBuf> = files(full.parent().unwrap_or(Path::new(".")))?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| wildcard(&name, &n.to_string_lossy()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Shell-style `*` / `?` matching.
pub(super) fn wildcard(pattern: &str, name: &str) -> bool {
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
pub(super) fn parse(toks: &[Token]) -> Result<Vec<Node>, ImportError> {
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
pub(super) const MAX_NESTING: usize = 16;

pub(super) fn parse_block(
    toks: &[Token],
    pos: &mut usize,
    depth: usize,
) -> Result<Vec<Node>, ImportError> {
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
