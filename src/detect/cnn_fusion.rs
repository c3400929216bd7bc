//! A CNN beside the ViT (`fuse_cnn` w > 0, with normal images): a second detector on ImageNet
//! EfficientNet-Lite0 (stages 2 and 4 with PatchCore's 3×3 mean: `detect --backbone
//! efficientnet-lite0`'s defaults, its input squashed to a square) is fitted on the same normal
//! images and scores the same test images at the ViT's input side; its maps are mixed into the
//! ViT's.
//!
//! Why two backbones: which one localises depends on the data. On the tire objects the CNN puts
//! the map's maximum in the defect far more often than the ViT (80.5 against 58.5 % of the maps,
//! best IoU 0.462 against 0.238), on MTD's textured tiles far less often (40.5 against 79.9 %).
//! Mixed at w = 0.5, tire gets 82.9 % and 92.8 % of MEBin's crops on a defect (ViT 86.9 %), and
//! MTD keeps the ViT's localisation within its noise (docs/detect.md, "A CNN beside the ViT").
//!
//! Each detector's maps are first put on 0..1 by their own range over the test maps (the scale
//! its 8-bit maps would have), then divided by their mean image maximum, as `fuse_mutual` does
//! with the scores, and mixed: `(1 − w) ViT + w CNN`. The CNN's map is resized to the ViT's.
//!
//! `auto` chooses per data set, since the mix that lifts tire costs MTD 0.15 F1: a few of the
//! fitted normal images ([`held_out_normals`]) are scored as if held out, each against the bank
//! without its own patches, and each detector's image AUROC of these normal against the flagged
//! images tells how well it sees this data's defects. Leaving them out of the banks instead cost
//! tire's maps (F1 0.525 ± 0.032 over seeds 1–3, against 0.561 with every normal in the bank), and
//! with every normal fitted the maps are the ones a fixed choice would give.
//! It ranked the two backbones as the F1 did (tire ViT 0.732, CNN 0.902; MTD ViT 0.972, CNN
//! 0.872). Where the ViT already separates them ([`VIT_SEPARATES`]) the CNN is not even fitted,
//! so its cost falls only on data the ViT sees poorly; it is mixed in at
//! [`CnnMix::AUTO_WEIGHT`] only when it beats the ViT by [`CNN_MARGIN`], as a few dozen held-out
//! images give an AUROC only to a few hundredths.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::eval::auroc;
use super::features::{default_weights_file, FeatureExtractor, Resize, EFFICIENTNET};
use super::reference::{fit_bank, Bank, Inputs, Reference};
use super::scoring::{score, ToScore};
use super::spec::{DetectSpec, DEFAULT_STAGES};
use super::spill::MapSpill;
use crate::config::CnnMix;
use crate::error::{Error, Result};

const CNN_FILE: &str = ".anomalyncd-detect-maps-cnn.f32";
const FUSED_FILE: &str = ".anomalyncd-detect-maps-fused.f32";

/// `auto`: the share of the normal images scored as if held out, at most [`HELD_OUT_MAX`]
/// (their scoring is the cost on data where the ViT stays alone), and none below
/// [`MIN_NORMALS`], too few to tell anything by.
const HELD_OUT_SHARE: f64 = 0.1;
const HELD_OUT_MAX: usize = 40;
const MIN_NORMALS: usize = 10;
/// `auto`: the ViT's held-out image AUROC at or above which the CNN is not tried: nine of ten
/// (normal, flagged) pairs already ordered right leave the CNN little to add.
pub const VIT_SEPARATES: f64 = 0.9;
/// `auto`: how much higher the CNN's held-out AUROC must be for its maps to be mixed in.
pub const CNN_MARGIN: f64 = 0.05;

/// How many of `n` normal images `fuse_cnn: auto` scores as if held out.
pub fn held_out_normals(n: usize) -> usize {
    match n < MIN_NORMALS {
        true => 0,
        false => ((n as f64 * HELD_OUT_SHARE).round() as usize).clamp(1, HELD_OUT_MAX),
    }
}

