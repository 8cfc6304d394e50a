//! The Merkle tree persisted as tiles, in the C2SP `tlog-tiles` layout, so that memory
//! and startup do not grow with the log.
//!
//! A tile at level `L` and index `N` holds up to 256 consecutive node hashes of height
//! `8·L`: the nodes `[256·N, 256·N + W)`. Level 0 tiles hold the leaf hashes; a level
//! `L+1` hash is the root of a full level `L` tile. Paths are `tile/<L>/<N>` for full
//! tiles and `tile/<L>/<N>.p/<W>` for the partial tile at the right edge, with `N` written
//! in groups of three digits, all but the last prefixed by `x` (`1234067` →
//! `x001/x234/067`). A tile's bytes are its hashes concatenated.
//!
//! Memory holds only the right edge ([`Edge`]: the hashes of each level's partial tile)
//! and a bounded cache of full tiles. Full tiles are written as they fill; partial tiles
//! when a checkpoint is signed, and every tile is fsynced before the checkpoint that
//! covers it. Tiles are derived data: they are rebuilt from the segments when missing,
//! and every proof served from them is checked against a signed checkpoint first.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::merkle::{Hash, NodeSource, empty_root, node_hash};

/// Levels of the tree one tile spans.
pub const HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const WIDTH: u64 = 1 << HEIGHT;

/// `N` as path elements: groups of three digits, all but the last prefixed by `x`.
fn index_path(n: u64) -> String {
    let digits = n.to_string();
    let padded = format!("{}{digits}", "0".repeat((3 - digits.len() % 3) % 3));
    let groups: Vec<&str> = padded.as_bytes().chunks(3).map(|c| std::str::from_utf8(c).expect("digits")).collect();
    let last = groups.len() - 1;
    groups.iter().enumerate().map(|(i, g)| if i < last { format!("x{g}") } else { g.to_string() }).collect::<Vec<_>>().join("/")
}

/// The path of the hash tile `(level, index)` holding `width` hashes (256: the full tile).
pub fn tile_path(level: u32, index: u64, width: u64) -> String {
    partial_suffix(format!("tile/{level}/{}", index_path(index)), width)
}

/// The path of the entry bundle `index` holding `width` entries.
pub fn entries_path(index: u64, width: u64) -> String {
    partial_suffix(format!("tile/entries/{}", index_path(index)), width)
}

fn partial_suffix(mut p: String, width: u64) -> String {
    if width < WIDTH {
        p.push_str(&format!(".p/{width}"));
    }
    p
}

/// What a tile path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileName {
    Hashes { level: u32, index: u64, width: u64 },
    Entries { index: u64, width: u64 },
}

/// Parses a path made by [`tile_path`] or [`entries_path`]; anything else is `None`.
pub fn parse_path(path: &str) -> Option<TileName> {
    let rest = path.strip_prefix("tile/")?;
    let (kind, rest) = rest.split_once('/')?;
    let (index_part, width) = match rest.split_once(".p/") {
        Some((i, w)) => {
            let width: u64 = w.parse().ok().filter(|w| (1..WIDTH).contains(w))?;
            if w != width.to_string() {
                return None;
            }
            (i, width)
        }
        None => (rest, WIDTH),
    };
    let groups: Vec<&str> = index_part.split('/').collect();
    let last = groups.len() - 1;
    let mut digits = String::new();
    for (i, g) in groups.iter().enumerate() {
        let g = if i < last { g.strip_prefix('x')? } else { g };
        if g.len() != 3 || !g.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.push_str(g);
    }
    let index: u64 = digits.parse().ok()?;
    // One spelling per index: no extra leading groups of zeros.
    if index_path(index) != index_part {
        return None;
    }
    match kind {
        "entries" => Some(TileName::Entries { index, width }),
        level => {
            let level: u32 = level.parse().ok().filter(|l| *l < 64)?;
            (level.to_string() == kind).then_some(TileName::Hashes { level, index, width })
        }
    }
}

/// Root of a perfect subtree given all its leaves at one level (a power-of-two count).
fn perfect_root(hashes: &[Hash]) -> Hash {
    debug_assert!(hashes.len().is_power_of_two());
    let mut level: Vec<Hash> = hashes.to_vec();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    level[0]
}

