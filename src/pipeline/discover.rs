//! `discover`: from a folder of defective images to defect types in one run folder, chaining
//! the stages the separate commands run:
//!
//! 1. `base/`: the labelled base set cropped by its masks (`--base`, or the built-in synthetic
//!    one generated into `synth_base/`; a `prepare-base` output is used as it is; none with
//!    `no_base`, which trains without the supervised base terms);
//! 2. `maps/`: the built-in detector's anomaly maps, fitted on `--normal` (else on
//!    `--images/good`) or zero-shot; skipped when `--anomaly-maps` are given;
//! 3. `binarize/`: MEBin masks and anomaly-centred crops;
//! 4. `train/`: K (estimated by default), training, evaluation, `predictions.csv`,
//!    `report.html`, the checkpoint.
//!
//! [`prepare`] lists and checks every input first (exit code 2 before any heavy work) and
//! builds the [`Plan`]; `--dry-run` prints it. Each finished stage leaves a `stage.json` with
//! the fingerprint of its inputs ([`record`]); with `resume` a stage finished with the same
//! fingerprint is skipped and training continues from its checkpoint.

mod costs;
mod defaults;
mod plan;
mod record;
mod scan;
mod stages;
mod summary;

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};
use tch::Device;

pub use defaults::{config, DEFAULT_SETTINGS, MASK_GRID};
pub use plan::{
    duration_text, plan, BaseInput, Digests, Inputs, Plan, Resumed, Stage, StageKind, NORMAL_TYPE,
};
pub use record::{StageRecord, STAGE_FILE};
pub use scan::{pairing, scan};
pub use summary::{
    BaseCounts, BinarizeCounts, DiscoverSummary, Found, MapsCounts, RunTiming, StageRun,
    StageSummary, StageTiming,
};

use stages::{run_stage, Ran};

use crate::cluster::NumClasses;
use crate::config::Config;
use crate::detect::features::{default_weights_file, DINOV2};
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::{
    absolute, atomic_write, different_run, not_ours, output_marker, prepare_output_dir,
};

/// The built-in detector's weights.
#[derive(Debug, Clone, PartialEq)]
pub enum DetectorWeights {
    /// `data/weights/dinov2_vits14.safetensors` (prepared by `scripts/setup.sh`).
    Default,
    File(PathBuf),
    /// Random weights: meaningless maps, for tests only.
    Random,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectorSettings {
    pub weights: DetectorWeights,
    /// The backbone input's longer side (`detect --image-size`), overriding the config's
    /// `detect.image_size` (None: the config's, by default `auto`).
    pub image_size: Option<u32>,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        Self {
            weights: DetectorWeights::Default,
            image_size: None,
        }
    }
}

/// A validated `discover` request.
#[derive(Debug, Clone)]
pub struct DiscoverSpec {
    pub config: Config,
    /// Defective images: `<type>/` folders (metrics) or a flat folder; `good/` holds normals.
    pub images: PathBuf,
    /// The run folder.
    pub out: PathBuf,
    pub normal: Option<PathBuf>,
    pub anomaly_maps: Option<PathBuf>,
    pub base: Option<PathBuf>,
    /// Train without a base set (`--no-base`; `base` is then `None`).
    pub no_base: bool,
    pub num_classes: NumClasses,
    pub max_classes: usize,
    pub detector: DetectorSettings,
    pub resume: bool,
    pub overwrite: bool,
    /// Stop cleanly after this stage (tests of `resume`).
    pub stop_after_stage: Option<String>,
    /// Stop training after this many epochs (tests of `resume`).
    pub stop_after_epochs: Option<usize>,
    /// Where the frozen-prefix token cache is kept (`--cache-dir`, `--no-token-cache`).
    pub token_cache: crate::pipeline::TokenCache,
    pub device: Device,
}

// Returned once per run: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum DiscoverOutcome {
    /// Stopped on request after `stage` (`detail`: where); `resume` continues.
    Stopped { stage: String, detail: String },
    Finished {
        found: Found,
        report: PathBuf,
        predictions: PathBuf,
        stages: Vec<StageRun>,
        timing: RunTiming,
    },
}

