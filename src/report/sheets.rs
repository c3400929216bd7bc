//! Contact sheets: one thumbnail tile per image (the original with the anomaly mask outlined and
//! the crop boxes drawn, or the crop with its mask outlined when the original is unknown), laid
//! out in a grid under a header naming the cluster.

use std::path::PathBuf;

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut};
use imageproc::rect::Rect;

use super::font::{draw_text, fit, line_height, text_width};
use crate::mebin::crop::CropBox;

/// Thumbnail side in pixels (the image is fitted inside, keeping its aspect ratio).
pub const THUMB: u32 = 128;
/// Coloured frame around each thumbnail, and a dark gap inside it so that a crop box along the
/// image border does not blend into the frame.
const FRAME: u32 = 2;
const INSET: u32 = 1;
/// Caption lines under each thumbnail (scale 1).
const CAPTION_LINES: u32 = 2;
const CAPTION_GAP: u32 = 2;
/// Space between cells and around the grid.
const GAP: u32 = 6;
/// Header text scale and lines.
const HEADER_SCALE: u32 = 2;
const HEADER_LINES: u32 = 2;
/// At most this many tiles per row.
pub const MAX_COLUMNS: u32 = 8;

pub const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
const TEXT: Rgb<u8> = Rgb([230, 230, 230]);
const DIM_TEXT: Rgb<u8> = Rgb([160, 160, 160]);
const WRONG_TEXT: Rgb<u8> = Rgb([255, 120, 120]);
/// Frame colours: the image's true class is the cluster's matched class, is another class, or
/// labels are unknown.
const RIGHT: Rgb<u8> = Rgb([60, 180, 75]);
const WRONG: Rgb<u8> = Rgb([230, 40, 60]);
const UNKNOWN: Rgb<u8> = Rgb([110, 110, 110]);
/// Mask outline and crop boxes drawn on the thumbnails.
pub const OUTLINE: Rgb<u8> = Rgb([255, 40, 40]);
pub const BOX: Rgb<u8> = Rgb([255, 215, 0]);
/// The tile of an image that cannot be read.
pub const UNREADABLE: Rgb<u8> = Rgb([128, 128, 128]);

/// What a tile shows.
#[derive(Debug, Clone, PartialEq)]
pub enum TileSource {
    /// The original image, its binary mask (any size; scaled to the image) and its crop boxes in
    /// image pixels.
    Original {
        image: PathBuf,
        mask: PathBuf,
        boxes: Vec<CropBox>,
    },
    /// A crop and its mask (same size).
    Crop { image: PathBuf, mask: PathBuf },
}

/// Whether the image's true class agrees with its cluster's matched class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Right,
    Wrong,
    Unknown,
}

/// One image of a sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct TileSpec {
    pub source: TileSource,
    /// First caption line (the image name).
    pub name: String,
    /// Second caption line (confidence, true class when wrong).
    pub detail: String,
    pub verdict: Verdict,
}

/// Cell size: framed thumbnail plus caption.
pub fn cell_size() -> (u32, u32) {
    let w = THUMB + 2 * (FRAME + INSET);
    let h = w + CAPTION_LINES * (line_height(1) + CAPTION_GAP) + CAPTION_GAP;
    (w, h)
}

fn header_height() -> u32 {
    HEADER_LINES * (line_height(HEADER_SCALE) + 6) + GAP
}

/// Placement of `n` cells under a header whose longest line is `header_w` pixels wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub cols: u32,
    pub rows: u32,
    pub width: u32,
    pub height: u32,
}

impl Grid {
    pub fn new(n: usize, header_w: u32) -> Grid {
        let n = n as u32;
        let cols = n.clamp(1, MAX_COLUMNS);
        let rows = n.div_ceil(cols);
        let (cw, ch) = cell_size();
        let width = (GAP + cols * (cw + GAP)).max(header_w + 2 * GAP);
        let height = header_height() + rows * (ch + GAP) + GAP;
        Grid {
            cols,
            rows,
            width,
            height,
        }
    }

    /// Top-left corner of cell `i` (row-major).
    pub fn origin(&self, i: usize) -> (u32, u32) {
        let (cw, ch) = cell_size();
        let (c, r) = (i as u32 % self.cols, i as u32 / self.cols);
        (GAP + c * (cw + GAP), header_height() + r * (ch + GAP))
    }
}