/// The node of height `r < 8` within a tile's hashes, starting at `offset`.
fn node_in_tile(hashes: &[Hash], offset: usize, r: u32) -> Option<Hash> {
    let count = 1usize << r;
    hashes.get(offset..offset + count).map(perfect_root)
}

/// One tile's hashes as the leaves of a small tree (checks a tile against its parent).
pub struct Slice<'a>(pub &'a [Hash]);

impl NodeSource for Slice<'_> {
    fn node(&self, height: u32, index: u64) -> Result<Hash> {
        let count = 1usize << height;
        let start = (index as usize) * count;
        self.0.get(start..start + count).map(perfect_root).ok_or_else(|| Error::Corrupt("tile is short".into()))
    }
}

/// A full tile that just filled: where it goes and what it holds.
pub struct FullTile {
    pub level: u32,
    pub index: u64,
    pub hashes: Vec<Hash>,
}

/// The right edge of the tree: per tile level, the hashes of the tile being filled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edge {
    size: u64,
    levels: Vec<Vec<Hash>>,
}

impl Edge {
    pub fn new() -> Edge {
        Edge::default()
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns the tiles it completed, lowest level first.
    pub fn push(&mut self, leaf: Hash) -> Vec<FullTile> {
        self.size += 1;
        let mut done = Vec::new();
        let mut node = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::with_capacity(WIDTH as usize));
            }
            self.levels[level].push(node);
            if self.levels[level].len() as u64 != WIDTH {
                break;
            }
            let hashes = std::mem::replace(&mut self.levels[level], Vec::with_capacity(WIDTH as usize));
            node = perfect_root(&hashes);
            let index = (self.size >> (HEIGHT * (level as u32 + 1))) - 1;
            done.push(FullTile { level: level as u32, index, hashes });
            level += 1;
        }
        done
    }

    /// The partial tiles of the edge: `(level, index, hashes)` for each level with some.
    pub fn partial_tiles(&self) -> impl Iterator<Item = (u32, u64, &[Hash])> {
        self.levels.iter().enumerate().filter(|(_, h)| !h.is_empty()).map(|(l, h)| {
            let level = l as u32;
            (level, self.size >> (HEIGHT * (level + 1)), h.as_slice())
        })
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        // The perfect subtrees of the tree, largest first: each level's partial tile,
        // split into its power-of-two runs.
        let mut parts = Vec::new();
        for hashes in self.levels.iter().rev() {
            let mut at = 0usize;
            for r in (0..HEIGHT).rev() {
                if hashes.len() & (1 << r) != 0 {
                    parts.push(perfect_root(&hashes[at..at + (1 << r)]));
                    at += 1 << r;
                }
            }
        }
        let Some(mut root) = parts.pop() else { return empty_root() };
        while let Some(left) = parts.pop() {
            root = node_hash(&left, &root);
        }
        root
    }

    /// The node `(height, index)` when it lies in the edge's partial tiles.
    pub fn node(&self, height: u32, index: u64) -> Option<Hash> {
        let (level, r) = (height / HEIGHT, height % HEIGHT);
        let first = index << r;
        let hashes = self.levels.get(level as usize)?;
        if first >> HEIGHT != self.size >> (HEIGHT * (level + 1)) {
            return None;
        }
        node_in_tile(hashes, (first % WIDTH) as usize, r)
    }

    /// Rebuilds the edge of a tree of `size` leaves from its partial tiles, read with
    /// `tile(level, index, width)`.
    pub fn load(size: u64, mut tile: impl FnMut(u32, u64, u64) -> Result<Vec<Hash>>) -> Result<Edge> {
        let mut levels = Vec::new();
        let mut level = 0u32;
        while level < 64 && (size >> (HEIGHT * level)) > 0 {
            let nodes = size >> (HEIGHT * level);
            let width = nodes % WIDTH;
            levels.push(if width > 0 { tile(level, nodes >> HEIGHT, width)? } else { Vec::with_capacity(WIDTH as usize) });
            level += 1;
        }
        Ok(Edge { size, levels })
    }
}

