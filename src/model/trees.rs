//! Tree kernel: decision-tree ensembles (`ai.onnx.ml` `TreeEnsembleRegressor`,
//! `TreeEnsembleClassifier`, `TreeEnsemble`) lowered at load into one flat array
//! of 12-byte nodes, so a request walks each tree with one load and one compare
//! per level and allocates nothing.
//!
//! Two representations of the same ensemble:
//! - [`Ensemble`]: the trees as the ONNX attributes describe them (original
//!   comparison modes, missing-value directions, every vote of every leaf).
//!   [`Ensemble::reference`] evaluates it literally, in `f64`: the reference the
//!   kernel is checked against at load.
//! - [`Trees`]: the kernel. Nodes are laid out breadth-first per tree with both
//!   children of a node adjacent, every `<`, `>`, `>=` split rewritten as a
//!   `<=` split (swapping the children; `x < t` ⇔ `x <= t⁻` on floats), a
//!   one-vote leaf stored in place, so the walk is `i = next + !(x[f] <= t)`.
//!
//! Semantics follow the ONNX-ML specification and onnxruntime: a tree's leaf
//! votes add `weight` to `target`; the trees' votes per target are aggregated
//! (`SUM`, `AVERAGE` = sum / number of trees, `MIN`, `MAX`), `base_values` are
//! added, then the post-transform (`NONE`, `LOGISTIC`, `SOFTMAX`,
//! `SOFTMAX_ZERO`) is applied. A NaN input follows the node's
//! `missing_value_tracks_true` (else the comparison decides, false for NaN).

use std::fmt;

/// Most tree nodes (branches and leaves, all ensembles of a model) the filter
/// loads: 16 bytes each in every worker's memory.
pub const MAX_TREE_NODES: usize = 2_000_000;
/// Deepest tree the filter loads (root = depth 0).
pub const MAX_TREE_DEPTH: usize = 32;
/// Most node visits one request may need: the sum over all trees of their depth
/// (trees × depth for balanced trees). Bounds the per-request cost.
pub const MAX_TREE_STEPS: usize = 200_000;

/// How a branch compares `x[feature]` with its threshold (true → true child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Mode {
    /// The ONNX name: `BRANCH_LEQ`, ...
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            _ => return None,
        })
    }

    fn holds(self, x: f64, t: f64) -> bool {
        match self {
            Mode::Leq => x <= t,
            Mode::Lt => x < t,
            Mode::Gte => x >= t,
            Mode::Gt => x > t,
            Mode::Eq => x == t,
            Mode::Neq => x != t,
        }
    }
}

/// How the trees' votes for one target are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    pub fn parse(s: &str) -> Option<Aggregate> {
        Some(match s {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            _ => return None,
        })
    }
}

/// What is applied to the aggregated scores (shared with the linear models).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

impl PostTransform {
    pub fn parse(s: &str) -> Option<PostTransform> {
        Some(match s {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PostTransform::None => "none",
            PostTransform::Logistic => "logistic",
            PostTransform::Softmax => "softmax",
            PostTransform::SoftmaxZero => "softmax_zero",
        }
    }

    /// Applies the transform in place (as onnxruntime's `ml_common.h`).
    pub fn apply(self, y: &mut [f32]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => y.iter_mut().for_each(|v| *v = logistic(*v)),
            PostTransform::Softmax => {
                let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in y.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                y.iter_mut().for_each(|v| *v /= sum);
            }
            PostTransform::SoftmaxZero => {
                let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in y.iter_mut() {
                    if *v != 0.0 {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                }
                if sum > 0.0 {
                    y.iter_mut().for_each(|v| *v /= sum);
                }
            }
        }
    }

    /// The same in `f64` (reference evaluations).
    pub fn apply_f64(self, y: &mut [f64]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => y.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            PostTransform::Softmax | PostTransform::SoftmaxZero => {
                let zero = self == PostTransform::SoftmaxZero;
                let max = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for v in y.iter_mut() {
                    if !(zero && *v == 0.0) {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                }
                if sum > 0.0 {
                    y.iter_mut().for_each(|v| *v /= sum);
                }
            }
        }
    }
}

/// `1 / (1 + e^-v)`, computed on `|v|` so it never overflows (as onnxruntime).
pub fn logistic(v: f32) -> f32 {
    let s = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 {
        1.0 - s
    } else {
        s
    }
}

/// One node of a tree as the ONNX attributes give it. Children are indices into
/// the same tree's `nodes`.
#[derive(Debug, Clone, PartialEq)]
pub enum RawNode {
    Branch { feature: usize, threshold: f32, mode: Mode, missing_true: bool, yes: usize, no: usize },
    Leaf { votes: Vec<(usize, f32)> },
}

/// One tree; `nodes[root]` is its root.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTree {
    pub nodes: Vec<RawNode>,
    pub root: usize,
}

