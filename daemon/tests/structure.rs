//! Structure rules for the product code, checked on every `cargo test` (and so in CI):
//!
//! - no cycle between the top-level modules of `daemon/src` (each folder or file there is one
//!   module; `lib.rs` and `main.rs` are the crate root, not modules). A cycle means neither side
//!   can be read, tested or changed without the other, and it only ever grows.
//! - no function longer than [`MAX_FN_LINES`] lines in `daemon/src` or `pipelines/src`.
//!
//! Test code is not product code: `#[cfg(test)]` items and modules (inline, or files declared
//! with `#[cfg(test)] mod x;`), files named `tests.rs` and files under a `tests/` folder are
//! skipped by both rules. Sources are parsed with `syn`, so comments, doc comments (intra-doc
//! links included) and string literals never count as references; paths inside macro calls
//! (`tracing::info!(…)`, `format!(…)`) are read from the macro's tokens.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::Visit;

/// Longer than this and a function does several things: split it into named steps.
const MAX_FN_LINES: usize = 120;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn daemon_top_level_modules_have_no_cycles() {
    let files = product_files(&["daemon/src"]);
    let top_level = top_level_modules(Path::new(WORKSPACE).join("daemon/src").as_path());
    let graph = ModuleGraph::build(&files, &top_level);
    let cycles = graph.cycles();
    assert!(cycles.is_empty(), "{}", cycle_report(&graph, &cycles));
}

#[test]
fn product_functions_are_at_most_max_fn_lines() {
    let files = product_files(&["daemon/src", "pipelines/src"]);
    let long: Vec<LongFn> = files.iter().flat_map(long_functions).collect();
    assert!(long.is_empty(), "{}", long_fn_report(&long));
}

/// A product source file, with the module path it defines (`daemon/src/cloud/client.rs` is
/// `["cloud", "client"]`, `daemon/src/cloud/mod.rs` is `["cloud"]`).
struct SourceFile {
    /// Relative to the workspace, as the reports print it.
    path: String,
    module: Vec<String>,
    syntax: syn::File,
}

impl SourceFile {
    fn parse(path: &str, module: &[&str], source: &str) -> Self {
        let syntax = syn::parse_file(source).unwrap_or_else(|e| {
            let at = e.span().start();
            panic!("{path}:{}:{}: cannot parse: {e}", at.line, at.column + 1)
        });
        SourceFile {
            path: path.to_owned(),
            module: module.iter().map(|s| (*s).to_owned()).collect(),
            syntax,
        }
    }
}

/// Every `.rs` file under the given source roots, minus test-only files.
fn product_files(roots: &[&str]) -> Vec<SourceFile> {
    let workspace = Path::new(WORKSPACE);
    let mut files = Vec::new();
    for root in roots {
        let root_dir = workspace.join(root);
        let mut parsed = Vec::new();
        for path in rust_files(&root_dir) {
            let relative = path.strip_prefix(&root_dir).expect("under its root");
            let module = module_path(relative);
            let module: Vec<&str> = module.iter().map(String::as_str).collect();
            let source = std::fs::read_to_string(&path).expect("read a source file");
            let shown = format!("{root}/{}", relative.display());
            parsed.push((path, SourceFile::parse(&shown, &module, &source)));
        }
        // `#[cfg(test)] mod fake;` makes `fake.rs` test code wherever it lives.
        let test_only: BTreeSet<PathBuf> = parsed
            .iter()
            .flat_map(|(path, file)| test_only_children(path, &file.syntax))
            .collect();
        files.extend(
            parsed
                .into_iter()
                .filter(|(path, _)| {
                    let relative = path.strip_prefix(&root_dir).expect("under its root");
                    !test_only.contains(path) && !is_test_file(relative)
                })
                .map(|(_, file)| file),
        );
    }
    files
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("read a directory entry").path())
        .collect();
    entries.sort();
    let mut files = Vec::new();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `cloud/client.rs` → `["cloud", "client"]`; `cloud/mod.rs` → `["cloud"]`; `lib.rs` → `[]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main")
        || parts.last().is_some_and(|p| p == "mod")
    {
        parts.pop();
    }
    parts
}

fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name == "tests.rs")
        || path.components().any(|part| part.as_os_str() == "tests")
}

/// The files of the out-of-line modules that `file` declares under `#[cfg(test)]`.
fn test_only_children(path: &Path, file: &syn::File) -> Vec<PathBuf> {
    let stem = path.file_stem().expect("a file name");
    let dir = path.parent().expect("a parent folder");
    let own_dir = if ["mod", "lib", "main"].iter().any(|root| stem == *root) {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) if m.content.is_none() && is_cfg_test(&m.attrs) => Some(&m.ident),
            _ => None,
        })
        .flat_map(|name| {
            [
                own_dir.join(format!("{name}.rs")),
                own_dir.join(name.to_string()).join("mod.rs"),
            ]
        })
        .collect()
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| match &attr.meta {
        syn::Meta::List(list) => list.path.is_ident("cfg") && list.tokens.to_string() == "test",
        _ => false,
    })
}