/// Shrinks (or enlarges) a mask so that a target pixel is foreground when any source pixel it
/// covers is: a nearest-neighbour resize would drop thin or small defects at thumbnail scale,
/// and no crate offers this max-pooling resize.
pub fn max_pool_resize(mask: &GrayImage, tw: u32, th: u32) -> GrayImage {
    let (w, h) = mask.dimensions();
    let mut out = GrayImage::new(tw, th);
    if w == 0 || h == 0 {
        return out;
    }
    let span = |t: u32, n: u32, tn: u32| {
        let a = (t as u64 * n as u64 / tn as u64) as u32;
        let b = (((t + 1) as u64 * n as u64) / tn as u64) as u32;
        (a.min(n - 1), b.max(a + 1).min(n))
    };
    for ty in 0..th {
        let (y0, y1) = span(ty, h, th);
        for tx in 0..tw {
            let (x0, x1) = span(tx, w, tw);
            let on = (y0..y1).any(|y| (x0..x1).any(|x| mask.get_pixel(x, y).0[0] >= 128));
            if on {
                out.put_pixel(tx, ty, Luma([255]));
            }
        }
    }
    out
}

/// Paints the boundary of the mask's foreground into `img` at offset (`ox`, `oy`): pixels on
/// either side of a foreground/background edge, so the line stays visible on any image.
pub fn draw_outline(img: &mut RgbImage, mask: &GrayImage, ox: u32, oy: u32, color: Rgb<u8>) {
    let (w, h) = mask.dimensions();
    let on = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && x < w as i64
            && y < h as i64
            && mask.get_pixel(x as u32, y as u32)[0] > 0
    };
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let me = on(x, y);
            let edge = [(-1, 0), (1, 0), (0, -1), (0, 1)]
                .iter()
                .any(|(dx, dy)| on(x + dx, y + dy) != me);
            // The image border counts as background only for foreground pixels.
            let border = me && (x == 0 || y == 0 || x == w as i64 - 1 || y == h as i64 - 1);
            if edge || border {
                let (px, py) = (ox + x as u32, oy + y as u32);
                if px < img.width() && py < img.height() {
                    img.put_pixel(px, py, color);
                }
            }
        }
    }
}

/// Size of `(w, h)` fitted inside `THUMB`×`THUMB`, at least one pixel each way.
pub fn fit_size(w: u32, h: u32) -> (u32, u32) {
    let s = (THUMB as f64 / w.max(1) as f64).min(THUMB as f64 / h.max(1) as f64);
    let tw = ((w as f64 * s).round() as u32).clamp(1, THUMB);
    let th = ((h as f64 * s).round() as u32).clamp(1, THUMB);
    (tw, th)
}

fn resize_rgb(img: &RgbImage, tw: u32, th: u32) -> RgbImage {
    if tw <= img.width() && th <= img.height() {
        // Box averaging: fast and alias-free when shrinking large originals.
        imageops::thumbnail(img, tw, th)
    } else {
        imageops::resize(img, tw, th, FilterType::Triangle)
    }
}

// Through the pipeline's reader, which goes by the file's content: a JPEG named .png (some
// datasets ship them so) is trained on, so it must be drawn too (`image::open` goes by extension).
fn read_rgb(path: &std::path::Path) -> Result<RgbImage, String> {
    crate::imageio::decode(path)
        .map(|i| i.to_rgb8())
        .map_err(|e| format!("{e}; drawn as a grey tile"))
}

fn read_mask(path: &std::path::Path) -> Result<GrayImage, String> {
    crate::imageio::decode(path)
        .map(|i| i.to_luma8())
        .map_err(|e| format!("{e} (the mask); drawn without its outline"))
}

