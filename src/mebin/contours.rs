//! External contours' bounding boxes of a binary mask, as OpenCV's `findContours(RETR_EXTERNAL)`
//! followed by `boundingRect` gives them. Only the boxes are needed, so instead of tracing
//! contours this labels 8-connected components by row runs with a union-find and checks holes
//! only when a box lies inside another (tested against OpenCV's output and a flood fill in
//! `tests/cli/binarize.rs`).

use super::union_find::find_root;

/// Bounding rectangles `(x, y, w, h)` of `cv2.findContours(mask, RETR_EXTERNAL)`: one per
/// 8-connected foreground component (non-zero pixels) that does not sit inside a hole of another
/// component. A component is inside a hole exactly when it does not touch the 4-connected
/// background that reaches the image frame. Only a component whose box lies strictly inside
/// another's can be in a hole; when there is none (the usual case) the boxes of all components
/// are the answer, else the labelled check runs.
pub fn external_rects(
    mask: &[u8],
    width: usize,
    height: usize,
) -> Vec<(usize, usize, usize, usize)> {
    assert_eq!(
        mask.len(),
        width * height,
        "external_rects: wrong pixel count"
    );
    let boxes = component_boxes(mask, width, height);
    let strictly_inside =
        |a: &[usize; 4], o: &[usize; 4]| o[0] < a[0] && o[1] < a[1] && a[2] < o[2] && a[3] < o[3];
    let any_inside = boxes
        .iter()
        .any(|a| boxes.iter().any(|o| strictly_inside(a, o)));
    let boxes = if any_inside {
        external_boxes_labelled(mask, width, height)
    } else {
        boxes
    };
    boxes
        .iter()
        .map(|b| (b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1))
        .collect()
}

/// True when some byte of `v` is zero.
fn has_zero_byte(v: u64) -> bool {
    (v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080) != 0
}

fn word(row: &[u8], x: usize) -> u64 {
    u64::from_ne_bytes(row[x..x + 8].try_into().expect("8 bytes"))
}

/// Appends the runs `[start, end)` of non-zero bytes of `row`, stepping 8 bytes at a time through
/// long runs of zeros or non-zeros.
fn row_runs(row: &[u8], out: &mut Vec<(u32, u32)>) {
    let n = row.len();
    let mut x = 0;
    while x < n {
        while x + 8 <= n && word(row, x) == 0 {
            x += 8;
        }
        while x < n && row[x] == 0 {
            x += 1;
        }
        if x >= n {
            break;
        }
        let start = x;
        while x + 8 <= n && !has_zero_byte(word(row, x)) {
            x += 8;
        }
        while x < n && row[x] != 0 {
            x += 1;
        }
        out.push((start as u32, x as u32));
    }
}

/// Bounding boxes `[x0, y0, x1, y1]` (inclusive) of the 8-connected components of non-zero
/// pixels, in raster order of their first pixel. Run-based labelling: runs of a row join the runs
/// of the row above that they touch (diagonals included), with a union-find over runs.
fn component_boxes(mask: &[u8], width: usize, height: usize) -> Vec<[usize; 4]> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let mut run_y: Vec<u32> = Vec::new();
    let mut parent: Vec<u32> = Vec::new();
    let mut prev = 0..0;
    for y in 0..height {
        let first = runs.len();
        row_runs(&mask[y * width..(y + 1) * width], &mut runs);
        let cur = first..runs.len();
        for r in cur.clone() {
            parent.push(r as u32);
            run_y.push(y as u32);
        }
        // Two pointers over the touching runs of the row above.
        let (mut i, mut j) = (prev.start, cur.start);
        while i < prev.end && j < cur.end {
            let (a0, a1) = runs[i];
            let (b0, b1) = runs[j];
            if a0 <= b1 && b0 <= a1 {
                let (ra, rb) = (
                    find_root(&mut parent, i as u32),
                    find_root(&mut parent, j as u32),
                );
                if ra != rb {
                    parent[ra.max(rb) as usize] = ra.min(rb);
                }
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        prev = cur;
    }
    let mut slot: Vec<u32> = vec![u32::MAX; runs.len()];
    let mut boxes: Vec<[usize; 4]> = Vec::new();
    for r in 0..runs.len() {
        let root = find_root(&mut parent, r as u32) as usize;
        let (x0, x1, y) = (
            runs[r].0 as usize,
            runs[r].1 as usize - 1,
            run_y[r] as usize,
        );
        if slot[root] == u32::MAX {
            slot[root] = boxes.len() as u32;
            boxes.push([x0, y, x1, y]);
        } else {
            let b = &mut boxes[slot[root] as usize];
            *b = [b[0].min(x0), b[1].min(y), b[2].max(x1), b[3].max(y)];
        }
    }
    boxes
}

/// The boxes of the external components only, with a label per pixel (the case where some
/// component may sit inside another's hole).
fn external_boxes_labelled(mask: &[u8], width: usize, height: usize) -> Vec<[usize; 4]> {
    const NONE: u32 = u32::MAX;
    let mut label = vec![NONE; mask.len()];
    let mut boxes: Vec<[usize; 4]> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if mask[start] == 0 || label[start] != NONE {
            continue;
        }
        let id = boxes.len() as u32;
        let (sx, sy) = (start % width, start / width);
        let mut b = [sx, sy, sx, sy];
        label[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
            for yy in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let j = yy * width + xx;
                    if mask[j] != 0 && label[j] == NONE {
                        label[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        boxes.push(b);
    }
    let outer = outer_background(mask, width, height);
    let touches_outer = |x: usize, y: usize| {
        [(0isize, -1isize), (0, 1), (-1, 0), (1, 0)]
            .iter()
            .any(|&(dx, dy)| {
                let (xx, yy) = (x as isize + dx, y as isize + dy);
                xx < 0
                    || yy < 0
                    || xx >= width as isize
                    || yy >= height as isize
                    || outer[yy as usize * width + xx as usize]
            })
    };
    boxes
        .iter()
        .enumerate()
        .filter(|(id, b)| {
            (b[1]..=b[3]).any(|y| {
                (b[0]..=b[2]).any(|x| label[y * width + x] == *id as u32 && touches_outer(x, y))
            })
        })
        .map(|(_, b)| *b)
        .collect()
}

/// Background pixels 4-connected to the image frame.
fn outer_background(mask: &[u8], width: usize, height: usize) -> Vec<bool> {
    let mut outer = vec![false; mask.len()];
    let mut stack: Vec<usize> = Vec::new();
    let seed = |i: usize, outer: &mut Vec<bool>, stack: &mut Vec<usize>| {
        if mask[i] == 0 && !outer[i] {
            outer[i] = true;
            stack.push(i);
        }
    };
    for x in 0..width {
        seed(x, &mut outer, &mut stack);
        seed((height - 1) * width + x, &mut outer, &mut stack);
    }
    for y in 0..height {
        seed(y * width, &mut outer, &mut stack);
        seed(y * width + width - 1, &mut outer, &mut stack);
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % width, i / width);
        let mut push = |j: usize| {
            if mask[j] == 0 && !outer[j] {
                outer[j] = true;
                stack.push(j);
            }
        };
        if x > 0 {
            push(i - 1);
        }
        if x + 1 < width {
            push(i + 1);
        }
        if y > 0 {
            push(i - width);
        }
        if y + 1 < height {
            push(i + width);
        }
    }
    outer
}