/// Why an ensemble was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TreeError {
    /// The trees do not form trees (cycles, shared or dangling children, bad ids).
    Invalid(String),
    /// A size limit is exceeded.
    Limit(String),
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::Invalid(m) | TreeError::Limit(m) => f.write_str(m),
        }
    }
}

/// A tree ensemble as described by its ONNX node, checked: every tree is a
/// tree (each node reached exactly once from its root), features and targets in
/// range, weights and thresholds not NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble {
    pub trees: Vec<RawTree>,
    pub inputs: usize,
    pub targets: usize,
    pub aggregate: Aggregate,
    /// Added per target after aggregation (`targets` long).
    pub base: Vec<f32>,
    pub post: PostTransform,
}

/// Depth statistics of a checked ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub trees: usize,
    pub nodes: usize,
    pub max_depth: usize,
    /// Σ over trees of their depth: the most node visits of one evaluation.
    pub steps: usize,
}

impl Ensemble {
    /// Checks the structure and the limits; returns the ensemble's shape.
    pub fn check(&self) -> Result<Shape, TreeError> {
        let invalid = |m: String| Err(TreeError::Invalid(m));
        if self.trees.is_empty() {
            return invalid("the ensemble has no tree".into());
        }
        if self.base.len() != self.targets {
            return invalid(format!("{} base values for {} targets", self.base.len(), self.targets));
        }
        if self.base.iter().any(|b| !b.is_finite()) {
            return invalid("a base value is not finite".into());
        }
        let mut shape = Shape { trees: self.trees.len(), ..Shape::default() };
        for (t, tree) in self.trees.iter().enumerate() {
            shape.nodes += tree.nodes.len();
            if shape.nodes > MAX_TREE_NODES {
                return Err(TreeError::Limit(format!(
                    "more than {MAX_TREE_NODES} tree nodes (limit max_tree_nodes); use fewer or shallower trees"
                )));
            }
            let depth = self.check_tree(t, tree)?;
            shape.max_depth = shape.max_depth.max(depth);
            shape.steps += depth;
        }
        if shape.steps > MAX_TREE_STEPS {
            return Err(TreeError::Limit(format!(
                "{} trees need up to {} node visits per request (Σ tree depths), over the limit of {MAX_TREE_STEPS} \
                 (limit max_tree_steps = trees × depth); use fewer or shallower trees",
                shape.trees, shape.steps
            )));
        }
        Ok(shape)
    }

    /// Depth of tree `t`, after checking every node is reached exactly once.
    fn check_tree(&self, t: usize, tree: &RawTree) -> Result<usize, TreeError> {
        let invalid = |m: String| Err(TreeError::Invalid(format!("tree {t}: {m}")));
        let n = tree.nodes.len();
        if tree.root >= n {
            return invalid("no root".into());
        }
        let mut seen = vec![false; n];
        let mut stack = vec![(tree.root, 0usize)];
        let mut depth = 0;
        let mut reached = 0;
        while let Some((i, d)) = stack.pop() {
            if seen[i] {
                return invalid(format!("node {i} is reached twice (a cycle or a shared child)"));
            }
            seen[i] = true;
            reached += 1;
            if d > MAX_TREE_DEPTH {
                return Err(TreeError::Limit(format!(
                    "tree {t} is deeper than {MAX_TREE_DEPTH} (limit max_tree_depth); use shallower trees"
                )));
            }
            depth = depth.max(d);
            match &tree.nodes[i] {
                RawNode::Branch { feature, threshold, yes, no, .. } => {
                    if *feature >= self.inputs {
                        return invalid(format!("node {i} splits on input {feature} of {}", self.inputs));
                    }
                    if threshold.is_nan() {
                        return invalid(format!("node {i} has a NaN threshold"));
                    }
                    for c in [*yes, *no] {
                        if c >= n {
                            return invalid(format!("node {i} has a child {c} that does not exist"));
                        }
                        stack.push((c, d + 1));
                    }
                }
                RawNode::Leaf { votes } => {
                    for (target, w) in votes {
                        if *target >= self.targets {
                            return invalid(format!(
                                "leaf {i} votes for target {target} of {}",
                                self.targets
                            ));
                        }
                        if !w.is_finite() {
                            return invalid(format!("leaf {i} has a non-finite weight"));
                        }
                    }
                }
            }
        }
        if reached != n {
            return invalid(format!("{} of its {n} nodes are not reachable from the root", n - reached));
        }
        Ok(depth)
    }