/// The fitted normal images (of `n`) that `fuse_cnn: auto` scores as if held out: a seeded
/// choice of [`held_out_normals`]`(n)`, in order.
pub(crate) fn held_out_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x0063_6e6e_6175_746f));
    idx.truncate(held_out_normals(n));
    idx.sort_unstable();
    idx
}

/// Each of the fitted images `held` (indices into `fitted`) scored against `bank` without its
/// own patches: its top patch score, as a test image's score is taken.
pub(crate) fn held_out_scores(
    fx: &FeatureExtractor,
    bank: &Bank,
    fitted: &[&Path],
    held: &[usize],
    inp: Inputs,
) -> Result<Vec<f32>> {
    let mut scores = Vec::with_capacity(held.len());
    for chunk in held.chunks(inp.batch_size) {
        let paths: Vec<&Path> = chunk.iter().map(|&i| fitted[i]).collect();
        for (&i, f) in chunk.iter().zip(fx.images(&paths, inp.size, inp.resize)?) {
            let s = bank.without(i, fx.slices()).score(0, &f.patches, fx.metric);
            scores.push(s.max().double_value(&[]) as f32);
        }
        crate::threads::tick();
    }
    Ok(scores)
}

/// The offline EfficientNet-Lite0 weights (`data/weights/`), if present.
pub fn find_cnn_weights() -> Option<std::path::PathBuf> {
    crate::model::find_in_weights_dir(&default_weights_file(EFFICIENTNET))
}

/// What `fuse_cnn: auto` saw and chose (`detect.json`'s `cnn_choice`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnChoice {
    /// Fitted normal images scored as if held out (against the bank without their patches).
    pub held_out: usize,
    /// Image AUROC of the held-out normals against the flagged (non-`good`) test images.
    pub vit_auroc: Option<f64>,
    /// The same for the CNN; None where it was not tried.
    pub cnn_auroc: Option<f64>,
    /// The weight the CNN's maps got (0: the ViT alone).
    pub weight: f64,
    pub why: String,
}

/// What the CNN beside the ViT works on: the run's spec, its images by role, how their
/// features are taken and where the spills go.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub spec: &'a DetectSpec,
    pub inp: Inputs,
    pub out: &'a Path,
    /// The normal images the banks are fitted on.
    pub fitted: &'a [&'a Path],
    pub test: &'a [&'a Path],
    /// `auto`: the fitted images (indices into `fitted`) scored as if held out.
    pub held: &'a [usize],
    /// Per test image: whether its map is written.
    pub written: &'a [bool],
    /// Per test image: not a `good` one.
    pub flagged: &'a [bool],
}

/// The ViT's scored maps, image scores and held-out normals' scores.
pub(crate) struct Scores {
    pub maps: MapSpill,
    pub test: Vec<f32>,
    pub held: Vec<f32>,
}

/// The maps to write after the ViT has scored: its own, or with `spec.fuse_cnn` the CNN's
/// mixed in (a fixed weight, or where `auto` chooses it); with each test image's score and,
/// under `auto`, what it chose.
pub(crate) fn beside_vit(job: Job<'_>, vit: Scores) -> Result<Written> {
    let w = match job.spec.fuse_cnn {
        CnnMix::Auto => return choose(job, vit),
        w => w.weight(),
    };
    if w == 0.0 {
        return Ok((vit.maps, vit.test, None));
    }
    let cnn = cnn_scores(job, &[])?;
    let (m, s) = mix(&vit.maps, &cnn.maps, job.test.len(), w, job.out)?;
    Ok((m, s, None))
}

/// The maps to write, each test image's score, and what `auto` chose.
type Written = (MapSpill, Vec<f32>, Option<CnnChoice>);

