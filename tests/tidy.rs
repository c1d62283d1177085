//! Tidy: architecture invariants checked by `cargo test --test tidy` (in the manner of
//! rust-analyzer's tidy test). Plain std, no build of the library needed beyond what cargo does
//! anyway; the whole file runs in a fraction of a second.
//!
//! What it checks (one `#[test]` each, every violation reported as `file:line`):
//!
//! 1. the module graph of `src/`: the layer table below covers exactly the top-level modules;
//!    no import goes up a layer (or sideways, see [`SAME_LAYER_IMPORTS_ALLOWED`]); no import
//!    cycle among the files of one top-level module, nor among top-level modules;
//! 2. `rdkafka` and candle are only used where [`RDKAFKA_ALLOWED`] / [`CANDLE_ALLOWED`] say;
//! 3. every `unsafe { … }` / `unsafe impl` has a `// SAFETY:` comment, every `unsafe fn` a
//!    `# Safety` doc section, and `src/lib.rs` denies `unsafe_op_in_unsafe_fn`;
//! 4. every reference to a markdown document (`README.md`, `benches/README.md`, `../x.md`,
//!    `README.md#anchor`) in a tracked text file resolves;
//! 5. `rustfmt.toml` exists and `.ci/run` runs `cargo fmt … --check`.
//!
//! How dependencies are found: every `src/**/*.rs` is stripped of comments and string/char
//! literals, then scanned for `use` trees (grouped, nested, multi-line, `pub use`) and for
//! inline paths anywhere in code (`crate::a::B`, `super::x`, `self::x`, `child::x` where
//! `child` is declared by `mod child` in scope; `sluice::a::B` in `src/main.rs`). `super` and
//! `self` resolve against the module the token is in, inline `mod tests { … }` included (its
//! `use super::*` is the file's own module). Test modules count like the rest of their file:
//! tests in a module may only import what the module may. A path resolves to the longest
//! prefix that is a module file (`a::b` if `src/a/b.rs` or `src/a/b/mod.rs` exists, else `a`,
//! else the crate root).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

// =============================================================================================
// The constants the maintainer edits.
// =============================================================================================

/// The layers, bottom to top: `(layer name, top-level modules on it)`; a layer's number is its
/// index. Rules:
///
/// * a module may import from its own top-level module and from any LOWER layer;
/// * never from a higher layer;
/// * two different top-level modules on the SAME layer may not import each other, unless
///   [`SAME_LAYER_IMPORTS_ALLOWED`] is true;
/// * `src/main.rs` (the binary) is above every layer and may import anything; the crate root
///   (`src/lib.rs`) only declares modules and is not checked.
///
/// Every top-level module of `src/` must be in this table, and every module named here must
/// exist.
const LAYERS: &[(&str, &[&str])] = &[
    ("vocabulary", &["core"]),
    ("configuration", &["config"]),
    ("telemetry", &["telemetry"]),
    ("models", &["models"]),
    ("requests and rings", &["queue"]),
    ("decoding", &["decode"]),
    ("execution", &["execute"]),
    ("engine", &["engine"]),
    ("run loop, settings, rendering", &["run", "settings", "render"]),
    ("sources and sinks", &["kafka", "jsonl"]),
    ("streaming pipeline", &["pipeline"]),
    ("demo", &["demo"]),
    ("control plane", &["control"]),
    ("tools", &["loadgen"]),
];

/// Whether two different top-level modules on the same layer may import each other.
const SAME_LAYER_IMPORTS_ALLOWED: bool = false;

/// Module path prefixes (`kafka` covers `kafka` and `kafka::…`) that may use `rdkafka`.
/// `src/main.rs` is the module `main`.
const RDKAFKA_ALLOWED: &[&str] = &["kafka", "loadgen"];

/// Module path prefixes that may use candle (`candle_core`, `candle_nn`, `candle_transformers`,
/// `candle::`).
const CANDLE_ALLOWED: &[&str] = &["models", "execute"];

/// Known dangling document references to tolerate: `(referencing file, reference as written
/// without its #anchor)`, e.g. `("benches/results/old.md", "NOTES.md")`.
const DOC_REFERENCE_EXCEPTIONS: &[(&str, &str)] = &[
    // The report's file name pattern in `sluice loadgen report --help`, not a document.
    ("src/loadgen/cli.rs", "NAME.md"),
    // A report the smoke test writes into a temporary directory and reads back.
    ("tests/loadgen_smoke.rs", "smoke.md"),
];

// =============================================================================================
// The checks.
// =============================================================================================

#[test]
fn layer_table_matches_src_modules() {
    let repo = repo();
    let mut found: BTreeSet<&str> = BTreeSet::new();
    for f in &repo.files {
        if !f.is_main && !f.module.is_empty() {
            found.insert(&f.module[0]);
        }
    }
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (layer, (name, mods)) in LAYERS.iter().enumerate() {
        for m in *mods {
            if let Some(other) = seen.insert(m, name) {
                problems.push(format!("LAYERS names `{m}` twice (layers `{other}` and `{name}`)"));
            }
            if !found.contains(m) {
                problems.push(format!(
                    "LAYERS names `{m}` (layer {layer} `{name}`) but there is no src/{m}.rs or \
                     src/{m}/mod.rs"
                ));
            }
        }
    }
    for m in &found {
        if layer_of(m).is_none() {
            problems.push(format!(
                "top-level module `{m}` (src/{m}.rs or src/{m}/mod.rs) is in no layer of LAYERS"
            ));
        }
    }
    report(
        "the layer table does not match src/",
        "Edit LAYERS at the top of tests/tidy.rs when a top-level module is added, removed or \
         renamed.",
        problems,
    );
}