/// A stage of the plan with what is known of it before the run.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub stage: Stage,
    /// Its fingerprint as `stage.json` records it ([`record::StageFingerprint`]).
    pub fingerprint: Value,
    /// The fingerprint's digest, which `--resume` compares.
    pub digest: String,
    /// With `resume`: the stage finished earlier with the same fingerprint (it is skipped).
    pub earlier: Option<Earlier>,
    /// With `resume`, the train stage only: it finished earlier with the same fingerprint but
    /// other `inference` settings, so its checkpoint is evaluated again, not retrained. Holds
    /// what it reported then.
    pub evaluated_earlier: Option<StageSummary>,
}

impl PlannedStage {
    /// What this run does with it.
    pub fn resumed(&self) -> Resumed {
        match (&self.earlier, &self.evaluated_earlier) {
            (Some(_), _) => Resumed::Skipped,
            (None, Some(_)) => Resumed::EvaluatedAgain,
            (None, None) => Resumed::Runs,
        }
    }

    /// Rough seconds it will take ([`Stage::estimate_as`]).
    pub fn estimate_s(&self) -> f64 {
        self.stage.estimate_as(self.resumed())
    }
}

/// A stage finished by an earlier run.
#[derive(Debug, Clone, PartialEq)]
pub struct Earlier {
    pub summary: StageSummary,
    /// Its wall time then.
    pub seconds: f64,
}

/// The checked inputs, the plan and what an earlier run already finished.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub inputs: Inputs,
    pub plan: Plan,
    /// The plan's stages, in order.
    pub stages: Vec<PlannedStage>,
    model_weights: Option<PathBuf>,
    detector_weights: Option<PathBuf>,
}

impl Prepared {
    /// The plan as `--dry-run` prints it.
    pub fn describe(&self, spec: &DiscoverSpec) -> String {
        let resumed: Vec<Resumed> = self.stages.iter().map(PlannedStage::resumed).collect();
        self.plan.describe(&spec.out, &self.inputs, &resumed)
    }
}

/// The summary at the top of the run folder.
pub const SUMMARY_FILE: &str = "discover.json";

/// Lists and checks the inputs, the weights and the run folder, and plans the stages; writes
/// nothing.
pub fn prepare(spec: &DiscoverSpec) -> Result<Prepared> {
    if spec.max_classes < 2 {
        return Err(Error::usage("--max-classes must be at least 2"));
    }
    let inputs = scan(spec)?;
    let plan = plan(spec, &inputs);
    if let Some(s) = &spec.stop_after_stage {
        if plan.stage(s).is_none() {
            return Err(Error::usage(format!(
                "--stop-after-stage {s}: not a stage of this run ({})",
                plan.names().join(", ")
            )));
        }
    }
    let model_weights = crate::model::resolve_backbone_weights(&spec.config.models, None)?;
    let detector_weights = match (&spec.detector.weights, plan.stage("maps").is_some()) {
        (_, false) | (DetectorWeights::Random, _) => None,
        (DetectorWeights::File(p), _) if p.is_file() => Some(p.clone()),
        (DetectorWeights::File(p), _) => {
            return Err(Error::input(p, "detector weights: file not found"))
        }
        (DetectorWeights::Default, _) => {
            let file = default_weights_file(DINOV2);
            Some(crate::model::find_in_weights_dir(&file).ok_or_else(|| {
                Error::usage(format!(
                    "the built-in detector needs {}/{file}: run scripts/prepare_weights.sh \
                     (scripts/setup.sh does), or give --anomaly-maps",
                    crate::model::DEFAULT_WEIGHTS_DIR
                ))
            })?)
        }
    };
    let model_name = model_weights
        .as_ref()
        .map_or("random".into(), |p| absolute(p).display().to_string());
    let fingerprints = record::fingerprints(
        spec,
        &inputs,
        &plan,
        &model_name,
        detector_weights.as_deref(),
    );
    check_run_folder(spec)?;
    let stages = plan
        .stages
        .iter()
        .zip(fingerprints)
        .map(|(st, fp)| {
            let (fingerprint, digest) = fp.stamp();
            let earlier = match spec.resume {
                true => finished_earlier(st, &digest),
                false => None,
            };
            // A train stage whose answer was made with other `inference` settings is evaluated
            // again from its checkpoint, or trained anew when the checkpoint is gone.
            let (earlier, evaluated_earlier) = match earlier {
                Some(e) if evaluated_otherwise(&e.summary, &spec.config) => {
                    match st.dir.join(crate::checkpoint::CHECKPOINT_FILE).is_file() {
                        true => (None, Some(e.summary)),
                        false => (None, None),
                    }
                }
                e => (e, None),
            };
            PlannedStage {
                stage: st.clone(),
                fingerprint,
                digest,
                earlier,
                evaluated_earlier,
            }
        })
        .collect();
    Ok(Prepared {
        inputs,
        plan,
        stages,
        model_weights,
        detector_weights,
    })
}