/// `auto`: the ViT alone unless the held-out normals favour the CNN (module doc).
fn choose(job: Job<'_>, vit: Scores) -> Result<Written> {
    let held_auroc = |test: &[f32], held: &[f32]| -> Option<f64> {
        let (mut s, mut positive) = (held.to_vec(), vec![false; held.len()]);
        for (&t, &f) in test.iter().zip(job.flagged) {
            if f {
                s.push(t);
                positive.push(true);
            }
        }
        auroc(&s, &positive)
    };
    let vit_auroc = held_auroc(&vit.test, &vit.held);
    let mut choice = CnnChoice {
        held_out: job.held.len(),
        vit_auroc,
        cnn_auroc: None,
        weight: 0.0,
        why: String::new(),
    };
    let alone = |mut c: CnnChoice, why: String, vit: Scores| {
        log::info!("detect.fuse_cnn auto: the ViT alone ({why})");
        c.why = why;
        Ok((vit.maps, vit.test, Some(c)))
    };
    let Some(v) = vit_auroc else {
        let why = match job.held.len() {
            0 => format!("fewer than {MIN_NORMALS} normal images to hold some out"),
            _ => "no flagged image to set against the held-out normals".into(),
        };
        return alone(choice, why, vit);
    };
    if v >= VIT_SEPARATES {
        let why = format!(
            "its held-out image AUROC {v:.3} is at least {VIT_SEPARATES}: the CNN is not tried"
        );
        return alone(choice, why, vit);
    }
    if job.spec.weights.is_some() && job.spec.cnn_weights.is_none() {
        let why = format!(
            "its held-out image AUROC is {v:.3}, but no EfficientNet-Lite0 weights are in data/weights/ to try the CNN: run scripts/prepare_weights.sh"
        );
        log::warn!("detect.fuse_cnn auto: {why}");
        return alone(choice, why, vit);
    }
    let cnn = cnn_scores(job, job.held)?;
    let c = held_auroc(&cnn.test, &cnn.held).unwrap_or(0.0);
    choice.cnn_auroc = Some(c);
    if c < v + CNN_MARGIN {
        let why =
            format!("held-out image AUROC: ViT {v:.3}, CNN {c:.3}, not {CNN_MARGIN} above it");
        return alone(choice, why, vit);
    }
    let w = CnnMix::AUTO_WEIGHT;
    choice.weight = w;
    choice.why = format!("held-out image AUROC: ViT {v:.3}, CNN {c:.3}");
    log::info!(
        "detect.fuse_cnn auto: the CNN's maps mixed in at {w} ({})",
        choice.why
    );
    let (m, s) = mix(&vit.maps, &cnn.maps, job.test.len(), w, job.out)?;
    Ok((m, s, Some(choice)))
}

/// Fits the CNN on `job.fitted` and scores the test images with it, and the fitted images
/// `held` as if held out.
fn cnn_scores(job: Job<'_>, held: &[usize]) -> Result<Scores> {
    let (spec, out) = (job.spec, job.out);
    let fx =
        FeatureExtractor::efficientnet(&DEFAULT_STAGES, spec.cnn_weights.as_deref(), spec.device)?;
    log::info!(
        "the CNN beside the ViT: EfficientNet-Lite0 fitted on the same {} normal images",
        job.fitted.len(),
    );
    // Squashed to the side, as `detect --backbone efficientnet-lite0` takes its input.
    let inp = Inputs {
        resize: Resize::Square,
        ..job.inp
    };
    let bank = fit_bank(&fx, job.fitted, inp, spec.max_patches, spec.coreset)?;
    let reference = Reference::bank(bank.bank.shallow_clone(), fx.slices());
    let to_score = ToScore {
        test: job.test,
        held: &[],
        written: job.written,
        pool: None,
        spill: CNN_FILE,
    };
    let s = score(&fx, &reference, None, to_score, inp, out)?;
    drop(reference);
    Ok(Scores {
        maps: s.maps,
        test: s.scores,
        held: held_out_scores(&fx, &bank, job.fitted, held, inp)?,
    })
}

