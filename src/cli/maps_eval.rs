//! `anomalyncd maps-eval --anomaly-maps M --masks GT [--images I] [--out FILE.json]`: how well a
//! folder of anomaly maps localises the defects ([`anomalyncd::detect::localize`]), to judge a
//! detector before training on its maps. Prints the table; writes JSON only when asked, never
//! into an input folder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::Ctx;
use anomalyncd::detect::localize::folders::REPORT_COMMAND;
use anomalyncd::detect::localize::{evaluate_folders, render_table, MapsEvalSpec};
use anomalyncd::error::Error;
use anomalyncd::fsutil::{absolute, atomic_write};

#[derive(Debug, Args)]
pub struct MapsEvalArgs {
    /// Anomaly maps: MAPS/<type>/<stem>.png (8- or 16-bit grayscale, any size) or a flat folder.
    #[arg(long, value_name = "MAPS")]
    pub anomaly_maps: PathBuf,
    /// Ground-truth masks: MASKS/<type>/<stem>.png (0/255, the image's size); maps in a `good`
    /// folder need none.
    #[arg(long, value_name = "MASKS")]
    pub masks: PathBuf,
    /// Original images IMAGES/<type>/<stem>.<ext>, paired with the maps as `binarize` pairs them:
    /// also runs MEBin (default settings) and counts the crops that touch a defect.
    #[arg(long, value_name = "IMAGES")]
    pub images: Option<PathBuf>,
    /// Also write the results as JSON to FILE (outside the input folders).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// With --images: leave maps without an image out of the crop columns (and ignore images
    /// without a map) instead of failing.
    #[arg(long, requires = "images")]
    pub skip_unpaired: bool,
}

fn check_folder(flag: &str, p: &Path, what: &str) -> Result<(), Error> {
    if p.is_dir() {
        Ok(())
    } else {
        Err(Error::input(
            p,
            format!("{flag}: not a folder; give the folder of {what}"),
        ))
    }
}

/// `--out` must be a file outside the inputs, and an existing file there must be an earlier
/// report of this command: the tool replaces only what it wrote.
fn check_out(out: &Path, inputs: &[(&str, &Path)]) -> Result<(), Error> {
    let out_abs = absolute(out);
    for (flag, input) in inputs {
        if out_abs.starts_with(absolute(input)) {
            return Err(Error::usage(format!(
                "--out {}: must not be inside {flag} {}; write the report outside the inputs",
                out.display(),
                input.display()
            )));
        }
    }
    if out.is_dir() {
        return Err(Error::usage(format!(
            "--out {}: is a folder; give a file name, e.g. {}",
            out.display(),
            out.join("maps_eval.json").display()
        )));
    }
    if out.exists() {
        let ours = std::fs::read_to_string(out)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["command"] == REPORT_COMMAND);
        if !ours {
            return Err(Error::usage(format!(
                "--out {}: exists and is not a maps-eval report; choose another file or remove it",
                out.display()
            )));
        }
    }
    Ok(())
}

pub fn run(a: &MapsEvalArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    check_folder("--anomaly-maps", &a.anomaly_maps, "anomaly maps")?;
    check_folder("--masks", &a.masks, "ground-truth masks")?;
    let mut inputs = vec![
        ("--anomaly-maps", a.anomaly_maps.as_path()),
        ("--masks", a.masks.as_path()),
    ];
    if let Some(images) = &a.images {
        check_folder("--images", images, "original images")?;
        inputs.push(("--images", images.as_path()));
    }
    if let Some(out) = &a.out {
        check_out(out, &inputs)?;
    }
    let spec = MapsEvalSpec {
        anomaly_maps: a.anomaly_maps.clone(),
        masks: a.masks.clone(),
        images: a.images.clone(),
        skip_unpaired: a.skip_unpaired,
        progress: true,
    };
    let r = evaluate_folders(&spec)
        .with_context(|| format!("evaluating the maps in {}", a.anomaly_maps.display()))?;
    print!("{}", render_table(&r.report));
    log::info!(
        "{} maps evaluated in {:.1} s",
        r.report.overall.maps,
        r.seconds
    );
    if let Some(out) = &a.out {
        let body = serde_json::to_vec_pretty(&r).expect("report serialises");
        atomic_write(out, &body)?;
        log::info!("results in {}", out.display());
    }
    Ok(())
}