/// The `THUMB`×`THUMB` picture of a tile, letterboxed on the background, and a warning when
/// something could not be read (an unreadable image gives a grey square; an unreadable mask
/// leaves the image without its outline).
pub fn thumbnail(source: &TileSource) -> (RgbImage, Option<String>) {
    let mut out = RgbImage::from_pixel(THUMB, THUMB, BACKGROUND);
    let (image, mask, boxes) = match source {
        TileSource::Original { image, mask, boxes } => (image, mask, boxes.as_slice()),
        TileSource::Crop { image, mask } => (image, mask, &[][..]),
    };
    let img = match read_rgb(image) {
        Ok(i) => i,
        Err(e) => {
            draw_filled_rect_mut(&mut out, Rect::at(0, 0).of_size(THUMB, THUMB), UNREADABLE);
            let msg = "unreadable";
            let x = (THUMB - text_width(msg, 1)) / 2;
            draw_text(&mut out, x as i64, (THUMB / 2) as i64 - 3, msg, 1, TEXT);
            return (out, Some(e));
        }
    };
    let (w, h) = img.dimensions();
    let (tw, th) = fit_size(w, h);
    let (ox, oy) = ((THUMB - tw) / 2, (THUMB - th) / 2);
    imageops::replace(&mut out, &resize_rgb(&img, tw, th), ox as i64, oy as i64);
    let s = (tw as f64 / w.max(1) as f64, th as f64 / h.max(1) as f64);
    for b in boxes {
        let x0 = (b.left * s.0).floor().max(0.0) as i32;
        let y0 = (b.up * s.1).floor().max(0.0) as i32;
        let x1 = ((b.right * s.0).ceil() as i32).clamp(x0 + 1, tw as i32);
        let y1 = ((b.bottom * s.1).ceil() as i32).clamp(y0 + 1, th as i32);
        let r =
            Rect::at(ox as i32 + x0, oy as i32 + y0).of_size((x1 - x0) as u32, (y1 - y0) as u32);
        draw_hollow_rect_mut(&mut out, r, BOX);
    }
    let warning = match read_mask(mask) {
        Ok(m) => {
            draw_outline(&mut out, &max_pool_resize(&m, tw, th), ox, oy, OUTLINE);
            None
        }
        Err(e) => Some(e),
    };
    (out, warning)
}

/// A framed, captioned cell for one image, and a warning when a file could not be read.
pub fn tile(spec: &TileSpec) -> (RgbImage, Option<String>) {
    let (thumb, warning) = thumbnail(&spec.source);
    let (cw, ch) = cell_size();
    let mut cell = RgbImage::from_pixel(cw, ch, BACKGROUND);
    let frame = match spec.verdict {
        Verdict::Right => RIGHT,
        Verdict::Wrong => WRONG,
        Verdict::Unknown => UNKNOWN,
    };
    draw_filled_rect_mut(&mut cell, Rect::at(0, 0).of_size(cw, cw), frame);
    let inner = cw - 2 * FRAME;
    let at = FRAME as i32;
    draw_filled_rect_mut(
        &mut cell,
        Rect::at(at, at).of_size(inner, inner),
        BACKGROUND,
    );
    let at = (FRAME + INSET) as i64;
    imageops::replace(&mut cell, &thumb, at, at);
    let line = |k: u32| (cw + CAPTION_GAP + k * (line_height(1) + CAPTION_GAP)) as i64;
    draw_text(&mut cell, 1, line(0), &fit(&spec.name, cw - 2, 1), 1, TEXT);
    let detail_color = if spec.verdict == Verdict::Wrong {
        WRONG_TEXT
    } else {
        DIM_TEXT
    };
    draw_text(
        &mut cell,
        1,
        line(1),
        &fit(&spec.detail, cw - 2, 1),
        1,
        detail_color,
    );
    (cell, warning)
}

