//! Source hygiene, checked as a test (the rust-analyzer and TigerBeetle habit): every file under
//! `src/` opens with a `//!` paragraph; `unsafe` appears only where the architecture allows it
//! (the io_uring driver, the mesh, the load generator's syscall wrapper) and every use carries a
//! `// SAFETY:` note; no function outside test code is longer than `FUNCTION_LINES_MAX`; no
//! `dbg!` is left behind; every `TODO`/`FIXME` names the issue it waits for. It reads files only;
//! it never builds or runs anything.

use std::path::{Path, PathBuf};

/// Longest function body (from its `fn` line to its closing brace) outside test code.
const FUNCTION_LINES_MAX: usize = 100;

/// Where `unsafe` may appear (paths relative to the repository root, as prefixes).
const UNSAFE_ALLOWED: [&str; 3] = ["src/runtime/", "src/mesh/", "src/bench/sys.rs"];

/// How far above an `unsafe` use its `// SAFETY:` note may start (a note may run over lines).
const SAFETY_NOTE_LINES_ABOVE: usize = 12;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// Every `.rs` file under `src/`, as (path relative to the root, text).
fn sources() -> Vec<(String, String)> {
    let mut paths = Vec::new();
    rust_files(&root().join("src"), &mut paths);
    assert!(paths.len() > 20, "found only {} source files", paths.len());
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path.strip_prefix(root()).unwrap().to_string_lossy();
            (relative.replace('\\', "/"), text)
        })
        .collect()
}

/// The text with comments and the insides of string and character literals replaced by spaces
/// (newlines kept), so braces and keywords can be found by plain search.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for byte in &mut out[from..to] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < bytes.len() && depth > 0 {
                if bytes[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if bytes[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some(hashes) = raw_string_start(rest) {
            let body = i + hashes.1;
            let mut terminator = vec![b'"'];
            terminator.extend(std::iter::repeat_n(b'#', hashes.0));
            let end = bytes[body..]
                .windows(terminator.len())
                .position(|window| window == terminator)
                .map_or(bytes.len(), |n| body + n);
            blank(&mut out, body, end);
            i = end + terminator.len();
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j.min(bytes.len()));
            i = j + 1;
        } else if rest[0] == b'\'' {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let end = if rest.get(1) == Some(&b'\\') {
                rest.iter().skip(2).position(|&b| b == b'\'').map(|n| n + 2)
            } else {
                let width = std::str::from_utf8(&rest[1..rest.len().min(5)])
                    .ok()
                    .or_else(|| std::str::from_utf8(&rest[1..rest.len().min(2)]).ok())
                    .and_then(|s| s.chars().next())
                    .map_or(1, char::len_utf8);
                (rest.get(1 + width) == Some(&b'\'')).then_some(1 + width)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i + 1, i + end);
                    i += end + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

/// `r"`, `r#"`, `br"`, ...: the number of hashes and the offset of the body, when `rest` starts
/// a raw string literal.
fn raw_string_start(rest: &[u8]) -> Option<(usize, usize)> {
    let after_prefix = if rest.starts_with(b"br") {
        2
    } else if rest.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = rest[after_prefix..]
        .iter()
        .take_while(|&&b| b == b'#')
        .count();
    (rest.get(after_prefix + hashes) == Some(&b'"')).then_some((hashes, after_prefix + hashes + 1))
}

/// The byte offset of the brace that closes the one at `open`.
fn matching_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (offset, &byte) in code[open..].iter().enumerate() {
        match byte {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return open + offset;
                }
            }
            _ => {}
        }
    }
    code.len()
}

