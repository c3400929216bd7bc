//! Config files and `--set` lines.

use super::{binarize, set};
use crate::common::*;

#[test]
fn config_unknown_misspelt_ill_typed_negative_and_zero_values() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown section", "trainning:\n  epochs: 3\n", "trainning"),
        (
            "misspelt key",
            "binarization:\n  sampel_rate: 4\n",
            "sampel_rate",
        ),
        (
            "ill-typed value",
            "training:\n  epochs: many\n",
            "training.epochs",
        ),
        (
            "negative integer",
            "training:\n  epochs: -5\n",
            "training.epochs",
        ),
        ("negative float", "training:\n  lr: -0.1\n", "training.lr"),
        (
            "zero batch",
            "training:\n  batch_size: 0\n",
            "training.batch_size",
        ),
        ("zero heads", "models:\n  n_head: 0\n", "models.n_head"),
        (
            "zero sample rate",
            "binarization:\n  sample_rate: 0\n",
            "binarization.sample_rate",
        ),
        (
            "negative temperature",
            "loss:\n  teacher_temp: -1\n",
            "loss.teacher_temp",
        ),
        (
            "NaN weight",
            "loss:\n  memax_weight: .nan\n",
            "loss.memax_weight",
        ),
        (
            "zero merge temperature",
            "inference:\n  merge_temperature: 0\n",
            "inference.merge_temperature",
        ),
        (
            "unknown no_interval choice",
            "binarization:\n  no_interval: biggest\n",
            "binarization.no_interval",
        ),
        (
            "a list, not a mapping",
            "- training\n- models\n",
            "expected struct Config",
        ),
    ];
    for (what, yaml, key) in cases {
        let p = d.path().join("c.yaml");
        std::fs::write(&p, yaml).unwrap();
        let g = Untouched::new(&[d.path()]);
        let o = cli(&["config", "check", p.to_str().unwrap()]);
        assert_fails(&o, 2, &["c.yaml", key], what);
        g.check(what);
    }
    // the same through --set: the message names the --set
    for (set, key) in [
        ("training.epochs=-1", "--set training.epochs=-1"),
        ("training.epochz=3", "--set training.epochz=3"),
        ("training.warmup=3", "--set training.warmup=3"),
        ("training.batch_size=0", "training.batch_size"),
        ("epochs=3", "--set epochs=3"),
    ] {
        let o = cli(&["config", "check", "/dev/null", "--set", set]);
        assert_fails(&o, 2, &[key], set);
    }
}

#[test]
fn config_missing_and_non_utf8_files() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("none.yaml");
    let o = cli(&["config", "check", missing.to_str().unwrap()]);
    assert_fails(&o, 2, &["none.yaml"], "missing config");
    let bin = d.path().join("binary.yaml");
    std::fs::write(&bin, b"training:\n  epochs: \xff\xfe\n").unwrap();
    let g = Untouched::new(&[d.path()]);
    let o = cli(&["config", "check", bin.to_str().unwrap()]);
    assert_fails(&o, 2, &["binary.yaml", "UTF-8"], "non-UTF-8 config");
    g.check("non-UTF-8 config");
    // a bad config stops binarize before it touches anything
    let (s, g) = set(&["a"], 2);
    std::fs::write(s.path().join("c.yaml"), "binarization:\n  erode: maybe\n").unwrap();
    let out = s.path().join("out");
    let o = binarize(
        s.path(),
        &out,
        &["--config", s.path().join("c.yaml").to_str().unwrap()],
    );
    assert_fails(
        &o,
        2,
        &["c.yaml", "binarization.erode"],
        "bad config for binarize",
    );
    assert!(!out.exists());
    g.check("bad config for binarize");
}
