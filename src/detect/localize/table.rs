//! The plain-text table of a [`LocReport`]: one row per type and the overall row, columns
//! aligned for a terminal.

use super::{LocReport, TypeLoc};

const HEADER: [&str; 10] = [
    "type",
    "maps",
    "with defect",
    "argmax in defect",
    "best IoU",
    "crops touching",
    "images touching",
    "no interval",
    "pixel AUROC",
    "AUPRO",
];

const LEGEND: &str = "\
with defect: maps with a defect in their mask, the only ones the next five columns measure
  (normal maps count only in the pixel metrics);
argmax in defect: the map's maximum lies within the mask dilated by 2% of the image side;
best IoU: mean over maps of the IoU at each map's best threshold;
crops touching: MEBin's crops (default settings) that hold a defect pixel;
images touching: maps with at least one such crop;
no interval: maps without a stable MEBin interval, cropped around their peak (binarize's default).
";

fn percent(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn decimal(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}

fn cells(r: &TypeLoc) -> [String; 10] {
    let m = r.mebin.as_ref();
    [
        // A flat folder of maps has no type folder.
        if r.type_name.is_empty() {
            "(flat)".to_string()
        } else {
            r.type_name.clone()
        },
        r.maps.to_string(),
        r.localized_maps.to_string(),
        percent(r.argmax_in_defect_rate),
        decimal(r.mean_best_iou),
        m.map_or("n/a".into(), |m| {
            format!(
                "{} ({}/{})",
                percent(m.crops_touching_rate),
                m.crops_touching,
                m.crops
            )
        }),
        m.map_or("n/a".into(), |m| percent(m.images_touching_rate)),
        m.map_or("n/a".into(), |m| m.no_interval.to_string()),
        decimal(r.pixel_auroc),
        decimal(r.aupro),
    ]
}

/// The table, with a legend line; "n/a" where a value is undefined (no defective map, no MEBin
/// run without images, no defect or no normal pixel).
pub fn render_table(report: &LocReport) -> String {
    let mut rows: Vec<[String; 10]> = vec![HEADER.map(String::from)];
    rows.extend(report.types.iter().map(cells));
    rows.push(cells(&report.overall));
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                // The type column reads left-aligned, the numbers right-aligned.
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        if i == rows.len() - 1 {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(rule));
            out.push('\n');
        }
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(LEGEND);
    out
}