/// The tiles on disk under `<dir>/tile/…`.
#[derive(Clone, Debug)]
pub struct TileDir {
    root: PathBuf,
}

fn read_hashes(path: &Path, width: u64) -> Result<Option<Vec<Hash>>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { context: format!("read {}", path.display()), source: e }),
    };
    let mut bytes = Vec::with_capacity(width as usize * 32);
    f.read_to_end(&mut bytes).map_err(Error::io(format!("read {}", path.display())))?;
    if bytes.len() % 32 != 0 || (bytes.len() as u64) < width * 32 {
        return Err(Error::Corrupt(format!("tile {} holds {} bytes, not {} hashes", path.display(), bytes.len(), width)));
    }
    Ok(Some(bytes.chunks_exact(32).take(width as usize).map(|c| c.try_into().expect("32 bytes")).collect()))
}

impl TileDir {
    pub fn new(root: impl Into<PathBuf>) -> TileDir {
        TileDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, level: u32, index: u64, width: u64) -> PathBuf {
        self.root.join(tile_path(level, index, width))
    }

    /// The directory holding the partial tiles of `(level, index)`.
    fn partial_dir(&self, level: u32, index: u64) -> PathBuf {
        self.root.join(format!("{}.p", tile_path(level, index, WIDTH)))
    }

