//! Fuzz targets of the config reader: arbitrary text, mutated valid YAML (also as raw bytes in a
//! file) and `--set` lines.

use anomalyncd::config::Config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{config, edits, input_error, mutate};

const REFERENCE_YAML: &str = include_str!("../fixtures/AnomalyNCD.yaml");

/// Valid configs to mutate: the reference file, our full default and a few partial files.
fn yaml_seed() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        REFERENCE_YAML.to_string(),
        Config::default().to_yaml(),
        "training:\n  epochs: 2\n  lr: 0.01\n".to_string(),
        "models:\n  pretrained_backbone: vit_tiny\n  mask_layers: 2\n  grad_from_block: 1\n  image_size: 32\n  backbone_weights: w.safetensors\n".to_string(),
        "binarization: {sample_rate: 2, min_threshold: 3.5}\ninference: {merge_temperature: 50}\n".to_string(),
        // aliases and anchors: must not blow up
        "a: &a [1, 2]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nd: [*c, *c, *c, *c]\n".to_string(),
    ])
}

/// YAML fragments that stress the parser and the typed fields when spliced in.
const TOKENS: &[&str] = &[
    "-1",
    "0",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "18446744073709551616",
    "~",
    "null",
    "[",
    "]",
    "{",
    "}",
    "[1, 2]",
    "{a: 1}",
    "!!binary aGVsbG8=",
    "&x",
    "*x",
    "*y",
    "? ",
    ": ",
    "- ",
    "\t",
    "\n  ",
    "'",
    "\"",
    "\\u0000",
    "#",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "!<tag:x>",
    "true",
    "yes",
    "0x10",
    "0o7",
    "1_000",
    "\u{feff}",
    "é",
    "\u{1F600}",
    "vit_tiny",
    "training:",
    "models:",
];

fn check_config_text(text: &str) -> Result<(), TestCaseError> {
    match Config::from_yaml_str(text, "fuzz.yaml") {
        Ok(cfg) => {
            // an accepted config is valid, names a known backbone and round-trips
            prop_assert!(cfg.validate().is_ok());
            let _ = cfg.arch();
            let again = Config::from_yaml_str(&cfg.to_yaml(), "again").map_err(|e| {
                TestCaseError::fail(format!("round trip of an accepted config failed: {e}"))
            })?;
            prop_assert_eq!(again, cfg);
        }
        Err(e) => input_error(&e, "config text")?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary text.
    #[test]
    fn config_arbitrary_text(text in ".{0,300}") {
        check_config_text(&text)?;
    }

    /// Valid YAML with tokens spliced in at random places and random byte edits; the edited
    /// bytes (perhaps not UTF-8) are also read from a file as `--config` does.
    #[test]
    fn config_mutated_yaml(
        seed in yaml_seed(),
        splices in prop::collection::vec((0.0f64..1.0, prop::sample::select(TOKENS)), 0..6),
        byte_edits in edits(6),
        raw in any::<bool>(),
    ) {
        let mut text = seed;
        for (f, tok) in splices {
            let mut i = (f * text.len() as f64) as usize;
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, tok);
        }
        check_config_text(&text)?;
        if raw {
            let bytes = mutate(text.into_bytes(), &byte_edits, None);
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("c.yaml");
            std::fs::write(&p, &bytes).unwrap();
            match Config::load(Some(&p), &[]) {
                Ok(cfg) => prop_assert!(cfg.validate().is_ok()),
                Err(e) => input_error(&e, "config file")?,
            }
        }
    }

    /// `--set` lines built from real and bad sections, keys and values.
    #[test]
    fn config_overrides(
        sets in prop::collection::vec(
            (
                prop::sample::select(vec!["training", "models", "loss", "binarization", "experiment", "inference", "", "x.y", "training.lr"]),
                prop::sample::select(vec!["epochs", "lr", "batch_size", "pretrained_backbone", "sample_rate", "min_threshold", "backbone_weights", "exp_root", "merge_temperature", "", "nope"]),
                prop_oneof![prop::sample::select(TOKENS).prop_map(str::to_string), ".{0,12}"],
                prop::sample::select(vec!["=", "", "==", " = "]),
            ),
            0..4,
        ),
    ) {
        let lines: Vec<String> = sets.iter().map(|(s, k, v, eq)| format!("{s}.{k}{eq}{v}")).collect();
        match Config::load(None, &lines) {
            Ok(cfg) => prop_assert!(cfg.validate().is_ok()),
            Err(e) => input_error(&e, "--set")?,
        }
    }
}
