//! The confusion matrix as a picture: true classes down, predicted clusters across, each cell
//! holding its count on a colour that deepens with the count.

use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut};
use imageproc::rect::Rect;

use super::font::{draw_text, fit, line_height, text_width};

/// Text scale of the whole picture.
const SCALE: u32 = 2;
pub const CELL_W: u32 = 64;
pub const CELL_H: u32 = 32;
const PAD: u32 = 10;
/// Row labels are cut to this many pixels.
const MAX_LABEL_W: u32 = 360;

pub const PAPER: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const GRID: Rgb<u8> = Rgb([200, 200, 200]);
/// The colour of the largest count; zero is white and counts in between are linear.
pub const FULL: Rgb<u8> = Rgb([8, 48, 107]);

/// The cell colour of `count` when the largest count is `max`.
pub fn cell_color(count: usize, max: usize) -> Rgb<u8> {
    let t = if max == 0 {
        0.0
    } else {
        count as f64 / max as f64
    };
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    Rgb([
        mix(PAPER[0], FULL[0]),
        mix(PAPER[1], FULL[1]),
        mix(PAPER[2], FULL[2]),
    ])
}

/// Layout of a `rows`×`cols` matrix whose longest row label is `label_w` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Top-left corner of cell (0, 0).
    pub x0: u32,
    pub y0: u32,
    pub width: u32,
    pub height: u32,
}

impl Layout {
    pub fn new(rows: usize, cols: usize, label_w: u32) -> Layout {
        let title_h = line_height(SCALE) + PAD;
        let x0 = PAD + label_w.min(MAX_LABEL_W) + PAD;
        // Title line, then the column labels line.
        let y0 = PAD + title_h + line_height(SCALE) + PAD;
        let axis_w = text_width("true class \\ cluster", SCALE);
        let width = (x0 + cols as u32 * CELL_W + PAD).max(PAD + axis_w + PAD);
        let height = y0 + rows as u32 * CELL_H + PAD;
        Layout {
            x0,
            y0,
            width,
            height,
        }
    }

    /// Top-left corner of cell (`r`, `c`).
    pub fn cell(&self, r: usize, c: usize) -> (u32, u32) {
        (self.x0 + c as u32 * CELL_W, self.y0 + r as u32 * CELL_H)
    }
}

/// Draws `counts[row][col]` with `rows` labels down the left and `cols` labels across the top.
pub fn confusion_image(rows: &[String], cols: &[String], counts: &[Vec<usize>]) -> RgbImage {
    let labels: Vec<String> = rows.iter().map(|r| fit(r, MAX_LABEL_W, SCALE)).collect();
    let label_w = labels
        .iter()
        .map(|l| text_width(l, SCALE))
        .max()
        .unwrap_or(0);
    let lay = Layout::new(rows.len(), cols.len(), label_w);
    let mut img = RgbImage::from_pixel(lay.width, lay.height, PAPER);
    draw_text(
        &mut img,
        PAD as i64,
        PAD as i64,
        "true class \\ cluster",
        SCALE,
        INK,
    );
    let max = counts.iter().flatten().copied().max().unwrap_or(0);
    let text_y = (CELL_H - line_height(SCALE)) / 2;
    for (c, name) in cols.iter().enumerate() {
        let name = fit(name, CELL_W - 4, SCALE);
        let (x, _) = lay.cell(0, c);
        let x = x + (CELL_W - text_width(&name, SCALE)) / 2;
        let y = lay.y0 - PAD - line_height(SCALE);
        draw_text(&mut img, x as i64, y as i64, &name, SCALE, INK);
    }
    for (r, label) in labels.iter().enumerate() {
        let (_, y) = lay.cell(r, 0);
        let x = lay.x0 - PAD - text_width(label, SCALE);
        draw_text(&mut img, x as i64, (y + text_y) as i64, label, SCALE, INK);
        for c in 0..cols.len() {
            let n = counts
                .get(r)
                .and_then(|row| row.get(c))
                .copied()
                .unwrap_or(0);
            let (x, y) = lay.cell(r, c);
            let fill = cell_color(n, max);
            draw_filled_rect_mut(
                &mut img,
                Rect::at(x as i32, y as i32).of_size(CELL_W, CELL_H),
                fill,
            );
            draw_hollow_rect_mut(
                &mut img,
                Rect::at(x as i32, y as i32).of_size(CELL_W, CELL_H),
                GRID,
            );
            // Light text on dark cells.
            let luma = 0.299 * fill[0] as f64 + 0.587 * fill[1] as f64 + 0.114 * fill[2] as f64;
            let ink = if luma < 128.0 { PAPER } else { INK };
            let s = n.to_string();
            let tx = x + (CELL_W.saturating_sub(text_width(&s, SCALE))) / 2;
            draw_text(&mut img, tx as i64, (y + text_y) as i64, &s, SCALE, ink);
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_white_to_the_full_colour() {
        assert_eq!(cell_color(0, 9), PAPER);
        assert_eq!(cell_color(9, 9), FULL);
        assert_eq!(cell_color(0, 0), PAPER);
        let mid = cell_color(5, 10);
        assert!(mid[0] < PAPER[0] && mid[0] > FULL[0]);
    }

    #[test]
    fn picture_size_and_cell_colours() {
        let rows = vec![
            "crack".to_string(),
            "hole".to_string(),
            "scratch".to_string(),
        ];
        let cols: Vec<String> = (0..4).map(|k| format!("c{k}")).collect();
        let counts = vec![vec![5, 0, 1, 0], vec![0, 7, 0, 0], vec![2, 0, 0, 3]];
        let img = confusion_image(&rows, &cols, &counts);
        let lay = Layout::new(3, 4, text_width("scratch", SCALE));
        assert_eq!(img.dimensions(), (lay.width, lay.height));
        assert_eq!(lay.width, lay.x0 + 4 * CELL_W + PAD);
        assert_eq!(lay.height, lay.y0 + 3 * CELL_H + PAD);
        // A corner pixel inside each cell (away from the grid line and the digits).
        let at = |r, c| {
            let (x, y) = lay.cell(r, c);
            *img.get_pixel(x + 2, y + 2)
        };
        assert_eq!(at(1, 1), FULL, "the largest count is the full colour");
        assert_eq!(at(0, 1), PAPER, "zero is white");
        assert_eq!(at(0, 0), cell_color(5, 7));
        // The largest cell's count is written in white on the dark fill.
        let (x, y) = lay.cell(1, 1);
        let white_text = (x + 4..x + CELL_W - 4)
            .flat_map(|px| (y + 4..y + CELL_H - 4).map(move |py| (px, py)))
            .any(|(px, py)| *img.get_pixel(px, py) == PAPER);
        assert!(white_text);
    }
}