    /// The first `width` hashes of tile `(level, index)`: from the full tile, or the
    /// narrowest partial tile holding at least that many (a tile's hashes never change,
    /// so any wider one starts with the same ones). `None` when no tile has them.
    pub fn read(&self, level: u32, index: u64, width: u64) -> Result<Option<Vec<Hash>>> {
        if let Some(h) = read_hashes(&self.path(level, index, WIDTH), width)? {
            return Ok(Some(h));
        }
        if width == WIDTH {
            return Ok(None);
        }
        let dir = self.partial_dir(level, index);
        let widths = match fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok()).filter(|w| *w >= width).min(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Io { context: format!("list {}", dir.display()), source: e }),
        };
        match widths {
            Some(w) => read_hashes(&dir.join(w.to_string()), width),
            None => Ok(None),
        }
    }

    /// Writes a tile whole (temporary file, then rename; synced later by [`TileDir::sync`]).
    /// Returns the paths to sync. A partial tile replaces the narrower ones of its index.
    pub fn write(&self, level: u32, index: u64, hashes: &[Hash]) -> Result<Vec<PathBuf>> {
        let width = hashes.len() as u64;
        let path = self.path(level, index, width);
        let parent = path.parent().expect("tile paths have a parent").to_path_buf();
        fs::create_dir_all(&parent).map_err(Error::io(format!("create {}", parent.display())))?;
        let tmp = path.with_extension("tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(Error::io(format!("create {}", tmp.display())))?;
        let bytes: Vec<u8> = hashes.iter().flatten().copied().collect();
        f.write_all(&bytes).map_err(Error::io(format!("write {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(Error::io(format!("rename {} into place", tmp.display())))?;
        // Narrower partial tiles of the same index are covered by this one.
        let partials = self.partial_dir(level, index);
        if let Ok(entries) = fs::read_dir(&partials) {
            for e in entries.flatten() {
                let narrower = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()).is_some_and(|w| w < width);
                if narrower {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if width == WIDTH {
            let _ = fs::remove_dir(&partials);
        }
        Ok(vec![path, parent])
    }

    /// Makes written tiles durable. A checkpoint under load covers hundreds of new tiles;
    /// on Linux one `syncfs` of the tiles' filesystem commits them and their directory
    /// entries in a single flush instead of one fsync each (which stalled the writer, and
    /// every ack behind it, for tens of milliseconds per checkpoint). Elsewhere: each
    /// file, then each directory.
    pub fn sync(&self, paths: &[PathBuf]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            let root = File::open(&self.root).map_err(Error::io(format!("open {}", self.root.display())))?;
            rustix::fs::syncfs(&root).map_err(|e| Error::Io { context: format!("syncfs {}", self.root.display()), source: e.into() })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut dirs: Vec<&PathBuf> = Vec::new();
            for p in paths {
                if p.is_dir() {
                    if !dirs.contains(&p) {
                        dirs.push(p);
                    }
                    continue;
                }
                File::open(p).and_then(|f| f.sync_all()).map_err(Error::io(format!("fsync {}", p.display())))?;
            }
            for d in dirs {
                File::open(d).and_then(|f| f.sync_all()).map_err(Error::io(format!("fsync {}", d.display())))?;
            }
            Ok(())
        }
    }

    /// Removes temporary files a crash left behind.
    pub fn clean_temporaries(&self) {
        fn walk(dir: &Path) {
            let Ok(entries) = fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p);
                } else if p.extension().is_some_and(|x| x == "tmp") {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        walk(&self.root.join("tile"));
    }
}

/// Full tiles recently read, bounded (8 KiB each).
pub type TileCache = crate::lru::Lru<(u32, u64), Vec<Hash>>;

/// Nodes of a tree of `size` leaves, from the edge and the tiles on disk (through the
/// cache). Only nodes of complete subtrees within `size` are asked for.
pub struct TileNodes<'a> {
    pub dir: &'a TileDir,
    pub edge: &'a Edge,
    pub cache: &'a Mutex<TileCache>,
}

impl NodeSource for TileNodes<'_> {
    fn node(&self, height: u32, index: u64) -> Result<Hash> {
        if let Some(h) = self.edge.node(height, index) {
            return Ok(h);
        }
        let (level, r) = (height / HEIGHT, height % HEIGHT);
        let first = index << r;
        let key = (level, first >> HEIGHT);
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key);
        let tile = match cached {
            Some(t) => t,
            None => {
                let t = Arc::new(self.dir.read(level, key.1, WIDTH)?.ok_or_else(|| {
                    Error::Corrupt(format!("tile {} is missing; rebuild the tiles from the segments with `lakeledger audit scrub --repair`", tile_path(level, key.1, WIDTH)))
                })?);
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(key, t.clone());
                t
            }
        };
        node_in_tile(&tile, (first % WIDTH) as usize, r).ok_or_else(|| Error::Corrupt(format!("tile {} is short", tile_path(level, key.1, WIDTH))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Tree, leaf_hash};

    fn leaf(i: u64) -> Hash {
        leaf_hash(&i.to_be_bytes())
    }

    #[test]
    fn paths_follow_the_tlog_tiles_layout() {
        assert_eq!(tile_path(0, 0, 256), "tile/0/000");
        assert_eq!(tile_path(1, 1234067, 256), "tile/1/x001/x234/067");
        assert_eq!(tile_path(0, 1000, 5), "tile/0/x001/000.p/5");
        assert_eq!(entries_path(7, 256), "tile/entries/007");
        for p in ["tile/0/000", "tile/1/x001/x234/067", "tile/0/x001/000.p/5", "tile/entries/x002/345.p/255"] {
            let parsed = parse_path(p).unwrap();
            let back = match parsed {
                TileName::Hashes { level, index, width } => tile_path(level, index, width),
                TileName::Entries { index, width } => entries_path(index, width),
            };
            assert_eq!(back, p);
        }
        for bad in ["tile/0/00", "tile/0/x000/001", "tile/0/001.p/0", "tile/0/001.p/256", "tile/0/001.p/07", "tile/64/000", "tile/00/000", "tiles/0/000", "tile/0/abc"] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    /// The edge's root and nodes agree with the in-memory tree at every size around the
    /// tile boundaries of two levels.
    #[test]
    fn the_edge_agrees_with_the_tree() {
        let mut tree = Tree::new();
        let mut edge = Edge::new();
        let mut full = std::collections::HashMap::new();
        for i in 0..(256 * 256 + 300) {
            tree.push(leaf(i));
            for t in edge.push(leaf(i)) {
                full.insert((t.level, t.index), t.hashes);
            }
            let n = i + 1;
            if n % 256 <= 2 || n % 256 >= 254 || n < 600 {
                assert_eq!(edge.root(), tree.root(), "size {n}");
            }
        }
        assert_eq!(full.len(), 256 + 1 + 1);
        // A level 1 hash is the root of the matching full level 0 tile.
        assert_eq!(full[&(1, 0)][3], perfect_root(&full[&(0, 3)]));
    }
}