/// `(1 − w) a / m_a + w b / m_b` per map, `a` and `b` on 0..1 by their spill's range and `m`
/// their mean image maximum; `b` resized to `a`'s size.
fn mix(a: &MapSpill, b: &MapSpill, n: usize, w: f64, out: &Path) -> Result<(MapSpill, Vec<f32>)> {
    let unit = |s: &MapSpill, what: &str| -> Result<(f32, f32)> {
        let span = s.hi - s.lo;
        if span.is_finite() && span > 0.0 {
            Ok((s.lo, span))
        } else {
            Err(Error::runtime(format!(
                "--fuse-cnn: the {what} maps are flat (range {} to {}); nothing to fuse, run without --fuse-cnn",
                s.lo, s.hi
            )))
        }
    };
    let (ua, ub) = (unit(a, "ViT's")?, unit(b, "CNN's")?);
    let read = |i: usize| -> Result<(Vec<f32>, Vec<f32>, u32, u32)> {
        let (va, wa, ha) = a.read(i)?;
        let (vb, wb, hb) = b.read(i)?;
        let vb = match (wb, hb) == (wa, ha) {
            true => vb,
            false => Vec::try_from(
                Tensor::from_slice(&vb)
                    .view([1, 1, hb as i64, wb as i64])
                    .upsample_bilinear2d([ha as i64, wa as i64], false, None, None)
                    .flatten(0, -1),
            )
            .map_err(|e| Error::runtime(format!("resizing a CNN map: {e}")))?,
        };
        let scale = |v: Vec<f32>, (lo, span): (f32, f32)| -> Vec<f32> {
            v.into_iter().map(|x| (x - lo) / span).collect()
        };
        Ok((scale(va, ua), scale(vb, ub), wa, ha))
    };
    let top = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let (mut ma, mut mb) = (0.0, 0.0);
    for i in 0..n {
        let (va, vb, _, _) = read(i)?;
        ma += top(&va) / n as f64;
        mb += top(&vb) / n as f64;
    }
    if !(ma > 0.0 && mb > 0.0) {
        return Err(Error::runtime(
            "--fuse-cnn: a detector's maps are all at their lowest value; nothing to fuse, run without --fuse-cnn",
        ));
    }
    let (ka, kb) = (((1.0 - w) / ma) as f32, (w / mb) as f32);
    let mut fused = MapSpill::create_named(out, FUSED_FILE)?;
    let mut scores = Vec::with_capacity(n);
    for i in 0..n {
        let (va, vb, wd, ht) = read(i)?;
        let v: Vec<f32> = va.iter().zip(&vb).map(|(x, y)| ka * x + kb * y).collect();
        scores.push(top(&v) as f32);
        fused.push(&v, wd, ht)?;
    }
    Ok((fused, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_detector_counts_by_its_own_scale_and_the_cnn_map_is_resized() {
        let d = tempfile::tempdir().unwrap();
        let mut a = MapSpill::create_named(d.path(), "a").unwrap();
        let mut b = MapSpill::create_named(d.path(), "b").unwrap();
        // ViT: 2×1 maps on the range 0..2; CNN: 1×1 maps on the range 10..30.
        a.push(&[0.0, 2.0], 2, 1).unwrap();
        a.push(&[1.0, 1.0], 2, 1).unwrap();
        b.push(&[30.0], 1, 1).unwrap();
        b.push(&[10.0], 1, 1).unwrap();
        let (f, scores) = mix(&a, &b, 2, 0.5, d.path()).unwrap();
        // On 0..1: a = [0, 1], [0.5, 0.5] (mean max 0.75); b = [1], [0] (mean max 0.5), spread
        // over the ViT's 2×1 grid.
        let (v0, w, h) = f.read(0).unwrap();
        assert_eq!((w, h), (2, 1));
        let k = |x: f64, y: f64| (0.5 * x / 0.75 + 0.5 * y / 0.5) as f32;
        for (got, want) in v0.iter().zip([k(0.0, 1.0), k(1.0, 1.0)]) {
            assert!((got - want).abs() < 1e-6, "{v0:?}");
        }
        let (v1, _, _) = f.read(1).unwrap();
        assert!(v1.iter().all(|x| (x - k(0.5, 0.0)).abs() < 1e-6), "{v1:?}");
        assert!((scores[0] - k(1.0, 1.0)).abs() < 1e-6 && (scores[1] - k(0.5, 0.0)).abs() < 1e-6);
        drop(f);
        // Weight 0: the ViT's maps alone (on their scale).
        let (f0, _) = mix(&a, &b, 2, 0.0, d.path()).unwrap();
        assert_eq!(f0.read(0).unwrap().0, [0.0, (1.0 / 0.75) as f32]);
        // A flat detector has nothing to give.
        let mut flat = MapSpill::create_named(d.path(), "c").unwrap();
        flat.push(&[3.0], 1, 1).unwrap();
        flat.push(&[3.0], 1, 1).unwrap();
        let Err(e) = mix(&a, &flat, 2, 0.5, d.path()) else {
            panic!("a flat CNN fused");
        };
        assert!(e.to_string().contains("--fuse-cnn"), "{e}");
    }

    #[test]
    fn auto_holds_out_a_tenth_of_the_normals_up_to_40() {
        assert_eq!(held_out_normals(9), 0);
        assert_eq!(held_out_normals(10), 1);
        assert_eq!(held_out_normals(210), 21);
        assert_eq!(held_out_normals(952), 40);
        let idx = held_out_indices(210, 3);
        assert_eq!(idx.len(), 21);
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]) && idx[20] < 210,
            "{idx:?}"
        );
        assert_eq!(idx, held_out_indices(210, 3), "seeded");
        assert_ne!(idx, held_out_indices(210, 4));
        assert!(held_out_indices(9, 0).is_empty());
    }

    /// `auto` on two test images (one flagged, one `good`) and `held` normals' scores, with the
    /// ViT's scores given; the CNN would need real images, so only the ViT-alone outcomes here.
    fn auto_on(vit_test: [f32; 2], vit_held: &[f32], weights: bool) -> CnnChoice {
        let d = tempfile::tempdir().unwrap();
        let mut spec = DetectSpec::with_defaults(
            Some("/good".into()),
            "/test".into(),
            d.path().into(),
            weights.then(|| "/w/vit.safetensors".into()),
            tch::Device::Cpu,
        );
        spec.fuse_cnn = CnnMix::Auto;
        let mut maps = MapSpill::create_named(d.path(), "vit").unwrap();
        maps.push(&[1.0], 1, 1).unwrap();
        maps.push(&[0.0], 1, 1).unwrap();
        let held: Vec<usize> = (0..vit_held.len()).collect();

        let vit = Scores {
            maps,
            test: vit_test.to_vec(),
            held: vit_held.to_vec(),
        };
        let inp = Inputs {
            size: 32,
            resize: Resize::Square,
            batch_size: 1,
            seed: 0,
            blur: 0.0,
        };
        let job = Job {
            spec: &spec,
            inp,
            out: d.path(),
            fitted: &[],
            test: &[Path::new("/t/a"), Path::new("/t/b")],
            held: &held,
            written: &[true, false],
            flagged: &[true, false],
        };
        let (m, scores, choice) = beside_vit(job, vit).unwrap();
        assert_eq!(scores, vit_test, "the ViT's own scores");
        assert_eq!(m.read(0).unwrap().0, [1.0]);
        choice.unwrap()
    }

    #[test]
    fn auto_keeps_the_vit_alone_where_it_separates_the_held_out_normals_or_cannot_tell() {
        // The flagged image above every held-out normal: AUROC 1, the CNN not tried.
        let c = auto_on([5.0, 0.1], &[1.0, 2.0, 3.0], false);
        assert_eq!((c.held_out, c.vit_auroc, c.cnn_auroc), (3, Some(1.0), None));
        assert_eq!(c.weight, 0.0);
        assert!(c.why.contains("not tried"), "{}", c.why);
        // The `good` test image's score does not count: only flagged against held-out.
        assert_eq!(auto_on([5.0, 9.0], &[1.0], false).vit_auroc, Some(1.0));
        // No normal image held out: nothing to choose by.
        let c = auto_on([5.0, 0.1], &[], false);
        assert_eq!((c.held_out, c.vit_auroc), (0, None));
        assert!(c.why.contains("fewer than 10"), "{}", c.why);
        // The ViT sees poorly, but the CNN's weights are missing: the ViT alone, and why.
        let c = auto_on([2.0, 0.1], &[1.0, 3.0], true);
        assert_eq!((c.vit_auroc, c.cnn_auroc, c.weight), (Some(0.5), None, 0.0));
        assert!(c.why.contains("prepare_weights.sh"), "{}", c.why);
    }
}
