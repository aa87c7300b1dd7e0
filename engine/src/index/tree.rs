//! Red-black trees over index entries, linked by handles.
//!
//! Each sprig is one tree. There are no parent links (an entry has room for
//! two handles only), so every operation that walks back up keeps the path it
//! came down in a fixed-size [`Path`] on the stack: no allocation, no
//! recursion. The caller holds the sprig's lock for the whole operation.
//!
//! Deleting a node with two children moves its in-order successor's record
//! into it and unlinks the successor's entry instead. Nothing outside a
//! locked operation holds a handle, so moving records between entries is
//! invisible to the rest of the engine.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use super::layout::{DigestKey, Entry, Handle, NIL};

/// Deepest possible path: a red-black tree of at most 2^32 nodes is at most
/// 64 levels deep; delete's first rebalancing case adds one level.
pub const MAX_DEPTH: usize = 72;

/// Access to entries by handle.
pub trait Nodes {
    fn node(&self, h: Handle) -> &Entry;
}

/// The ancestors of a position in a tree, root first, with the direction
/// taken at each (`true` = right).
pub struct Path {
    handles: [Handle; MAX_DEPTH],
    right: [bool; MAX_DEPTH],
    len: usize,
}

impl Path {
    pub fn new() -> Path {
        Path {
            handles: [NIL; MAX_DEPTH],
            right: [false; MAX_DEPTH],
            len: 0,
        }
    }

    fn push(&mut self, h: Handle, right: bool) {
        assert!(
            self.len < MAX_DEPTH,
            "red-black tree deeper than {MAX_DEPTH}: corrupt links"
        );
        self.handles[self.len] = h;
        self.right[self.len] = right;
        self.len += 1;
    }
}

impl Default for Path {
    fn default() -> Self {
        Path::new()
    }
}

fn is_red<N: Nodes + ?Sized>(nodes: &N, h: Handle) -> bool {
    h != NIL && nodes.node(h).is_red()
}

/// Makes `child` the subtree at level `level` of `path` (level 0 = root).
fn link<N: Nodes + ?Sized>(nodes: &N, root: &AtomicU32, path: &Path, level: usize, child: Handle) {
    if level == 0 {
        root.store(child, Relaxed);
    } else {
        nodes
            .node(path.handles[level - 1])
            .set_child(path.right[level - 1], child);
    }
}

/// Rotates the subtree rooted at `x` so that its child on side `!to_right`
/// rises; returns the new subtree root (the caller links it in).
fn rotate<N: Nodes + ?Sized>(nodes: &N, x: Handle, to_right: bool) -> Handle {
    // Rotating right lifts the left child, rotating left lifts the right.
    let y = nodes.node(x).child(!to_right);
    debug_assert_ne!(y, NIL);
    nodes
        .node(x)
        .set_child(!to_right, nodes.node(y).child(to_right));
    nodes.node(y).set_child(to_right, x);
    y
}

/// Finds `key`; returns its handle or `NIL`.
pub fn find<N: Nodes + ?Sized>(nodes: &N, root: Handle, key: &DigestKey) -> Handle {
    let mut h = root;
    let mut depth = 0;
    while h != NIL {
        let entry = nodes.node(h);
        match entry.compare(key) {
            Ordering::Equal => return h,
            Ordering::Less => h = entry.left(),
            Ordering::Greater => h = entry.right(),
        }
        depth += 1;
        assert!(
            depth <= MAX_DEPTH,
            "red-black tree deeper than {MAX_DEPTH}: corrupt links"
        );
    }
    NIL
}

/// Finds `key`, recording in `path` the ancestors of where it is (or would
/// be inserted). Returns its handle or `NIL`.
pub fn search<N: Nodes + ?Sized>(
    nodes: &N,
    root: Handle,
    key: &DigestKey,
    path: &mut Path,
) -> Handle {
    path.len = 0;
    let mut h = root;
    while h != NIL {
        let entry = nodes.node(h);
        match entry.compare(key) {
            Ordering::Equal => return h,
            Ordering::Less => {
                path.push(h, false);
                h = entry.left();
            }
            Ordering::Greater => {
                path.push(h, true);
                h = entry.right();
            }
        }
    }
    NIL
}

