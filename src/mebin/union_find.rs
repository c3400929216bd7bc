//! The union-find root lookup both component labellings use (MEBin's count sweep in
//! [`super::fast`] and the contour boxes in [`super::contours`]). Written out: a crate's
//! union-find owns its parent array, and both callers grow and read theirs directly.

/// Root of `i` with path halving.
pub(crate) fn find_root(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let p = parent[i as usize];
        parent[i as usize] = parent[p as usize];
        i = parent[i as usize];
    }
    i
}
