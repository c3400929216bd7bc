//! The MEBin library's exactness: the fast path equals the reference-algorithm oracle on random
//! and structured maps (property test), the oracle's counts on a hand-made map, and the external
//! contours against OpenCV's `findContours` (fixture) and a flood-fill model (property test).

use anomalyncd::imageio::GrayMap;
use anomalyncd::mebin::{self, oracle, BitDepth, Params, SearchRange};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::make_map;

// ---------------------------------------------------------------- property test: fast == oracle

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The min-filter + union-find sweep gives the reference algorithm's counts, threshold, count
    /// and mask on random and structured maps, ranges and settings.
    #[test]
    fn fast_path_equals_reference_oracle(
        kind in 0u8..7,
        w in 1usize..40,
        h in 1usize..40,
        seed in any::<u64>(),
        sixteen in any::<bool>(),
        other_max_frac in 0.0f64..1.2,
        floor_frac in proptest::option::of(0.0f64..0.9),
        sample_rate in prop::sample::select(vec![1u32, 2, 3, 4, 5, 8, 17, 64, 255]),
        min_interval_len in 1usize..7,
        erode in any::<bool>(),
        position in prop::sample::select(vec![0.0f64, 0.25, 0.5, 0.7, 1.0]),
    ) {
        let depth = if sixteen { BitDepth::Sixteen } else { BitDepth::Eight };
        let map = make_map(kind, w, h, seed, depth);
        // the range as from a set holding this map and one other
        let other = (map.max() as f64 * other_max_frac).min(depth.max_level() as f64) as u16;
        let maxima = [map.max(), other];
        let hi = *maxima.iter().max().unwrap() as f64;
        let range = SearchRange::from_maxima(&maxima, floor_frac.map(|f| (f * hi).floor())).unwrap();
        let params = Params { sample_rate, min_interval_len, erode, interval_position: position };
        let fast = mebin::binarize_map(&map, &range, &params);
        let slow = oracle::binarize_map(&map, &range, &params);
        prop_assert_eq!(&fast.component_counts, &slow.component_counts);
        prop_assert_eq!(fast.threshold, slow.threshold);
        prop_assert_eq!(fast.est_anomaly_num, slow.est_anomaly_num);
        prop_assert!(fast.binary == slow.binary, "masks differ");
        prop_assert_eq!(
            mebin::stable_interval(&slow.component_counts, min_interval_len),
            oracle::get_threshold(&slow.component_counts, min_interval_len)
        );
    }

    /// The stable-interval search equals the reference's Python loop on arbitrary sequences.
    #[test]
    fn stable_interval_equals_reference_loop(
        seq in prop::collection::vec(0u32..4, 1..70),
        min_len in 1usize..6,
    ) {
        prop_assert_eq!(mebin::stable_interval(&seq, min_len), oracle::get_threshold(&seq, min_len));
    }
}

/// Component counts the oracle finds on a hand-made map, so the oracle itself is checked too.
#[test]
fn oracle_counts_a_known_map() {
    // two 8×8 squares (levels 200 and 120) far apart on a 40×20 map of zeros
    let mut px = vec![0u8; 40 * 20];
    for y in 6..14 {
        for x in 4..12 {
            px[y * 40 + x] = 200;
        }
        for x in 26..34 {
            px[y * 40 + x] = 120;
        }
    }
    let map = GrayMap::from_u8(40, 20, &px);
    let range = SearchRange::new(0.0, 200.0).unwrap();
    let r = oracle::binarize_map(&map, &range, &Params::default());
    // normalised: 255 and 153; the 8×8 squares survive a 6×6 erosion
    let s = Params::default().scores();
    for (c, t) in r.component_counts.iter().zip(&s) {
        let want = if *t >= 255 {
            0
        } else if *t >= 153 {
            1
        } else {
            2
        };
        assert_eq!(*c, want, "threshold {t}");
    }
    assert_eq!(r.est_anomaly_num, 2);
    assert_eq!(r.threshold, 2); // int(3 * 200 / 255 + 0)
    assert_eq!(mebin::binarize_map(&map, &range, &Params::default()), r);
}