#[test]
fn imports_respect_layers() {
    let repo = repo();
    let mut problems = BTreeSet::new();
    for f in &repo.files {
        if f.is_main || f.module.is_empty() {
            continue;
        }
        let from = f.module[0].as_str();
        let Some(lf) = layer_of(from) else { continue };
        for d in &f.deps {
            let Some(to) = d.module.first().map(String::as_str) else { continue };
            if to == from {
                continue;
            }
            let Some(lt) = layer_of(to) else { continue };
            let why = if lt > lf {
                "a higher layer"
            } else if lt == lf && !SAME_LAYER_IMPORTS_ALLOWED {
                "the same layer (SAME_LAYER_IMPORTS_ALLOWED = false)"
            } else {
                continue;
            };
            problems.insert(format!(
                "{}:{}: `{from}` (layer {lf} `{}`) uses crate::{} from `{to}` (layer {lt} `{}`), {why}",
                f.rel,
                d.line,
                LAYERS[lf].0,
                d.path.join("::"),
                LAYERS[lt].0,
            ));
        }
    }
    report(
        "imports break the layering",
        "A module may use its own top-level module and lower layers only (LAYERS in \
         tests/tidy.rs, bottom to top). Move the item down, or invert the dependency.",
        problems.into_iter().collect(),
    );
}

#[test]
fn no_file_cycles_within_a_top_level_module() {
    let repo = repo();
    // Nodes: files; edges: file -> file within the same top-level module.
    let mut edges: BTreeMap<(usize, usize), (usize, String)> = BTreeMap::new();
    for (i, f) in repo.files.iter().enumerate() {
        if f.is_main || f.module.is_empty() {
            continue;
        }
        for d in &f.deps {
            if d.module.first() != f.module.first() {
                continue;
            }
            let Some(&j) = repo.by_module.get(&d.module) else { continue };
            if i == j || !counts_as_edge(f, &repo.files[j], d) {
                continue;
            }
            edges.entry((i, j)).or_insert((d.line, d.path.join("::")));
        }
    }
    let n = repo.files.len();
    let mut adj = vec![Vec::new(); n];
    for &(a, b) in edges.keys() {
        adj[a].push(b);
    }
    let mut problems = Vec::new();
    for scc in tarjan(&adj) {
        if scc.len() < 2 {
            continue;
        }
        let names: Vec<&str> = scc.iter().map(|&i| repo.files[i].rel.as_str()).collect();
        problems.push(format!("cycle: {}", names.join(" ↔ ")));
        let mut inside: Vec<_> = edges
            .iter()
            .filter(|((a, b), _)| scc.contains(a) && scc.contains(b))
            .map(|(&(a, b), (line, path))| (a, *line, b, path))
            .collect();
        inside.sort();
        for (a, line, b, path) in inside {
            problems.push(format!(
                "    {}:{line}: uses crate::{path} ({})",
                repo.files[a].rel, repo.files[b].rel
            ));
        }
    }
    report(
        "files import each other in a cycle",
        "Break each cycle: move the shared item into one file (or a new lower file) that both \
         use. Edges from a parent to a child through `mod`/`pub use`, and from a child to a \
         facade mod.rs, do not count.",
        problems,
    );
}

#[test]
fn no_cycles_between_top_level_modules() {
    let repo = repo();
    let tops: Vec<&str> = {
        let s: BTreeSet<&str> = repo
            .files
            .iter()
            .filter(|f| !f.is_main && !f.module.is_empty())
            .map(|f| f.module[0].as_str())
            .collect();
        s.into_iter().collect()
    };
    let idx: HashMap<&str, usize> = tops.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    // (from, to) -> every (file, line, path) that makes the edge.
    let mut edges: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    for f in &repo.files {
        if f.is_main || f.module.is_empty() {
            continue;
        }
        let a = idx[f.module[0].as_str()];
        for d in &f.deps {
            let Some(&b) = d.module.first().and_then(|t| idx.get(t.as_str())) else { continue };
            if a != b {
                edges.entry((a, b)).or_default().push(format!(
                    "{}:{} crate::{}",
                    f.rel,
                    d.line,
                    d.path.join("::")
                ));
            }
        }
    }
    let mut adj = vec![Vec::new(); tops.len()];
    for &(a, b) in edges.keys() {
        adj[a].push(b);
    }
    let mut problems = Vec::new();
    for scc in tarjan(&adj) {
        if scc.len() < 2 {
            continue;
        }
        let names: Vec<&str> = scc.iter().map(|&i| tops[i]).collect();
        problems.push(format!("cycle among top-level modules: {}", names.join(", ")));
        for ((a, b), uses) in &edges {
            if scc.contains(a) && scc.contains(b) {
                let more = if uses.len() > 1 {
                    format!(" (+{} more)", uses.len() - 1)
                } else {
                    String::new()
                };
                problems.push(format!("    {} → {}: {}{more}", tops[*a], tops[*b], uses[0]));
            }
        }
    }
    report(
        "top-level modules import each other in a cycle",
        "Each listed edge is one import (first occurrence); remove one direction of each cycle.",
        problems,
    );
}

#[test]
fn rdkafka_is_confined() {
    confined("rdkafka", RDKAFKA_ALLOWED, &["rdkafka"], false);
}

#[test]
fn candle_is_confined() {
    confined("candle", CANDLE_ALLOWED, &["candle_core", "candle_nn", "candle_transformers"], true);
}