    /// Evaluates the ensemble on `x` exactly as specified, in `f64`: the
    /// reference [`Trees::run`] is checked against. Allocates; load time only.
    pub fn reference(&self, x: &[f32]) -> Vec<f32> {
        let mut score: Vec<Option<f64>> = vec![None; self.targets];
        for tree in &self.trees {
            let mut i = tree.root;
            let votes = loop {
                match &tree.nodes[i] {
                    RawNode::Leaf { votes } => break votes,
                    RawNode::Branch { feature, threshold, mode, missing_true, yes, no } => {
                        let v = x.get(*feature).copied().unwrap_or(f32::NAN);
                        let go_yes = if v.is_nan() && *missing_true {
                            true
                        } else {
                            mode.holds(f64::from(v), f64::from(*threshold))
                        };
                        i = if go_yes { *yes } else { *no };
                    }
                }
            };
            for (target, w) in votes {
                let w = f64::from(*w);
                let s = &mut score[*target];
                *s = Some(match (*s, self.aggregate) {
                    (None, _) => w,
                    (Some(a), Aggregate::Sum | Aggregate::Average) => a + w,
                    (Some(a), Aggregate::Min) => a.min(w),
                    (Some(a), Aggregate::Max) => a.max(w),
                });
            }
        }
        let n = self.trees.len() as f64;
        let mut y: Vec<f64> = score
            .iter()
            .zip(&self.base)
            .map(|(s, b)| {
                let s = s.unwrap_or(0.0);
                let s = if self.aggregate == Aggregate::Average { s / n } else { s };
                s + f64::from(*b)
            })
            .collect();
        self.post.apply_f64(&mut y);
        y.into_iter().map(|v| v as f32).collect()
    }
}

/// Node kinds, in the top byte of [`Node::word`].
const LEQ: u32 = 0;
const EQ: u32 = 1;
const NEQ: u32 = 2;
/// A leaf with one vote: `threshold` is the weight, the low bits the target.
const LEAF1: u32 = 3;
/// A leaf with several votes: `next` indexes [`Trees::leaf_start`].
const LEAFN: u32 = 4;
/// Flag: a NaN input goes to the first child (else the second).
const NAN_FIRST: u32 = 8;
const KIND_SHIFT: u32 = 24;
const LOW: u32 = (1 << KIND_SHIFT) - 1;

/// One kernel node: for a branch, `x[feature] (kind) threshold` sends the walk
/// to `next` (true) or `next + 1` (false).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    threshold: f32,
    /// Kind (top byte) and feature or target index (low 24 bits).
    word: u32,
    next: u32,
}

/// The lowered ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct Trees {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// Multi-vote leaves: votes `leaf_start[l]..leaf_start[l + 1]`.
    leaf_start: Vec<u32>,
    votes: Vec<(u32, f32)>,
    inputs: usize,
    targets: usize,
    aggregate: Aggregate,
    base: Vec<f32>,
    post: PostTransform,
    shape: Shape,
}

/// Which child a branch of `kind` takes for a non-NaN `v`: 0 the first, 1 the
/// second (for LEQ a NaN compares false and goes second).
#[inline(always)]
fn second(kind: u32, v: f32, t: f32) -> usize {
    match kind & 7 {
        LEQ => 1 - usize::from(v <= t),
        EQ => usize::from(v != t),
        _ => usize::from(v == t),
    }
}

/// The largest float below `t` (so `x < t` ⇔ `x <= below(t)` for every non-NaN `x`).
fn below(t: f32) -> f32 {
    if t == f32::NEG_INFINITY {
        // Nothing is below -inf: `x <= NaN` is false for every x, as `x < -inf`.
        f32::NAN
    } else if t == 0.0 {
        -f32::from_bits(1)
    } else if t > 0.0 {
        f32::from_bits(t.to_bits() - 1)
    } else {
        f32::from_bits(t.to_bits() + 1)
    }
}

