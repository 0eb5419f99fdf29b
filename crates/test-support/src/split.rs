//! Chunk splitters: a byte stream cut into the pieces a reader might get. One-byte reads
//! and fixed-size reads are std's `bytes.chunks(1)` and `bytes.chunks(n)`.

/// The pieces of `bytes` cut at `cuts`: any order, repeats allowed (empty pieces), each
/// cut taken modulo `len + 1` so that arbitrary numbers (a property test's) are valid.
/// The pieces joined are `bytes`.
pub fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        pieces.push(&bytes[from..cut]);
        from = cut;
    }
    pieces
}

/// Every way of cutting `bytes` in two, the cut from 0 to `len`: `(cut, [before, after])`.
pub fn every_split(bytes: &[u8]) -> impl Iterator<Item = (usize, [&[u8]; 2])> {
    (0..=bytes.len()).map(move |cut| (cut, [&bytes[..cut], &bytes[cut..]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_sorts_wraps_and_keeps_empty_pieces() {
        let bytes = b"abcdef";
        assert_eq!(split_at(bytes, &[]), [b"abcdef"]);
        let pieces: Vec<&[u8]> = vec![b"ab", b"", b"c", b"def"];
        assert_eq!(split_at(bytes, &[3, 2, 2]), pieces);
        // 9 % 7 == 2; 7 % 7 == 0.
        let pieces: Vec<&[u8]> = vec![b"", b"ab", b"cdef"];
        assert_eq!(split_at(bytes, &[9, 7]), pieces);
    }

    #[test]
    fn every_split_covers_each_cut_once() {
        let splits: Vec<_> = every_split(b"ab").collect();
        let expected: Vec<(usize, [&[u8]; 2])> =
            vec![(0, [b"", b"ab"]), (1, [b"a", b"b"]), (2, [b"ab", b""])];
        assert_eq!(splits, expected);
    }
}