#[test]
fn unsafe_blocks_and_impls_have_safety_comments() {
    let repo = repo();
    let mut problems = Vec::new();
    for f in &repo.files {
        let toks = &f.toks;
        for (i, t) in toks.iter().enumerate() {
            if !t.tok.is("unsafe") {
                continue;
            }
            let what = match toks.get(i + 1).map(|t| &t.tok) {
                Some(Tok::Punct('{')) => "unsafe block",
                Some(Tok::Ident(s)) if s == "impl" => "unsafe impl",
                _ => continue,
            };
            if !has_safety_comment(&f.code_lines(), &f.comment_lines(), t.line - 1) {
                problems.push(format!(
                    "{}:{}: {what} without a `// SAFETY:` comment: {}",
                    f.rel,
                    t.line,
                    f.raw_line(t.line).trim()
                ));
            }
        }
    }
    report(
        "unsafe code without its safety argument",
        "Put `// SAFETY: <why this is sound>` on the line or within the 3 non-blank lines above.",
        problems,
    );
}

#[test]
fn unsafe_fns_document_safety() {
    let repo = repo();
    let mut problems = Vec::new();
    for f in &repo.files {
        let toks = &f.toks;
        let raw: Vec<&str> = f.raw.lines().collect();
        for (i, t) in toks.iter().enumerate() {
            let declares = t.tok.is("unsafe")
                && toks.get(i + 1).is_some_and(|t| t.tok.is("fn"))
                && matches!(toks.get(i + 2).map(|t| &t.tok), Some(Tok::Ident(_)));
            if declares && !has_safety_doc(&raw, t.line - 1) {
                problems.push(format!(
                    "{}:{}: unsafe fn without a `# Safety` doc section: {}",
                    f.rel,
                    t.line,
                    f.raw_line(t.line).trim()
                ));
            }
        }
    }
    report(
        "unsafe fns without a contract",
        "Document the caller's obligations under a `/// # Safety` heading right above the fn \
         (attributes between the doc and the fn are fine).",
        problems,
    );
}

#[test]
fn lib_denies_unsafe_op_in_unsafe_fn() {
    let repo = repo();
    let lib = repo.files.iter().find(|f| f.rel == "src/lib.rs").expect("src/lib.rs exists");
    let toks = &lib.toks;
    let found = toks.windows(5).enumerate().any(|(i, w)| {
        let head = [&w[0].tok, &w[1].tok, &w[2].tok, &w[4].tok];
        head == [&Tok::Punct('#'), &Tok::Punct('!'), &Tok::Punct('['), &Tok::Punct('(')]
            && (w[3].tok.is("deny") || w[3].tok.is("forbid"))
            && toks[i + 5..]
                .iter()
                .take_while(|t| t.tok != Tok::Punct(')'))
                .any(|t| t.tok.is("unsafe_op_in_unsafe_fn"))
    });
    assert!(
        found,
        "src/lib.rs must contain `#![deny(unsafe_op_in_unsafe_fn)]`: an unsafe fn's body is not \
         one big unsafe block; each unsafe operation in it needs its own block and SAFETY comment"
    );
}

#[test]
fn no_dangling_doc_references() {
    let root = root();
    let (files, tracked) = text_files(root);
    let basenames: HashSet<&str> =
        tracked.iter().map(|p| p.rsplit('/').next().unwrap_or(p)).collect();
    let exists = |rel: &str| tracked.contains(rel) || root.join(rel).is_file();
    let mut problems = Vec::new();
    for rel in &files {
        // This file is about such references and holds made-up examples of them.
        if rel == "tests/tidy.rs" || rel.starts_with("tests/tidy/") {
            continue;
        }
        let Ok(bytes) = std::fs::read(root.join(rel)) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for (n, line) in text.lines().enumerate() {
            for r in md_refs(line) {
                let ok = normalize(&join(dir, &r)).is_some_and(|p| exists(&p))
                    || normalize(r.trim_start_matches('/')).is_some_and(|p| exists(&p))
                    || (!r.contains('/') && basenames.contains(r.as_str()))
                    || DOC_REFERENCE_EXCEPTIONS.contains(&(rel.as_str(), r.as_str()));
                if !ok {
                    problems.push(format!("{rel}:{}: `{r}` does not exist", n + 1));
                }
            }
        }
    }
    report(
        "references to markdown documents that do not exist",
        "A reference resolves relative to its file, to the repository root, or (a bare name) \
         anywhere in the tracked files. Fix the reference, or list it in \
         DOC_REFERENCE_EXCEPTIONS in tests/tidy.rs.",
        problems,
    );
}

#[test]
fn formatting_is_configured_and_checked_in_ci() {
    let root = root();
    let mut problems = Vec::new();
    if !root.join("rustfmt.toml").is_file() {
        problems.push("rustfmt.toml is missing at the repository root".to_owned());
    }
    match std::fs::read_to_string(root.join(".ci/run")) {
        Err(e) => problems.push(format!(".ci/run cannot be read: {e}")),
        Ok(ci) => {
            let checks = ci.lines().any(|l| {
                !l.trim_start().starts_with('#') && l.contains("cargo fmt") && l.contains("--check")
            });
            if !checks {
                problems.push(
                    ".ci/run has no line running `cargo fmt` with `--check` (e.g. \
                     `cargo fmt --all -- --check`)"
                        .to_owned(),
                );
            }
        }
    }
    report("formatting is not enforced", "", problems);
}

// =============================================================================================
// Repository model.
// =============================================================================================