impl Trees {
    /// Lowers a checked ensemble (call [`Ensemble::check`] first: this only
    /// re-checks what indexing relies on).
    pub fn lower(e: &Ensemble) -> Result<Trees, TreeError> {
        let shape = e.check()?;
        if e.inputs > LOW as usize || e.targets > LOW as usize || shape.nodes >= u32::MAX as usize / 2 {
            return Err(TreeError::Limit("too many inputs, targets or nodes for the tree kernel".into()));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(shape.nodes);
        let mut roots = Vec::with_capacity(e.trees.len());
        let mut leaf_start = vec![0u32];
        let mut votes: Vec<(u32, f32)> = Vec::new();
        // Breadth-first per tree: each branch's two children are placed
        // together, in the order the rewritten comparison needs.
        let mut queue: std::collections::VecDeque<(usize, usize)> = std::collections::VecDeque::new();
        for tree in &e.trees {
            roots.push(nodes.len() as u32);
            nodes.push(Node { threshold: 0.0, word: 0, next: 0 });
            queue.push_back((tree.root, nodes.len() - 1));
            while let Some((raw, slot)) = queue.pop_front() {
                let node = match &tree.nodes[raw] {
                    RawNode::Leaf { votes: v } => match v.as_slice() {
                        [(target, w)] => {
                            Node { threshold: *w, word: LEAF1 << KIND_SHIFT | *target as u32, next: 0 }
                        }
                        _ => {
                            let id = leaf_start.len() as u32 - 1;
                            votes.extend(v.iter().map(|(t, w)| (*t as u32, *w)));
                            leaf_start.push(votes.len() as u32);
                            Node { threshold: 0.0, word: LEAFN << KIND_SHIFT, next: id }
                        }
                    },
                    RawNode::Branch { feature, threshold, mode, missing_true, yes, no } => {
                        // (kind, threshold, first child, second child, NaN goes first)
                        let nan_yes = *missing_true || *mode == Mode::Neq;
                        let (kind, t, first, second, nan_first) = match mode {
                            Mode::Leq => (LEQ, *threshold, *yes, *no, nan_yes),
                            Mode::Lt => (LEQ, below(*threshold), *yes, *no, nan_yes),
                            // x > t ⇔ !(x <= t): the false child comes first.
                            Mode::Gt => (LEQ, *threshold, *no, *yes, !nan_yes),
                            Mode::Gte => (LEQ, below(*threshold), *no, *yes, !nan_yes),
                            Mode::Eq => (EQ, *threshold, *yes, *no, nan_yes),
                            Mode::Neq => (NEQ, *threshold, *yes, *no, nan_yes),
                        };
                        let next = nodes.len() as u32;
                        nodes.push(Node { threshold: 0.0, word: 0, next: 0 });
                        nodes.push(Node { threshold: 0.0, word: 0, next: 0 });
                        queue.push_back((first, next as usize));
                        queue.push_back((second, next as usize + 1));
                        let flag = if nan_first { NAN_FIRST } else { 0 };
                        Node { threshold: t, word: (kind | flag) << KIND_SHIFT | *feature as u32, next }
                    }
                };
                nodes[slot] = node;
            }
        }
        Ok(Trees {
            nodes,
            roots,
            leaf_start,
            votes,
            inputs: e.inputs,
            targets: e.targets,
            aggregate: e.aggregate,
            base: e.base.clone(),
            post: e.post,
            shape,
        })
    }

    /// One kernel for several ensembles over the same input whose outputs are
    /// contiguous: `parts[0]`'s targets first, then `parts[1]`'s, ... (what a
    /// per-output GBM export is). `None` unless they aggregate alike with
    /// `SUM`, `MIN` or `MAX` and an element-wise post-transform (`AVERAGE`
    /// divides by each ensemble's own tree count).
    pub fn fuse(parts: &[Trees]) -> Option<Trees> {
        let first = parts.first()?;
        let alike = parts.iter().all(|p| {
            p.inputs == first.inputs
                && p.aggregate == first.aggregate
                && p.post == first.post
                && p.aggregate != Aggregate::Average
                && matches!(p.post, PostTransform::None | PostTransform::Logistic)
        });
        let targets: usize = parts.iter().map(|p| p.targets).sum();
        let nodes: usize = parts.iter().map(|p| p.nodes.len()).sum();
        if !alike || targets > LOW as usize || nodes >= u32::MAX as usize / 2 {
            return None;
        }
        let mut out = Trees {
            nodes: Vec::with_capacity(nodes),
            roots: Vec::new(),
            leaf_start: vec![0],
            votes: Vec::new(),
            inputs: first.inputs,
            targets: 0,
            aggregate: first.aggregate,
            base: Vec::with_capacity(targets),
            post: first.post,
            shape: Shape::default(),
        };
        for p in parts {
            let node_off = out.nodes.len() as u32;
            let leaf_off = out.leaf_start.len() as u32 - 1;
            let target_off = out.targets as u32;
            out.nodes.extend(p.nodes.iter().map(|n| {
                let kind = n.word >> KIND_SHIFT;
                match kind & 7 {
                    LEAF1 => Node { word: LEAF1 << KIND_SHIFT | ((n.word & LOW) + target_off), ..*n },
                    LEAFN => Node { next: n.next + leaf_off, ..*n },
                    _ => Node { next: n.next + node_off, ..*n },
                }
            }));
            out.roots.extend(p.roots.iter().map(|r| r + node_off));
            for l in 0..p.leaf_start.len().saturating_sub(1) {
                let (a, b) = (p.leaf_start[l] as usize, p.leaf_start[l + 1] as usize);
                out.votes.extend(p.votes[a..b].iter().map(|(t, w)| (t + target_off, *w)));
                out.leaf_start.push(out.votes.len() as u32);
            }
            out.base.extend_from_slice(&p.base);
            out.targets += p.targets;
            out.shape.trees += p.shape.trees;
            out.shape.nodes += p.shape.nodes;
            out.shape.steps += p.shape.steps;
            out.shape.max_depth = out.shape.max_depth.max(p.shape.max_depth);
        }
        Some(out)
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn targets(&self) -> usize {
        self.targets
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// How targets are aggregated and post-transformed, as the descriptions spell it.
    fn aggregation(&self) -> (&'static str, String) {
        let agg = match self.aggregate {
            Aggregate::Sum => "sum",
            Aggregate::Average => "average",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
        };
        let post = match self.post {
            PostTransform::None => String::new(),
            p => format!(", {}", p.as_str()),
        };
        (agg, post)
    }

    /// `100 trees (max depth 6, 6,300 nodes), sum, +logistic`: for logs and the CLI.
    pub fn describe(&self) -> String {
        let (agg, post) = self.aggregation();
        format!(
            "{} trees (max depth {}, {} nodes) → {} targets, {agg}{post}",
            self.shape.trees, self.shape.max_depth, self.shape.nodes, self.targets
        )
    }

    /// `TreeEnsembleRegressor[sum]`: the op and what is not per-tree, so the
    /// ensembles of one export describe alike.
    pub fn describe_kind(&self, op: &str) -> String {
        let (agg, post) = self.aggregation();
        format!("{op}[{} target{}, {agg}{post}]", self.targets, if self.targets == 1 { "" } else { "s" })
    }

    /// Evaluates on `x` (at least [`Trees::inputs`] values) into `y`
    /// ([`Trees::targets`] values). No allocation.
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        if x.len() < self.inputs || y.len() != self.targets {
            y.iter_mut().for_each(|v| *v = f32::NAN);
            return;
        }
        let init = match self.aggregate {
            Aggregate::Sum | Aggregate::Average => 0.0,
            // NaN = no vote yet (weights are never NaN).
            Aggregate::Min | Aggregate::Max => f32::NAN,
        };
        y.iter_mut().for_each(|v| *v = init);
        if x[..self.inputs].iter().any(|v| v.is_nan()) {
            self.walk::<true>(x, y);
        } else {
            self.walk::<false>(x, y);
        }
        let n = self.roots.len() as f32;
        for (v, b) in y.iter_mut().zip(&self.base) {
            let s = if v.is_nan() { 0.0 } else { *v };
            let s = if self.aggregate == Aggregate::Average { s / n } else { s };
            *v = s + b;
        }
        self.post.apply(y);
    }

    fn walk<const NAN: bool>(&self, x: &[f32], y: &mut [f32]) {
        let nodes = self.nodes.as_slice();
        let mut roots = self.roots.as_slice();
        if !NAN {
            // Four walks interleaved: their node and input loads are
            // independent, so they overlap instead of queueing behind one
            // another. Leaves are applied in tree order (same sums).
            while let [a, b, c, d, rest @ ..] = roots {
                let mut at = [*a as usize, *b as usize, *c as usize, *d as usize];
                loop {
                    let mut moved = false;
                    for i in at.iter_mut() {
                        let n = nodes[*i];
                        let kind = n.word >> KIND_SHIFT;
                        if kind & 7 < LEAF1 {
                            *i = n.next as usize + second(kind, x[(n.word & LOW) as usize], n.threshold);
                            moved = true;
                        }
                    }
                    if !moved {
                        break;
                    }
                }
                for i in at {
                    self.apply(nodes[i], y);
                }
                roots = rest;
            }
        }
        for root in roots {
            let mut i = *root as usize;
            let leaf = loop {
                let n = nodes[i];
                let kind = n.word >> KIND_SHIFT;
                if kind & 7 >= LEAF1 {
                    break n;
                }
                let v = x[(n.word & LOW) as usize];
                // A NaN follows the node's missing-value direction.
                let go = if NAN && v.is_nan() {
                    usize::from(kind & NAN_FIRST == 0)
                } else {
                    second(kind, v, n.threshold)
                };
                i = n.next as usize + go;
            };
            self.apply(leaf, y);
        }
    }

    /// Adds a leaf's votes.
    #[inline(always)]
    fn apply(&self, leaf: Node, y: &mut [f32]) {
        if leaf.word >> KIND_SHIFT == LEAF1 {
            self.vote((leaf.word & LOW) as usize, leaf.threshold, y);
        } else {
            let l = leaf.next as usize;
            let (a, b) = (self.leaf_start[l] as usize, self.leaf_start[l + 1] as usize);
            for (t, w) in &self.votes[a..b] {
                self.vote(*t as usize, *w, y);
            }
        }
    }

    #[inline(always)]
    fn vote(&self, target: usize, w: f32, y: &mut [f32]) {
        let s = &mut y[target];
        *s = match self.aggregate {
            Aggregate::Sum | Aggregate::Average => *s + w,
            Aggregate::Min => {
                if s.is_nan() || w < *s {
                    w
                } else {
                    *s
                }
            }
            Aggregate::Max => {
                if s.is_nan() || w > *s {
                    w
                } else {
                    *s
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(feature: usize, threshold: f32, mode: Mode, yes: usize, no: usize) -> RawNode {
        RawNode::Branch { feature, threshold, mode, missing_true: false, yes, no }
    }

    fn leaf(target: usize, w: f32) -> RawNode {
        RawNode::Leaf { votes: vec![(target, w)] }
    }

    fn ensemble(trees: Vec<RawTree>, targets: usize, aggregate: Aggregate, post: PostTransform) -> Ensemble {
        Ensemble { trees, inputs: 3, targets, aggregate, base: vec![0.5; targets], post }
    }

    /// x0 (mode) 0.5 ? leaf 1.0 : (x1 <= 0.2 ? 2.0 : 3.0), root not at index 0.
    fn tree(mode: Mode) -> RawTree {
        RawTree {
            nodes: vec![
                leaf(0, 2.0),
                branch(1, 0.2, Mode::Leq, 0, 3),
                branch(0, 0.5, mode, 4, 1),
                leaf(0, 3.0),
                leaf(0, 1.0),
            ],
            root: 2,
        }
    }

    fn run(t: &Trees, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0; t.targets()];
        t.run(x, &mut y);
        y
    }

    #[test]
    fn every_mode_matches_the_reference_at_and_around_the_threshold() {
        for mode in [Mode::Leq, Mode::Lt, Mode::Gte, Mode::Gt, Mode::Eq, Mode::Neq] {
            for missing_true in [false, true] {
                let mut t = tree(mode);
                if let RawNode::Branch { missing_true: m, .. } = &mut t.nodes[2] {
                    *m = missing_true;
                }
                let e = ensemble(vec![t], 1, Aggregate::Sum, PostTransform::None);
                let k = Trees::lower(&e).unwrap();
                for x0 in [0.0, 0.5, below(0.5), f32::from_bits(0.5f32.to_bits() + 1), 1.0, f32::NAN] {
                    for x1 in [0.0, 0.2, 0.3, f32::NAN] {
                        let x = [x0, x1, 0.0];
                        let (got, want) = (run(&k, &x), e.reference(&x));
                        assert_eq!(got, want, "{mode:?} missing_true={missing_true} x={x:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn by_hand_sum_average_min_max_and_post_transforms() {
        let trees = vec![tree(Mode::Leq), tree(Mode::Gt)];
        let x = [0.7, 0.1, 0.0]; // tree 1 (LEQ): 0.7 > 0.5 → x1 0.1 <= 0.2 → 2.0; tree 2 (GT) → 1.0
        let cases = [
            (Aggregate::Sum, PostTransform::None, 3.5),
            (Aggregate::Average, PostTransform::None, 2.0),
            (Aggregate::Min, PostTransform::None, 1.5),
            (Aggregate::Max, PostTransform::None, 2.5),
            (Aggregate::Sum, PostTransform::Logistic, 1.0 / (1.0 + (-3.5f32).exp())),
        ];
        for (agg, post, want) in cases {
            let e = ensemble(trees.clone(), 1, agg, post);
            let got = run(&Trees::lower(&e).unwrap(), &x)[0];
            assert!((got - want).abs() < 1e-6, "{agg:?} {post:?}: {got} vs {want}");
            assert!((e.reference(&x)[0] - want).abs() < 1e-6);
        }
        // Softmax over two targets, one multi-vote leaf, a target no tree votes for.
        let t = RawTree { nodes: vec![RawNode::Leaf { votes: vec![(0, 1.0), (1, 2.0)] }], root: 0 };
        let e = ensemble(vec![t], 3, Aggregate::Sum, PostTransform::Softmax);
        let (got, want) = (run(&Trees::lower(&e).unwrap(), &x), e.reference(&x));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!((got.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn refuses_cycles_shared_children_bad_indices_and_limits() {
        let bad = |nodes: Vec<RawNode>, root: usize| {
            ensemble(vec![RawTree { nodes, root }], 1, Aggregate::Sum, PostTransform::None).check()
        };
        assert!(matches!(
            bad(vec![branch(0, 0.5, Mode::Leq, 0, 1), leaf(0, 1.0)], 0),
            Err(TreeError::Invalid(_))
        ));
        assert!(matches!(
            bad(vec![branch(0, 0.5, Mode::Leq, 1, 1), leaf(0, 1.0)], 0),
            Err(TreeError::Invalid(_))
        ));
        assert!(matches!(
            bad(vec![branch(0, 0.5, Mode::Leq, 1, 7), leaf(0, 1.0)], 0),
            Err(TreeError::Invalid(_))
        ));
        assert!(bad(vec![branch(9, 0.5, Mode::Leq, 1, 2), leaf(0, 1.0), leaf(0, 1.0)], 0).is_err());
        assert!(matches!(bad(vec![leaf(4, 1.0)], 0), Err(TreeError::Invalid(_))));
        assert!(matches!(bad(vec![leaf(0, f32::NAN)], 0), Err(TreeError::Invalid(_))));
        assert!(matches!(bad(vec![leaf(0, 1.0), leaf(0, 1.0)], 0), Err(TreeError::Invalid(_))));
        // A chain deeper than the limit.
        match ensemble(vec![chain(MAX_TREE_DEPTH + 1)], 1, Aggregate::Sum, PostTransform::None).check() {
            Err(TreeError::Limit(m)) => assert!(m.contains("max_tree_depth"), "{m}"),
            other => panic!("expected a depth limit, got {other:?}"),
        }
    }

    /// A chain of `d` branches (each with a leaf on its true side): depth `d`.
    fn chain(d: usize) -> RawTree {
        let mut nodes = Vec::new();
        for i in 0..d {
            nodes.push(branch(0, i as f32, Mode::Leq, 2 * i + 1, 2 * i + 2));
            nodes.push(leaf(0, 1.0));
        }
        nodes.push(leaf(0, 1.0));
        RawTree { nodes, root: 0 }
    }

    #[test]
    fn steps_limit_names_trees_times_depth() {
        let t = chain(30);
        assert_eq!(
            ensemble(vec![t.clone()], 1, Aggregate::Sum, PostTransform::None).check().unwrap().max_depth,
            30
        );
        let many = vec![t; MAX_TREE_STEPS / 30 + 1];
        match ensemble(many, 1, Aggregate::Sum, PostTransform::None).check() {
            Err(TreeError::Limit(m)) => assert!(m.contains("max_tree_steps"), "{m}"),
            other => panic!("expected the steps limit, got {other:?}"),
        }
    }
}
