//! The reference algorithm, step by step as `_MEBin.py` runs it: normalise the map, and for each
//! threshold binarize, erode (6×6 window, border never erodes) and label 8-connected components;
//! then `get_threshold` as its Python loop and dicts do. Slow on purpose: it shares no trick with
//! the fast path ([`super::fast`]) and is the oracle the property tests compare it against.

use image::GrayImage;

use super::{BitDepth, GrayMap, MapResult, Params, SearchRange, ERODE_KERNEL};

/// `cv2.erode(bin, ones(k, k))` on a 0/1 image: a pixel stays on when every pixel of its window
/// (offsets −k/2 ..= k−1−k/2) that lies inside the image is on.
pub fn erode(bin: &[bool], width: usize, height: usize, k: usize) -> Vec<bool> {
    let lo = (k / 2) as isize;
    let hi = k as isize - 1 - lo;
    let mut out = vec![false; bin.len()];
    for y in 0..height as isize {
        for x in 0..width as isize {
            let mut on = true;
            'window: for dy in -lo..=hi {
                for dx in -lo..=hi {
                    let (yy, xx) = (y + dy, x + dx);
                    if yy >= 0
                        && xx >= 0
                        && yy < height as isize
                        && xx < width as isize
                        && !bin[(yy * width as isize + xx) as usize]
                    {
                        on = false;
                        break 'window;
                    }
                }
            }
            out[(y * width as isize + x) as usize] = on;
        }
    }
    out
}

/// Number of 8-connected components of the on pixels (`connectedComponents(.., 8) - 1`), by
/// flood fill.
pub fn count_components(bin: &[bool], width: usize, height: usize) -> u32 {
    let mut seen = vec![false; bin.len()];
    let mut count = 0;
    let mut stack = Vec::new();
    for start in 0..bin.len() {
        if !bin[start] || seen[start] {
            continue;
        }
        count += 1;
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % width) as isize, (i / width) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (xx, yy) = (x + dx, y + dy);
                    if xx < 0 || yy < 0 || xx >= width as isize || yy >= height as isize {
                        continue;
                    }
                    let j = (yy * width as isize + xx) as usize;
                    if bin[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
    }
    count
}

/// The reference's `get_threshold` loop, written as its Python reads: a dict from count to the
/// intervals found (insertion-ordered), `max` over the longest length per count, then the last of
/// the stably sorted intervals. Returns `(end index, count)`.
pub fn get_threshold(seq: &[u32], min_interval_len: usize) -> Option<(usize, u32)> {
    let mut interval_result: Vec<(u32, Vec<(usize, usize)>)> = Vec::new();
    let mut current = 0;
    while current < seq.len() {
        let start = current;
        let mut end = current;
        if seq[start] != 0 {
            while end < seq.len() - 1 && seq[end] == seq[end + 1] {
                end += 1;
                current += 1;
            }
            if end - start + 1 >= min_interval_len {
                match interval_result.iter_mut().find(|(c, _)| *c == seq[start]) {
                    Some((_, v)) => v.push((start, end)),
                    None => interval_result.push((seq[start], vec![(start, end)])),
                }
            }
        }
        current += 1;
    }
    if interval_result.is_empty() {
        return None;
    }
    let count_result: Vec<(u32, usize)> = interval_result
        .iter()
        .map(|(c, v)| (*c, v.iter().map(|x| x.1 - x.0).max().unwrap_or(0)))
        .collect();
    // Python's max returns the first maximal item.
    let mut est = count_result[0];
    for &c in &count_result[1..] {
        if c.1 > est.1 {
            est = c;
        }
    }
    let mut intervals = interval_result
        .iter()
        .find(|(c, _)| *c == est.0)
        .map(|(_, v)| v.clone())?;
    intervals.sort_by_key(|x| x.1 - x.0); // stable, like Python's sorted
    let longest = *intervals.last()?;
    Some((longest.1, est.0))
}

/// MEBin on one map the reference's way (slow). Same result as [`super::binarize_map`].
pub fn binarize_map(map: &GrayMap, range: &SearchRange, params: &Params) -> MapResult {
    let (w, h) = (map.width, map.height);
    let norm: Vec<f64> = map
        .pixels
        .iter()
        .map(|&v| range.normalise(v as f64))
        .collect();
    let mut counts = Vec::new();
    for score in params.scores() {
        let bin: Vec<bool> = norm.iter().map(|&n| n > score as f64).collect();
        let bin = if params.erode {
            erode(&bin, w, h, ERODE_KERNEL)
        } else {
            bin
        };
        counts.push(count_components(&bin, w, h));
    }
    let (threshold, est) = match get_threshold(&counts, params.min_interval_len) {
        Some((end, count)) => {
            // The interval's run is walked back here on its own, not through the fast path's
            // helper, so that the property tests compare two derivations.
            let mut start = end;
            while start > 0 && counts[start - 1] == count {
                start -= 1;
            }
            let index = start
                + ((end - start) as f64 * params.interval_position.clamp(0.0, 1.0)).round()
                    as usize;
            let score = 255 - index as u32 * params.sample_rate;
            (range.raw_threshold(score), count as usize)
        }
        None => (no_anomaly_threshold(map.depth), 0),
    };
    let bin: Vec<bool> = map.pixels.iter().map(|&v| v as u32 > threshold).collect();
    let bin = if params.erode {
        erode(&bin, w, h, ERODE_KERNEL)
    } else {
        bin
    };
    let binary = GrayImage::from_raw(
        w as u32,
        h as u32,
        bin.iter().map(|&b| if b { 255 } else { 0 }).collect(),
    )
    .expect("one byte per pixel");
    MapResult {
        threshold,
        est_anomaly_num: est,
        component_counts: counts,
        binary,
    }
}

fn no_anomaly_threshold(depth: BitDepth) -> u32 {
    depth.max_level() as u32
}