/// One `src/**/*.rs` file.
struct SrcFile {
    /// Path from the repository root, `/`-separated.
    rel: String,
    /// Module path: `["a", "b"]` for `src/a/b.rs` and `src/a/b/mod.rs`, `[]` for `src/lib.rs`,
    /// `["main"]` for `src/main.rs`.
    module: Vec<String>,
    /// `src/main.rs`: the binary, above every layer; it reaches the library as `sluice::`.
    is_main: bool,
    raw: String,
    /// `raw` with comments and literals blanked (newlines kept).
    code: String,
    /// Only the comments of `raw` (newlines kept).
    comments: String,
    /// The tokens of `code`.
    toks: Vec<Token>,
    /// A `mod.rs` / `lib.rs` of nothing but `mod`, `pub use`, attributes and docs.
    facade: bool,
    deps: Vec<Dep>,
}

impl SrcFile {
    fn code_lines(&self) -> Vec<&str> {
        self.code.split('\n').collect()
    }
    fn comment_lines(&self) -> Vec<&str> {
        self.comments.split('\n').collect()
    }
    fn raw_line(&self, line: usize) -> &str {
        self.raw.lines().nth(line - 1).unwrap_or("")
    }
}

/// One use of a path of the library.
#[derive(Debug)]
struct Dep {
    line: usize,
    /// The absolute path, without `crate::`.
    path: Vec<String>,
    /// The module it resolves to (the longest prefix of `path` that is a module file).
    module: Vec<String>,
    /// From a `pub use` (any `pub(…)`): a re-export.
    reexport: bool,
}

struct Repo {
    files: Vec<SrcFile>,
    by_module: HashMap<Vec<String>, usize>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The parsed `src/` tree, built once for all tests.
fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let root = root();
        let mut paths = Vec::new();
        walk(&root.join("src"), &mut paths);
        paths.sort();
        let mut files: Vec<SrcFile> = paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .map(|p| {
                let rel = rel_path(root, p);
                let raw = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{rel}: {e}"));
                let (code, comments) = strip(&raw);
                let is_main = rel == "src/main.rs";
                let module = module_of_file(&rel);
                let toks = tokenize(&code);
                let facade = (rel == "src/lib.rs" || rel.ends_with("/mod.rs")) && is_facade(&toks);
                let deps = Vec::new();
                SrcFile { rel, module, is_main, raw, code, comments, toks, facade, deps }
            })
            .collect();
        let by_module: HashMap<Vec<String>, usize> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.is_main)
            .map(|(i, f)| (f.module.clone(), i))
            .collect();
        for f in &mut files {
            let scope = if f.is_main { Vec::new() } else { f.module.clone() };
            f.deps = deps_of(&f.toks, &scope, f.is_main)
                .into_iter()
                .map(|(line, path, reexport)| {
                    let module = (0..=path.len())
                        .rev()
                        .map(|k| path[..k].to_vec())
                        .find(|m| by_module.contains_key(m))
                        .unwrap_or_default();
                    Dep { line, path, module, reexport }
                })
                .collect();
        }
        Repo { files, by_module }
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn rel_path(root: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(root).unwrap_or(p);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`; `src/lib.rs` → root; `src/main.rs` → `main`.
fn module_of_file(rel: &str) -> Vec<String> {
    let inner = rel.strip_prefix("src/").unwrap_or(rel).strip_suffix(".rs").unwrap_or(rel);
    let mut segs: Vec<String> = inner.split('/').map(str::to_owned).collect();
    if segs == ["lib"] {
        return Vec::new();
    }
    if segs.len() > 1 && segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    segs
}

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

/// Whether a dependency of `from` on `to` (a different file of the same top-level module) is
/// an edge of the cycle graph. The rule, kept simple:
///
/// * parent → descendant through a re-export (`pub use child::…`, `pub use self::…`) is not
///   an edge (nor is `mod child;`, which is no dependency at all): a module exposing its
///   children is structure, not a cycle;
/// * child → ancestor is not an edge when the ancestor is a facade, i.e. a `mod.rs` (or
///   `lib.rs`) of nothing but `mod`/`pub mod`/`pub use`/docs/attributes: `use crate::a::Thing`
///   from `a/x.rs`, with `Thing` re-exported by `a/mod.rs` from `a/sibling.rs`, resolves to `a`,
///   and a facade is only a name for its children;
/// * everything else is a real edge (a parent `mod.rs` with code that a child uses, and that
///   uses the child back, is a cycle).
fn counts_as_edge(from: &SrcFile, to: &SrcFile, dep: &Dep) -> bool {
    let descends = |a: &[String], b: &[String]| a.len() > b.len() && a.starts_with(b);
    if descends(&to.module, &from.module) && dep.reexport {
        return false;
    }
    if descends(&from.module, &to.module) && to.facade {
        return false;
    }
    true
}

fn confined(what: &str, allowed: &[&str], crates: &[&str], candle_path: bool) {
    let repo = repo();
    let mut problems = Vec::new();
    for f in &repo.files {
        if allowed.iter().any(|a| {
            let a: Vec<&str> = a.split("::").collect();
            f.module.len() >= a.len() && f.module.iter().zip(&a).all(|(m, a)| m == a)
        }) {
            continue;
        }
        let toks = &f.toks;
        let mut lines = BTreeSet::new();
        for (i, t) in toks.iter().enumerate() {
            let Tok::Ident(s) = &t.tok else { continue };
            // Not the tail of a longer path (`a::rdkafka`); `::rdkafka::…` is the crate.
            let in_path = i > 1
                && toks[i - 1].tok == Tok::Sep
                && matches!(toks[i - 2].tok, Tok::Ident(_) | Tok::Punct('>'));
            let candle =
                candle_path && s == "candle" && toks.get(i + 1).map(|t| &t.tok) == Some(&Tok::Sep);
            if !in_path && (crates.contains(&s.as_str()) || candle) {
                lines.insert(t.line);
            }
        }
        for l in lines {
            problems.push(format!("{}:{l}: {}", f.rel, f.raw_line(l).trim()));
        }
    }
    report(
        &format!("{what} used outside {}", allowed.join(", ")),
        &format!(
            "Only modules under {:?} may use {what}; go through their API, or edit the allowed \
             list in tests/tidy.rs if the architecture changed.",
            allowed
        ),
        problems,
    );
}

// =============================================================================================
// Lexing: strip comments and literals, tokenize.
// =============================================================================================

/// Splits Rust source into (code, comments): in `code` every comment and every string, byte
/// string, raw string and char literal is blanked; `comments` holds only the comment text.
/// Both keep every newline, so line numbers stay valid. Lifetimes (`'a`) stay code.
fn strip(src: &str) -> (String, String) {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let mut code = String::with_capacity(src.len());
    let mut com = String::with_capacity(src.len());
    // kind: 0 code, 1 comment, 2 literal.
    let mut put = |ch: char, kind: u8| {
        if ch == '\n' {
            code.push('\n');
            com.push('\n');
        } else {
            code.push(if kind == 0 { ch } else { ' ' });
            com.push(if kind == 1 { ch } else { ' ' });
        }
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < n {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < n && c[i] != '\n' {
                put(c[i], 1);
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    put('/', 1);
                    put('*', 1);
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    put('*', 1);
                    put('/', 1);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    put(c[i], 1);
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i).filter(|_| i == 0 || !ident(c[i - 1])) {
            while i < end {
                put(c[i], 2);
                i += 1;
            }
        } else if ch == '"' {
            put(ch, 2);
            i += 1;
            while i < n && c[i] != '"' {
                if c[i] == '\\' && i + 1 < n {
                    put(c[i], 2);
                    i += 1;
                }
                put(c[i], 2);
                i += 1;
            }
            if i < n {
                put('"', 2);
                i += 1;
            }
        } else if ch == '\'' && next == Some('\\') {
            // '\n', '\'', '\x41', '\u{1F600}'
            let mut j = i + 3;
            while j < n && c[j] != '\'' && c[j] != '\n' {
                j += 1;
            }
            while i <= j.min(n - 1) {
                put(c[i], 2);
                i += 1;
            }
        } else if ch == '\'' && c.get(i + 2) == Some(&'\'') && next != Some('\'') {
            for _ in 0..3 {
                put(c[i], 2);
                i += 1;
            }
        } else {
            put(ch, 0);
            i += 1;
        }
    }
    (code, com)
}

/// If a raw (byte/C) string literal starts at `i` (`r"…"`, `r#"…"#`, `br"…"`, `cr#"…"#`), the
/// index just past its end.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(c.get(j), Some('b') | Some('c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && c[j + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    /// 1-based.
    line: usize,
}

impl Tok {
    /// Whether this is the identifier or keyword `word`.
    fn is(&self, word: &str) -> bool {
        matches!(self, Tok::Ident(s) if s == word)
    }
}

/// Tokens of stripped code: identifiers/keywords, `::`, and single punctuation characters.
/// Number literals are dropped.
fn tokenize(code: &str) -> Vec<Token> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            if !ch.is_ascii_digit() {
                out.push(Token { tok: Tok::Ident(c[s..i].iter().collect()), line });
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Token { tok: Tok::Sep, line });
            i += 2;
        } else {
            out.push(Token { tok: Tok::Punct(ch), line });
            i += 1;
        }
    }
    out
}

