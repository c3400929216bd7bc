//! `report.html`: one self-contained page (inline CSS, pictures by relative path) summarising a
//! run's clusters and scores. Every name that comes from the user's files is escaped.

use std::fmt::Write;

use super::ClusterSummary;
use crate::infer::predict::Scores;
use crate::metrics::Evaluation;

/// Everything the page shows.
pub struct Page<'a> {
    pub category: &'a str,
    pub class_names: &'a [String],
    pub images: usize,
    pub crops: usize,
    pub clusters: &'a [ClusterSummary],
    /// Relative path of each cluster's sheet, in the order of `clusters`.
    pub sheets: &'a [String],
    /// Thumbnails on each sheet.
    pub shown: &'a [usize],
    pub scores: Option<&'a Scores>,
    /// Relative path of the confusion picture.
    pub confusion: Option<&'a str>,
    /// What the thumbnails show.
    pub source_note: &'a str,
    /// Files that could not be read.
    pub warnings: usize,
    /// The class each cluster matched in training; empty when unknown.
    pub trained_names: &'a [String],
}

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em;\
color:#222;background:#fafafa;max-width:1300px}h1{margin-bottom:.2em}h2{margin-top:1.6em;\
border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid \
#ccc;padding:.3em .7em;text-align:right}th{background:#eee}td.l,th.l{text-align:left}\
.note{color:#666}.cluster{margin:1.2em 0 2em}.cluster img,.conf img{max-width:100%;\
border:1px solid #ccc}.warn{color:#a40}.bad{color:#b00}";

fn class_name(names: &[String], idx: usize) -> String {
    match names.get(idx) {
        Some(n) => escape(n),
        None => format!("<i>unmatched {idx}</i>"),
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn scores_table(s: &Scores) -> String {
    let mut t =
        String::from("<table><tr><th class=l>level</th><th>NMI</th><th>ARI</th><th>F1</th></tr>");
    for (name, e) in [("image", &s.image), ("crop (sub-image)", &s.sub_image)] {
        let _ = write!(
            t,
            "<tr><td class=l>{name}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            e.nmi, e.ari, e.f1
        );
    }
    t.push_str("</table>");
    t
}

/// Per-class precision / recall at both levels, one row per class of either level.
fn per_class_table(s: &Scores, names: &[String]) -> String {
    let mut classes: Vec<usize> = s
        .image
        .per_class
        .iter()
        .chain(&s.sub_image.per_class)
        .map(|c| c.class)
        .collect();
    classes.sort_unstable();
    classes.dedup();
    let cells = |e: &Evaluation, class: usize| match e.per_class.iter().find(|c| c.class == class) {
        Some(c) => format!(
            "<td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td>",
            c.support, c.predicted, c.precision, c.recall
        ),
        None => "<td></td><td></td><td></td><td></td>".to_string(),
    };
    let mut t = String::from(
        "<table><tr><th class=l rowspan=2>class</th><th colspan=4>images</th>\
         <th colspan=4>crops</th></tr><tr><th>true</th><th>predicted</th><th>precision</th>\
         <th>recall</th><th>true</th><th>predicted</th><th>precision</th><th>recall</th></tr>",
    );
    for c in classes {
        let _ = write!(
            t,
            "<tr><td class=l>{}</td>{}{}</tr>",
            class_name(names, c),
            cells(&s.image, c),
            cells(&s.sub_image, c)
        );
    }
    t.push_str("</table>");
    t
}

fn mean_confidence(c: &ClusterSummary) -> String {
    if c.members.is_empty() {
        String::new()
    } else {
        format!("{:.3}", c.mean_confidence)
    }
}

/// The class cluster `k` matched in training, escaped; "none" for an unmatched one.
fn trained_name(p: &Page, k: usize) -> String {
    match p.trained_names.get(k).map(String::as_str) {
        Some("") | None => "<i>none</i>".into(),
        Some(n) => escape(n),
    }
}

fn cluster_line(c: &ClusterSummary, p: &Page) -> String {
    let labelled = p.scores.is_some();
    let line = cluster_match_line(c, p, labelled);
    if p.trained_names.is_empty() {
        return line;
    }
    let trained = format!(
        "matched class in training <b>{}</b>",
        trained_name(p, c.cluster)
    );
    if line.is_empty() {
        trained
    } else {
        format!("{trained}; {line}")
    }
}

fn cluster_match_line(c: &ClusterSummary, p: &Page, labelled: bool) -> String {
    match (labelled, c.matched, c.purity, c.majority) {
        (false, ..) => String::new(),
        (true, _, None, _) => String::new(),
        (true, Some(m), Some(pur), _) => format!(
            "matched class <b>{}</b>, purity <b>{}</b>",
            class_name(p.class_names, m),
            pct(pur)
        ),
        (true, None, _, Some((m, share))) => format!(
            "<span class=bad>no class matched</span> (more clusters than classes); most common \
             class {} ({})",
            class_name(p.class_names, m),
            pct(share)
        ),
        (true, None, _, None) => "<span class=bad>no class matched</span>".to_string(),
    }
}

/// The whole page.
pub fn render(p: &Page) -> String {
    let mut h = String::new();
    let title = format!("anomalyncd report: {}", escape(p.category));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    let _ = write!(
        h,
        "<p>{} images ({} anomaly crops) in {} clusters. Thumbnails: {}. ",
        p.images,
        p.crops,
        p.clusters.len(),
        escape(p.source_note)
    );
    if p.scores.is_some() {
        h.push_str(
            "Frames are green when the image's true class is its cluster's matched class, red \
             otherwise (the true class is written under it).</p>\n",
        );
    } else {
        h.push_str("No true classes are known (flat folder), so no scores.</p>\n");
    }
    if p.warnings > 0 {
        let _ = writeln!(
            h,
            "<p class=warn>{} files could not be read: grey tiles or missing outlines (see the \
             log).</p>",
            p.warnings
        );
    }

    let empty: Vec<String> = p
        .clusters
        .iter()
        .filter(|c| c.members.is_empty())
        .map(|c| c.cluster.to_string())
        .collect();
    if !empty.is_empty() {
        // Kept, not merged away: cluster ids stay those of the checkpoint and predictions.csv.
        let _ = writeln!(
            h,
            "<p class=warn>{} of {} clusters received no image (cluster {}): the images hold fewer \
             distinct defect types than clusters were asked for; a smaller --num-classes (or \
             <code>auto</code>) gives the same grouping with fewer empty clusters.</p>",
            empty.len(),
            p.clusters.len(),
            empty.join(", ")
        );
    }

    h.push_str(
        "<h2>Clusters</h2>\n<table><tr><th class=l>cluster</th><th>images</th>\
                <th>crops</th><th>mean confidence</th>",
    );
    let trained = !p.trained_names.is_empty();
    if trained {
        h.push_str("<th class=l>matched class in training</th>");
    }
    if p.scores.is_some() {
        h.push_str("<th class=l>matched class</th><th>purity</th>");
    }
    h.push_str("</tr>\n");
    for c in p.clusters {
        let _ = write!(
            h,
            "<tr><td class=l><a href=\"#cluster-{k}\">cluster {k}</a></td><td>{}</td><td>{}</td>\
             <td>{}</td>",
            c.members.len(),
            c.crops,
            mean_confidence(c),
            k = c.cluster
        );
        if trained {
            let _ = write!(h, "<td class=l>{}</td>", trained_name(p, c.cluster));
        }
        if p.scores.is_some() {
            let m = c
                .matched
                .map(|m| class_name(p.class_names, m))
                .unwrap_or_else(|| "<i>none</i>".into());
            let pur = c.purity.map(pct).unwrap_or_default();
            let _ = write!(h, "<td class=l>{m}</td><td>{pur}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");

    if let Some(s) = p.scores {
        h.push_str("<h2>Scores</h2>\n");
        h.push_str(&scores_table(s));
        h.push_str(
            "\n<p class=note>Clusters are matched one-to-one to the true classes by the \
             Hungarian algorithm (separately at each level) before F1 and precision / recall \
             are taken.</p>\n",
        );
        if let Some(c) = p.confusion {
            let _ = writeln!(
                h,
                "<h3>Confusion matrix (images)</h3>\n<div class=conf><img src=\"{}\" \
                 alt=\"confusion matrix: true classes by predicted clusters\"></div>",
                escape(c)
            );
        }
        h.push_str("<h3>Per-class precision and recall</h3>\n");
        h.push_str(&per_class_table(s, p.class_names));
        h.push('\n');
    }

    for (i, c) in p.clusters.iter().enumerate() {
        let _ = writeln!(
            h,
            "<div class=cluster id=\"cluster-{k}\"><h2>Cluster {k}</h2>",
            k = c.cluster
        );
        if c.members.is_empty() {
            h.push_str("<p>No image was assigned to this cluster.</p></div>\n");
            continue;
        }
        let _ = write!(
            h,
            "<p>{} images, {} crops, mean confidence {:.3}",
            c.members.len(),
            c.crops,
            c.mean_confidence,
        );
        let line = cluster_line(c, p);
        if !line.is_empty() {
            let _ = write!(h, "; {line}");
        }
        let shown = p.shown.get(i).copied().unwrap_or(0);
        if shown < c.members.len() {
            let _ = write!(
                h,
                ". Showing {shown} of them, evenly spread from most to least confident"
            );
        }
        h.push_str(".</p>\n");
        if let Some(sheet) = p.sheets.get(i) {
            let _ = writeln!(
                h,
                "<img src=\"{}\" alt=\"images of cluster {}\" loading=lazy>",
                escape(sheet),
                c.cluster
            );
        }
        h.push_str("</div>\n");
    }
    h.push_str("</body></html>\n");
    h
}
