use super::*;

fn touch_png(p: &Path, v: u8) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    GrayImage::from_pixel(4, 4, image::Luma([v]))
        .save(p)
        .unwrap();
}

#[test]
fn masks_pair_by_stem_across_extensions_and_hidden_files_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    touch_png(&d.path().join("images/a/x.png"), 9);
    touch_png(&d.path().join("masks/a/x.bmp"), 255);
    std::fs::write(d.path().join("images/a/.DS_Store"), b"junk").unwrap();
    std::fs::write(d.path().join("images/a/notes.txt"), b"junk").unwrap();
    let (classes, items) = load_base(d.path()).unwrap();
    assert_eq!(classes, ["a"]);
    assert_eq!(items.len(), 1);
    assert!(items[0].mask.ends_with("masks/a/x.bmp"));
    let (_, m) = decode_pair(&items[0]).unwrap();
    assert!(m.pixels().all(|p| p[0] == 255));
}

#[test]
fn two_masks_with_one_stem_are_refused() {
    let d = tempfile::tempdir().unwrap();
    touch_png(&d.path().join("images/a/x.png"), 9);
    touch_png(&d.path().join("masks/a/x.png"), 255);
    touch_png(&d.path().join("masks/a/x.bmp"), 255);
    let e = load_base(d.path()).unwrap_err().to_string();
    assert!(e.contains("share the stem"), "{e}");
}

#[test]
fn zero_one_masks_and_mask_of_other_size() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("i.png");
    RgbImage::new(8, 6).save(&img).unwrap();
    let mask = d.path().join("m.png");
    GrayImage::from_fn(4, 3, |x, _| image::Luma([u8::from(x >= 2)]))
        .save(&mask)
        .unwrap();
    let item = CropItem {
        image: img,
        mask,
        label: None,
        labelled: false,
        score: 0.5,
        id: "i".into(),
        map: None,
        map_within_mask: false,
    };
    let (i, m) = decode_pair(&item).unwrap();
    assert_eq!(m.dimensions(), i.dimensions());
    assert_eq!(m.get_pixel(0, 0)[0], 0);
    assert_eq!(m.get_pixel(7, 5)[0], 255);
    // A map keeps its levels.
    let map = d.path().join("map.png");
    GrayImage::from_fn(8, 6, |x, _| image::Luma([x as u8 * 30]))
        .save(&map)
        .unwrap();
    let (_, m) = decode_pair(&CropItem {
        map: Some(map.clone()),
        ..item.clone()
    })
    .unwrap();
    assert_eq!((m.get_pixel(0, 0)[0], m.get_pixel(7, 5)[0]), (0, 210));
    assert_eq!(m.get_pixel(2, 0)[0], 60);
    // Within the mask (on for x >= 4 at this size): 0 elsewhere.
    let (_, m) = decode_pair(&CropItem {
        map: Some(map),
        map_within_mask: true,
        ..item
    })
    .unwrap();
    assert_eq!((m.get_pixel(2, 0)[0], m.get_pixel(7, 5)[0]), (0, 210));
}

#[test]
fn flat_scores_are_found_at_top_level_or_in_a_type_map() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.json");
    std::fs::write(&p, r#"{"a_crop0.png": 0.25, "t": {"b_crop1.png": 0.5}}"#).unwrap();
    let s = Scores::read(&p).unwrap();
    assert_eq!(s.get(None, "a_crop0.png").unwrap(), 0.25);
    assert_eq!(s.get(None, "b_crop1.png").unwrap(), 0.5);
    assert_eq!(s.get(Some("t"), "b_crop1.png").unwrap(), 0.5);
    assert!(s
        .get(Some("t"), "a_crop0.png")
        .unwrap_err()
        .to_string()
        .contains("t/a_crop0.png"));
}
