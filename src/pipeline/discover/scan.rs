//! The inputs of a `discover` run, listed and checked before any stage runs: every error an
//! input can cause (exit code 2) is raised here. Names only: nothing is decoded or written.

use std::path::Path;

use super::plan::{BaseInput, Digests, Inputs, Speed};
use super::record::listing_digest;
use super::DiscoverSpec;
use crate::error::{Error, Result, ResultExt};
use crate::fsutil::check_outside_inputs;
use crate::imageio::{self, TypedFile, ANOMALY_MAP_EXTENSIONS, IMAGE_EXTENSIONS, MAP_EXTENSIONS};
use crate::mebin::base::BASE_SUMMARY_FILE;
use crate::mebin::Pairing;

/// Lists and checks the inputs: every error an input can cause is raised here, before any
/// stage runs (exit code 2). Writes nothing.
pub fn scan(spec: &DiscoverSpec) -> Result<Inputs> {
    let images = &spec.images;
    if !images.is_dir() {
        return Err(Error::input(images, "--images: folder not found"));
    }
    check_out(spec)?;
    let top = imageio::read_folder(images, IMAGE_EXTENSIONS)?;
    if !top.files.is_empty() && !top.dirs.is_empty() {
        return Err(Error::input(
            images,
            "--images holds both image files and sub-folders; keep it flat (IMAGES/<stem>.<ext>) \
             or put every image in a type folder (IMAGES/<type>/<stem>.<ext>; normal ones in IMAGES/good)",
        ));
    }
    let files = if top.dirs.is_empty() {
        top.files
    } else {
        imageio::list_typed_files(images, IMAGE_EXTENSIONS)?
    };
    let digest_images = listing_digest(&files);
    let (good, defective): (Vec<TypedFile>, Vec<TypedFile>) = files
        .into_iter()
        .partition(|f| imageio::is_normal(&f.type_name));
    if defective.is_empty() {
        let why = if good.is_empty() {
            "--images: no images found (expected IMAGES/<type>/<stem>.<png|jpg|bmp|tif> or a flat folder of images)"
        } else {
            "--images: only normal images (in good/); add the defective images as IMAGES/<type>/<stem>.<ext>"
        };
        return Err(Error::input(images, why));
    }
    let mut types: Vec<String> = defective.iter().map(|f| f.type_name.clone()).collect();
    types.dedup();
    types.retain(|t| !t.is_empty());
    let mut digests = Digests {
        images: digest_images,
        ..Default::default()
    };
    let normal = match &spec.normal {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(Error::input(dir, "--normal: folder not found"));
            }
            let files = imageio::list_files(dir, IMAGE_EXTENSIONS)
                .with_context(|| format!("--normal {}", dir.display()))?;
            if files.is_empty() {
                return Err(Error::input(
                    dir,
                    "--normal: no images found (expected NORMAL/<stem>.<png|jpg|bmp|tif> or NORMAL/<type>/<stem>.<ext>)",
                ));
            }
            digests.normal = listing_digest(&files);
            files.len()
        }
        None => 0,
    };
    let maps = match &spec.anomaly_maps {
        Some(dir) => {
            let ctx = || format!("--anomaly-maps {}", dir.display());
            if !dir.is_dir() {
                return Err(Error::input(dir, "--anomaly-maps: folder not found"));
            }
            let items =
                crate::mebin::folders::pair_folders(dir, images, &pairing()).with_context(ctx)?;
            let files = imageio::list_files(dir, ANOMALY_MAP_EXTENSIONS).with_context(ctx)?;
            digests.maps = listing_digest(&files);
            items.iter().filter(|i| !i.normal).count()
        }
        None => 0,
    };
    if spec.anomaly_maps.is_none() && normal == 0 && good.is_empty() && defective.len() < 2 {
        return Err(Error::input(
            images,
            "the zero-shot detector (no --normal, no IMAGES/good, no --anomaly-maps) scores each image \
             against the others and needs at least 2 images; give --normal or --anomaly-maps",
        ));
    }
    let base = match &spec.base {
        Some(dir) => scan_base(dir, &mut digests)?,
        None if spec.no_base => BaseInput::None,
        None => BaseInput::Synthetic,
    };
    let paths: Vec<_> = defective.iter().map(|f| f.path.clone()).collect();
    let (detector_image_size, detector_patches) = match &spec.anomaly_maps {
        Some(_) => (crate::detect::DEFAULT_VIT_IMAGE_SIZE, 0.0),
        None => crate::detect::side_and_patches(
            spec.config.detect.image_size,
            spec.detector.image_size,
            &paths,
            "detect.image_size",
        )?,
    };
    Ok(Inputs {
        images: defective.len(),
        types,
        good: good.len(),
        normal,
        maps,
        base,
        digests,
        detector_image_size,
        detector_patches,
        speed: machine_speed(spec),
    })
}

