//! RFC 6962 / RFC 9162 Merkle tree hashing, an in-memory tree that grows by appending
//! leaves, and inclusion and consistency proofs (generation and verification).
//!
//! Leaf hash: `SHA-256(0x00 || leaf)`. Interior node: `SHA-256(0x01 || left || right)`.
//! A tree of `n` leaves splits at `k`, the largest power of two strictly below `n`.
//! The empty tree's root is `SHA-256("")`.

use sha2::{Digest, Sha256};

use crate::error::ProofError;

pub type Hash = [u8; 32];

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root computed straight from the definition; the reference the fast paths are
/// tested against.
pub fn naive_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}

/// Where proofs find the roots of complete subtrees: the in-memory [`Tree`] in tests and
/// tools, the persisted tiles in the ledger.
pub trait NodeSource {
    /// Root of the perfect subtree of height `height` over leaves
    /// `[index·2^height, (index+1)·2^height)`.
    fn node(&self, height: u32, index: u64) -> crate::Result<Hash>;
}

/// Root of the leaves `[lo, hi)` as RFC 6962 defines it, from perfect subtrees: the
/// largest aligned one that fits first, then the rest, folded from the right. For the
/// ranges the RFC's recursion visits this is exactly `MTH(D[lo:hi])`.
pub fn range_root<S: NodeSource + ?Sized>(src: &S, lo: u64, hi: u64) -> crate::Result<Hash> {
    if lo >= hi {
        return Ok(empty_root());
    }
    let mut parts = Vec::new();
    let mut at = lo;
    while at < hi {
        let mut h = at.trailing_zeros().min(63);
        while (1u64 << h) > hi - at {
            h -= 1;
        }
        parts.push(src.node(h, at >> h)?);
        at += 1 << h;
    }
    let mut root = parts.pop().expect("a non-empty range");
    while let Some(left) = parts.pop() {
        root = node_hash(&left, &root);
    }
    Ok(root)
}

/// Inclusion proof for leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
/// The caller checks that `size` leaves exist.
pub fn inclusion_proof<S: NodeSource + ?Sized>(src: &S, index: u64, size: u64) -> crate::Result<Vec<Hash>> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size }.into());
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path<S: NodeSource + ?Sized>(src: &S, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> crate::Result<()> {
    let n = hi - lo;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(src, m, lo, lo + k, out)?;
        out.push(range_root(src, lo + k, hi)?);
    } else {
        path(src, m - k, lo + k, hi, out)?;
        out.push(range_root(src, lo, lo + k)?);
    }
    Ok(())
}

