//! `anomalyncd maps-eval --anomaly-maps M --masks GT [--images I] [--out FILE.json]`: how well a
//! folder of anomaly maps localises the defects ([`anomalyncd::detect::localize`]), to judge a
//! detector before training on its maps. Prints the table; writes JSON only when asked, never
//! into an input folder.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;
use anomalyncd::detect::localize::{render_table, MapsEvalSpec};

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

pub fn run(a: &MapsEvalArgs, _ctx: &Ctx) -> anyhow::Result<()> {
    let spec = MapsEvalSpec {
        anomaly_maps: a.anomaly_maps.clone(),
        masks: a.masks.clone(),
        images: a.images.clone(),
        skip_unpaired: a.skip_unpaired,
        progress: true,
    };
    let r = anomalyncd::detect::localize::folders::run(&spec, a.out.as_deref())?;
    print!("{}", render_table(&r.report));
    log::info!(
        "{} maps evaluated in {:.1} s",
        r.report.overall.maps,
        r.seconds
    );
    Ok(())
}
