use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};

use super::*;
use crate::data::CropItem;
use crate::mebin::crop::CropBox;
use crate::mebin::job::MapRecord;

#[test]
fn purity_and_majority() {
    assert_eq!(purity(&[0, 0, 1, 0], Some(0)), Some(0.75));
    assert_eq!(purity(&[0, 0, 1, 0], Some(1)), Some(0.25));
    assert_eq!(purity(&[0, 1], None), Some(0.0));
    assert_eq!(purity(&[], Some(0)), None);
    assert_eq!(majority(&[2, 1, 2, 1, 0]), Some((1, 0.4)));
    assert_eq!(majority(&[3]), Some((3, 1.0)));
    assert_eq!(majority(&[]), None);
}

#[test]
fn even_sample_is_deterministic_and_bounded() {
    assert_eq!(sample_evenly(3, 64), vec![0, 1, 2]);
    let s = sample_evenly(200, 64);
    assert_eq!(s.len(), 64);
    assert_eq!(s[0], 0);
    assert!(s.windows(2).all(|w| w[0] < w[1]) && *s.last().unwrap() < 200);
    assert_eq!(s, sample_evenly(200, 64));
}

/// `n` images, one crop each ([`Predictions::one_crop_per_image`]).
fn preds(truth: &[Option<usize>], pred: &[usize], k: usize) -> Predictions {
    Predictions::one_crop_per_image(truth, pred, k)
}

#[test]
fn clusters_get_their_matched_class_and_purity() {
    // Cluster 1 holds class 0 (3 of 4), cluster 0 holds class 1, cluster 2 is extra.
    let t = [0, 0, 0, 1, 1, 1, 0];
    let p = [1, 1, 1, 0, 0, 1, 2];
    let pr = preds(&t.map(Some), &p, 3);
    let eval = crate::metrics::evaluate(&t, &p, &[false; 7]).unwrap();
    let s = summarize(&pr, Some(&eval), 2);
    assert_eq!(s.len(), 3);
    assert_eq!((s[1].matched, s[1].purity), (Some(0), Some(0.75)));
    assert_eq!((s[0].matched, s[0].purity), (Some(1), Some(1.0)));
    assert_eq!((s[2].matched, s[2].purity), (None, Some(0.0)));
    assert_eq!(s[2].majority, Some((0, 1.0)));
    // Members most confident first.
    assert_eq!(s[1].members, vec![5, 2, 1, 0]);
    // The confusion columns put the matched clusters on the diagonal.
    let names = vec!["crack".to_string(), "hole".to_string()];
    let (rows, cols, counts) = confusion_table(&pr, &s, &names);
    assert_eq!(rows, names);
    assert_eq!(cols, ["c1", "c0", "c2"]);
    assert_eq!(counts, vec![vec![3, 0, 1], vec![1, 2, 0]]);
    // Without labels: sizes only.
    let pr = preds(&[None; 3], &[0, 0, 1], 3);
    let s = summarize(&pr, None, 0);
    assert_eq!(
        s.iter().map(|c| c.members.len()).collect::<Vec<_>>(),
        [2, 1, 0]
    );
    assert!(s.iter().all(|c| c.matched.is_none() && c.purity.is_none()));
}

