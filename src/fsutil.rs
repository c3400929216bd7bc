//! Safe output handling: atomic writes (temp file + rename), output folders that never sit inside
//! an input, and a marker so that the tool only ever replaces what it created itself.

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
    let out_abs = absolute(out);
    for (flag, input) in inputs {
        let in_abs = absolute(input);
        if out_abs.starts_with(&in_abs) || in_abs.starts_with(&out_abs) {
            return Err(Error::usage(format!(
                "--out {}: the output folder must not be inside {flag} {} (or contain it); choose a folder outside the inputs",
                out.display(),
                input.display()
            )));
        }
    }
    let marker = out.join(MARKER);
    let want = serde_json::json!({ "command": command, "inputs": fingerprint });
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::usage(format!(
                "--out {}: exists and is not a folder",
                out.display()
            )));
        }
        let empty = std::fs::read_dir(out).at(out)?.next().is_none();
        if !empty {
            let Ok(text) = std::fs::read_to_string(&marker) else {
                return Err(Error::usage(format!(
                    "--out {}: the folder is not empty and was not created by anomalyncd; choose a new or empty folder",
                    out.display()
                )));
            };
            let have: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if have != want && !overwrite {
                return Err(Error::usage(format!(
                    "--out {}: holds a different anomalyncd run ({}); pass --overwrite to replace its files, or choose another folder",
                    out.display(),
                    have.get("command").and_then(|c| c.as_str()).unwrap_or("unknown")
                )));
            }
        }
    }
    std::fs::create_dir_all(out).at(out)?;
    let body = serde_json::to_vec_pretty(&want).expect("json value serialises");
    atomic_write(&marker, &body)
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