/// `external_rects` equals OpenCV's `findContours(RETR_EXTERNAL)` + `boundingRect` on 220 small
/// masks (random, rings, components nested in holes; tests/fixtures/external_contours.json).
#[test]
fn external_contours_match_opencv() {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/external_contours.json")).unwrap();
    let mut nested = 0;
    for (i, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
        let rows: Vec<&str> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let (h, w) = (rows.len(), rows[0].len());
        let mask: Vec<u8> = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| if b == b'#' { 255 } else { 0 }))
            .collect();
        let mut got: Vec<[usize; 4]> = mebin::crop::external_rects(&mask, w, h)
            .into_iter()
            .map(|(x, y, rw, rh)| [x, y, rw, rh])
            .collect();
        got.sort();
        let want: Vec<[usize; 4]> = serde_json::from_value(case["rects"].clone()).unwrap();
        assert_eq!(got, want, "case {i}:\n{}", rows.join("\n"));
        let all = oracle::count_components(&mask.iter().map(|&v| v != 0).collect::<Vec<_>>(), w, h)
            as usize;
        nested += usize::from(all > want.len());
    }
    assert!(
        nested >= 20,
        "the fixture exercises components inside holes ({nested} cases)"
    );
}

/// Boxes of the external 8-connected components, the slow way: label every component by flood
/// fill, flood the 4-connected background from the frame, keep components touching it.
fn naive_external_rects(mask: &[bool], w: usize, h: usize) -> Vec<[usize; 4]> {
    let mut label = vec![usize::MAX; w * h];
    let mut boxes: Vec<[usize; 4]> = Vec::new();
    for s in 0..w * h {
        if !mask[s] || label[s] != usize::MAX {
            continue;
        }
        let id = boxes.len();
        let mut b = [s % w, s / w, s % w, s / w];
        let mut stack = vec![s];
        label[s] = id;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    if mask[yy * w + xx] && label[yy * w + xx] == usize::MAX {
                        label[yy * w + xx] = id;
                        stack.push(yy * w + xx);
                    }
                }
            }
        }
        boxes.push(b);
    }
    let mut outer = vec![false; w * h];
    let mut stack: Vec<usize> = (0..w * h)
        .filter(|&i| !mask[i] && (i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1))
        .collect();
    stack.iter().for_each(|&i| outer[i] = true);
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        let mut next = Vec::new();
        if x > 0 {
            next.push(i - 1)
        }
        if x + 1 < w {
            next.push(i + 1)
        }
        if y > 0 {
            next.push(i - w)
        }
        if y + 1 < h {
            next.push(i + w)
        }
        for j in next {
            if !mask[j] && !outer[j] {
                outer[j] = true;
                stack.push(j);
            }
        }
    }
    let mut external = vec![false; boxes.len()];
    for i in 0..w * h {
        if !mask[i] {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let on_frame = x == 0 || y == 0 || x == w - 1 || y == h - 1;
        let by_outer = (x > 0 && outer[i - 1])
            || (x + 1 < w && outer[i + 1])
            || (y > 0 && outer[i - w])
            || (y + 1 < h && outer[i + w]);
        if on_frame || by_outer {
            external[label[i]] = true;
        }
    }
    let mut r: Vec<[usize; 4]> = boxes
        .iter()
        .zip(&external)
        .filter(|(_, &e)| e)
        .map(|(b, _)| [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1])
        .collect();
    r.sort();
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Run-based component boxes (and the hole check) equal a plain flood fill on random masks,
    /// including rows wider than the 8-byte steps and rings around other components.
    #[test]
    fn external_rects_equal_a_flood_fill(
        w in 1usize..70,
        h in 1usize..30,
        density in 0.05f64..0.9,
        rings in 0usize..3,
        seed in any::<u64>(),
    ) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut mask: Vec<bool> = (0..w * h).map(|_| rng.gen_bool(density * 0.5)).collect();
        for _ in 0..rings {
            if w < 5 || h < 5 {
                break;
            }
            let (x0, y0) = (rng.gen_range(0..w - 4), rng.gen_range(0..h - 4));
            let (x1, y1) = (rng.gen_range(x0 + 4..w), rng.gen_range(y0 + 4..h));
            for x in x0..=x1 {
                mask[y0 * w + x] = true;
                mask[y1 * w + x] = true;
            }
            for y in y0..=y1 {
                mask[y * w + x0] = true;
                mask[y * w + x1] = true;
            }
            for y in y0 + 1..y1 {
                for x in x0 + 1..x1 {
                    mask[y * w + x] = (x + y) % 3 == 0 && x > x0 + 1 && x + 1 < x1 && y > y0 + 1 && y + 1 < y1;
                }
            }
        }
        let bytes: Vec<u8> = mask.iter().map(|&b| if b { 255 } else { 0 }).collect();
        let mut got: Vec<[usize; 4]> =
            mebin::crop::external_rects(&bytes, w, h).into_iter().map(|(x, y, rw, rh)| [x, y, rw, rh]).collect();
        got.sort();
        prop_assert_eq!(got, naive_external_rects(&mask, w, h));
    }
}
