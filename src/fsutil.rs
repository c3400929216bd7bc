//! Safe output handling: atomic writes (temp file + rename), output folders that never sit inside
//! an input, a marker so that the tool only ever replaces what it created itself, and the stage
//! summaries listing what a run wrote, so that a rerun removes only what it no longer writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Name of the marker file the tool writes into every output folder it creates.
pub const MARKER: &str = ".anomalyncd-output.json";

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so readers
/// never see a half-written file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Encodes an image by its extension and writes it atomically.
pub fn save_image_atomic(img: &image::DynamicImage, path: &Path) -> Result<()> {
    let fmt = image::ImageFormat::from_path(path).map_err(|e| {
        Error::usage(format!(
            "{}: unsupported output format: {e}",
            path.display()
        ))
    })?;
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, fmt)
        .map_err(|e| Error::runtime(format!("{}: cannot encode image: {e}", path.display())))?;
    atomic_write(path, buf.get_ref())
}

/// The per-user cache folder for what the tool learns about a machine (e.g. the `precision:
/// auto` decision): `ANOMALYNCD_CACHE_DIR`, else `$XDG_CACHE_HOME/anomalyncd`, else
/// `$HOME/.cache/anomalyncd`; None when none of them is set.
pub fn user_cache_dir() -> Option<PathBuf> {
    cache_dir_from(|k| std::env::var_os(k))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    // Empty or relative values are ignored, as the XDG spec asks for its variables.
    let set = |k: &str| var(k).map(PathBuf::from).filter(|p| p.is_absolute());
    set("ANOMALYNCD_CACHE_DIR")
        .or_else(|| set("XDG_CACHE_HOME").map(|p| p.join("anomalyncd")))
        .or_else(|| set("HOME").map(|p| p.join(".cache").join("anomalyncd")))
}

/// Absolute, symlink-resolved form of a path that may not exist yet (its deepest existing
/// ancestor is canonicalised).
pub fn absolute(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_owned());
                existing = p;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    for n in rest.iter().rev() {
        out.push(n);
    }
    out
}

/// A path as JSON for fingerprints and summaries: its text when it is valid UTF-8 (the usual
/// case, so such files read as before), else its raw bytes as an array of numbers. serde's own
/// `Path` serialisation fails on non-UTF-8 paths, and a lossy string could not be read back.
pub fn path_value(path: &Path) -> serde_json::Value {
    serde_json::to_value(PathRepr::of(path)).expect("a string or a byte list serialises")
}

/// [`path_value`] of the [`absolute`] form of a path: how fingerprints name their inputs.
pub fn absolute_value(path: &Path) -> serde_json::Value {
    path_value(&absolute(path))
}

/// How [`serde_path`] writes a path: text, or raw bytes when it is not UTF-8.
enum PathRepr {
    Text(String),
    Bytes(Vec<u8>),
}

impl PathRepr {
    fn of(path: &Path) -> PathRepr {
        match path.to_str() {
            Some(s) => PathRepr::Text(s.to_string()),
            None => PathRepr::Bytes(path.as_os_str().as_encoded_bytes().to_vec()),
        }
    }

    fn into_path(self) -> PathBuf {
        match self {
            PathRepr::Text(s) => PathBuf::from(s),
            #[cfg(unix)]
            PathRepr::Bytes(b) => {
                use std::os::unix::ffi::OsStringExt;
                PathBuf::from(std::ffi::OsString::from_vec(b))
            }
            #[cfg(not(unix))]
            PathRepr::Bytes(b) => PathBuf::from(String::from_utf8_lossy(&b).into_owned()),
        }
    }
}

impl serde::Serialize for PathRepr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PathRepr::Text(t) => s.serialize_str(t),
            PathRepr::Bytes(b) => s.collect_seq(b),
        }
    }
}