/// This machine's [`Speed`] for the estimates: on the CPU from the GEMM rates `precision: auto`
/// measures once (or has stored); CUDA has its own factor in the plan.
fn machine_speed(spec: &DiscoverSpec) -> Speed {
    if spec.device != tch::Device::Cpu {
        return Speed::REFERENCE;
    }
    let rates = crate::model::precision::auto_cpu().rates;
    let kind = crate::model::precision::frozen_kind(spec.config.models.precision, spec.device);
    let run = if kind == tch::Kind::BFloat16 {
        rates.bf16
    } else {
        rates.fp32
    };
    Speed::from_rates(rates.fp32, run)
}

/// How MEBin pairs maps with `--images`: every defective image needs its map; `good` maps
/// (if any) only set the range.
pub fn pairing() -> Pairing {
    Pairing::default()
}

/// The run folder must not sit inside an input nor contain one.
fn check_out(spec: &DiscoverSpec) -> Result<()> {
    let inputs: Vec<(&str, &Path)> = [
        ("--images", Some(&spec.images)),
        ("--normal", spec.normal.as_ref()),
        ("--anomaly-maps", spec.anomaly_maps.as_ref()),
        ("--base", spec.base.as_ref()),
    ]
    .into_iter()
    .filter_map(|(flag, dir)| Some((flag, dir?.as_path())))
    .collect();
    check_outside_inputs(&spec.out, &inputs, "run folder")
}

/// `--base DIR`: a prepare-base output (used as it is), or `images/<class>/` + `masks/<class>/`
/// where every image has a mask.
fn scan_base(dir: &Path, digests: &mut Digests) -> Result<BaseInput> {
    let layout =
        "expected BASE/images/<class>/<stem>.<ext> and BASE/masks/<class>/<stem>.png (0/255), \
                  or a prepare-base output";
    if !dir.is_dir() {
        return Err(Error::input(
            dir,
            format!("--base: folder not found; {layout}"),
        ));
    }
    let ctx = || format!("--base {}", dir.display());
    if dir.join(BASE_SUMMARY_FILE).is_file() {
        let (classes, items) = crate::data::dataset::load_base(dir).with_context(ctx)?;
        let files: Vec<TypedFile> = items
            .iter()
            .map(|c| TypedFile {
                type_name: String::new(),
                stem: c.id.clone(),
                path: c.image.clone(),
            })
            .collect();
        digests.base = listing_digest(&files);
        return Ok(BaseInput::Cropped {
            dir: dir.to_path_buf(),
            crops: items.len(),
            classes: classes.len(),
        });
    }
    let (img_dir, mask_dir) = (dir.join("images"), dir.join("masks"));
    if !img_dir.is_dir() {
        return Err(Error::input(
            dir,
            format!("--base: no images/ folder; {layout}"),
        ));
    }
    if !mask_dir.is_dir() {
        return Err(Error::input(
            dir,
            format!("--base: no masks/ folder: the base set needs a mask per image; {layout}"),
        ));
    }
    let imgs = imageio::list_typed_files(&img_dir, IMAGE_EXTENSIONS).with_context(ctx)?;
    if imgs.is_empty() {
        return Err(Error::input(
            &img_dir,
            format!("--base: no images; {layout}"),
        ));
    }
    let masks = imageio::list_typed_files(&mask_dir, MAP_EXTENSIONS).with_context(ctx)?;
    if masks.is_empty() {
        return Err(Error::input(
            &mask_dir,
            format!("--base: no masks; {layout}"),
        ));
    }
    let mut all = imgs.clone();
    all.extend(masks.iter().cloned());
    digests.base = listing_digest(&all);
    imageio::pair_masks(&imgs, &masks, |_| false).or_error(|missing| {
        Error::input(
            &mask_dir,
            format!(
                "--base: images without a mask (same <class>/<stem>): {}; {layout}",
                imageio::describe_files(missing, &img_dir, 5)
            ),
        )
    })?;
    let mut classes: Vec<&str> = imgs.iter().map(|i| i.type_name.as_str()).collect();
    classes.dedup();
    Ok(BaseInput::Raw {
        dir: dir.to_path_buf(),
        images: imgs.len(),
        classes: classes.len(),
    })
}