/// Links the entry `new` (record stored, links nil) where the failed
/// [`search`] that filled `path` ended, then restores the red-black rules.
pub fn insert<N: Nodes + ?Sized>(nodes: &N, root: &AtomicU32, path: &mut Path, new: Handle) {
    let n = nodes.node(new);
    n.set_left(NIL);
    n.set_right(NIL);
    n.set_red(true);
    let len = path.len;
    link(nodes, root, path, len, new);

    // `level` is the depth of the red node z that may have a red parent.
    let mut z = new;
    let mut level = len;
    loop {
        if level == 0 {
            nodes.node(z).set_red(false);
            return;
        }
        let parent = path.handles[level - 1];
        if !nodes.node(parent).is_red() {
            return;
        }
        // A red parent is never the root, so a grandparent exists.
        debug_assert!(level >= 2);
        let grand = path.handles[level - 2];
        let parent_is_right = path.right[level - 2];
        let uncle = nodes.node(grand).child(!parent_is_right);
        if is_red(nodes, uncle) {
            nodes.node(parent).set_red(false);
            nodes.node(uncle).set_red(false);
            nodes.node(grand).set_red(true);
            z = grand;
            level -= 2;
            continue;
        }
        let z_is_right = path.right[level - 1];
        let mut top = parent;
        if z_is_right != parent_is_right {
            // Inner grandchild: rotate it up to the outer position first.
            top = rotate(nodes, parent, parent_is_right);
            nodes.node(grand).set_child(parent_is_right, top);
        }
        let new_root = rotate(nodes, grand, !parent_is_right);
        debug_assert_eq!(new_root, top);
        nodes.node(top).set_red(false);
        nodes.node(grand).set_red(true);
        link(nodes, root, path, level - 2, top);
        let _ = z;
        return;
    }
}

/// Unlinks the record at `z`, whose ancestors a successful [`search`] left in
/// `path`. Returns the handle of the entry that left the tree, which the
/// caller frees: `z` itself, or `z`'s in-order successor after its record
/// was moved into `z`.
pub fn remove<N: Nodes + ?Sized>(
    nodes: &N,
    root: &AtomicU32,
    path: &mut Path,
    z: Handle,
) -> Handle {
    let mut y = z;
    if nodes.node(z).left() != NIL && nodes.node(z).right() != NIL {
        // Two children: take the successor's record into z, unlink the successor.
        path.push(z, true);
        y = nodes.node(z).right();
        while nodes.node(y).left() != NIL {
            path.push(y, false);
            y = nodes.node(y).left();
        }
        nodes.node(z).store_record(&nodes.node(y).record());
    }
    // y has at most one child.
    let y_entry = nodes.node(y);
    let x = if y_entry.left() != NIL {
        y_entry.left()
    } else {
        y_entry.right()
    };
    let mut level = path.len;
    link(nodes, root, path, level, x);
    if y_entry.is_red() {
        return y;
    }
    // Removing a black node: x carries an extra black up the tree.
    let mut x = x;
    while level > 0 && !is_red(nodes, x) {
        let parent = path.handles[level - 1];
        let x_is_right = path.right[level - 1];
        let mut sibling = nodes.node(parent).child(!x_is_right);
        if is_red(nodes, sibling) {
            // Case 1: make the sibling black by rotating it above the parent.
            nodes.node(sibling).set_red(false);
            nodes.node(parent).set_red(true);
            let top = rotate(nodes, parent, x_is_right);
            link(nodes, root, path, level - 1, top);
            // The path now runs ... → top → parent → x.
            path.handles[level - 1] = top;
            path.right[level - 1] = x_is_right;
            path.len = level;
            path.push(parent, x_is_right);
            level += 1;
            sibling = nodes.node(parent).child(!x_is_right);
        }
        let s = nodes.node(sibling);
        if !is_red(nodes, s.left()) && !is_red(nodes, s.right()) {
            // Case 2: push the extra black up.
            s.set_red(true);
            x = parent;
            level -= 1;
            continue;
        }
        if !is_red(nodes, s.child(!x_is_right)) {
            // Case 3: the sibling's near child is red; rotate it outward.
            nodes.node(s.child(x_is_right)).set_red(false);
            s.set_red(true);
            sibling = rotate(nodes, sibling, !x_is_right);
            nodes.node(parent).set_child(!x_is_right, sibling);
        }
        // Case 4: the sibling's far child is red; one rotation finishes.
        let s = nodes.node(sibling);
        s.set_red(nodes.node(parent).is_red());
        nodes.node(parent).set_red(false);
        nodes.node(s.child(!x_is_right)).set_red(false);
        let top = rotate(nodes, parent, x_is_right);
        link(nodes, root, path, level - 1, top);
        return y;
    }
    if x != NIL {
        nodes.node(x).set_red(false);
    }
    y
}