/// A visitor rather than `#[serde(untagged)]`, so that a wrong value in a config file says
/// "expected a path" instead of naming this enum.
impl<'de> serde::Deserialize<'de> for PathRepr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PathRepr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<PathRepr, E> {
                Ok(PathRepr::Text(v.to_string()))
            }
            // A YAML file name of digits alone (`2024`) reads as a number.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<PathRepr, E> {
                Ok(PathRepr::Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<PathRepr, E> {
                Ok(PathRepr::Text(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<PathRepr, A::Error> {
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(PathRepr::Bytes(bytes))
            }
        }
        d.deserialize_any(V)
    }
}

/// `#[serde(with = "crate::fsutil::serde_path")]` for `PathBuf` fields of files the tool writes:
/// non-UTF-8 paths round-trip (see [`path_value`]) instead of failing to serialise.
pub mod serde_path {
    use super::PathRepr;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::path::{Path, PathBuf};

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        PathRepr::of(path).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(PathRepr::deserialize(d)?.into_path())
    }
}

/// [`serde_path`] for `Option<PathBuf>` fields.
pub mod serde_opt_path {
    use super::PathRepr;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::path::PathBuf;

    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        path.as_deref().map(PathRepr::of).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<PathRepr>::deserialize(d)?.map(PathRepr::into_path))
    }
}