/// The names of the top-level modules: each folder and `.rs` file directly under `src`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("list daemon/src")
        .map(|entry| entry.expect("read a directory entry").path())
        .filter(|path| path.is_dir() || path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            path.file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "lib" && name != "main")
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The module graph
// ---------------------------------------------------------------------------------------------

/// Where a dependency of one top-level module on another is first written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    file: String,
    line: usize,
}

#[derive(Debug, Clone)]
struct Edge {
    /// The first reference, by file then line.
    first: Site,
    references: usize,
}

#[derive(Debug, Default)]
struct ModuleGraph {
    edges: BTreeMap<String, BTreeMap<String, Edge>>,
}

impl ModuleGraph {
    fn build(files: &[SourceFile], top_level: &BTreeSet<String>) -> Self {
        let mut graph = ModuleGraph::default();
        for file in files {
            let Some(own) = file.module.first() else {
                continue; // The crate root may name every module.
            };
            let mut collector = ReferenceCollector {
                module: file.module.clone(),
                found: Vec::new(),
            };
            collector.visit_file(&file.syntax);
            for (target, line) in collector.found {
                if &target == own || !top_level.contains(&target) {
                    continue;
                }
                let site = Site {
                    file: file.path.clone(),
                    line,
                };
                let edge = graph
                    .edges
                    .entry(own.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| Edge {
                        first: site.clone(),
                        references: 0,
                    });
                edge.references += 1;
                edge.first = edge.first.clone().min(site);
            }
        }
        graph
    }

    fn targets(&self, from: &str) -> impl Iterator<Item = &String> {
        self.edges.get(from).into_iter().flat_map(|m| m.keys())
    }

    fn edge(&self, from: &str, to: &str) -> &Edge {
        &self.edges[from][to]
    }