/// Whether a finished train stage's answer was made with other `inference` settings than
/// `config`'s (its fingerprint leaves them out: see [`record::training_config`]).
fn evaluated_otherwise(summary: &StageSummary, config: &crate::config::Config) -> bool {
    match summary {
        StageSummary::Train(f) => f.inference.as_ref() != Some(&config.inference),
        _ => false,
    }
}

/// What `st` reported when an earlier run finished it with the same fingerprint; None when it
/// did not, or when its record does not read (logged: the stage then runs again).
fn finished_earlier(st: &Stage, digest: &str) -> Option<Earlier> {
    let r = record::read(&st.dir)?;
    if !r.finished || r.digest != digest {
        return None;
    }
    match StageSummary::parse(&st.kind, r.summary) {
        Ok(summary) => Some(Earlier {
            summary,
            seconds: r.seconds,
        }),
        Err(e) => {
            log::warn!(
                "{}: the summary does not read ({e}); stage {} runs again",
                st.dir.join(STAGE_FILE).display(),
                st.name
            );
            None
        }
    }
}

/// A new or empty run folder; or one holding a discover run, with `resume` or `overwrite`.
fn check_run_folder(spec: &DiscoverSpec) -> Result<()> {
    let out = &spec.out;
    let nothing = || {
        Error::usage(format!(
            "--resume: {} holds no discover run to continue; start without --resume",
            out.display()
        ))
    };
    let Some(marker) = output_marker(out)? else {
        return if spec.resume { Err(nothing()) } else { Ok(()) };
    };
    match marker.get("command").and_then(|c| c.as_str()) {
        None => Err(not_ours(out)),
        Some("discover") if !spec.resume && !spec.overwrite => Err(Error::usage(format!(
            "--out {}: holds an earlier discover run; pass --resume to continue it (finished stages are kept) or --overwrite to start anew",
            out.display()
        ))),
        Some("discover") => Ok(()),
        Some(_) if spec.resume => Err(nothing()),
        Some(other) if !spec.overwrite => Err(different_run(out, Some(other))),
        Some(_) => Ok(()),
    }
}