/// Visits the tree in digest order, starting after `after` (exclusive) when
/// given. `visit` returns `false` to stop early.
pub fn walk_from<N: Nodes + ?Sized>(
    nodes: &N,
    root: Handle,
    after: Option<&DigestKey>,
    mut visit: impl FnMut(Handle, &Entry) -> bool,
) {
    let mut stack = Path::new();
    let mut h = root;
    // Descend to the first entry greater than `after`, stacking every node
    // whose left subtree we enter (they come later in order).
    while h != NIL {
        let e = nodes.node(h);
        let go_left = match after {
            None => true,
            Some(key) => e.compare(key) == Ordering::Less,
        };
        if go_left {
            stack.push(h, false);
            h = e.left();
        } else {
            h = e.right();
        }
    }
    while stack.len > 0 {
        stack.len -= 1;
        let h = stack.handles[stack.len];
        let e = nodes.node(h);
        if !visit(h, e) {
            return;
        }
        let mut c = e.right();
        while c != NIL {
            stack.push(c, false);
            c = nodes.node(c).left();
        }
    }
}

/// Checks every red-black and ordering rule; returns the node count.
pub fn verify<N: Nodes + ?Sized>(nodes: &N, root: Handle) -> Result<usize, String> {
    fn check<N: Nodes + ?Sized>(
        nodes: &N,
        h: Handle,
        low: Option<DigestKey>,
        high: Option<DigestKey>,
        depth: usize,
        count: &mut usize,
    ) -> Result<usize, String> {
        if h == NIL {
            return Ok(1);
        }
        if depth > MAX_DEPTH {
            return Err("tree deeper than any valid red-black tree (a cycle?)".into());
        }
        let e = nodes.node(h);
        if !e.in_use() {
            return Err(format!("handle {h} is linked but not in use"));
        }
        let key = e.key();
        if low.is_some_and(|l| key <= l) || high.is_some_and(|hi| key >= hi) {
            return Err(format!("handle {h} is out of digest order"));
        }
        if e.is_red() && (is_red(nodes, e.left()) || is_red(nodes, e.right())) {
            return Err(format!("red handle {h} has a red child"));
        }
        *count += 1;
        let left = check(nodes, e.left(), low, Some(key), depth + 1, count)?;
        let right = check(nodes, e.right(), Some(key), high, depth + 1, count)?;
        if left != right {
            return Err(format!(
                "black heights differ under handle {h}: {left} vs {right}"
            ));
        }
        Ok(left + usize::from(!e.is_red()))
    }
    if is_red(nodes, root) {
        return Err("root is red".into());
    }
    let mut count = 0;
    check(nodes, root, None, None, 0, &mut count)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::index::layout::IndexRecord;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Entries in process memory; handle h is `entries[h]`, 0 unused.
    struct VecNodes {
        entries: Vec<Entry>,
        free: Vec<Handle>,
    }

    impl Nodes for VecNodes {
        fn node(&self, h: Handle) -> &Entry {
            &self.entries[h as usize]
        }
    }

    impl VecNodes {
        fn new(capacity: usize) -> VecNodes {
            VecNodes {
                entries: (0..=capacity).map(|_| Entry::default()).collect(),
                free: (1..=capacity as Handle).rev().collect(),
            }
        }
    }

    fn digest_of(v: u16) -> Digest {
        let mut d = Digest([0u8; 20]);
        d.0[..2].copy_from_slice(&v.to_be_bytes());
        d.0[19] = (v % 7) as u8;
        d
    }

    fn insert_key(nodes: &mut VecNodes, root: &AtomicU32, d: Digest) -> bool {
        let key = DigestKey::new(&d);
        let mut path = Path::new();
        if search(nodes, root.load(Relaxed), &key, &mut path) != NIL {
            return false;
        }
        let h = nodes.free.pop().unwrap();
        nodes.node(h).reset_in_use();
        nodes.node(h).store_record(&IndexRecord {
            digest: d,
            ..Default::default()
        });
        insert(nodes, root, &mut path, h);
        true
    }

    fn remove_key(nodes: &mut VecNodes, root: &AtomicU32, d: Digest) -> bool {
        let key = DigestKey::new(&d);
        let mut path = Path::new();
        let z = search(nodes, root.load(Relaxed), &key, &mut path);
        if z == NIL {
            return false;
        }
        let gone = remove(nodes, root, &mut path, z);
        nodes.node(gone).reset_free(NIL);
        nodes.free.push(gone);
        true
    }

    fn in_order(nodes: &VecNodes, root: Handle, after: Option<Digest>) -> Vec<Digest> {
        let mut out = Vec::new();
        let after = after.map(|d| DigestKey::new(&d));
        walk_from(nodes, root, after.as_ref(), |_, e| {
            out.push(e.key().digest());
            true
        });
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matches_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u16..300), 1..600), probe in 0u16..300) {
            let mut nodes = VecNodes::new(300);
            let root = AtomicU32::new(NIL);
            let mut model = BTreeSet::new();
            for (is_insert, v) in ops {
                let d = digest_of(v);
                if is_insert {
                    prop_assert_eq!(insert_key(&mut nodes, &root, d), model.insert(d));
                } else {
                    prop_assert_eq!(remove_key(&mut nodes, &root, d), model.remove(&d));
                }
                let count = verify(&nodes, root.load(Relaxed)).map_err(TestCaseError::fail)?;
                prop_assert_eq!(count, model.len());
            }
            let all: Vec<Digest> = model.iter().copied().collect();
            prop_assert_eq!(in_order(&nodes, root.load(Relaxed), None), all);
            let after = digest_of(probe);
            let tail: Vec<Digest> = model.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)).copied().collect();
            prop_assert_eq!(in_order(&nodes, root.load(Relaxed), Some(after)), tail);
            for v in 0..300u16 {
                let d = digest_of(v);
                prop_assert_eq!(find(&nodes, root.load(Relaxed), &DigestKey::new(&d)) != NIL, model.contains(&d));
            }
        }
    }

    #[test]
    fn ascending_and_descending_runs_stay_balanced() {
        let n = 5000u16;
        let mut nodes = VecNodes::new(n as usize);
        let root = AtomicU32::new(NIL);
        for v in 0..n {
            assert!(insert_key(&mut nodes, &root, digest_of(v)));
        }
        assert_eq!(verify(&nodes, root.load(Relaxed)).unwrap(), n as usize);
        for v in (0..n).rev().step_by(2) {
            assert!(remove_key(&mut nodes, &root, digest_of(v)));
        }
        assert_eq!(verify(&nodes, root.load(Relaxed)).unwrap(), n as usize / 2);
    }

    #[test]
    fn verify_catches_broken_trees() {
        let mut nodes = VecNodes::new(8);
        let root = AtomicU32::new(NIL);
        for v in [5u16, 3, 8] {
            insert_key(&mut nodes, &root, digest_of(v));
        }
        let r = root.load(Relaxed);
        nodes.node(r).set_red(true);
        assert!(verify(&nodes, r).unwrap_err().contains("root is red"));
        nodes.node(r).set_red(false);
        // Swap children: order is violated.
        let (l, rt) = (nodes.node(r).left(), nodes.node(r).right());
        nodes.node(r).set_left(rt);
        nodes.node(r).set_right(l);
        assert!(verify(&nodes, r)
            .unwrap_err()
            .contains("out of digest order"));
    }
}