/// Lays out finished cells under a two-line header.
pub fn sheet(header: [&str; 2], cells: &[RgbImage]) -> RgbImage {
    let header_w = header
        .iter()
        .map(|l| text_width(l, HEADER_SCALE))
        .max()
        .unwrap_or(0);
    let grid = Grid::new(cells.len(), header_w);
    let mut img = RgbImage::from_pixel(grid.width, grid.height, BACKGROUND);
    for (k, line) in header.iter().enumerate() {
        let y = GAP + k as u32 * (line_height(HEADER_SCALE) + 6);
        let color = if k == 0 { TEXT } else { DIM_TEXT };
        draw_text(&mut img, GAP as i64, y as i64, line, HEADER_SCALE, color);
    }
    for (i, c) in cells.iter().enumerate() {
        let (x, y) = grid.origin(i);
        imageops::replace(&mut img, c, x as i64, y as i64);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_cells_without_overlap_inside_the_sheet() {
        let (cw, ch) = cell_size();
        for n in [0usize, 1, 7, 8, 9, 64] {
            let g = Grid::new(n, 10);
            assert_eq!(g.cols, (n as u32).clamp(1, MAX_COLUMNS));
            assert_eq!(g.rows, (n as u32).div_ceil(g.cols));
            for i in 0..n {
                let (x, y) = g.origin(i);
                assert!(x + cw <= g.width && y + ch <= g.height, "n {n} cell {i}");
                assert!(y >= header_height());
                for j in 0..i {
                    let (a, b) = g.origin(j);
                    let apart = x >= a + cw || a >= x + cw || y >= b + ch || b >= y + ch;
                    assert!(apart, "cells {i} and {j} overlap");
                }
            }
        }
        assert_eq!(Grid::new(64, 0).rows, 8);
        // A long header widens the sheet.
        assert_eq!(Grid::new(1, 2000).width, 2000 + 2 * GAP);
    }

    #[test]
    fn max_pool_keeps_a_one_pixel_defect() {
        let mut m = GrayImage::new(100, 100);
        m.put_pixel(57, 13, Luma([255]));
        let small = max_pool_resize(&m, 10, 10);
        let on: Vec<_> = small
            .enumerate_pixels()
            .filter(|p| p.2[0] == 255)
            .map(|p| (p.0, p.1))
            .collect();
        assert_eq!(on, vec![(5, 1)]);
        // Enlarging is a nearest-neighbour copy.
        let big = max_pool_resize(&small, 20, 20);
        assert_eq!(big.pixels().filter(|p| p[0] == 255).count(), 4);
    }

    #[test]
    fn outline_surrounds_the_mask_and_spares_the_inside() {
        let mut m = GrayImage::new(20, 20);
        for y in 5..15 {
            for x in 5..15 {
                m.put_pixel(x, y, Luma([255]));
            }
        }
        let mut img = RgbImage::new(20, 20);
        draw_outline(&mut img, &m, 0, 0, OUTLINE);
        assert_eq!(*img.get_pixel(5, 10), OUTLINE);
        assert_eq!(*img.get_pixel(4, 10), OUTLINE);
        assert_eq!(*img.get_pixel(10, 10), Rgb([0, 0, 0]));
        assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]));
    }

    #[test]
    fn tiles_draw_boxes_outlines_and_grey_for_unreadable_files() {
        let d = tempfile::tempdir().unwrap();
        let img = RgbImage::from_pixel(256, 128, Rgb([0, 0, 200]));
        let mut mask = GrayImage::new(256, 128);
        for y in 40..80 {
            for x in 100..160 {
                mask.put_pixel(x, y, Luma([255]));
            }
        }
        img.save(d.path().join("i.png")).unwrap();
        mask.save(d.path().join("m.png")).unwrap();
        let src = TileSource::Original {
            image: d.path().join("i.png"),
            mask: d.path().join("m.png"),
            boxes: vec![CropBox::from([20.0, 10.0, 60.0, 50.0])],
        };
        let (t, warn) = thumbnail(&src);
        assert!(warn.is_none());
        // 256x128 fits as 128x64, centred vertically.
        assert_eq!(*t.get_pixel(64, 10), BACKGROUND);
        assert_eq!(*t.get_pixel(64, 40), Rgb([0, 0, 200]));
        assert!(t.pixels().any(|p| *p == BOX));
        assert!(t.pixels().any(|p| *p == OUTLINE));

        let missing = TileSource::Crop {
            image: d.path().join("nope.png"),
            mask: d.path().join("m.png"),
        };
        let spec = TileSpec {
            source: missing,
            name: "nope".into(),
            detail: "0.50".into(),
            verdict: Verdict::Wrong,
        };
        let (cell, warn) = tile(&spec);
        assert!(warn.unwrap().contains("nope.png"));
        assert_eq!(cell.dimensions(), cell_size());
        assert_eq!(*cell.get_pixel(0, 0), WRONG);
        assert_eq!(*cell.get_pixel(FRAME, FRAME), BACKGROUND);
        assert_eq!(
            *cell.get_pixel(FRAME + INSET + 5, FRAME + INSET + 5),
            UNREADABLE
        );
    }

    #[test]
    fn sheet_size_follows_the_grid() {
        let cells = vec![RgbImage::new(cell_size().0, cell_size().1); 10];
        let s = sheet(["cluster 0", "x"], &cells);
        let g = Grid::new(10, text_width("cluster 0", HEADER_SCALE));
        assert_eq!(s.dimensions(), (g.width, g.height));
    }
}