/// Consistency proof between the trees of `old` and `new` leaves (RFC 9162 §2.1.4.1).
/// The caller checks that `new` leaves exist.
pub fn consistency_proof<S: NodeSource + ?Sized>(src: &S, old: u64, new: u64) -> crate::Result<Vec<Hash>> {
    if old > new {
        return Err(ProofError::BadSizes { old, new }.into());
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(src, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<S: NodeSource + ?Sized>(src: &S, m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Hash>) -> crate::Result<()> {
    let n = hi - lo;
    if m == n {
        if !complete {
            out.push(range_root(src, lo, hi)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, lo, lo + k, complete, out)?;
        out.push(range_root(src, lo + k, hi)?);
    } else {
        subproof(src, m - k, lo + k, hi, false, out)?;
        out.push(range_root(src, lo, lo + k)?);
    }
    Ok(())
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first.
/// Enough to compute the root of everything pushed so far in O(log n) memory, which is
/// what streaming verification needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// (height, root), heights strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.peaks.last() {
            if h != node.0 {
                break;
            }
            self.peaks.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(&(_, mut root)) = it.next() else { return empty_root() };
        for (_, left) in it {
            root = node_hash(left, &root);
        }
        root
    }
}

/// A Merkle tree held as its complete levels: `levels[0]` are the leaf hashes and
/// `levels[h][i]` is the root of the perfect subtree over leaves `[i·2^h, (i+1)·2^h)`.
/// Memory is about 64 bytes per leaf: the reference the tiles are tested against, and
/// what offline tools use on small logs.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl NodeSource for Tree {
    fn node(&self, height: u32, index: u64) -> crate::Result<Hash> {
        self.levels
            .get(height as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .ok_or_else(|| ProofError::OutOfRange { index: index << height, size: self.size() }.into())
    }
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()
            .and_then(|l| l.get(index as usize))
            .copied()
    }

    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut h = 0;
        // Each time a level gains an even count, its last two nodes form a parent.
        while self.levels[h].len().is_multiple_of(2) {
            let n = self.levels[h].len();
            let parent = node_hash(&self.levels[h][n - 2], &self.levels[h][n - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[h + 1].push(parent);
            h += 1;
        }
    }

    /// Root of the tree over the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        if size > self.size() {
            return None;
        }
        range_root(self, 0, size).ok()
    }

    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or_else(empty_root)
    }

    /// Inclusion proof for leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if size > self.size() || index >= size {
            return Err(ProofError::OutOfRange { index, size });
        }
        inclusion_proof(self, index, size).map_err(|_| ProofError::OutOfRange { index, size })
    }

    /// Consistency proof between the trees of `old` and `new` leaves (RFC 9162 §2.1.4.1).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if new > self.size() || old > new {
            return Err(ProofError::BadSizes { old, new });
        }
        consistency_proof(self, old, new).map_err(|_| ProofError::BadSizes { old, new })
    }
}

/// Recomputes the root from an inclusion proof (RFC 9162 §2.1.3.2). Every proof element
/// must be consumed; any leftover or shortfall is an error.
pub fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    Ok(r)
}

pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_inclusion(index, size, leaf, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies that the tree of `new` leaves with root `new_root` extends the tree of `old`
/// leaves with root `old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path = proof.iter();
    // When `old` is a power of two, the old root is itself the first node of the path.
    let first = if old.is_power_of_two() {
        *old_root
    } else {
        *path.next().ok_or(ProofError::WrongLength)?
    };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in path {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// Leaf inputs of the transparency-dev/merkle reference vectors.
    fn leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|x| leaf_hash(&hex::decode(x).unwrap()))
        .collect()
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn tree() -> Tree {
        let mut t = Tree::new();
        for l in leaves() {
            t.push(l);
        }
        t
    }

    #[test]
    fn roots_match_reference_vectors() {
        let t = tree();
        assert_eq!(
            hex::encode(t.root_at(0).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (i, want) in ROOTS.iter().enumerate() {
            assert_eq!(t.root_at(i as u64 + 1).unwrap(), h(want), "size {}", i + 1);
            assert_eq!(naive_root(&leaves()[..=i]), h(want));
        }
    }

    /// (leaf index, size, proof) from the reference vectors.
    fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                5,
                8,
                vec![
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                3,
                vec![h(
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                )],
            ),
            (
                1,
                5,
                vec![
                    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                6,
                8,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                5,
                vec![
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
            (
                6,
                7,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
        ]
    }

    /// Every way the reference test suite corrupts an inclusion proof.
    fn corrupt_inclusion(
        index: u64,
        size: u64,
        proof: &[Hash],
        root: Hash,
        leaf: Hash,
    ) -> Vec<(String, u64, u64, Vec<Hash>, Hash, Hash)> {
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        let mut out = vec![
            (
                "index - 1".to_string(),
                index.wrapping_sub(1),
                size,
                proof.to_vec(),
                root,
                leaf,
            ),
            (
                "index + 1".into(),
                index + 1,
                size,
                proof.to_vec(),
                root,
                leaf,
            ),
            (
                "index ^ 2".into(),
                index ^ 2,
                size,
                proof.to_vec(),
                root,
                leaf,
            ),
            (
                "size * 2".into(),
                index,
                size * 2,
                proof.to_vec(),
                root,
                leaf,
            ),
            (
                "size / 2".into(),
                index,
                size / 2,
                proof.to_vec(),
                root,
                leaf,
            ),
            ("wrong leaf".into(), index, size, proof.to_vec(), root, some),
            (
                "empty root".into(),
                index,
                size,
                proof.to_vec(),
                empty_root(),
                leaf,
            ),
            (
                "random root".into(),
                index,
                size,
                proof.to_vec(),
                some,
                leaf,
            ),
            (
                "trailing root".into(),
                index,
                size,
                [proof, &[root]].concat(),
                root,
                leaf,
            ),
            (
                "preceding root".into(),
                index,
                size,
                [&[root], proof].concat(),
                root,
                leaf,
            ),
        ];
        for i in 0..proof.len() {
            let mut p = proof.to_vec();
            p[i][0] ^= 8;
            out.push((
                format!("flipped bit in proof[{i}]"),
                index,
                size,
                p,
                root,
                leaf,
            ));
        }
        if !proof.is_empty() {
            out.push((
                "removed component".into(),
                index,
                size,
                proof[..proof.len() - 1].to_vec(),
                root,
                leaf,
            ));
        }
        if proof.len() > 1 {
            out.push((
                "inserted component".into(),
                index,
                size,
                [&[proof[0], some], &proof[1..]].concat(),
                root,
                leaf,
            ));
        }
        out
    }

    #[test]
    fn inclusion_proofs_match_vectors_and_reject_corruptions() {
        let t = tree();
        let leaves = leaves();
        for (index, size, want) in inclusion_vectors() {
            assert_eq!(
                t.inclusion_proof(index, size).unwrap(),
                want,
                "proof {index}/{size}"
            );
            let root = h(ROOTS[size as usize - 1]);
            verify_inclusion(index, size, &leaves[index as usize], &want, &root).unwrap();
            for (desc, i, s, p, r, l) in
                corrupt_inclusion(index, size, &want, root, leaves[index as usize])
            {
                assert!(
                    verify_inclusion(i, s, &l, &p, &r).is_err(),
                    "{desc} accepted for {index}/{size}"
                );
            }
        }
    }

    #[test]
    fn consistency_proofs_match_vectors_and_reject_corruptions() {
        let t = tree();
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        for (old, new, want) in consistency_vectors() {
            assert_eq!(
                t.consistency_proof(old, new).unwrap(),
                want,
                "proof {old}->{new}"
            );
            let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
            verify_consistency(old, new, &r1, &r2, &want).unwrap();
            if want.is_empty() {
                continue;
            }
            let mut probes: Vec<(String, u64, u64, Hash, Hash, Vec<Hash>)> = vec![
                ("old - 1".into(), old - 1, new, r1, r2, want.clone()),
                ("old + 1".into(), old + 1, new, r1, r2, want.clone()),
                ("old ^ 2".into(), old ^ 2, new, r1, r2, want.clone()),
                ("new * 2".into(), old, new * 2, r1, r2, want.clone()),
                ("new / 2".into(), old, new / 2, r1, r2, want.clone()),
                ("wrong old root".into(), old, new, some, r2, want.clone()),
                ("wrong new root".into(), old, new, r1, some, want.clone()),
                ("swapped roots".into(), old, new, r2, r1, want.clone()),
                ("empty proof".into(), old, new, r1, r2, vec![]),
                (
                    "trailing old root".into(),
                    old,
                    new,
                    r1,
                    r2,
                    [&want[..], &[r1]].concat(),
                ),
                (
                    "trailing new root".into(),
                    old,
                    new,
                    r1,
                    r2,
                    [&want[..], &[r2]].concat(),
                ),
                (
                    "preceding old root".into(),
                    old,
                    new,
                    r1,
                    r2,
                    [&[r1], &want[..]].concat(),
                ),
                (
                    "preceding new root".into(),
                    old,
                    new,
                    r1,
                    r2,
                    [&[r2], &want[..]].concat(),
                ),
                (
                    "preceding proof[0]".into(),
                    old,
                    new,
                    r1,
                    r2,
                    [&[want[0]], &want[..]].concat(),
                ),
                (
                    "truncated".into(),
                    old,
                    new,
                    r1,
                    r2,
                    want[..want.len() - 1].to_vec(),
                ),
            ];
            for i in 0..want.len() {
                let mut p = want.clone();
                p[i][0] ^= 16;
                probes.push((format!("flipped bit in proof[{i}]"), old, new, r1, r2, p));
            }
            for (desc, o, n, a, b, p) in probes {
                assert!(
                    verify_consistency(o, n, &a, &b, &p).is_err(),
                    "{desc} accepted for {old}->{new}"
                );
            }
        }
    }

    #[test]
    fn degenerate_consistency_cases() {
        let e = empty_root();
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        assert!(verify_consistency(0, 0, &e, &e, &[]).is_ok());
        assert!(verify_consistency(0, 1, &e, &some, &[]).is_ok());
        assert!(
            verify_consistency(1, 0, &e, &some, &[]).is_err(),
            "time travel"
        );
        assert!(
            verify_consistency(1, 1, &e, &some, &[]).is_err(),
            "same size, different roots"
        );
        assert!(
            verify_consistency(1, 1, &e, &e, &[e]).is_err(),
            "same size, non-empty proof"
        );
        assert!(
            verify_consistency(0, 1, &e, &e, &[e]).is_err(),
            "from empty, non-empty proof"
        );
        assert!(
            verify_consistency(1, 2, &e, &some, &[]).is_err(),
            "growth with no proof"
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn leaves(n: usize) -> Vec<Hash> {
            (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
        }

        proptest! {
            /// Verification of arbitrary proofs never panics and never loops unboundedly.
            #[test]
            fn verifying_arbitrary_proofs_never_panics(
                index in any::<u64>(), size in any::<u64>(), old in any::<u64>(),
                proof in proptest::collection::vec(any::<[u8; 32]>(), 0..70),
                a in any::<[u8; 32]>(), b in any::<[u8; 32]>(),
            ) {
                let _ = verify_inclusion(index, size, &a, &proof, &b);
                let _ = verify_consistency(old, size, &a, &b, &proof);
                let _ = verify_consistency(old % 1000, size % 1000, &a, &b, &proof);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn incremental_root_equals_naive_root(n in 0usize..300) {
                let ls = leaves(n);
                let mut t = Tree::new();
                for (i, l) in ls.iter().enumerate() {
                    t.push(*l);
                    prop_assert_eq!(t.root(), naive_root(&ls[..=i]));
                }
                prop_assert_eq!(t.root_at(n as u64).unwrap(), naive_root(&ls));
            }
        }

        /// Every inclusion and consistency proof for every size up to 64 verifies, and
        /// fails against the neighbouring index or size.
        #[test]
        fn all_small_proofs_verify() {
            let ls = leaves(64);
            let mut t = Tree::new();
            for l in &ls {
                t.push(*l);
            }
            for size in 1..=64u64 {
                let root = naive_root(&ls[..size as usize]);
                for i in 0..size {
                    let p = t.inclusion_proof(i, size).unwrap();
                    verify_inclusion(i, size, &ls[i as usize], &p, &root).unwrap();
                    if size > 1 {
                        let other = (i + 1) % size;
                        assert!(verify_inclusion(other, size, &ls[i as usize], &p, &root).is_err());
                    }
                }
                for old in 0..=size {
                    let p = t.consistency_proof(old, size).unwrap();
                    let old_root = naive_root(&ls[..old as usize]);
                    verify_consistency(old, size, &old_root, &root, &p).unwrap();
                    if old > 0 && old < size {
                        assert!(verify_consistency(old - 1, size, &old_root, &root, &p).is_err());
                    }
                }
            }
        }
    }
}
