//! Drawing the synthetic product surface and its defects. Each defect paints into an RGB float
//! image and returns its footprint as a coverage map in [0, 1].

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A float RGB image, row-major, values in 0..255.
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    pub px: Vec<[f32; 3]>,
}

/// A float single-channel image.
pub type Plane = Vec<f32>;

/// Smooth value noise: random values on a coarse grid, bilinearly interpolated.
fn value_noise(w: usize, h: usize, cell: f32, rng: &mut ChaCha8Rng) -> Plane {
    let gw = (w as f32 / cell).ceil() as usize + 2;
    let gh = (h as f32 / cell).ceil() as usize + 2;
    let grid: Vec<f32> = (0..gw * gh).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        let fy = y as f32 / cell;
        let (y0, ty) = (fy.floor() as usize, fy.fract());
        for x in 0..w {
            let fx = x as f32 / cell;
            let (x0, tx) = (fx.floor() as usize, fx.fract());
            let g = |xx: usize, yy: usize| grid[yy * gw + xx];
            let a = g(x0, y0) * (1.0 - tx) + g(x0 + 1, y0) * tx;
            let b = g(x0, y0 + 1) * (1.0 - tx) + g(x0 + 1, y0 + 1) * tx;
            out[y * w + x] = a * (1.0 - ty) + b * ty;
        }
    }
    out
}

/// A brushed-metal-like surface: multi-octave noise, directional grain, lighting gradient and
/// vignette, sensor noise.
pub fn surface(w: usize, h: usize, rng: &mut ChaCha8Rng) -> Canvas {
    let base = rng.gen_range(115.0..140.0f32);
    let tint = [
        rng.gen_range(-4.0..4.0f32),
        rng.gen_range(-2.0..2.0f32),
        rng.gen_range(0.0..8.0f32),
    ];
    let o1 = value_noise(w, h, 40.0, rng);
    let o2 = value_noise(w, h, 12.0, rng);
    let o3 = value_noise(w, h, 4.0, rng);
    let angle = rng.gen_range(0.0..std::f32::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let light = rng.gen_range(10.0..25.0f32);
    let grain_phase = rng.gen_range(0.0..100.0f32);
    let mut px = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (u, v) = (x as f32 / w as f32 - 0.5, y as f32 / h as f32 - 0.5);
            let grain = ((y as f32 * 1.7 + grain_phase) * 0.9).sin() * 2.0;
            let vignette = -(u * u + v * v) * 30.0;
            let g = base
                + 14.0 * o1[i]
                + 7.0 * o2[i]
                + 4.0 * o3[i]
                + light * (u * dx + v * dy)
                + grain
                + vignette
                + rng.gen_range(-3.0..3.0f32);
            px.push([g + tint[0], g + tint[1], g + tint[2]]);
        }
    }
    Canvas { w, h, px }
}

fn dist_to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let (wx, wy) = (p.0 - a.0, p.1 - a.1);
    let len2 = (vx * vx + vy * vy).max(1e-6);
    let t = ((wx * vx + wy * vy) / len2).clamp(0.0, 1.0);
    let (cx, cy) = (a.0 + t * vx, a.1 + t * vy);
    ((p.0 - cx).powi(2) + (p.1 - cy).powi(2)).sqrt()
}

/// Coverage of a polyline of half-width `hw` (soft 1-px edge).
fn polyline_cover(c: &Canvas, pts: &[(f32, f32)], hw: f32) -> Plane {
    let mut cov = vec![0.0; c.w * c.h];
    for seg in pts.windows(2) {
        let (a, b) = (seg[0], seg[1]);
        let x0 = (a.0.min(b.0) - hw - 2.0).max(0.0) as usize;
        let x1 = ((a.0.max(b.0) + hw + 2.0) as usize).min(c.w - 1);
        let y0 = (a.1.min(b.1) - hw - 2.0).max(0.0) as usize;
        let y1 = ((a.1.max(b.1) + hw + 2.0) as usize).min(c.h - 1);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let d = dist_to_segment((x as f32 + 0.5, y as f32 + 0.5), a, b);
                let v = (hw + 0.5 - d).clamp(0.0, 1.0);
                let i = y * c.w + x;
                cov[i] = f32::max(cov[i], v);
            }
        }
    }
    cov
}

