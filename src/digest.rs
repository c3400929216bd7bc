//! 64-bit FNV-1a digests, as 16 hex digits: stable across builds and platforms (std's hasher is
//! not promised to be), for fingerprints and cache keys. Not for anything adversarial.

/// A streaming FNV-1a hasher.
#[derive(Debug, Clone)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// The digest as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The digest of `bytes`.
pub fn fnv(bytes: &[u8]) -> String {
    Fnv::default().update(bytes).hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_streaming() {
        // FNV-1a 64 test vectors.
        assert_eq!(fnv(b""), "cbf29ce484222325");
        assert_eq!(fnv(b"a"), "af63dc4c8601ec8c");
        assert_eq!(Fnv::default().update(b"fo").update(b"o").hex(), fnv(b"foo"));
    }
}
