//! Fuzz targets of the checkpoint and weights readers: arbitrary bytes, a valid tiny checkpoint
//! with byte edits and edited metadata, and mutated .pth / .safetensors files.

use std::path::PathBuf;
use std::sync::OnceLock;

use anomalyncd::config::Config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{config, edits, input_error, mutate};

/// A valid checkpoint of the tiny model (vit_tiny, 2 base classes + 2 clusters), as bytes.
fn valid_checkpoint() -> &'static (Vec<u8>, usize) {
    static CK: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    CK.get_or_init(|| {
        use anomalyncd::checkpoint::{save, Checkpoint, CheckpointMeta, FORMAT_VERSION};
        let mut cfg = Config::default();
        cfg.models.pretrained_backbone = "vit_tiny".into();
        cfg.models.mask_layers = 2;
        cfg.models.grad_from_block = 2;
        cfg.models.image_size = 32;
        cfg.models.n_head = 2;
        cfg.models.precision = anomalyncd::config::Precision::Fp32;
        let m = anomalyncd::model::Model::new(&cfg, 4, None, tch::Device::Cpu).unwrap();
        let model = m.vs.variables().into_iter().collect();
        let meta = CheckpointMeta {
            format_version: FORMAT_VERSION,
            anomalyncd_version: "fuzz".into(),
            libtorch_version: "fuzz".into(),
            config: cfg.clone(),
            category: "c".into(),
            base_classes: vec!["b1".into(), "b2".into()],
            novel_classes: vec![],
            num_novel_clusters: 2,
            epoch: 1,
            chosen_head: 1,
            backbone: "vit_tiny".into(),
            mask_layers: 2,
            anomaly_scores: None,
            search_range: Some((3.0, 200.0)),
            float_scale: None,
            merge_temperature: 50.0,
            history: vec![],
            num_classes_estimate: None,
            cluster_classes: vec![],
            image_centroids: vec![],
            answer_k: None,
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        save(
            &p,
            &Checkpoint {
                meta,
                model,
                optim: Default::default(),
                answer: Default::default(),
            },
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        // header: 8 length bytes, then the JSON header (with the metadata)
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (bytes, header)
    })
}

fn check_checkpoint(bytes: &[u8]) -> Result<(), TestCaseError> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("checkpoint.safetensors");
    std::fs::write(&p, bytes).unwrap();
    match anomalyncd::checkpoint::load(&p) {
        Ok(_) => {
            // readable: rebuilding the model from it (as test/predict do) works or is an input error
            if let Err(e) = anomalyncd::infer::trained::load(&p, tch::Device::Cpu) {
                input_error(&e, "rebuilding the model")?;
            }
        }
        Err(e) => input_error(&e, "checkpoint")?,
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn checkpoint_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        header_like in any::<bool>(),
    ) {
        let mut b = bytes;
        if header_like && b.len() > 8 {
            // a plausible header length, so the parser goes past its first check
            let n = (b.len() - 8) as u64;
            b[..8].copy_from_slice(&n.to_le_bytes());
            b[8] = b'{';
        }
        check_checkpoint(&b)?;
    }

    /// The valid tiny checkpoint with flips, insertions, deletions and truncations (half of them
    /// in the header, where the metadata JSON sits).
    #[test]
    fn checkpoint_mutated(byte_edits in edits(6)) {
        let (bytes, header) = valid_checkpoint();
        check_checkpoint(&mutate(bytes.clone(), &byte_edits, Some(*header)))?;
    }

    /// Edits inside the metadata JSON that keep it JSON: a number or a name replaced.
    #[test]
    fn checkpoint_edited_metadata(
        field in prop::sample::select(vec![
            "\"num_novel_clusters\":2", "\"chosen_head\":1", "\"n_head\":2", "\"image_size\":32",
            "\"mask_layers\":2", "\"grad_from_block\":2", "\"format_version\":1",
            "\"pretrained_backbone\":\"vit_tiny\"", "\"merge_temperature\":50.0",
            "\"search_range\":[3.0,200.0]", "\"base_classes\":[\"b1\",\"b2\"]",
        ]),
        value in prop::sample::select(vec![
            "0", "-1", "1", "3", "7", "4294967296", "1e308", "null", "\"x\"", "[]", "{}",
            "\"dino_vits16\"", "\"unknown\"", "[1.0]", "[\"b1\"]", "NaN", "2.5",
        ]),
    ) {
        let (bytes, header) = valid_checkpoint();
        let text = String::from_utf8(bytes[8..*header].to_vec()).unwrap();
        // the metadata is a JSON string inside the header JSON: its quotes are escaped there
        let escaped = |s: &str| s.replace('"', "\\\"");
        let (key, _) = field.split_once(':').unwrap();
        let from = escaped(field);
        prop_assume!(text.contains(&from));
        let edited = text.replacen(&from, &escaped(&format!("{key}:{value}")), 1);
        let mut b = (edited.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(edited.as_bytes());
        b.extend_from_slice(&bytes[*header..]);
        check_checkpoint(&b)?;
    }
}

// ------------------------------------------------------------------------------------ weights

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/model")).join(name)
}

proptest! {
    #![proptest_config(config(128))]

    /// Weights files (.pth zip with a pickle, .safetensors) mutated or random: the reader
    /// gives tensors or an input error.
    #[test]
    fn weights_mutated_or_random(
        seed in prop::sample::select(vec![
            "multihead_state_dict.pth", "multihead_teacher_checkpoint.pth", "multihead_legacy.pth", "safetensors", "random",
        ]),
        random in prop::collection::vec(any::<u8>(), 0..200),
        byte_edits in edits(6),
    ) {
        let bytes = match seed {
            "random" => random,
            "safetensors" => mutate(valid_checkpoint().0.clone(), &byte_edits, Some(valid_checkpoint().1)),
            f => mutate(std::fs::read(fixture(f)).unwrap(), &byte_edits, None),
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.bin");
        std::fs::write(&p, &bytes).unwrap();
        if let Err(e) = anomalyncd::model::weights::read_tensors(&p) {
            input_error(&e, "weights")?;
        }
    }
}