fn blend(c: &mut Canvas, cov: &Plane, target: impl Fn(usize, [f32; 3]) -> [f32; 3]) {
    for (i, &a) in cov.iter().enumerate() {
        if a > 0.0 {
            let t = target(i, c.px[i]);
            for (p, tk) in c.px[i].iter_mut().zip(t) {
                *p = *p * (1.0 - a) + tk * a;
            }
        }
    }
}

fn disc_cover(c: &Canvas, cx: f32, cy: f32, r: f32) -> Plane {
    let mut cov = vec![0.0; c.w * c.h];
    for y in 0..c.h {
        for x in 0..c.w {
            let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
            cov[y * c.w + x] = (r + 0.5 - d).clamp(0.0, 1.0);
        }
    }
    cov
}

/// The defect kinds: four novel types and three base types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    Scratch,
    Hole,
    Stain,
    Crack,
    Dent,
    Speckle,
    Smear,
}

impl Defect {
    pub const NOVEL: [Defect; 4] = [Defect::Scratch, Defect::Hole, Defect::Stain, Defect::Crack];
    pub const BASE: [Defect; 3] = [Defect::Dent, Defect::Speckle, Defect::Smear];

    pub fn name(self) -> &'static str {
        match self {
            Defect::Scratch => "scratch",
            Defect::Hole => "hole",
            Defect::Stain => "stain",
            Defect::Crack => "crack",
            Defect::Dent => "dent",
            Defect::Speckle => "speckle",
            Defect::Smear => "smear",
        }
    }

    /// Paints the defect centred near (cx, cy); returns its coverage.
    pub fn paint(self, c: &mut Canvas, cx: f32, cy: f32, rng: &mut ChaCha8Rng) -> Plane {
        let s = c.w.min(c.h) as f32 / 160.0;
        match self {
            Defect::Scratch => {
                let len = rng.gen_range(40.0..70.0) * s;
                let ang = rng.gen_range(0.0..std::f32::consts::PI);
                let bend = rng.gen_range(-6.0..6.0) * s;
                let (dx, dy) = (ang.cos() * len / 2.0, ang.sin() * len / 2.0);
                let mid = (cx - dy / len * bend * 2.0, cy + dx / len * bend * 2.0);
                let pts = [(cx - dx, cy - dy), mid, (cx + dx, cy + dy)];
                let cov = polyline_cover(c, &pts, rng.gen_range(0.8..1.4) * s);
                let lift = rng.gen_range(55.0..80.0);
                blend(c, &cov, |_, p| [p[0] + lift, p[1] + lift, p[2] + lift]);
                cov
            }
            Defect::Hole => {
                let r = rng.gen_range(6.0..11.0) * s;
                let rim = disc_cover(c, cx, cy, r + 2.0 * s);
                blend(c, &rim, |_, p| [p[0] + 45.0, p[1] + 45.0, p[2] + 45.0]);
                let core = disc_cover(c, cx, cy, r);
                let w = c.w;
                blend(c, &core, |i, _| {
                    let (x, y) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
                    let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() / r;
                    let v = 15.0 + 35.0 * d;
                    [v, v, v]
                });
                rim
            }
            Defect::Stain => {
                let r = rng.gen_range(12.0..20.0) * s;
                let lobes: Vec<(f32, f32)> = (0..3)
                    .map(|_| {
                        (
                            rng.gen_range(0.0..std::f32::consts::TAU),
                            rng.gen_range(0.15..0.35),
                        )
                    })
                    .collect();
                let mut cov = vec![0.0; c.w * c.h];
                for y in 0..c.h {
                    for x in 0..c.w {
                        let (ux, uy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                        let th = uy.atan2(ux);
                        let rr = r
                            * (1.0
                                + lobes
                                    .iter()
                                    .map(|(p, a)| a * (2.0 * th + p).sin())
                                    .sum::<f32>()
                                    / 2.0);
                        let d = (ux * ux + uy * uy).sqrt();
                        cov[y * c.w + x] = ((rr - d) / (0.25 * r)).clamp(0.0, 1.0);
                    }
                }
                let strength = rng.gen_range(0.55..0.8);
                let paint: Plane = cov.iter().map(|v| v * strength).collect();
                blend(c, &paint, |_, p| {
                    [p[0] * 0.8 + 40.0, p[1] * 0.6 + 20.0, p[2] * 0.35]
                });
                cov
            }
            Defect::Crack => {
                let mut pts = vec![(cx, cy)];
                let mut ang = rng.gen_range(0.0..std::f32::consts::TAU);
                let steps = rng.gen_range(8..13);
                let mut p = (cx, cy);
                for _ in 0..steps {
                    ang += rng.gen_range(-0.9..0.9);
                    let l = rng.gen_range(3.0..6.0) * s;
                    p = (p.0 + ang.cos() * l, p.1 + ang.sin() * l);
                    pts.push(p);
                }
                let mut cov = polyline_cover(c, &pts, 0.9 * s);
                // one branch from the middle
                let mut q = pts[pts.len() / 2];
                let mut bpts = vec![q];
                let mut bang = ang + rng.gen_range(1.0..2.0);
                for _ in 0..steps / 2 {
                    bang += rng.gen_range(-0.8..0.8);
                    q = (q.0 + bang.cos() * 4.0 * s, q.1 + bang.sin() * 4.0 * s);
                    bpts.push(q);
                }
                let b = polyline_cover(c, &bpts, 0.7 * s);
                for (a, bb) in cov.iter_mut().zip(b) {
                    *a = f32::max(*a, bb);
                }
                blend(c, &cov, |_, p| [p[0] * 0.25, p[1] * 0.25, p[2] * 0.25]);
                cov
            }
            Defect::Dent => {
                let (rx, ry) = (rng.gen_range(10.0..16.0) * s, rng.gen_range(6.0..10.0) * s);
                let rot = rng.gen_range(0.0..std::f32::consts::PI);
                let (cr, sr) = (rot.cos(), rot.sin());
                let mut cov = vec![0.0; c.w * c.h];
                for y in 0..c.h {
                    for x in 0..c.w {
                        let (ux, uy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                        let (a, b) = ((ux * cr + uy * sr) / rx, (-ux * sr + uy * cr) / ry);
                        let d = (a * a + b * b).sqrt();
                        let i = y * c.w + x;
                        cov[i] = ((1.0 - d) * 4.0).clamp(0.0, 1.0);
                        if d < 1.0 {
                            let shade = 40.0 * a * (1.0 - d).sqrt();
                            for k in 0..3 {
                                c.px[i][k] += shade;
                            }
                        }
                    }
                }
                cov
            }
            Defect::Speckle => {
                let mut cov = vec![0.0; c.w * c.h];
                let n = rng.gen_range(14..24);
                let spread = rng.gen_range(9.0..14.0) * s;
                for _ in 0..n {
                    let (ox, oy) = (
                        rng.gen_range(-spread..spread),
                        rng.gen_range(-spread..spread),
                    );
                    let d = disc_cover(c, cx + ox, cy + oy, rng.gen_range(0.8..1.8) * s);
                    for (a, b) in cov.iter_mut().zip(d) {
                        *a = f32::max(*a, b);
                    }
                }
                blend(c, &cov, |_, _| [230.0, 225.0, 200.0]);
                // The labelled region of a speckle cluster is its hull-ish neighbourhood.
                let hull = disc_cover(c, cx, cy, spread * 1.1);
                cov.iter().zip(hull).map(|(a, h)| a.max(h * 0.6)).collect()
            }
            Defect::Smear => {
                let len = rng.gen_range(22.0..34.0) * s;
                let ang = rng.gen_range(0.0..std::f32::consts::PI);
                let (dx, dy) = (ang.cos() * len / 2.0, ang.sin() * len / 2.0);
                let cov = polyline_cover(
                    c,
                    &[(cx - dx, cy - dy), (cx + dx, cy + dy)],
                    rng.gen_range(4.0..6.0) * s,
                );
                blend(c, &cov, |_, p| {
                    let m = (p[0] + p[1] + p[2]) / 3.0;
                    [m * 0.5 + 20.0, m * 0.55 + 30.0, m * 0.5 + 60.0]
                });
                cov
            }
        }
    }
}

/// Separable Gaussian blur of a plane (edges clamped). Written here because it is 20 lines and
/// works on the f32 planes the generator already has.
pub fn gaussian_blur(p: &Plane, w: usize, h: usize, sigma: f32) -> Plane {
    let r = (sigma * 3.0).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f32 = k.iter().sum();
    let pass = |src: &Plane, horiz: bool| -> Plane {
        let mut dst = vec![0.0; w * h];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let o = j as isize - r;
                    let (xx, yy) = if horiz {
                        ((x + o).clamp(0, w as isize - 1), y)
                    } else {
                        (x, (y + o).clamp(0, h as isize - 1))
                    };
                    acc += kv * src[yy as usize * w + xx as usize];
                }
                dst[y as usize * w + x as usize] = acc / ks;
            }
        }
        dst
    };
    pass(&pass(p, true), false)
}