/// Refuses an output (`--out`; `what` names it: "output folder", "report") that is inside (or
/// equal to) any of `inputs`, or that contains one: the tool never writes among its inputs.
pub fn check_outside_inputs(out: &Path, inputs: &[(&str, &Path)], what: &str) -> Result<()> {
    let out_abs = absolute(out);
    for (flag, input) in inputs {
        let in_abs = absolute(input);
        if out_abs.starts_with(&in_abs) || in_abs.starts_with(&out_abs) {
            return Err(Error::usage(format!(
                "--out {}: the {what} must not be inside {flag} {} (or contain it); choose one outside the inputs",
                out.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// What an existing output folder holds: None when `out` is missing or empty, else the marker
/// the tool left there (Null when it is not JSON). A file, and a non-empty folder without the
/// marker (not the tool's), are errors.
pub fn output_marker(out: &Path) -> Result<Option<serde_json::Value>> {
    if !out.exists() {
        return Ok(None);
    }
    if !out.is_dir() {
        return Err(Error::usage(format!(
            "--out {}: exists and is not a folder",
            out.display()
        )));
    }
    if std::fs::read_dir(out).at(out)?.next().is_none() {
        return Ok(None);
    }
    let Ok(text) = std::fs::read_to_string(out.join(MARKER)) else {
        return Err(not_ours(out));
    };
    Ok(Some(serde_json::from_str(&text).unwrap_or_default()))
}

/// The error for a non-empty output folder the tool did not create.
pub fn not_ours(out: &Path) -> Error {
    Error::usage(format!(
        "--out {}: the folder is not empty and was not created by anomalyncd; choose a new or empty folder",
        out.display()
    ))
}

/// The error for an output folder holding another run of the tool (`command` from its marker).
pub fn different_run(out: &Path, command: Option<&str>) -> Error {
    Error::usage(format!(
        "--out {}: holds a different anomalyncd run ({}); pass --overwrite to replace its files, or choose another folder",
        out.display(),
        command.unwrap_or("unknown")
    ))
}

/// Prepares an output folder for `command`:
/// - refuses one that is inside (or equal to) any input folder, or that contains an input;
/// - creates it when missing and writes the marker;
/// - accepts an existing empty folder, or one the tool made for the same `fingerprint`
///   (same command and inputs);
/// - refuses a non-empty folder the tool did not make, and one holding a different run unless
///   `overwrite` is set. Nothing is deleted here.
pub fn prepare_output_dir(
    out: &Path,
    inputs: &[(&str, &Path)],
    command: &str,
    fingerprint: &serde_json::Value,
    overwrite: bool,
) -> Result<()> {
    check_outside_inputs(out, inputs, "output folder")?;
    let want = serde_json::json!({ "command": command, "inputs": fingerprint });
    if let Some(have) = output_marker(out)? {
        if have != want && !overwrite {
            return Err(different_run(
                out,
                have.get("command").and_then(|c| c.as_str()),
            ));
        }
    }
    std::fs::create_dir_all(out).at(out)?;
    let body = serde_json::to_vec_pretty(&want).expect("json value serialises");
    atomic_write(&out.join(MARKER), &body)
}

/// A stage's summary: a JSON file in its output folder that lists every file the stage wrote
/// there, so that a rerun removes what it no longer writes (see [`StageOutput`]).
pub trait StageSummary: serde::Serialize + serde::de::DeserializeOwned {
    /// The summary's file name in the output folder.
    const FILE: &'static str;
    /// Every file the run wrote, relative to the output folder (the summary included).
    fn written_files(&self) -> Vec<PathBuf>;
}

/// A stage's output folder between two runs: [`StageOutput::open`] reads what the earlier run
/// wrote (its summary's file list) before anything is written, [`StageOutput::finish`] writes the
/// new summary and removes the files the earlier run wrote and this one did not. Nothing else is
/// ever removed: not a file the summary does not list, nor one outside the folder.
pub struct StageOutput<S> {
    out: PathBuf,
    previous: Vec<PathBuf>,
    summary: std::marker::PhantomData<S>,
}

impl<S: StageSummary> StageOutput<S> {
    /// The files the summary in `out` lists (none when there is no readable summary).
    pub fn open(out: &Path) -> Self {
        let previous = std::fs::read_to_string(out.join(S::FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<S>(&t).ok())
            .map(|s| s.written_files())
            .unwrap_or_default();
        Self {
            out: out.to_path_buf(),
            previous,
            summary: std::marker::PhantomData,
        }
    }

    /// Writes `summary` (pretty JSON, atomically), then removes the files of the earlier run
    /// that `summary` does not list.
    pub fn finish(self, summary: &S) -> Result<()> {
        let body = serde_json::to_vec_pretty(summary).expect("summary serialises");
        atomic_write(&self.out.join(S::FILE), &body)?;
        let keep: std::collections::HashSet<PathBuf> =
            summary.written_files().into_iter().collect();
        let mut removed = 0;
        for rel in &self.previous {
            let inside = !rel.is_absolute()
                && !rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if inside && !keep.contains(rel) && std::fs::remove_file(self.out.join(rel)).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            log::info!(
                "removed {removed} files of the previous run that this run no longer produces"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_folder_follows_the_variables_in_order() {
        let env = |vars: &[(&str, &str)]| {
            cache_dir_from(move |k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            })
        };
        let all: [(&str, &str); 3] = [
            ("ANOMALYNCD_CACHE_DIR", "/a"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(env(&all), Some(PathBuf::from("/a")));
        assert_eq!(env(&all[1..]), Some(PathBuf::from("/x/anomalyncd")));
        assert_eq!(env(&all[2..]), Some(PathBuf::from("/h/.cache/anomalyncd")));
        assert_eq!(
            env(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")]),
            Some(PathBuf::from("/h/.cache/anomalyncd"))
        );
        assert_eq!(env(&[("ANOMALYNCD_CACHE_DIR", "rel")]), None);
        assert_eq!(env(&[]), None);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp files left");
    }

    #[test]
    fn output_dir_rules() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("maps");
        std::fs::create_dir_all(&input).unwrap();
        let fp = serde_json::json!({"maps": "x"});
        let inside = input.join("out");
        let e = prepare_output_dir(
            &inside,
            &[("--anomaly-maps", &input)],
            "binarize",
            &fp,
            false,
        );
        assert_eq!(e.unwrap_err().exit_code(), 2);

        let out = d.path().join("out");
        prepare_output_dir(&out, &[("--anomaly-maps", &input)], "binarize", &fp, false).unwrap();
        std::fs::write(out.join("x.png"), b"x").unwrap();
        // same run again: fine
        prepare_output_dir(&out, &[("--anomaly-maps", &input)], "binarize", &fp, false).unwrap();
        // different run: refused unless overwrite
        let fp2 = serde_json::json!({"maps": "y"});
        assert!(prepare_output_dir(&out, &[], "binarize", &fp2, false).is_err());
        prepare_output_dir(&out, &[], "binarize", &fp2, true).unwrap();

        let foreign = d.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("mine.txt"), b"user").unwrap();
        let e = prepare_output_dir(&foreign, &[], "binarize", &fp, true).unwrap_err();
        assert!(e.to_string().contains("not created by anomalyncd"));
        assert_eq!(std::fs::read(foreign.join("mine.txt")).unwrap(), b"user");
    }

    #[test]
    fn outputs_must_not_be_inside_an_input_or_contain_one() {
        let d = tempfile::tempdir().unwrap();
        let maps = d.path().join("maps");
        std::fs::create_dir_all(&maps).unwrap();
        let inputs = [("--anomaly-maps", maps.as_path())];
        let check = |out: &Path| check_outside_inputs(out, &inputs, "report");
        for bad in [maps.join("r.json"), maps.join("new/r.json"), maps.clone()] {
            let e = check(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(
                e.to_string()
                    .contains("the report must not be inside --anomaly-maps"),
                "{e}"
            );
        }
        let e = check(d.path()).unwrap_err();
        assert!(e.to_string().contains("(or contain it)"), "{e}");
        // A sibling, even one whose name starts with the input's, is outside.
        check(&d.path().join("maps2/r.json")).unwrap();
        check(&d.path().join("out")).unwrap();
        // A symlink into the input is inside.
        #[cfg(unix)]
        {
            let link = d.path().join("link");
            std::os::unix::fs::symlink(&maps, &link).unwrap();
            assert!(check(&link.join("r.json")).is_err());
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Summary {
        files: Vec<PathBuf>,
    }

    impl StageSummary for Summary {
        const FILE: &'static str = "summary.json";
        fn written_files(&self) -> Vec<PathBuf> {
            let mut f = self.files.clone();
            f.push(Self::FILE.into());
            f
        }
    }

    #[test]
    fn a_rerun_removes_only_what_the_previous_run_wrote_and_no_longer_writes() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let write = |rel: &str| {
            let p = out.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, rel).unwrap();
        };
        let summary = |files: &[&str]| Summary {
            files: files.iter().map(PathBuf::from).collect(),
        };
        // No earlier summary: nothing to remove.
        let first = StageOutput::<Summary>::open(&out);
        for f in ["a/1.png", "a/2.png", "b/1.png"] {
            write(f);
        }
        write("user.txt");
        first
            .finish(&summary(&["a/1.png", "a/2.png", "b/1.png"]))
            .unwrap();
        let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
        assert!(text.contains("a/2.png"), "{text}");
        // The earlier run's list may hold paths the tool never removes: outside the folder.
        std::fs::write(d.path().join("outside.txt"), b"keep").unwrap();
        let mut listed: Summary = serde_json::from_str(&text).unwrap();
        listed.files.push("../outside.txt".into());
        listed.files.push(d.path().join("outside.txt"));
        std::fs::write(
            out.join("summary.json"),
            serde_json::to_vec(&listed).unwrap(),
        )
        .unwrap();

        let second = StageOutput::<Summary>::open(&out);
        write("a/1.png");
        write("c/1.png");
        second.finish(&summary(&["a/1.png", "c/1.png"])).unwrap();
        for (f, kept) in [
            ("a/1.png", true),
            ("c/1.png", true),
            ("summary.json", true),
            ("user.txt", true),
            ("a/2.png", false),
            ("b/1.png", false),
        ] {
            assert_eq!(out.join(f).exists(), kept, "{f}");
        }
        assert!(d.path().join("outside.txt").exists());

        // An unreadable summary lists nothing: nothing is removed.
        std::fs::write(out.join("summary.json"), b"not json").unwrap();
        StageOutput::<Summary>::open(&out)
            .finish(&summary(&[]))
            .unwrap();
        assert!(out.join("a/1.png").exists() && out.join("c/1.png").exists());
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_round_trip_through_json() {
        use std::os::unix::ffi::OsStrExt;
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct R {
            #[serde(with = "serde_path")]
            p: PathBuf,
            #[serde(with = "serde_opt_path")]
            q: Option<PathBuf>,
        }
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/in\xff dir/a.png"));
        for r in [
            R {
                p: odd.clone(),
                q: Some(odd.clone()),
            },
            R {
                p: "/tmp/plain é.png".into(),
                q: None,
            },
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<R>(&text).unwrap(), r);
        }
        assert_eq!(
            path_value(Path::new("a/b.png")),
            serde_json::json!("a/b.png")
        );
        assert!(path_value(&odd).is_array());
    }
}
