//! The house's rules, checked over the source (docs/architecture.md §7): arrows between
//! the modules of `src/` point one way, the ground floor imports nothing, and `anyhow`
//! stays at the edge of the binary. Reads `use crate::…` and `crate::…` paths outside
//! comments and test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules its non-test code names, with the files.
type Imports = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without its comments and without its test module(s).
fn production_code(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        // A `#[cfg(test)]` item: skip it, to its closing brace or semicolon.
        if trimmed.starts_with("#[cfg(test)]") {
            let mut depth = 0i32;
            let mut opened = false;
            for item in lines.by_ref() {
                let item = item.split("//").next().unwrap_or("");
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                opened |= item.contains('{');
                if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line.split("//").next().unwrap_or(""));
        code.push('\n');
    }
    code
}

/// Files that exist only for tests: declared `#[cfg(test)] mod name;` by their parent.
fn test_only_files(sources: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    for (file, text) in sources {
        // The folder the parent's submodules live in.
        let dir = match file.rsplit_once('/') {
            Some((dir, "mod.rs")) => format!("{dir}/"),
            Some((_, _)) => format!("{}/", file.trim_end_matches(".rs")),
            None if file == "lib.rs" || file == "main.rs" => String::new(),
            None => format!("{}/", file.trim_end_matches(".rs")),
        };
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "#[cfg(test)]"
                && let Some(next) = lines.next()
                && let Some(name) = next.trim().strip_prefix("mod ")
                && let Some(name) = name.strip_suffix(';')
            {
                found.push(format!("{dir}{name}"));
            }
        }
    }
    found
}

fn imports() -> (Imports, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut imports = Imports::new();
    let sources: BTreeMap<String, String> = files
        .iter()
        .map(|file| {
            let relative = file
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .to_string();
            (relative, std::fs::read_to_string(file).unwrap())
        })
        .collect();
    let test_only = test_only_files(&sources);
    for (relative, text) in &sources {
        let relative = relative.clone();
        if test_only
            .iter()
            .any(|t| relative == format!("{t}.rs") || relative.starts_with(&format!("{t}/")))
        {
            continue;
        }
        let module = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" || module == "commands" {
            continue;
        }
        let code = production_code(text);
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                imports
                    .entry(module.clone())
                    .or_default()
                    .entry(name)
                    .or_default()
                    .insert(relative.clone());
            }
        }
        // `use crate::{a, b}` groups.
        for group in code.split("use crate::{").skip(1) {
            let inner = group.split('}').next().unwrap_or("");
            for name in inner.split(',') {
                let name = name.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() && name != module && name != "self" {
                    imports
                        .entry(module.clone())
                        .or_default()
                        .entry(name.to_string())
                        .or_default()
                        .insert(relative.clone());
                }
            }
        }
    }
    (imports, sources)
}

/// The cycles of the graph: its strongly connected components of more than one module.
fn cycles(imports: &Imports) -> Vec<Vec<String>> {
    struct Search<'a> {
        imports: &'a Imports,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, module: &'a str) {
            let n = self.index.len();
            self.index.insert(module, n);
            self.low.insert(module, n);
            self.stack.push(module);
            for next in self.imports.get(module).into_iter().flat_map(|m| m.keys()) {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[module].min(self.low[next.as_str()]);
                    self.low.insert(module, low);
                } else if self.stack.contains(&next.as_str()) {
                    let low = self.low[module].min(self.index[next.as_str()]);
                    self.low.insert(module, low);
                }
            }
            if self.low[module] == self.index[module] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    component.push(top.to_string());
                    if top == module {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut search = Search {
        imports,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for module in imports.keys() {
        if !search.index.contains_key(module.as_str()) {
            search.visit(module);
        }
    }
    search.found
}

#[test]
fn no_import_cycle_between_modules() {
    let (imports, _) = imports();
    let found = cycles(&imports);
    let explain: Vec<String> = found
        .iter()
        .flat_map(|cycle| {
            let imports = &imports;
            cycle.iter().flat_map(move |from| {
                cycle.iter().filter_map(move |to| {
                    let files = imports.get(from)?.get(to)?;
                    Some(format!("{from} → {to} ({files:?})"))
                })
            })
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles {found:?}:\n{}",
        explain.join("\n")
    );
}

#[test]
fn the_ground_floor_imports_nothing_of_the_crate() {
    let (imports, _) = imports();
    for ground in ["domain", "observe"] {
        assert_eq!(
            imports.get(ground),
            None,
            "{ground} must import no other module of the crate"
        );
    }
}

#[test]
fn anyhow_only_in_the_binary() {
    let (_, sources) = imports();
    let offenders: Vec<&String> = sources
        .iter()
        .filter(|(file, text)| {
            !(file.as_str() == "main.rs" || file.starts_with("commands/"))
                && production_code(text).contains("anyhow")
        })
        .map(|(file, _)| file)
        .collect();
    assert!(
        offenders.is_empty(),
        "anyhow belongs to main.rs and src/commands/ (typed errors in the library): {offenders:?}"
    );
}

/// `domain` knows no wire format: the API's request bodies and schemas are
/// `api/requests.rs`'s and `api/schemas.rs`'s (issue #22).
#[test]
fn the_domain_knows_no_wire_format() {
    let (_, sources) = imports();
    let offenders: Vec<&String> = sources
        .iter()
        .filter(|(file, text)| {
            file.starts_with("domain/") && {
                let code = production_code(text);
                code.contains("utoipa") || code.contains("deny_unknown_fields")
            }
        })
        .map(|(file, _)| file)
        .collect();
    assert!(
        offenders.is_empty(),
        "OpenAPI schemas and request shapes belong to src/api/: {offenders:?}"
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    // The search itself, on a made-up graph: a → b → c → a, and d → a.
    let mut imports = Imports::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        imports
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert(format!("{from}.rs"));
    }
    assert_eq!(cycles(&imports), vec![vec!["a", "b", "c"]]);
    let code = production_code(
        "use crate::x;\n// crate::y\n#[cfg(test)]\nmod tests {\n use crate::z;\n}\n",
    );
    assert!(code.contains("crate::x") && !code.contains("crate::y") && !code.contains("crate::z"));
}
