//! Fingerprints: what a stage's outputs depend on, as a typed record that serialises to the JSON
//! an output folder's marker holds ([`crate::fsutil::prepare_output_dir`]) and `discover`'s
//! `stage.json` digests.
//!
//! Each stage builds its record from its validated spec by destructuring the whole spec, so a
//! field added to the spec does not compile until it is sorted in (it changes the outputs) or out
//! (with the reason); and each stage's tests change every field of the record and check the
//! fingerprint moves ([`check`]). The records keep the key names the hand-written JSON had, so
//! folders written before keep their fingerprints.

use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

/// A path as fingerprints name their inputs: absolute, symlinks resolved, written as
/// [`crate::fsutil::path_value`] writes it; or, for a run's own outputs, relative to the run
/// folder ([`AbsPath::in_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(PathBuf);

/// How [`AbsPath::in_run`] writes the run folder: `<run>/maps`.
const RUN_FOLDER: &str = "<run>";

impl AbsPath {
    pub fn new(path: &Path) -> Self {
        AbsPath(crate::fsutil::absolute(path))
    }

    /// `path` as `<run>/…` when it lies inside the run folder `run`, else [`AbsPath::new`]: a
    /// run folder that is moved or copied keeps its stages' digests, so `--resume` there
    /// finds them finished; what lies outside it (the user's inputs) keeps its absolute path.
    pub fn in_run(path: &Path, run: &Path) -> Self {
        let abs = crate::fsutil::absolute(path);
        match abs.strip_prefix(crate::fsutil::absolute(run)) {
            Ok(rel) => AbsPath(Path::new(RUN_FOLDER).join(rel)),
            Err(_) => AbsPath(abs),
        }
    }
}

impl Serialize for AbsPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::fsutil::path_value(&self.0).serialize(s)
    }
}

/// A record as JSON.
pub fn to_value<T: Serialize>(record: &T) -> serde_json::Value {
    serde_json::to_value(record).expect("a fingerprint serialises (string keys only)")
}

/// The tests' side of the rule above.
#[cfg(test)]
pub(crate) mod check {
    use std::collections::BTreeSet;

    use serde::Serialize;

    /// A named change of a spec.
    pub type Change<S> = (&'static str, fn(&mut S));

    /// Asserts that each of `changes` moves the fingerprint `fp` of `base()`, that together they
    /// move every key of it but the `constant` ones (a key added to the record needs a change
    /// here), and that none of `same` (settings that do not change the outputs: threads,
    /// progress, where they go) moves it.
    pub fn fingerprint_follows<S, F: Serialize>(
        base: impl Fn() -> S,
        fp: impl Fn(&S) -> F,
        changes: &[Change<S>],
        same: &[Change<S>],
        constant: &[&str],
    ) {
        let before = super::to_value(&fp(&base()));
        assert_eq!(super::to_value(&fp(&base())), before, "stable");
        let keys: BTreeSet<String> = before
            .as_object()
            .expect("a fingerprint is an object")
            .keys()
            .cloned()
            .collect();
        let mut moved = BTreeSet::new();
        for (name, change) in changes {
            let mut s = base();
            change(&mut s);
            let now = super::to_value(&fp(&s));
            assert_ne!(
                now, before,
                "changing {name} left the fingerprint as before"
            );
            let all = now.as_object().unwrap().keys().chain(keys.iter());
            moved.extend(all.filter(|k| now.get(k) != before.get(k)).cloned());
        }
        moved.extend(constant.iter().map(|k| k.to_string()));
        let missed: Vec<&String> = keys.difference(&moved).collect();
        assert!(missed.is_empty(), "no change moves {missed:?}");
        for (name, change) in same {
            let mut s = base();
            change(&mut s);
            assert_eq!(
                super::to_value(&fp(&s)),
                before,
                "{name} moved the fingerprint"
            );
        }
    }
}
