//! A reader for NumPy `.npy` files holding one float anomaly map: float32 or float64 (either
//! byte order), shape (H, W) or (1, H, W), C or Fortran order. Written here rather than taken
//! from a crate: the format is a magic string, a length and a Python dict literal, and the
//! crates that read it (npyz, ndarray-npy) bring generic array machinery for this one use, with
//! errors we could not word for the user.

/// The values of a float `.npy` file, row-major, as f64 (float32 converts exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f64>,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// True when `bytes` start like a `.npy` file.
pub fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Parses a whole `.npy` file, or says what is wrong with it (the caller names the file).
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    if !is_npy(bytes) {
        return Err("not a NumPy .npy file (no \\x93NUMPY magic); save it with numpy.save".into());
    }
    let truncated = || "truncated .npy header; save the map again with numpy.save".to_string();
    let major = *bytes.get(6).ok_or_else(truncated)?;
    let (len, start) = match major {
        1 => {
            let b = bytes.get(8..10).ok_or_else(truncated)?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10)
        }
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(truncated)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => {
            return Err(format!(
                "unknown .npy format version {v}; save it with numpy.save"
            ))
        }
    };
    let header = bytes.get(start..start + len).ok_or_else(truncated)?;
    let header = std::str::from_utf8(header).map_err(|_| truncated())?;
    let descr = dict_value(header, "descr").ok_or_else(truncated)?;
    let fortran = dict_value(header, "fortran_order").ok_or_else(truncated)?;
    let shape = dict_value(header, "shape").ok_or_else(truncated)?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (size, little) = match descr {
        "<f4" | "=f4" => (4, true),
        ">f4" => (4, false),
        "<f8" | "=f8" => (8, true),
        ">f8" => (8, false),
        other => {
            return Err(format!(
                "unsupported .npy dtype `{}`; anomaly maps must be float32 or float64 \
                 (or 8/16-bit PNG/TIFF); convert with arr.astype(numpy.float32)",
                other.escape_debug()
            ))
        }
    };
    let fortran = match fortran {
        "True" => true,
        "False" => false,
        _ => return Err(truncated()),
    };
    let dims = parse_shape(shape).ok_or_else(truncated)?;
    // Header text in messages stays on one line whatever the file holds.
    let shape = shape.escape_debug().to_string();
    let (height, width) = match dims.as_slice() {
        [h, w] => (*h, *w),
        [1, h, w] => (*h, *w),
        _ => {
            return Err(format!(
                "array of shape {shape}: an anomaly map must be 2-D (H, W) or (1, H, W); \
                 save one map per file, e.g. numpy.save(path, amap.squeeze())"
            ))
        }
    };
    let n = width
        .checked_mul(height)
        .ok_or_else(|| format!("array shape {shape} is too large"))?;
    if n == 0 {
        return Err(format!(
            "empty array (shape {shape}); an anomaly map needs pixels"
        ));
    }
    let data = &bytes[start + len..];
    let need = n
        .checked_mul(size)
        .ok_or_else(|| format!("array shape {shape} is too large"))?;
    if data.len() < need {
        return Err(format!(
            "truncated .npy data: shape {shape} needs {need} bytes, the file has {}; save it again",
            data.len()
        ));
    }
    let read = |i: usize| -> f64 {
        let b = &data[i * size..(i + 1) * size];
        match (size, little) {
            (4, true) => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            (4, false) => f32::from_be_bytes(b.try_into().expect("4 bytes")) as f64,
            (_, true) => f64::from_le_bytes(b.try_into().expect("8 bytes")),
            (_, false) => f64::from_be_bytes(b.try_into().expect("8 bytes")),
        }
    };
    let values = if fortran {
        // Column-major: element (y, x) sits at x * height + y.
        let mut v = vec![0.0; n];
        for x in 0..width {
            for y in 0..height {
                v[y * width + x] = read(x * height + y);
            }
        }
        v
    } else {
        (0..n).map(read).collect()
    };
    Ok(NpyArray {
        width,
        height,
        values,
    })
}

/// The raw text of `'key': value` in the header's dict literal (value up to the next top-level
/// comma or the closing brace).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// `(256, 256)`, `(1, 64, 64)`, `(5,)`, `()`: the dimensions, or None when it is not a tuple of
/// whole numbers.
fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse().ok())
        .collect()
}

/// A `.npy` file of `values` (row-major, shape `shape`), for tests and examples.
pub fn encode_f32(shape: &[usize], values: &[f32], fortran: bool) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let order = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': {order}, 'shape': {tuple}, }}");
    // Pad so that the data starts at a multiple of 64, as numpy writes it.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([1u8, 0]);
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    let (h, w) = match shape {
        [.., h, w] => (*h, *w),
        _ => (1, values.len()),
    };
    if fortran {
        for x in 0..w {
            for y in 0..h {
                out.extend(values[y * w + x].to_le_bytes());
            }
        }
    } else {
        for v in values {
            out.extend(v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_and_fortran_order_and_a_leading_one_read_the_same() {
        let v: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let c = parse(&encode_f32(&[2, 3], &v, false)).unwrap();
        let f = parse(&encode_f32(&[2, 3], &v, true)).unwrap();
        let one = parse(&encode_f32(&[1, 2, 3], &v, false)).unwrap();
        assert_eq!((c.width, c.height), (3, 2));
        assert_eq!(c.values, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        assert_eq!(c, f);
        assert_eq!(c, one);
    }

    #[test]
    fn float64_big_endian_is_read() {
        let mut b = MAGIC.to_vec();
        let header = "{'descr': '>f8', 'fortran_order': False, 'shape': (1, 2), }\n";
        b.extend([1u8, 0]);
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        b.extend(1.25f64.to_be_bytes());
        b.extend((-3.0f64).to_be_bytes());
        assert_eq!(parse(&b).unwrap().values, vec![1.25, -3.0]);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let v = [1.0f32; 8];
        let e = parse(&encode_f32(&[2, 2, 2], &v, false)).unwrap_err();
        assert!(e.contains("2-D"), "{e}");
        let e = parse(&encode_f32(&[0, 4], &[], false)).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let full = encode_f32(&[2, 4], &v, false);
        let e = parse(&full[..20]).unwrap_err();
        assert!(e.contains("truncated .npy header"), "{e}");
        let e = parse(&full[..full.len() - 4]).unwrap_err();
        assert!(e.contains("truncated .npy data"), "{e}");
        let mut int = full.clone();
        let at = int.windows(3).position(|w| w == b"<f4").unwrap();
        int[at + 1] = b'i';
        let e = parse(&int).unwrap_err();
        assert!(e.contains("unsupported .npy dtype `<i4`"), "{e}");
    }
}