fn line_of(code: &[u8], offset: usize) -> usize {
    code[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Offsets of each whole-word occurrence of `word` in `code`.
fn words<'a>(code: &'a [u8], word: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.windows(word.len())
        .enumerate()
        .filter(move |&(at, window)| {
            window == word.as_bytes()
                && (at == 0 || !is_ident(code[at - 1]))
                && code.get(at + word.len()).is_none_or(|&b| !is_ident(b))
        })
        .map(|(at, _)| at)
}

/// Byte ranges of `#[cfg(test)]` modules (test code is exempt from the length rule).
fn test_modules(code: &[u8]) -> Vec<(usize, usize)> {
    let text = std::str::from_utf8(code).unwrap();
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("#[cfg(test)]") {
        let at = from + found;
        let after = &text[at..];
        let item_end = after.find(['{', ';']).map_or(text.len(), |n| at + n);
        if code.get(item_end) == Some(&b'{') && text[at..item_end].contains("mod ") {
            ranges.push((at, matching_brace(code, item_end)));
        }
        from = at + 1;
    }
    ranges
}

/// Functions longer than the limit, as `path:line name (N lines)`.
fn long_functions(path: &str, text: &str) -> Vec<String> {
    if path.ends_with("/tests.rs") {
        return Vec::new();
    }
    let code = code_only(text);
    let code = code.as_bytes();
    let tests = test_modules(code);
    let mut found = Vec::new();
    for at in words(code, "fn") {
        if tests.iter().any(|&(from, to)| (from..to).contains(&at)) {
            continue;
        }
        let Some(open) = code[at..].iter().position(|&b| b == b'{' || b == b';') else {
            continue;
        };
        if code[at + open] == b';' {
            continue; // A declaration without a body (a trait method).
        }
        let close = matching_brace(code, at + open);
        let lines = line_of(code, close) - line_of(code, at) + 1;
        if lines > FUNCTION_LINES_MAX {
            let name: String = code[at + 3..]
                .iter()
                .take_while(|&&b| is_ident(b))
                .map(|&b| b as char)
                .collect();
            found.push(format!(
                "{path}:{} fn {name} ({lines} lines)",
                line_of(code, at)
            ));
        }
    }
    found
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! paragraph: {missing:?}"
    );
}

#[test]
fn unsafe_only_where_allowed_and_always_with_a_safety_note() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let code = code_only(&text);
        let lines: Vec<&str> = text.lines().collect();
        for at in words(code.as_bytes(), "unsafe") {
            let line = line_of(code.as_bytes(), at);
            // `unsafe_op_in_unsafe_fn` and friends are lint names, not uses.
            if code.as_bytes().get(at + 6) == Some(&b'_') {
                continue;
            }
            if !UNSAFE_ALLOWED
                .iter()
                .any(|allowed| path.starts_with(allowed))
            {
                problems.push(format!("{path}:{line}: unsafe outside {UNSAFE_ALLOWED:?}"));
                continue;
            }
            let from = line.saturating_sub(SAFETY_NOTE_LINES_ABOVE + 1);
            let noted = lines[from..line]
                .iter()
                .any(|text| text.contains("SAFETY:") || text.contains("# Safety"));
            if !noted {
                problems.push(format!("{path}:{line}: unsafe without a `// SAFETY:` note"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_function_is_longer_than_the_limit() {
    let found: Vec<String> = sources()
        .iter()
        .flat_map(|(path, text)| long_functions(path, text))
        .collect();
    assert!(
        found.is_empty(),
        "functions over {FUNCTION_LINES_MAX} lines (split them):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_debug_leftovers_and_every_todo_names_its_issue() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let code = code_only(&text);
        for at in words(code.as_bytes(), "dbg") {
            if code.as_bytes().get(at + 3) == Some(&b'!') {
                let line = line_of(code.as_bytes(), at);
                problems.push(format!("{path}:{line}: dbg!"));
            }
        }
        for (number, line) in text.lines().enumerate() {
            let marked = ["TODO", "FIXME", "XXX"]
                .iter()
                .any(|marker| line.contains(marker));
            let names_issue = line.contains('#') && line.chars().any(|c| c.is_ascii_digit())
                || line.to_ascii_lowercase().contains("issue ");
            if marked && !names_issue {
                problems.push(format!("{path}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_themselves_find_what_they_look_for() {
    // The rules above pass on a clean tree; this shows they would fail on a dirty one.
    let long_body = "    let x = 1;\n".repeat(FUNCTION_LINES_MAX);
    let long = format!("//! m\nfn long() {{\n{long_body}}}\nfn short() {{ let s = \"}}\"; }}\n");
    let found = long_functions("src/x.rs", &long);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("fn long"), "{found:?}");
    let in_tests = format!("//! m\n#[cfg(test)]\nmod tests {{\nfn long() {{\n{long_body}}}\n}}\n");
    assert!(long_functions("src/x.rs", &in_tests).is_empty());
    let code = code_only("let a = '{'; let b = \"{\"; // {\nlet c: &'static str = r#\"{\"#;");
    assert!(!code.contains('{'), "{code}");
    assert!(code.contains("'static"), "{code}");
}