/// The `discover` stage chain (see the module doc).
pub fn run(spec: &DiscoverSpec) -> Result<DiscoverOutcome> {
    let p = prepare(spec)?;
    let mut inputs = vec![("--images", spec.images.as_path())];
    for (flag, dir) in [
        ("--normal", &spec.normal),
        ("--anomaly-maps", &spec.anomaly_maps),
        ("--base", &spec.base),
    ] {
        if let Some(d) = dir {
            inputs.push((flag, d.as_path()));
        }
    }
    let marker = json!({ "run": "discover" });
    prepare_output_dir(&spec.out, &inputs, "discover", &marker, spec.overwrite)?;
    // Held to the end of the run: a second discover in this folder would train beside this one.
    // Taken before the log file is opened, so a refused process leaves the run's log alone.
    let _lock = crate::runlock::RunLock::acquire(&spec.out, "discover")?;
    super::add_log_file(&spec.out)?;
    for line in p.describe(spec).lines() {
        log::info!("{line}");
    }
    let n = p.stages.len();
    let start = Instant::now();
    let (mut spent, mut spent_estimate) = (0.0f64, 0.0f64);
    let (mut runs, mut times) = (Vec::new(), Vec::new());
    let mut found = None;
    for (i, ps) in p.stages.iter().enumerate() {
        let st = &ps.stage;
        let label = format!("stage {}/{n}: {}", i + 1, st.name);
        let (summary, seconds) = match &ps.earlier {
            Some(e) => {
                log::info!(
                    "{label}: finished earlier with the same inputs, skipped ({})",
                    st.dir.display()
                );
                (e.summary.clone(), e.seconds)
            }
            None => {
                // The estimates, scaled by how the stages run so far compared with theirs.
                let pace = match spent_estimate > 10.0 {
                    true => (spent / spent_estimate).clamp(0.2, 5.0),
                    false => 1.0,
                };
                let left: f64 = p.stages[i..].iter().map(|s| s.estimate_s() * pace).sum();
                let what = match ps.resumed() {
                    Resumed::EvaluatedAgain => {
                        "trained earlier with the same inputs; inference.* changed, so only \
                                the evaluation runs again"
                            .to_string()
                    }
                    _ => st.what.clone(),
                };
                log::info!(
                    "{label}: {what} (~{}; ~{} left in all; {} elapsed)",
                    duration_text(ps.estimate_s() * pace),
                    duration_text(left),
                    duration_text(start.elapsed().as_secs_f64())
                );
                let t = Instant::now();
                let outcome = run_stage(spec, &p, ps).with_context(|| format!("discover {label}"));
                crate::malloc::release_freed_memory();
                if let (Some(now), Some(peak)) =
                    (crate::logging::rss_mib(), crate::logging::peak_rss_mib())
                {
                    log::debug!(
                        "{label}: {now:.0} MiB resident after it, peak so far {peak:.0} MiB"
                    );
                }
                if st.kind == StageKind::Train {
                    // Training logs into its own folder; the run's log takes the rest again.
                    super::add_log_file(&spec.out)?;
                }
                let summary = match outcome? {
                    Ran::Done(summary) => summary,
                    Ran::Stopped(detail) => {
                        return Ok(DiscoverOutcome::Stopped {
                            stage: st.name.into(),
                            detail,
                        })
                    }
                };
                let seconds = t.elapsed().as_secs_f64();
                record::write(
                    &st.dir,
                    &StageRecord::of(ps, true, seconds, summary.to_value()),
                )?;
                (spent, spent_estimate) = (spent + seconds, spent_estimate + ps.estimate_s());
                (summary, seconds)
            }
        };
        let skipped = ps.earlier.is_some();
        let timing = StageTiming::new(st.name, skipped, seconds, summary.images());
        if !skipped {
            log::info!("{label}: finished in {}", throughput(&timing));
        }
        runs.push(StageRun {
            name: st.name.into(),
            skipped,
            seconds: if skipped { 0.0 } else { seconds },
        });
        times.push(timing);
        if let StageSummary::Train(f) = summary {
            found = Some(*f);
        }
        if !skipped && spec.stop_after_stage.as_deref() == Some(st.name) {
            return Ok(DiscoverOutcome::Stopped {
                stage: st.name.into(),
                detail: format!("after stage {}/{n}", i + 1),
            });
        }
    }
    let found = found.ok_or_else(|| {
        Error::runtime(format!(
            "{}: the plan has no train stage; run again with --overwrite",
            spec.out.display()
        ))
    })?;
    let total_s = start.elapsed().as_secs_f64();
    let timing = RunTiming {
        stages: times,
        total_s,
        peak_rss_mb: crate::logging::peak_rss_mib(),
    };
    log::info!("discover: {}", run_text(&timing));
    let train = spec.out.join("train");
    let (report, predictions) = (train.join("report.html"), train.join("predictions.csv"));
    let summary = DiscoverSummary {
        report: absolute(&report),
        predictions: absolute(&predictions),
        checkpoint: absolute(&train.join(crate::checkpoint::CHECKPOINT_FILE)),
        found,
        stages: runs,
        seconds: total_s,
        timing,
    };
    let text = serde_json::to_vec_pretty(&summary).expect("the summary serialises");
    atomic_write(&spec.out.join(SUMMARY_FILE), &text)?;
    let DiscoverSummary {
        found,
        stages,
        timing,
        ..
    } = summary;
    Ok(DiscoverOutcome::Finished {
        found,
        report,
        predictions,
        stages,
        timing,
    })
}

/// `12.3 s (40 images, 3.25 images/s)`.
fn throughput(t: &StageTiming) -> String {
    let rate = match t.images_per_s {
        Some(r) if r >= 10.0 => format!(", {r:.0} images/s"),
        Some(r) => format!(", {r:.2} images/s"),
        None => String::new(),
    };
    let wall = match t.wall_s < 90.0 {
        true => format!("{:.1} s", t.wall_s),
        false => duration_text(t.wall_s),
    };
    format!("{wall} ({} images{rate})", t.images)
}

/// `3 min in all, peak memory 812 MiB`.
fn run_text(t: &RunTiming) -> String {
    let memory = match t.peak_rss_mb {
        Some(mb) => format!("peak memory {mb:.0} MiB"),
        None => "peak memory not known on this system".to_string(),
    };
    format!("{} in all, {memory}", duration_text(t.total_s))
}
