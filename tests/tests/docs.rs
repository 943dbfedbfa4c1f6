//! The README and `docs/` hold together: the README stays a front page
//! (its two commands first, at most ~200 lines) and links every document;
//! every relative link of every page leads to a file that exists, and every
//! `#anchor` to a heading of that file (GitHub's slugs), so a section moved
//! or renamed cannot leave a dead link behind.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The pages: the README and every `docs/*.md`.
fn pages() -> Result<Vec<PathBuf>> {
    let mut pages = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).context("docs/")? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p);
        }
    }
    pages.sort();
    Ok(pages)
}

/// The lines of `text` outside fenced code blocks.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The `(target)` of every `[text](target)` outside code blocks and spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        // Drop code spans: `[x](y)` inside backquotes is not a link.
        let plain: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose_lines(text)
        .filter(|line| line.starts_with('#'))
        .map(|line| slug(line.trim_start_matches('#')))
        .collect()
}

#[test]
fn the_readme_is_a_front_page_that_links_every_document() -> Result<()> {
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let lines = readme.lines().count();
    ensure!(
        lines <= 220,
        "README.md has {lines} lines: move detail to docs/"
    );
    // The two commands come first.
    let lab = readme
        .find("cargo xtask lab")
        .context("no `cargo xtask lab`")?;
    let test = readme
        .find("cargo xtask test")
        .context("no `cargo xtask test`")?;
    let first_section = readme.find("\n## ").unwrap_or(readme.len());
    ensure!(
        lab < first_section && test < first_section,
        "the lab and test commands must open the README"
    );
    let linked: BTreeSet<String> = links(&readme).into_iter().collect();
    for page in pages()? {
        let Ok(rel) = page.strip_prefix(root()) else {
            continue;
        };
        let rel = rel.to_string_lossy().to_string();
        if rel == "README.md" {
            continue;
        }
        ensure!(
            linked
                .iter()
                .any(|l| l.split('#').next() == Some(rel.as_str())),
            "{rel} is not linked from the README"
        );
    }
    Ok(())
}

#[test]
fn every_relative_link_leads_to_a_file_and_heading_that_exist() -> Result<()> {
    let mut checked = 0;
    for page in pages()? {
        let text = std::fs::read_to_string(&page)?;
        let dir = page.parent().context("a page's folder")?;
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            ensure!(
                target.exists(),
                "{}: link {link:?} leads to no file",
                page.display()
            );
            if let Some(anchor) = anchor {
                let headings = anchors(&std::fs::read_to_string(&target)?);
                ensure!(
                    headings.contains(anchor),
                    "{}: link {link:?}: {} has no heading #{anchor} (has: {headings:?})",
                    page.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    ensure!(
        checked >= 20,
        "only {checked} links checked: the parser broke"
    );
    Ok(())
}