    fn reachable(&self, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(node) = stack.pop() {
            for next in self.targets(&node) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    }

    /// The strongly connected components with more than one module, each with one concrete
    /// cycle through its first module.
    fn cycles(&self) -> Vec<Cycle> {
        let reach: BTreeMap<&String, BTreeSet<String>> =
            self.edges.keys().map(|m| (m, self.reachable(m))).collect();
        let mut placed = BTreeSet::new();
        let mut cycles = Vec::new();
        for (module, reaches) in &reach {
            if placed.contains(*module) || !reaches.contains(*module) {
                continue;
            }
            let members: BTreeSet<String> = reaches
                .iter()
                .filter(|other| reach.get(other).is_some_and(|r| r.contains(*module)))
                .cloned()
                .collect();
            placed.extend(members.iter().cloned());
            let path = self.shortest_cycle(module, &members);
            cycles.push(Cycle { members, path });
        }
        cycles
    }

    /// Breadth-first from `start` back to itself, staying inside `members`.
    fn shortest_cycle(&self, start: &str, members: &BTreeSet<String>) -> Vec<String> {
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = VecDeque::from([start.to_owned()]);
        while let Some(node) = queue.pop_front() {
            for next in self.targets(&node).filter(|n| members.contains(*n)) {
                if next == start {
                    let mut path = vec![start.to_owned(), node.clone()];
                    while let Some(previous) = came_from.get(path.last().expect("non-empty")) {
                        path.push(previous.clone());
                    }
                    path.pop(); // `start`, already first.
                    path[1..].reverse();
                    path.push(start.to_owned());
                    return path;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next.clone(), node.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        unreachable!("{start} is in a strongly connected component")
    }
}

#[derive(Debug)]
struct Cycle {
    members: BTreeSet<String>,
    /// `[a, b, …, a]`.
    path: Vec<String>,
}

/// Collects `(top-level module, line)` for every `crate::<module>` and every `super::…` that
/// climbs to the crate root, in the paths of one file (macro tokens included).
struct ReferenceCollector {
    /// The module being visited: the file's, plus inline `mod x { … }` blocks.
    module: Vec<String>,
    found: Vec<(String, usize)>,
}

impl ReferenceCollector {
    /// `segments` is a path as written, each with its line.
    fn resolve(&mut self, segments: &[(String, usize)]) {
        let Some((first, line)) = segments.first() else {
            return;
        };
        let target = match first.as_str() {
            "crate" => segments.get(1),
            "super" => {
                let climbs = segments.iter().take_while(|(s, _)| s == "super").count();
                match self.module.len().checked_sub(climbs) {
                    // Still inside this file's top-level module: not a dependency.
                    Some(0) => segments.get(climbs),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((name, _)) = target {
            self.found.push((name.clone(), *line));
        }
    }

    /// Paths in macro input are only tokens: `crate`/`super` followed by `::name` pairs.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => self.scan_tokens(group.stream()),
                TokenTree::Ident(ident) if ident == "crate" || ident == "super" => {
                    // `$crate` in a macro_rules body is the macro's crate, written for callers.
                    let after_dollar = i > 0
                        && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '$');
                    let mut segments = vec![(ident.to_string(), ident.span().start().line)];
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(next)),
                    ) = (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3))
                    {
                        if a.as_char() != ':' || a.spacing() != Spacing::Joint || b.as_char() != ':'
                        {
                            break;
                        }
                        segments.push((next.to_string(), next.span().start().line));
                        i += 3;
                    }
                    if !after_dollar {
                        self.resolve(&segments);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// `use a::{b::C, d}` as its leaf paths `[a, b, C]` and `[a, d]`.
    fn use_paths(
        tree: &syn::UseTree,
        prefix: &mut Vec<(String, usize)>,
        out: &mut Vec<Vec<(String, usize)>>,
    ) {
        let named = |ident: &syn::Ident| (ident.to_string(), ident.span().start().line);
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(named(&p.ident));
                Self::use_paths(&p.tree, prefix, out);
                prefix.pop();
            }
            syn::UseTree::Name(n) => out.push([prefix.as_slice(), &[named(&n.ident)]].concat()),
            syn::UseTree::Rename(r) => out.push([prefix.as_slice(), &[named(&r.ident)]].concat()),
            syn::UseTree::Glob(_) => out.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    Self::use_paths(item, prefix, out);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for ReferenceCollector {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        let mut paths = Vec::new();
        Self::use_paths(&item.tree, &mut Vec::new(), &mut paths);
        for path in paths {
            self.resolve(&path);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<(String, usize)> = path
            .segments
            .iter()
            .map(|s| (s.ident.to_string(), s.ident.span().start().line))
            .collect();
        self.resolve(&segments);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan_tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

fn cycle_report(graph: &ModuleGraph, cycles: &[Cycle]) -> String {
    let mut out = format!(
        "{} module cycle(s) between the top-level modules of daemon/src:\n",
        cycles.len()
    );
    for (n, cycle) in cycles.iter().enumerate() {
        let members: Vec<&str> = cycle.members.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "\ncycle {} of {}: {{{}}}",
            n + 1,
            cycles.len(),
            members.join(", ")
        );
        let _ = writeln!(out, "  for example {}:", cycle.path.join(" → "));
        for pair in cycle.path.windows(2) {
            let edge = graph.edge(&pair[0], &pair[1]);
            let _ = writeln!(
                out,
                "    {} → {}  first at {}:{}",
                pair[0], pair[1], edge.first.file, edge.first.line
            );
        }
        // Mutual dependencies are where a large cycle is usually cut first.
        let mutual: Vec<(&String, &String)> = cycle
            .members
            .iter()
            .flat_map(|a| graph.targets(a).map(move |b| (a, b)))
            .filter(|(a, b)| a < b && graph.targets(b).any(|back| back == *a))
            .collect();
        if !mutual.is_empty() {
            let _ = writeln!(out, "  modules that use each other directly:");
        }
        for (a, b) in mutual {
            let (there, back) = (graph.edge(a, b), graph.edge(b, a));
            let _ = writeln!(
                out,
                "    {a} ↔ {b}  ({a} → {b} at {}:{}, {b} → {a} at {}:{})",
                there.first.file, there.first.line, back.first.file, back.first.line
            );
        }
        let _ = writeln!(
            out,
            "  every dependency inside it (first reference, how many):"
        );
        for from in &cycle.members {
            for to in graph.targets(from).filter(|to| cycle.members.contains(*to)) {
                let edge = graph.edge(from, to);
                let _ = writeln!(
                    out,
                    "    {from} → {to}  {}:{} ({} reference{})",
                    edge.first.file,
                    edge.first.line,
                    edge.references,
                    if edge.references == 1 { "" } else { "s" }
                );
            }
        }
    }
    out.push_str(
        "\nA module that depends on a module that depends back on it cannot be read, tested or \
         changed alone. Break each cycle at its thinnest dependency: move the shared type or \
         function down into the lower module (or into a new small module both use), or invert \
         the dependency with a trait the lower module defines and the upper one implements (the \
         upper module passes itself in). Test-only uses belong under #[cfg(test)], which this \
         check skips.\n",
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Function length
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct LongFn {
    file: String,
    line: usize,
    name: String,
    lines: usize,
}

fn long_functions(file: &SourceFile) -> Vec<LongFn> {
    let mut collector = FnCollector {
        file: &file.path,
        impl_type: None,
        found: Vec::new(),
    };
    collector.visit_file(&file.syntax);
    collector.found
}

struct FnCollector<'a> {
    file: &'a str,
    /// `Type` while inside `impl … for Type`, to name methods `Type::method`.
    impl_type: Option<String>,
    found: Vec<LongFn>,
}

impl FnCollector<'_> {
    /// From the line of `fn` to the line of the closing brace, both included; attributes and
    /// doc comments above do not count.
    fn check(&mut self, sig: &syn::Signature, body: &syn::Block) {
        let line = sig.fn_token.span.start().line;
        let lines = body.brace_token.span.close().start().line - line + 1;
        if lines > MAX_FN_LINES {
            let name = match &self.impl_type {
                Some(ty) => format!("{ty}::{}", sig.ident),
                None => sig.ident.to_string(),
            };
            self.found.push(LongFn {
                file: self.file.to_owned(),
                line,
                name,
                lines,
            });
        }
    }
}

impl<'ast> Visit<'ast> for FnCollector<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        let outer = self.impl_type.take();
        self.impl_type = match &*item.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        syn::visit::visit_item_impl(self, item);
        self.impl_type = outer;
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        // A fn nested in a method is not a method.
        let outer = self.impl_type.take();
        self.check(&item.sig, &item.block);
        syn::visit::visit_item_fn(self, item);
        self.impl_type = outer;
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_cfg_test(&item.attrs) {
            self.check(&item.sig, &item.block);
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(body) = &item.default {
            self.check(&item.sig, body);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

fn long_fn_report(long: &[LongFn]) -> String {
    let mut out = format!(
        "{} product function(s) longer than {MAX_FN_LINES} lines:\n",
        long.len()
    );
    for f in long {
        let _ = writeln!(
            out,
            "  {}:{}  {}  {} lines",
            f.file, f.line, f.name, f.lines
        );
    }
    out.push_str(
        "\nSplit each into named steps (a function per thing it does, with a comment saying why \
         the step exists), so each can be read and tested on its own. Test code (#[cfg(test)], \
         tests.rs, tests/) is not checked.\n",
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests
// ---------------------------------------------------------------------------------------------

fn tiny_graph(files: &[(&str, &[&str], &str)]) -> ModuleGraph {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(path, module, source)| SourceFile::parse(path, module, source))
        .collect();
    let top_level = ["a", "b", "c", "d"].map(String::from).into();
    ModuleGraph::build(&files, &top_level)
}

#[test]
fn checker_finds_a_cycle_and_names_its_edges() {
    let graph = tiny_graph(&[
        ("src/a/mod.rs", &["a"], "use crate::b::B;\n"),
        (
            "src/b/x.rs",
            &["b", "x"],
            "\n\nfn f() { crate::c::go(); }\n",
        ),
        ("src/c.rs", &["c"], "use crate::{d, a::A};\n"),
    ]);
    let cycles = graph.cycles();
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0].path, ["a", "b", "c", "a"]);
    assert_eq!(cycles[0].members, ["a", "b", "c"].map(String::from).into());
    assert_eq!(
        graph.edge("b", "c").first,
        Site {
            file: "src/b/x.rs".into(),
            line: 3
        }
    );
    assert!(graph.targets("c").any(|t| t == "d"), "grouped use");
    let report = cycle_report(&graph, &cycles);
    assert!(report.contains("a → b → c → a"), "{report}");
    assert!(report.contains("c → a  src/c.rs:1"), "{report}");
    assert!(
        !report.contains('↔'),
        "no two modules use each other: {report}"
    );
}

#[test]
fn checker_accepts_a_graph_without_cycles() {
    let graph = tiny_graph(&[
        (
            "src/a.rs",
            &["a"],
            "use crate::b::B; fn f() { crate::c::go() }",
        ),
        ("src/b.rs", &["b"], "use crate::c::C;"),
        ("src/c.rs", &["c"], "use crate::d::D;"),
    ]);
    assert!(graph.cycles().is_empty());
}

#[test]
fn comments_doc_links_strings_and_test_code_are_not_references() {
    let graph = tiny_graph(&[(
        "src/a.rs",
        &["a"],
        r#"
        //! See [`crate::b::B`].
        // crate::b::B
        /* crate::b::B */
        /// [`crate::b::B`]
        fn f() -> &'static str { "crate::b::B" }
        #[cfg(test)]
        mod tests { use crate::b::B; }
        #[cfg(test)]
        use crate::b::C;
        macro_rules! m { () => { $crate::b::B } }
        "#,
    )]);
    assert!(graph.targets("a").next().is_none(), "{:?}", graph.edges);
}

#[test]
fn super_chains_and_macro_tokens_are_references() {
    let graph = tiny_graph(&[
        (
            "src/a/x.rs",
            &["a", "x"],
            "use super::super::b::B;\nuse super::Sibling;",
        ),
        (
            "src/c/mod.rs",
            &["c"],
            "mod inner { fn f() { super::super::d::go() } }",
        ),
        (
            "src/d.rs",
            &["d"],
            "fn f() {\n tracing::info!(x = %crate::a::name());\n}",
        ),
    ]);
    assert_eq!(graph.targets("a").collect::<Vec<_>>(), ["b"]);
    assert_eq!(graph.targets("c").collect::<Vec<_>>(), ["d"]);
    assert_eq!(graph.edge("d", "a").first.line, 2);
}

#[test]
fn function_length_counts_from_fn_to_closing_brace() {
    let statements = |n: usize| "        let x = 1;\n".repeat(n);
    let source = format!(
        "/// Doc lines above do not count.\n#[inline]\nfn fits() {{\n{}}}\n\
         struct S;\nimpl S {{\n    fn too_long(&self) -> &'static str {{\n{}        \"}}\"\n    }}\n}}\n\
         #[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{}    }}\n}}\n",
        statements(MAX_FN_LINES - 2),
        statements(MAX_FN_LINES - 2),
        statements(2 * MAX_FN_LINES),
    );
    let file = SourceFile::parse("src/x.rs", &["x"], &source);
    let too_long_line = source
        .lines()
        .position(|l| l.contains("fn too_long"))
        .unwrap()
        + 1;
    assert_eq!(
        long_functions(&file),
        [LongFn {
            file: "src/x.rs".into(),
            line: too_long_line,
            name: "S::too_long".into(),
            lines: MAX_FN_LINES + 1,
        }]
    );
}

#[test]
fn module_paths_follow_the_file_layout() {
    assert_eq!(
        module_path(Path::new("cloud/client.rs")),
        ["cloud", "client"]
    );
    assert_eq!(module_path(Path::new("cloud/mod.rs")), ["cloud"]);
    assert_eq!(module_path(Path::new("logging.rs")), ["logging"]);
    assert!(module_path(Path::new("lib.rs")).is_empty());
    assert!(is_test_file(Path::new("spool/tests.rs")));
    assert!(is_test_file(Path::new("tests/helpers.rs")));
    assert!(!is_test_file(Path::new("spool/testing.rs")));
}