#[test]
fn escape_covers_html_specials() {
    assert_eq!(
        html::escape(r#"<a href="x">'&'</a>"#),
        "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
    );
}

fn save_rgb(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(w, h, Rgb([90, 140, 90]))
        .save(path)
        .unwrap();
}

fn save_mask(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut m = GrayImage::new(w, h);
    for y in h / 4..h / 2 {
        for x in w / 4..w / 2 {
            m.put_pixel(x, y, Luma([255]));
        }
    }
    m.save(path).unwrap();
}

fn record(kind: &str, stem: &str, image: &Path) -> MapRecord {
    MapRecord {
        class_name: kind.into(),
        stem: stem.into(),
        map: image.to_path_buf(),
        image: image.to_path_buf(),
        image_size: [200, 100],
        map_size: [200, 100],
        threshold: 1,
        est_anomaly_num: 1,
        component_counts: vec![1],
        binary_foreground_pixels: 1,
        crop_boxes: vec![CropBox::from([40.0, 20.0, 110.0, 60.0])],
        crop_sizes: vec![[70, 40]],
        crop_scores: vec![1.0],
        crop_mask_foreground: vec![1],
        peak_fallback: false,
    }
}

/// A binarize output where image 0 has its original, image 1 only its crop, image 2 an
/// unreadable crop; class names that need escaping.
#[test]
fn report_files_cover_every_cluster_and_survive_bad_images() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    let orig = d.path().join("images/a&b/img0.png");
    save_rgb(&orig, 200, 100);
    save_mask(&bin.join("binary/a&b/img0.png"), 200, 100);
    let summary = BinarizeSummary {
        min_th: 0.0,
        max_th: 1.0,
        sample_rate: 1,
        min_interval_len: 1,
        erode: true,
        interval_position: 1.0,
        bit_depth: 8,
        normal_maps: 0,
        float_scale: None,
        records: vec![record("a&b", "img0", &orig)],
    };
    std::fs::write(
        bin.join(SUMMARY_FILE),
        serde_json::to_vec(&summary).unwrap(),
    )
    .unwrap();
    let kinds = ["a&b", "<hole>", "a&b"];
    let mut items = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let file = format!("img{i}_crop0.png");
        let image = bin.join("crops/images").join(kind).join(&file);
        let mask = bin.join("crops/masks").join(kind).join(&file);
        if i == 2 {
            std::fs::create_dir_all(image.parent().unwrap()).unwrap();
            std::fs::write(&image, b"not a png").unwrap();
        } else {
            save_rgb(&image, 70, 40);
        }
        save_mask(&mask, 70, 40);
        items.push(CropItem {
            image,
            mask,
            label: Some(usize::from(*kind == "<hole>")),
            labelled: false,
            score: 1.0,
            id: format!("{kind}/{file}"),
            map: None,
            map_within_mask: false,
        });
    }
    let names = vec!["a&b".to_string(), "<hole>".to_string()];
    let set = CropSet {
        items,
        base_classes: vec![],
        novel_types: names.clone(),
        num_novel_clusters: 3,
    };
    let mut pr = preds(&[Some(0), Some(1), Some(0)], &[0, 1, 0], 3);
    for (i, r) in pr.crops.iter_mut().enumerate() {
        r.id = set.items[i].id.clone();
    }
    let out = d.path().join("run");
    let input = ReportInput {
        category: "cat<1>",
        class_names: &names,
        preds: &pr,
        set: &set,
        binarize_out: &bin,
        trained_names: &[],
    };
    let page = write_report(&out, &input).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    for k in 0..3 {
        assert!(html.contains(&format!("id=\"cluster-{k}\"")), "cluster {k}");
        let sheet = image::open(out.join(format!("report/cluster_{k}.png"))).unwrap();
        // Cluster 2 is empty: its page section says so instead of showing the header-only sheet.
        let shown = html.contains(&format!("src=\"report/cluster_{k}.png\""));
        assert_eq!(shown, k < 2, "cluster {k}");
        assert!(sheet.width() >= sheets::cell_size().0);
    }
    assert!(html.contains("No image was assigned"));
    assert!(html.contains("1 of 3 clusters received no image (cluster 2)"));
    assert!(html.contains("a&amp;b") && html.contains("&lt;hole&gt;"));
    assert!(!html.contains("<hole>") && !html.contains("cat<1>"));
    assert!(html.contains("report/confusion.png") && html.contains("NMI"));
    assert!(
        html.contains("1 files could not be read"),
        "the unreadable crop is reported"
    );
    let conf = image::open(out.join("report/confusion.png"))
        .unwrap()
        .to_rgb8();
    let lay = confusion::Layout::new(2, 3, font::text_width("<hole>", 2));
    assert_eq!(conf.dimensions(), (lay.width, lay.height));

    // Cluster 0: image 0 drawn from its original (crop box in yellow), image 2 a grey tile.
    let sheet0 = image::open(out.join("report/cluster_0.png"))
        .unwrap()
        .to_rgb8();
    let pixels: Vec<Rgb<u8>> = sheet0.pixels().copied().collect();
    assert!(pixels.contains(&sheets::BOX) && pixels.contains(&sheets::OUTLINE));
    assert!(pixels.contains(&sheets::UNREADABLE));
    // Cluster 1: image 1 from its crop (outline, no box).
    let sheet1 = image::open(out.join("report/cluster_1.png"))
        .unwrap()
        .to_rgb8();
    assert!(sheet1.pixels().any(|p| *p == sheets::OUTLINE));
    assert!(!sheet1.pixels().any(|p| *p == sheets::BOX));

    // Without labels: no confusion picture, and the page says so.
    let pr = preds(&[None, None, None], &[0, 1, 0], 3);
    let out2 = d.path().join("run2");
    let input = ReportInput {
        class_names: &[],
        preds: &pr,
        ..input
    };
    let page = write_report(&out2, &input).unwrap();
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("No true classes") && !html.contains("confusion.png"));
    assert!(!out2.join("report/confusion.png").exists());
    assert!(out2.join("report/cluster_2.png").is_file());
}

#[test]
fn a_jpeg_named_png_is_drawn_not_grey() {
    let d = tempfile::tempdir().unwrap();
    let img = RgbImage::from_pixel(40, 30, Rgb([200, 30, 30]));
    let path = d.path().join("photo.png");
    image::DynamicImage::ImageRgb8(img)
        .save_with_format(&path, image::ImageFormat::Jpeg)
        .unwrap();
    let mask = d.path().join("mask.png");
    GrayImage::from_pixel(40, 30, Luma([0]))
        .save(&mask)
        .unwrap();
    let (thumb, warning) = sheets::thumbnail(&sheets::TileSource::Crop { image: path, mask });
    assert_eq!(warning, None);
    let centre = thumb.get_pixel(sheets::THUMB / 2, sheets::THUMB / 2);
    assert!(centre[0] > 150 && centre[1] < 80, "{centre:?}");
}
