//! Listing image and map folders, under one rule set every stage uses:
//!
//! - entries whose name starts with `.` are skipped (`.DS_Store`, editor files);
//! - a name that is not valid UTF-8 is an error naming the file;
//! - symbolic links are followed (a linked folder is a folder, a linked file a file);
//! - a file is kept when its extension is one of the wanted ones, in any case; other files are
//!   reported as skipped;
//! - two kept files with one stem in one folder (`a.png`, `a.jpg`) are an error;
//! - everything is sorted by name, so listings never depend on the file system's order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// One file of a `<dir>/<type>/<stem>.<ext>` tree (type "" in a flat folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedFile {
    /// The folder directly under the root (a defect type or class).
    pub type_name: String,
    /// File name without its last extension.
    pub stem: String,
    pub path: PathBuf,
}

/// One folder's entries under the module's rules.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    /// Sub-folders by name, sorted.
    pub dirs: Vec<(String, PathBuf)>,
    /// Kept files (type ""), sorted by stem.
    pub files: Vec<TypedFile>,
    /// Files whose extension is not wanted.
    pub skipped: Vec<PathBuf>,
}

/// The entries of `dir` (see the module doc for the rules).
pub fn read_folder(dir: &Path, exts: &[&str]) -> Result<Folder> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::result::Result<_, _>>()
        .at(dir)?;
    entries.sort();
    let mut out = Folder::default();
    let mut by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in entries {
        let name = utf8_name(&path)?;
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            out.dirs.push((name, path));
            continue;
        }
        if !has_extension(&path, exts) {
            out.skipped.push(path);
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if let Some(prev) = by_stem.insert(stem.clone(), path.clone()) {
            return Err(Error::input(
                &path,
                format!(
                    "same stem `{stem}` as {}: two files share the stem; keep one file per stem",
                    prev.display()
                ),
            ));
        }
    }
    out.files = by_stem
        .into_iter()
        .map(|(stem, path)| TypedFile {
            type_name: String::new(),
            stem,
            path,
        })
        .collect();
    Ok(out)
}

/// Lists `root/<type>/<stem>.<ext>` for the given extensions, sorted by (type, stem); files of
/// other extensions are logged. Errors: `root` missing or not a folder, wanted files directly in
/// `root` (no type folders), and two files with one stem in one type folder.
pub fn list_typed_files(root: &Path, exts: &[&str]) -> Result<Vec<TypedFile>> {
    if !root.is_dir() {
        return Err(Error::input(
            root,
            "not a folder (expected <folder>/<type>/<stem>.<ext>)",
        ));
    }
    let top = read_folder(root, exts)?;
    if let Some(loose) = top.files.first() {
        return Err(Error::input(
            &loose.path,
            format!(
                "image file directly in {}; files must sit in one folder per type: {}/<type>/<stem>.<ext>",
                root.display(),
                root.display()
            ),
        ));
    }
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (type_name, dir) in &top.dirs {
        let f = read_folder(dir, exts)?;
        out.extend(f.files.into_iter().map(|file| TypedFile {
            type_name: type_name.clone(),
            ..file
        }));
        skipped.extend(f.skipped);
    }
    warn_skipped(root, exts, &skipped);
    Ok(out)
}

/// `root/<type>/<stem>.<ext>`, or a flat `root/<stem>.<ext>` (type "") when `root` holds wanted
/// files directly and no sub-folders.
pub fn list_files(root: &Path, exts: &[&str]) -> Result<Vec<TypedFile>> {
    let top = match root.is_dir() {
        true => read_folder(root, exts)?,
        false => return list_typed_files(root, exts),
    };
    if !top.dirs.is_empty() || top.files.is_empty() {
        return list_typed_files(root, exts);
    }
    warn_skipped(root, exts, &top.skipped);
    Ok(top.files)
}

fn warn_skipped(root: &Path, exts: &[&str], skipped: &[PathBuf]) {
    if let Some(first) = skipped.first() {
        log::warn!(
            "{}: skipped {} files whose extension is not one of {} (e.g. {})",
            root.display(),
            skipped.len(),
            exts.join(", "),
            first.strip_prefix(root).unwrap_or(first).display()
        );
    }
}

/// Two listings matched by (type, stem).
#[derive(Debug, Clone, Default)]
pub struct StemMatch {
    /// (left, right) with the same type and stem, sorted by (type, stem).
    pub pairs: Vec<(TypedFile, TypedFile)>,
    /// Left files without a right partner.
    pub left_only: Vec<TypedFile>,
    /// Right files without a left partner.
    pub right_only: Vec<TypedFile>,
}

/// Pairs two listings by (type, stem), never by position.
pub fn pair_by_stem(left: Vec<TypedFile>, right: Vec<TypedFile>) -> StemMatch {
    let mut right_map: BTreeMap<(String, String), TypedFile> = right
        .into_iter()
        .map(|f| ((f.type_name.clone(), f.stem.clone()), f))
        .collect();
    let mut p = StemMatch::default();
    for l in left {
        match right_map.remove(&(l.type_name.clone(), l.stem.clone())) {
            Some(r) => p.pairs.push((l, r)),
            None => p.left_only.push(l),
        }
    }
    p.right_only = right_map.into_values().collect();
    p.pairs
        .sort_by(|a, b| (&a.0.type_name, &a.0.stem).cmp(&(&b.0.type_name, &b.0.stem)));
    p
}

fn has_extension(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
        .unwrap_or(false)
}

fn utf8_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::input(path, "file name is not valid UTF-8; rename it"))
}