// =============================================================================================
// Dependencies.
// =============================================================================================

/// The library paths that the tokens of stripped code use, as `(line, absolute path without crate::,
/// from a pub use)`. `module` is the file's module path (`[]` for the crate root); `is_main`
/// makes `sluice::` the library (and `crate::`/`self::`/`super::` the binary's own items).
fn deps_of(toks: &[Token], module: &[String], is_main: bool) -> Vec<(usize, Vec<String>, bool)> {
    // The module each token is in (inline `mod x { … }` included), as an index into `scopes`,
    // and the declared modules.
    let mut scopes: Vec<Vec<String>> = vec![module.to_vec()];
    let mut scope_of = Vec::with_capacity(toks.len());
    let mut declared: HashSet<Vec<String>> = HashSet::new();
    {
        // (name, brace depth of its body, index of its scope)
        let mut stack: Vec<(String, usize, usize)> = Vec::new();
        let mut depth = 0usize;
        let mut pending: Option<String> = None;
        for (i, t) in toks.iter().enumerate() {
            let cur = stack.last().map_or(0, |s| s.2);
            let scope = &scopes[cur];
            if t.tok.is("mod") {
                if let Some(Tok::Ident(name)) = toks.get(i + 1).map(|t| &t.tok) {
                    if toks.get(i + 2).is_some_and(|t| t.tok == Tok::Punct('{')) {
                        pending = Some(name.clone());
                    }
                    let mut m = scope.clone();
                    m.push(name.clone());
                    declared.insert(m);
                }
            }
            match t.tok {
                Tok::Punct('{') => {
                    depth += 1;
                    if let Some(name) = pending.take() {
                        let mut inner = scopes[cur].clone();
                        inner.push(name.clone());
                        scopes.push(inner);
                        stack.push((name, depth, scopes.len() - 1));
                    }
                }
                Tok::Punct('}') => {
                    if stack.last().is_some_and(|s| s.1 == depth) {
                        stack.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                _ => {}
            }
            scope_of.push(cur);
        }
    }
    let resolve = |path: &[String], scope: &[String]| -> Option<Vec<String>> {
        let first = path.first()?.as_str();
        let rest = |k: usize, mut base: Vec<String>| {
            base.extend(path[k..].iter().cloned());
            Some(base)
        };
        match first {
            "sluice" if is_main => rest(1, Vec::new()),
            _ if is_main => None,
            "crate" => rest(1, Vec::new()),
            "self" => rest(1, scope.to_vec()),
            "super" => {
                let mut base = scope.to_vec();
                let mut k = 0;
                while path.get(k).is_some_and(|s| s == "super") {
                    base.pop()?;
                    k += 1;
                }
                rest(k, base)
            }
            _ => {
                let mut child = scope.to_vec();
                child.push(first.to_owned());
                if declared.contains(&child) {
                    rest(0, scope.to_vec())
                } else {
                    None
                }
            }
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let after_sep = i > 0 && toks[i - 1].tok == Tok::Sep;
        let Tok::Ident(word) = &toks[i].tok else {
            i += 1;
            continue;
        };
        if word == "use" && !after_sep {
            let reexport = is_pub(toks, i);
            let mut j = i + 1;
            let mut leaves = Vec::new();
            use_tree(toks, &mut j, Vec::new(), &mut leaves);
            for (path, line) in leaves {
                if let Some(abs) = resolve(&path, &scopes[scope_of[i]]) {
                    out.push((line, abs, reexport));
                }
            }
            i = j.max(i + 1);
            continue;
        }
        if !after_sep && toks.get(i + 1).map(|t| &t.tok) == Some(&Tok::Sep) {
            let mut path = vec![word.clone()];
            let mut j = i;
            while toks.get(j + 1).map(|t| &t.tok) == Some(&Tok::Sep) {
                match toks.get(j + 2).map(|t| &t.tok) {
                    Some(Tok::Ident(s)) => {
                        path.push(s.clone());
                        j += 2;
                    }
                    _ => break,
                }
            }
            if let Some(abs) = resolve(&path, &scopes[scope_of[i]]) {
                out.push((toks[i].line, abs, false));
            }
            i = j + 1;
            continue;
        }
        i += 1;
    }
    out
}

/// Whether the `use` at `i` is `pub use` or `pub(…) use`.
fn is_pub(toks: &[Token], i: usize) -> bool {
    match toks.get(i.wrapping_sub(1)).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => s == "pub",
        Some(Tok::Punct(')')) => {
            let mut k = i - 1;
            while k > 0 && toks[k].tok != Tok::Punct('(') {
                k -= 1;
            }
            k > 0 && toks[k - 1].tok.is("pub")
        }
        _ => false,
    }
}

/// Parses one use tree starting at `*i` (after `use`, or inside a `{…}` group) and pushes
/// every leaf path (with the line of its last segment) to `out`. `a::{self, b::C as D, e::*}`
/// gives `a`, `a::b::C`, `a::e`. Leaves `*i` after the tree (at `,`, `}` or `;`).
fn use_tree(
    t: &[Token],
    i: &mut usize,
    mut prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let tok = |i: usize| t.get(i).map(|t| &t.tok);
    let mut line = t.get(*i).map_or(0, |t| t.line);
    if tok(*i) == Some(&Tok::Sep) {
        // `use ::extern_crate::…`: not ours.
        prefix.push(String::new());
        *i += 1;
    }
    loop {
        match tok(*i) {
            Some(Tok::Ident(s)) => {
                if s != "self" || prefix.is_empty() {
                    prefix.push(s.clone());
                }
                line = t[*i].line;
                *i += 1;
                if tok(*i) == Some(&Tok::Sep) {
                    *i += 1;
                    continue;
                }
                break;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                break;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                loop {
                    match tok(*i) {
                        Some(Tok::Punct('}')) => {
                            *i += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => *i += 1,
                        None | Some(Tok::Punct(';')) => break,
                        _ => {
                            let before = *i;
                            use_tree(t, i, prefix.clone(), out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            _ => break,
        }
    }
    if tok(*i).is_some_and(|t| t.is("as")) {
        *i += 2;
    }
    if !prefix.is_empty() && !prefix[0].is_empty() {
        out.push((prefix, line));
    }
}

/// Whether a module file's stripped code is only `mod x;`, `pub mod x;`, `pub use …;` and
/// attributes (comments and docs are already gone).
fn is_facade(toks: &[Token]) -> bool {
    let mut stmts: Vec<Vec<&Tok>> = Vec::new();
    let mut cur: Vec<&Tok> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].tok {
            Tok::Punct('#') if cur.is_empty() => {
                i += 1;
                if toks.get(i).map(|t| &t.tok) == Some(&Tok::Punct('!')) {
                    i += 1;
                }
                let mut depth = 0;
                while i < toks.len() {
                    match toks[i].tok {
                        Tok::Punct('[') => depth += 1,
                        Tok::Punct(']') => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            Tok::Punct(';') => {
                stmts.push(std::mem::take(&mut cur));
                i += 1;
            }
            t => {
                cur.push(t);
                i += 1;
            }
        }
    }
    if !cur.is_empty() {
        return false;
    }
    stmts.iter().all(|s| {
        let mut s = &s[..];
        let public = s.first().is_some_and(|t| t.is("pub"));
        if public {
            s = &s[1..];
            if s.first() == Some(&&Tok::Punct('(')) {
                let close = s.iter().position(|t| **t == Tok::Punct(')')).unwrap_or(s.len() - 1);
                s = &s[close + 1..];
            }
        }
        match s.first() {
            Some(Tok::Ident(k)) if k == "mod" => s.len() == 2,
            Some(Tok::Ident(k)) if k == "use" => public,
            _ => false,
        }
    })
}

/// Tarjan's strongly connected components of a graph given as adjacency lists.
fn tarjan(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adj: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.adj[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            scc.sort_unstable();
            s.out.push(scc);
        }
    }
    let n = adj.len();
    let mut s = State {
        adj,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

// =============================================================================================
// Unsafe.
// =============================================================================================

/// Whether line `l` (0-based) has a comment containing `SAFETY:` on it or on one of the 3
/// non-blank lines above it; a block of consecutive comment-only lines counts as a whole when
/// any of its lines is in that window.
fn has_safety_comment(code: &[&str], comments: &[&str], l: usize) -> bool {
    let says = |k: usize| comments.get(k).is_some_and(|c| c.contains("SAFETY:"));
    if says(l) {
        return true;
    }
    let blank = |k: usize| code[k].trim().is_empty() && comments[k].trim().is_empty();
    let comment_only = |k: usize| code[k].trim().is_empty() && !comments[k].trim().is_empty();
    // The comment-only block that ends at line `k` mentions SAFETY: (a long comment whose
    // first line is further up still counts).
    let block_says = |mut k: usize| loop {
        if says(k) {
            return true;
        }
        if k == 0 || !comment_only(k - 1) {
            return false;
        }
        k -= 1;
    };
    let (mut k, mut seen) = (l, 0);
    while k > 0 && seen < 3 {
        k -= 1;
        if blank(k) {
            continue;
        }
        seen += 1;
        if says(k) || (comment_only(k) && block_says(k)) {
            return true;
        }
    }
    false
}

/// Whether the doc comment directly above line `l` (0-based; attribute lines in between
/// allowed) has a `# Safety` section.
fn has_safety_doc(raw: &[&str], l: usize) -> bool {
    let mut k = l;
    while k > 0 {
        k -= 1;
        let t = raw[k].trim_start();
        if t.starts_with("///") {
            if t.trim_start_matches('/').trim_start().starts_with("# Safety") {
                return true;
            }
        } else if !t.starts_with("#[") {
            return false;
        }
    }
    false
}

// =============================================================================================
// Document references.
// =============================================================================================

/// The text files to check for document references (relative, `/`-separated), and every
/// tracked file (for resolving bare names). From `git ls-files`; without git, a walk of the
/// tree that skips `target/`, `.git/` and `models/`.
fn text_files(root: &Path) -> (Vec<String>, HashSet<String>) {
    let all: Vec<String> =
        match Command::new("git").arg("ls-files").arg("-z").current_dir(root).output() {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .split('\0')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => {
                let mut paths = Vec::new();
                for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if ["target", ".git", "models"].contains(&name.as_str()) {
                        continue;
                    }
                    if e.path().is_dir() {
                        walk(&e.path(), &mut paths);
                    } else {
                        paths.push(e.path());
                    }
                }
                paths.iter().map(|p| rel_path(root, p)).collect()
            }
        };
    const EXTS: &[&str] = &["rs", "md", "toml", "sh", "py", "yaml", "yml", "fbs", "cu"];
    let mut text: Vec<String> = all
        .iter()
        .filter(|p| {
            *p == ".ci/run"
                || *p == "Dockerfile.cuda"
                || p.rsplit_once('.').is_some_and(|(_, e)| EXTS.contains(&e))
        })
        .cloned()
        .collect();
    text.sort();
    (text, all.into_iter().collect())
}

/// The markdown references on a line: maximal runs of `[A-Za-z0-9_./-]` ending in `.md` (not
/// `.mdx`), without any `#anchor`; none from a token with `://` (a URL).
fn md_refs(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let is_ref = |c: u8| c.is_ascii_alphanumeric() || b"_./-".contains(&c);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = line[from..].find(".md") {
        let at = from + p;
        let end = at + 3;
        from = end;
        if b.get(end).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_') {
            continue;
        }
        let mut s = at;
        while s > 0 && is_ref(b[s - 1]) {
            s -= 1;
        }
        if s > 0 && b[s - 1] == b'$' {
            // `$dir/$name.md`: a shell variable, not a document.
            continue;
        }
        let token = &line[s..end];
        let name = token.rsplit('/').next().unwrap_or(token);
        if !name[..name.len() - 3].bytes().any(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let mut w = s;
        while w > 0 && !b[w - 1].is_ascii_whitespace() {
            w -= 1;
        }
        if line[w..end].contains("://") {
            continue;
        }
        out.push(token.to_owned());
    }
    out
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_owned()
    } else {
        format!("{dir}/{rel}")
    }
}

/// Resolves `.` and `..` in a relative path; `None` if it climbs above the root.
fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

// =============================================================================================
// Reporting.
// =============================================================================================

fn report(title: &str, hint: &str, problems: Vec<String>) {
    if problems.is_empty() {
        return;
    }
    let count = problems.iter().filter(|p| !p.starts_with("    ")).count();
    panic!("\n{title} ({count}):\n  {}\n{hint}\n", problems.join("\n  "));
}

// =============================================================================================
// Tests of the parsers above.
// =============================================================================================

mod parser_tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn paths(code: &str, module: &[&str]) -> Vec<(usize, String, bool)> {
        deps_of(&tokenize(&strip(code).0), &s(module), false)
            .into_iter()
            .map(|(l, p, r)| (l, p.join("::"), r))
            .collect()
    }

    #[test]
    fn grouped_nested_and_multiline_use_trees() {
        let code = "use crate::{a::X, b::{Y, z::Z as W}, c::*};\n\
                    pub use crate::d::{\n    self,\n    e::F,\n};\n\
                    use std::fmt;\n";
        assert_eq!(
            paths(code, &["m"]),
            vec![
                (1, "a::X".into(), false),
                (1, "b::Y".into(), false),
                (1, "b::z::Z".into(), false),
                (1, "c".into(), false),
                (3, "d".into(), true),
                (4, "d::e::F".into(), true),
            ]
        );
    }

    #[test]
    fn super_self_children_and_inline_paths() {
        let code = "mod child;\n\
                    use super::x::Y;\n\
                    pub(crate) use child::Z;\n\
                    fn f() -> crate::p::q::R { super::super::top::g(); self::h() }\n\
                    #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::s;\n}\n";
        assert_eq!(
            paths(code, &["a", "b"]),
            vec![
                (2, "a::x::Y".into(), false),
                (3, "a::b::child::Z".into(), true),
                (4, "p::q::R".into(), false),
                (4, "top::g".into(), false),
                (4, "a::b::h".into(), false),
                (7, "a::b".into(), false),
                (8, "a::s".into(), false),
            ]
        );
    }

    #[test]
    fn paths_in_comments_and_literals_do_not_count() {
        let code = concat!(
            "// use crate::a::B;\n",
            "/* crate::c /* nested crate::d */ crate::e */\n",
            "/// doc crate::f\n",
            "let s = \"crate::g \\\" crate::h\";\n",
            "let r = r#\"crate::i \" crate::j\"#;\n",
            "let c = '\"'; let q = '\\''; fn f<'a>(x: &'a crate::k::L) {}\n",
            "let b = br\"crate::m\"; let ok = crate::n::O;\n",
        );
        assert_eq!(paths(code, &["m"]), vec![(6, "k::L".into(), false), (7, "n::O".into(), false)]);
        let (code_only, comments) = strip("a // SAFETY: x\nb");
        assert_eq!(code_only, "a             \nb");
        assert!(comments.contains("SAFETY: x"));
    }

    #[test]
    fn main_reaches_the_library_as_sluice() {
        let (code, _) =
            strip("use sluice::a::{B, c::D};\nuse crate::cli;\nfn f() { sluice::e::f(); }");
        let got: Vec<String> = deps_of(&tokenize(&code), &[], true)
            .into_iter()
            .map(|(_, p, _)| p.join("::"))
            .collect();
        assert_eq!(got, s(&["a::B", "a::c::D", "e::f"]));
    }

    #[test]
    fn facades_and_modules() {
        assert!(is_facade(&tokenize(&strip("//! Doc.\n#![allow(x)]\npub mod a;\nmod b;\n#[cfg(test)]\nmod t;\npub use a::{X, Y};\n").0)));
        assert!(!is_facade(&tokenize(&strip("pub mod a;\nuse a::X;\n").0)));
        assert!(!is_facade(&tokenize(&strip("pub mod a;\nfn f() {}\n").0)));
        assert!(!is_facade(&tokenize(&strip("mod tests { use super::*; }\n").0)));
        assert_eq!(module_of_file("src/a/b/mod.rs"), s(&["a", "b"]));
        assert_eq!(module_of_file("src/a/b.rs"), s(&["a", "b"]));
        assert_eq!(module_of_file("src/lib.rs"), Vec::<String>::new());
        assert_eq!(module_of_file("src/main.rs"), s(&["main"]));
    }

    #[test]
    fn safety_comments_and_docs() {
        let src = "// SAFETY: the pointer\n// is valid.\n\nlet x = 1;\nlet y = unsafe { f() };\n";
        let (code, com) = strip(src);
        let (code, com): (Vec<&str>, Vec<&str>) =
            (code.split('\n').collect(), com.split('\n').collect());
        assert!(has_safety_comment(&code, &com, 4));
        let src = "// SAFETY: far\na;\nb;\nc;\nunsafe { f() };\n";
        let (code, com) = strip(src);
        let (code, com): (Vec<&str>, Vec<&str>) =
            (code.split('\n').collect(), com.split('\n').collect());
        assert!(!has_safety_comment(&code, &com, 4));
        let src = "// SAFETY: a long\n// explanation\n// over\n// many\n// lines\nunsafe impl Send for X {}";
        let (code, com) = strip(src);
        let (code, com): (Vec<&str>, Vec<&str>) =
            (code.split('\n').collect(), com.split('\n').collect());
        assert!(has_safety_comment(&code, &com, 5));
        let src = "// SAFETY: a long\n// explanation\n// over\n// many\n// lines\nlet x =\n    unsafe { f() };";
        let (code, com) = strip(src);
        let (code, com): (Vec<&str>, Vec<&str>) =
            (code.split('\n').collect(), com.split('\n').collect());
        assert!(has_safety_comment(&code, &com, 6));
        let raw = [
            "/// Does it.",
            "///",
            "/// # Safety",
            "/// `p` is valid.",
            "#[inline]",
            "unsafe fn f() {}",
        ];
        assert!(has_safety_doc(&raw, 5));
        assert!(!has_safety_doc(&["/// Does it.", "unsafe fn f() {}"], 1));
    }

    #[test]
    fn markdown_references() {
        let line = "See README.md#usage, [x](../docs/a-b.md) and https://e.org/y/Z.md, not a.mdx, \
                    {}.md or $out.md.";
        assert_eq!(md_refs(line), s(&["README.md", "../docs/a-b.md"]));
        assert_eq!(normalize("benches/../README.md").as_deref(), Some("README.md"));
        assert_eq!(normalize("../x.md"), None);
    }
}
