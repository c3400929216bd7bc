//! `anomalyncd prepare-mtd`: a tiny original-layout Magnetic-Tile-Defect tree (generated here)
//! converted to the MVTec layout; the split, byte-identical copies, determinism and bad inputs.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};
use serde_json::Value;

use crate::common::{cli, stderr};

/// RAW/MT_Free with `free` tiles (and their empty masks, as the original has), MT_Blowhole with 3
/// and MT_Crack with 2 defective tiles and masks; every file different.
fn make_raw(root: &Path, free: usize) {
    let mut k = 0u8;
    let mut add = |ty: &str, stem: &str| {
        let dir = root.join(ty).join("Imgs");
        std::fs::create_dir_all(&dir).unwrap();
        k = k.wrapping_add(7);
        let img = GrayImage::from_fn(24, 20, |x, y| Luma([(x as u8 * 5) ^ (y as u8 * 3) ^ k]));
        img.save(dir.join(format!("{stem}.jpg"))).unwrap();
        let mask = GrayImage::from_fn(24, 20, |x, _| {
            Luma([if ty != "MT_Free" && x < 4 { 255 } else { 0 }])
        });
        mask.save(dir.join(format!("{stem}.png"))).unwrap();
    };
    for i in 0..free {
        add("MT_Free", &format!("exp1_num_{i:03}"));
    }
    for i in 0..3 {
        add("MT_Blowhole", &format!("exp2_num_{i}"));
    }
    for i in 0..2 {
        add("MT_Crack", &format!("exp3_num_{i}"));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run(raw: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "prepare-mtd",
        "--raw",
        raw.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    cli(&args)
}

#[test]
fn converts_to_the_mvtec_layout_with_a_seeded_split() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("raw");
    make_raw(&raw, 10);
    let out = d.path().join("mtd");
    let o = run(&raw, &out, &["--seed", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let train = names(&out.join("train/MT_Free"));
    let good = names(&out.join("test/good"));
    assert_eq!(
        (train.len(), good.len()),
        (8, 2),
        "80/20 of 10 normal tiles"
    );
    assert!(train.iter().chain(&good).all(|n| n.ends_with(".jpg")));
    assert!(train.iter().all(|n| !good.contains(n)));
    assert_eq!(
        names(&out.join("test")),
        ["MT_Blowhole", "MT_Crack", "good"]
    );
    assert_eq!(
        names(&out.join("ground_truth")),
        ["MT_Blowhole", "MT_Crack"]
    );
    assert_eq!(
        names(&out.join("test/MT_Blowhole")),
        ["exp2_num_0.jpg", "exp2_num_1.jpg", "exp2_num_2.jpg"]
    );
    assert_eq!(
        names(&out.join("ground_truth/MT_Crack")),
        ["exp3_num_0.png", "exp3_num_1.png"]
    );
    // Byte-identical copies (no re-encoding) of images and masks.
    for (src, dst) in [
        (
            "MT_Blowhole/Imgs/exp2_num_1.jpg",
            "test/MT_Blowhole/exp2_num_1.jpg",
        ),
        (
            "MT_Crack/Imgs/exp3_num_0.png",
            "ground_truth/MT_Crack/exp3_num_0.png",
        ),
    ] {
        assert_eq!(
            std::fs::read(raw.join(src)).unwrap(),
            std::fs::read(out.join(dst)).unwrap()
        );
    }
    let first = &train[0];
    assert_eq!(
        std::fs::read(raw.join("MT_Free/Imgs").join(first)).unwrap(),
        std::fs::read(out.join("train/MT_Free").join(first)).unwrap()
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("prepare_mtd.json")).unwrap())
            .unwrap();
    assert_eq!(summary["train_normal"], 8);
    assert_eq!(summary["defects"]["MT_Blowhole"], 3);

    // Same seed, same split; another seed, another split.
    let again = d.path().join("again");
    assert!(run(&raw, &again, &["--seed", "5"]).status.success());
    assert_eq!(names(&again.join("train/MT_Free")), train);
    let other = d.path().join("other");
    assert!(run(&raw, &other, &["--seed", "6"]).status.success());
    assert_ne!(names(&other.join("train/MT_Free")), train);

    // Rerunning into the first output with the other seed moves files without leaving stale ones.
    let o = run(&raw, &out, &["--seed", "6", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (t2, g2) = (
        names(&out.join("train/MT_Free")),
        names(&out.join("test/good")),
    );
    assert_eq!((t2.len(), g2.len()), (8, 2));
    assert_eq!(t2, names(&other.join("train/MT_Free")));
}

#[test]
fn the_train_list_decides_the_split() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("raw");
    make_raw(&raw, 6);
    let list = d.path().join("mtd_train_filenames.txt");
    std::fs::write(
        &list,
        "exp1_num_000.jpg\nexp1_num_003.jpg\n\nexp1_num_005.jpg\n",
    )
    .unwrap();
    let out = d.path().join("mtd");
    let o = run(&raw, &out, &["--train-list", list.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        names(&out.join("train/MT_Free")),
        ["exp1_num_000.jpg", "exp1_num_003.jpg", "exp1_num_005.jpg"]
    );
    assert_eq!(
        names(&out.join("test/good")),
        ["exp1_num_001.jpg", "exp1_num_002.jpg", "exp1_num_004.jpg"]
    );

    // Entries whose image is missing: exit 2, the first few listed.
    std::fs::write(
        &list,
        "exp1_num_000.jpg\nexp1_num_777.jpg\nexp1_num_888.jpg\n",
    )
    .unwrap();
    let o = run(
        &raw,
        &d.path().join("bad"),
        &["--train-list", list.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("exp1_num_777.jpg, exp1_num_888.jpg") && e.contains("mtd_train_filenames.txt"),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_explained_and_never_modified() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    // Missing raw folder.
    let o = run(&d.path().join("nope"), &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("folder not found"), "{}", stderr(&o));
    // A folder without MT_* folders.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(empty.join("something")).unwrap();
    let o = run(&empty, &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no MT_* folders"), "{}", stderr(&o));

    // A defect image without its mask.
    let raw = d.path().join("raw");
    make_raw(&raw, 5);
    let mask = raw.join("MT_Crack/Imgs/exp3_num_1.png");
    std::fs::remove_file(&mask).unwrap();
    let o = run(&raw, &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("MT_Crack") && e.contains("exp3_num_1.jpg") && e.contains("without a mask"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written on a bad input");

    // A category with no defect images.
    let raw2 = d.path().join("raw2");
    make_raw(&raw2, 5);
    std::fs::create_dir_all(raw2.join("MT_Fray/Imgs")).unwrap();
    let o = run(&raw2, &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("MT_Fray") && stderr(&o).contains("no defect images"),
        "{}",
        stderr(&o)
    );

    // OUT inside the input is refused; a good run leaves the input as it was.
    let raw3 = d.path().join("raw3");
    make_raw(&raw3, 5);
    let before = tree(&raw3);
    let o = run(&raw3, &raw3.join("converted"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("must not be inside"), "{}", stderr(&o));
    assert!(run(&raw3, &out, &[]).status.success());
    assert_eq!(tree(&raw3), before);
}

fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new()));
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}
