//! ONNX-ML graphs on augur's own kernels: tree ensembles (`TreeEnsembleRegressor`,
//! `TreeEnsembleClassifier`, `TreeEnsemble`), linear models (`LinearRegressor`,
//! `LinearClassifier`) and the plain ops converters put around them
//! (`Reshape`/`Flatten`/`Identity`/`Cast`, `Concat`, `MatMul`/`Gemm` with constant
//! weights, element-wise maths with constants, activations).
//!
//! tract (as configured for the filter) runs none of the `ai.onnx.ml` ops, so a
//! graph that uses one is lowered here into a straight-line [`Program`]: each
//! value is one batch row, a span of one scratch buffer allocated at load; each
//! step reads earlier spans and writes its own. Only the nodes the chosen output
//! depends on are lowered (a classifier's `label` branch — `ArgMax`, `ZipMap`,
//! `Binarizer`, ... — is ignored).
//!
//! Verification: every step also has a reference evaluation (trees: the ONNX
//! attributes walked literally in `f64`, [`trees::Ensemble::reference`]; linear
//! maps: a plain `f64` dot product), and [`Program::reference`] runs the whole
//! program with them; the model is only used once the kernels agreed with it on
//! [`super::PROBES`] probe inputs (see `super::Model::from_onnx_with`).

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto};

use super::dense::{self, Activation, Layer};
use super::trees::{Aggregate, Ensemble, Mode, PostTransform, RawNode, RawTree, Shape, TreeError, Trees};

/// The `ai.onnx.ml` operators that make a graph run here rather than on tract.
pub const ML_OPS: [&str; 5] = [
    "TreeEnsembleRegressor",
    "TreeEnsembleClassifier",
    "TreeEnsemble",
    "LinearRegressor",
    "LinearClassifier",
];

/// Every operator a [`Program`] can lower.
pub const OPS: [&str; 26] = [
    "TreeEnsembleRegressor",
    "TreeEnsembleClassifier",
    "TreeEnsemble",
    "LinearRegressor",
    "LinearClassifier",
    "Identity",
    "Cast",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Constant",
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Abs",
    "Clip",
    "Softmax",
    "Normalizer",
];

/// Why a graph could not be lowered.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphError {
    /// Not a graph this module runs (unsupported op, shape, attribute, ...).
    Unsupported(String),
    /// A size limit is exceeded (the message names it).
    Limit(String),
}

impl From<TreeError> for GraphError {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Invalid(m) => GraphError::Unsupported(m),
            TreeError::Limit(m) => GraphError::Limit(m),
        }
    }
}

fn unsupported<T>(m: impl Into<String>) -> Result<T, GraphError> {
    Err(GraphError::Unsupported(m.into()))
}

/// A value: `len` floats at `off` in the scratch buffer, with its ONNX shape
/// (batch dimension = 1).
#[derive(Debug, Clone, PartialEq)]
struct Value {
    off: usize,
    shape: Vec<usize>,
}

impl Value {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    fn span(&self) -> Span {
        Span { off: self.off, len: self.len() }
    }

    /// `[1, n]` or `[n]`: a plain row.
    fn is_row(&self) -> bool {
        matches!(self.shape.as_slice(), [_] | [1, _])
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    off: usize,
    len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Abs,
    Clip(f32, f32),
    Softmax,
    /// `Normalizer`: divide by max |x|, Σ|x| or √Σx² (at least 1e-30).
    Normalize(Norm),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Norm {
    Max,
    L1,
    L2,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// One or several fused ensembles; `reference` holds each original
    /// ensemble with the span it writes.
    Trees {
        kernel: Box<Trees>,
        reference: Vec<(Ensemble, Span)>,
        binary: Option<BinaryScores>,
        x: Span,
        y: Span,
    },
    Linear {
        layer: Layer,
        post: PostTransform,
        x: Span,
        y: Span,
    },
    Concat {
        parts: Vec<Span>,
        y: Span,
    },
    Unary {
        op: Unary,
        x: Span,
        y: Span,
    },
    /// `x op c` (or `c op x` when `const_left`); `c` has 1 or `y.len` values.
    Binary {
        op: BinOp,
        c: Vec<f32>,
        const_left: bool,
        x: Span,
        y: Span,
    },
}

/// A binary `TreeEnsembleClassifier` whose leaves vote for one class only:
/// scores are `[s0, s]` from the one score `s` (as the ONNX reference).
#[derive(Debug, Clone, Copy, PartialEq)]
struct BinaryScores {
    /// `1 - s` for post-transform NONE, else `-s` (then transformed).
    one_minus: bool,
    post: PostTransform,
}

/// A lowered ONNX-ML graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    steps: Vec<Step>,
    width: usize,
    input: Span,
    output: Span,
    describe: String,
}

/// Scratch space for one worker.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    buf: Vec<f32>,
    /// Tree scores of a binary classifier before expansion.
    one: Vec<f32>,
}

impl Program {
    pub fn input_dim(&self) -> usize {
        self.input.len
    }

    pub fn output_dim(&self) -> usize {
        self.output.len
    }

    /// e.g. `20 inputs → 20 × [100 trees (max depth 6, ...)] → concat → 20 outputs`.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn scratch(&self) -> Scratch {
        Scratch { buf: vec![0.0; self.width], one: vec![0.0; 1] }
    }

    /// Runs the program on `x`; the output lives in `scratch`. No allocation.
    pub fn run<'s>(&self, x: &[f32], s: &'s mut Scratch) -> &'s [f32] {
        let Scratch { buf, one } = s;
        let n = self.input.len.min(x.len());
        buf[..n].copy_from_slice(&x[..n]);
        for step in &self.steps {
            match step {
                Step::Trees { kernel, binary, x, y, .. } => {
                    let (src, dst) = split(buf, *x, *y);
                    match binary {
                        None => kernel.run(src, dst),
                        Some(b) => {
                            kernel.run(src, &mut one[..1]);
                            binary_scores(one[0], *b, dst);
                        }
                    }
                }
                Step::Linear { layer, post, x, y } => {
                    let (src, dst) = split(buf, *x, *y);
                    dense::forward(layer, src, dst);
                    post.apply(dst);
                }
                exact => run_exact(exact, buf),
            }
        }
        &buf[self.output.off..self.output.off + self.output.len]
    }

    /// Runs the program with every kernel replaced by its reference
    /// evaluation. Allocates; load-time verification only.
    pub fn reference(&self, x: &[f32]) -> Vec<f32> {
        let mut buf = vec![0.0f32; self.width];
        let n = self.input.len.min(x.len());
        buf[..n].copy_from_slice(&x[..n]);
        for step in &self.steps {
            match step {
                Step::Trees { reference, binary, x, .. } => {
                    let src = buf[x.off..x.off + x.len].to_vec();
                    for (e, y) in reference {
                        let out = e.reference(&src);
                        let dst = &mut buf[y.off..y.off + y.len];
                        match (binary, out.as_slice()) {
                            (Some(b), [s]) => binary_scores(*s, *b, dst),
                            (None, _) if out.len() == dst.len() => dst.copy_from_slice(&out),
                            _ => dst.iter_mut().for_each(|v| *v = f32::NAN),
                        }
                    }
                }
                Step::Linear { layer, post, x, y } => {
                    let src = &buf[x.off..x.off + x.len];
                    let mut out: Vec<f64> = layer.bias.iter().map(|b| f64::from(*b)).collect();
                    for (i, xi) in src.iter().enumerate() {
                        for (o, v) in out.iter_mut().enumerate() {
                            *v += f64::from(*xi) * f64::from(layer.weights[i * layer.outputs + o]);
                        }
                    }
                    post.apply_f64(&mut out);
                    let dst = &mut buf[y.off..y.off + y.len];
                    dst.iter_mut().zip(&out).for_each(|(d, v)| *d = *v as f32);
                }
                // Exact element-wise and copy steps: the same code.
                exact => run_exact(exact, &mut buf),
            }
        }
        buf[self.output.off..self.output.off + self.output.len].to_vec()
    }
}

/// The steps that are exact (copies and element-wise maths), so the program
/// and its reference evaluation run the same code; kernels are not handled here.
fn run_exact(step: &Step, buf: &mut [f32]) {
    match step {
        Step::Concat { parts, y } => {
            let mut at = y.off;
            for p in parts {
                buf.copy_within(p.off..p.off + p.len, at);
                at += p.len;
            }
        }
        Step::Unary { op, x, y } => {
            let (src, dst) = split(buf, *x, *y);
            unary(*op, src, dst);
        }
        Step::Binary { op, c, const_left, x, y } => {
            let (src, dst) = split(buf, *x, *y);
            binary(*op, c, *const_left, src, dst);
        }
        Step::Trees { .. } | Step::Linear { .. } => {}
    }
}

/// `x` and `y` of a step: `y` is always allocated after `x`.
fn split(buf: &mut [f32], x: Span, y: Span) -> (&[f32], &mut [f32]) {
    let (a, b) = buf.split_at_mut(y.off);
    (&a[x.off..x.off + x.len], &mut b[..y.len])
}

fn binary_scores(s: f32, b: BinaryScores, y: &mut [f32]) {
    if let [y0, y1] = y {
        *y1 = s;
        *y0 = if b.one_minus { 1.0 - s } else { -s };
        b.post.apply(y);
    }
}

fn unary(op: Unary, x: &[f32], y: &mut [f32]) {
    for (d, v) in y.iter_mut().zip(x) {
        *d = *v;
    }
    match op {
        Unary::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Unary::Sigmoid => y.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Unary::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
        Unary::Abs => y.iter_mut().for_each(|v| *v = v.abs()),
        Unary::Clip(lo, hi) => y.iter_mut().for_each(|v| *v = v.max(lo).min(hi)),
        Unary::Softmax => PostTransform::Softmax.apply(y),
        Unary::Normalize(n) => {
            let d = match n {
                Norm::Max => y.iter().fold(0.0f32, |m, v| m.max(v.abs())),
                Norm::L1 => y.iter().map(|v| v.abs()).sum(),
                Norm::L2 => y.iter().map(|v| v * v).sum::<f32>().sqrt(),
            };
            let d = d.max(1e-30);
            y.iter_mut().for_each(|v| *v /= d);
        }
    }
}

fn binary(op: BinOp, c: &[f32], const_left: bool, x: &[f32], y: &mut [f32]) {
    for (i, (d, v)) in y.iter_mut().zip(x).enumerate() {
        let k = if c.len() == 1 { c[0] } else { c.get(i).copied().unwrap_or(f32::NAN) };
        let (a, b) = if const_left { (k, *v) } else { (*v, k) };
        *d = match op {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
        };
    }
}

// ---------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints<'n>(node: &'n NodeProto, name: &str) -> &'n [i64] {
    attr(node, name).map_or(&[], |a| a.ints.as_slice())
}

fn int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).filter(|a| a.r#type == AttributeType::Int as i32 || a.i != 0).map(|a| a.i)
}

fn string(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

fn strings(node: &NodeProto, name: &str) -> Vec<String> {
    attr(node, name).map_or_else(Vec::new, |a| {
        a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()
    })
}

/// A float list attribute, or its `<name>_as_tensor` (double) variant.
fn floats(node: &NodeProto, name: &str) -> Result<Vec<f32>, GraphError> {
    if let Some(a) = attr(node, name) {
        return Ok(a.floats.clone());
    }
    match attr(node, &format!("{name}_as_tensor")).and_then(|a| a.t.as_ref()) {
        Some(t) => Ok(dense::to_const(t).map_err(GraphError::Unsupported)?.values),
        None => Ok(Vec::new()),
    }
}

/// A tensor attribute as floats.
fn tensor(node: &NodeProto, name: &str) -> Result<Vec<f32>, GraphError> {
    match attr(node, name).and_then(|a| a.t.as_ref()) {
        Some(t) => Ok(dense::to_const(t).map_err(GraphError::Unsupported)?.values),
        None => Ok(Vec::new()),
    }
}

fn index(v: i64, what: &str, op: &str) -> Result<usize, GraphError> {
    usize::try_from(v).or_else(|_| unsupported(format!("{op}: negative {what} {v}")))
}

fn post_transform(node: &NodeProto) -> Result<PostTransform, GraphError> {
    let s = string(node, "post_transform").unwrap_or_else(|| "NONE".into());
    PostTransform::parse(&s).map_or_else(
        || {
            unsupported(format!(
                "{}: post_transform {s} (supported: NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO)",
                node.op_type
            ))
        },
        Ok,
    )
}

// ---------------------------------------------------------------------------
// Tree ensembles
// ---------------------------------------------------------------------------

/// The classic encoding (`TreeEnsembleRegressor` / `TreeEnsembleClassifier`):
/// nodes identified by (tree id, node id), leaves' votes in `prefix_*`
/// (`target_` or `class_`).
fn classic_trees(node: &NodeProto, prefix: &str) -> Result<Vec<RawTree>, GraphError> {
    let op = node.op_type.as_str();
    let tree_ids = ints(node, "nodes_treeids");
    let node_ids = ints(node, "nodes_nodeids");
    let features = ints(node, "nodes_featureids");
    let values = floats(node, "nodes_values")?;
    let modes = strings(node, "nodes_modes");
    let yes = ints(node, "nodes_truenodeids");
    let no = ints(node, "nodes_falsenodeids");
    let missing = ints(node, "nodes_missing_value_tracks_true");
    let n = tree_ids.len();
    if n == 0 {
        return unsupported(format!("{op} without nodes"));
    }
    if [node_ids.len(), features.len(), values.len(), modes.len(), yes.len(), no.len()]
        .iter()
        .any(|l| *l != n)
        || !(missing.is_empty() || missing.len() == n)
    {
        return unsupported(format!("{op}: the nodes_* attributes have different lengths"));
    }
    if n > super::trees::MAX_TREE_NODES {
        return Err(GraphError::Limit(format!(
            "{n} tree nodes exceed the limit of {} (limit max_tree_nodes); use fewer or shallower trees",
            super::trees::MAX_TREE_NODES
        )));
    }
    // Trees in order of first appearance; node (tree, id) → (tree index, local index).
    let mut tree_of: HashMap<i64, usize> = HashMap::new();
    let mut local: HashMap<(i64, i64), usize> = HashMap::new();
    let mut sizes: Vec<usize> = Vec::new();
    for i in 0..n {
        let t = *tree_of.entry(tree_ids[i]).or_insert_with(|| {
            sizes.push(0);
            sizes.len() - 1
        });
        if local.insert((tree_ids[i], node_ids[i]), sizes[t]).is_some() {
            return unsupported(format!(
                "{op}: node {} of tree {} is defined twice",
                node_ids[i], tree_ids[i]
            ));
        }
        sizes[t] += 1;
    }
    let mut votes: HashMap<(i64, i64), Vec<(usize, f32)>> = HashMap::new();
    let v_trees = ints(node, &format!("{prefix}treeids"));
    let v_nodes = ints(node, &format!("{prefix}nodeids"));
    let v_ids = ints(node, &format!("{prefix}ids"));
    let v_weights = floats(node, &format!("{prefix}weights"))?;
    if [v_nodes.len(), v_ids.len(), v_weights.len()].iter().any(|l| *l != v_trees.len()) {
        return unsupported(format!("{op}: the {prefix}* attributes have different lengths"));
    }
    for i in 0..v_trees.len() {
        let target = index(v_ids[i], "target id", op)?;
        votes.entry((v_trees[i], v_nodes[i])).or_default().push((target, v_weights[i]));
    }
    let mut trees: Vec<RawTree> =
        sizes.iter().map(|s| RawTree { nodes: Vec::with_capacity(*s), root: usize::MAX }).collect();
    let mut is_child: Vec<Vec<bool>> = sizes.iter().map(|s| vec![false; *s]).collect();
    for i in 0..n {
        let t = tree_of.get(&tree_ids[i]).copied().unwrap_or(0);
        let raw = if modes[i] == "LEAF" {
            RawNode::Leaf { votes: votes.remove(&(tree_ids[i], node_ids[i])).unwrap_or_default() }
        } else {
            let mode = Mode::parse(&modes[i])
                .map_or_else(|| unsupported(format!("{op}: node mode {}", modes[i])), Ok)?;
            let child = |id: i64| {
                local.get(&(tree_ids[i], id)).copied().map_or_else(
                    || {
                        unsupported(format!(
                            "{op}: tree {} node {} has no child {id}",
                            tree_ids[i], node_ids[i]
                        ))
                    },
                    Ok,
                )
            };
            let (a, b) = (child(yes[i])?, child(no[i])?);
            is_child[t][a] = true;
            is_child[t][b] = true;
            RawNode::Branch {
                feature: index(features[i], "feature id", op)?,
                threshold: values[i],
                mode,
                missing_true: missing.get(i).copied().unwrap_or(0) != 0,
                yes: a,
                no: b,
            }
        };
        trees[t].nodes.push(raw);
    }
    for (t, tree) in trees.iter_mut().enumerate() {
        let roots: Vec<usize> = (0..tree.nodes.len()).filter(|i| !is_child[t][*i]).collect();
        match roots.as_slice() {
            [r] => tree.root = *r,
            _ => return unsupported(format!("{op}: tree {t} has {} roots", roots.len())),
        }
    }
    Ok(trees)
}

/// The opset-5 encoding (`TreeEnsemble`): interior nodes and leaves apart,
/// children flagged as leaf or node, one root index per tree.
fn v5_trees(node: &NodeProto) -> Result<Vec<RawTree>, GraphError> {
    let op = "TreeEnsemble";
    let roots = ints(node, "tree_roots");
    let features = ints(node, "nodes_featureids");
    let splits = tensor(node, "nodes_splits")?;
    let modes = tensor(node, "nodes_modes")?;
    let yes = ints(node, "nodes_truenodeids");
    let yes_leaf = ints(node, "nodes_trueleafs");
    let no = ints(node, "nodes_falsenodeids");
    let no_leaf = ints(node, "nodes_falseleafs");
    let missing = ints(node, "nodes_missing_value_tracks_true");
    let targets = ints(node, "leaf_targetids");
    let weights = tensor(node, "leaf_weights")?;
    let n = features.len();
    if [splits.len(), modes.len(), yes.len(), yes_leaf.len(), no.len(), no_leaf.len()].iter().any(|l| *l != n)
        || !(missing.is_empty() || missing.len() == n)
        || targets.len() != weights.len()
    {
        return unsupported(format!("{op}: the nodes_* or leaf_* attributes have different lengths"));
    }
    if n + targets.len() > super::trees::MAX_TREE_NODES {
        return Err(GraphError::Limit(format!(
            "{} tree nodes exceed the limit of {} (limit max_tree_nodes); use fewer or shallower trees",
            n + targets.len(),
            super::trees::MAX_TREE_NODES
        )));
    }
    let mut trees = Vec::with_capacity(roots.len());
    for (t, root) in roots.iter().enumerate() {
        // Walk from the root, giving each reached node or leaf a local index;
        // a node reached twice in one tree is refused (cycle or shared child).
        let mut nodes: Vec<RawNode> = Vec::new();
        let mut seen: HashSet<(bool, usize)> = HashSet::new();
        // (is leaf, index, local slot)
        let mut stack: Vec<(bool, usize, usize)> = vec![(false, index(*root, "tree root", op)?, 0)];
        nodes.push(RawNode::Leaf { votes: Vec::new() });
        while let Some((leaf, i, slot)) = stack.pop() {
            if !seen.insert((leaf, i)) {
                return unsupported(format!(
                    "{op}: tree {t} reaches {} {i} twice",
                    if leaf { "leaf" } else { "node" }
                ));
            }
            if nodes.len() > super::trees::MAX_TREE_NODES {
                return Err(GraphError::Limit("too many tree nodes (limit max_tree_nodes)".into()));
            }
            nodes[slot] = if leaf {
                let (target, w) = match (targets.get(i), weights.get(i)) {
                    (Some(t), Some(w)) => (index(*t, "leaf target", op)?, *w),
                    _ => {
                        return unsupported(format!(
                            "{op}: tree {t} refers to leaf {i}, which does not exist"
                        ))
                    }
                };
                RawNode::Leaf { votes: vec![(target, w)] }
            } else {
                if i >= n {
                    return unsupported(format!("{op}: tree {t} refers to node {i}, which does not exist"));
                }
                let mode = match modes[i] as i64 {
                    0 => Mode::Leq,
                    1 => Mode::Lt,
                    2 => Mode::Gte,
                    3 => Mode::Gt,
                    4 => Mode::Eq,
                    5 => Mode::Neq,
                    m => return unsupported(format!("{op}: node mode {m} (SET_MEMBER is not supported)")),
                };
                let (a, b) = (nodes.len(), nodes.len() + 1);
                nodes.push(RawNode::Leaf { votes: Vec::new() });
                nodes.push(RawNode::Leaf { votes: Vec::new() });
                stack.push((yes_leaf[i] != 0, index(yes[i], "true child", op)?, a));
                stack.push((no_leaf[i] != 0, index(no[i], "false child", op)?, b));
                RawNode::Branch {
                    feature: index(features[i], "feature id", op)?,
                    threshold: splits[i],
                    mode,
                    missing_true: missing.get(i).copied().unwrap_or(0) != 0,
                    yes: a,
                    no: b,
                }
            };
        }
        trees.push(RawTree { nodes, root: 0 });
    }
    Ok(trees)
}

/// A tree-ensemble node as an [`Ensemble`] (+ binary classifier handling).
fn ensemble(node: &NodeProto, inputs: usize) -> Result<(Ensemble, Option<BinaryScores>, usize), GraphError> {
    let op = node.op_type.as_str();
    match op {
        "TreeEnsembleRegressor" => {
            let targets = index(int(node, "n_targets").unwrap_or(1), "n_targets", op)?;
            let trees = classic_trees(node, "target_")?;
            let agg = string(node, "aggregate_function").unwrap_or_else(|| "SUM".into());
            let aggregate =
                Aggregate::parse(&agg).map_or_else(|| unsupported(format!("{op}: aggregate {agg}")), Ok)?;
            let base = base_values(node, targets)?;
            let e = Ensemble { trees, inputs, targets, aggregate, base, post: post_transform(node)? };
            Ok((e, None, targets))
        }
        "TreeEnsembleClassifier" => {
            let classes =
                ints(node, "classlabels_int64s").len().max(strings(node, "classlabels_strings").len());
            let trees = classic_trees(node, "class_")?;
            let ids: HashSet<i64> = ints(node, "class_ids").iter().copied().collect();
            let post = post_transform(node)?;
            if classes < 2 {
                return unsupported(format!("{op} with {classes} class labels"));
            }
            if ids.len() == 1 && classes == 2 {
                // Binary: the leaves vote for class 0 only; that one score s
                // becomes [1 - s, s] (NONE) or [-s, s] then the post-transform
                // (as the ONNX reference and onnxruntime).
                if !ids.contains(&0) {
                    return unsupported(format!(
                        "binary {op} whose leaves vote for class {:?} (expected 0)",
                        ids
                    ));
                }
                let base = base_values(node, 2)?;
                if base[0] != base[1] {
                    return unsupported(format!("binary {op} with two different base_values {base:?}"));
                }
                let e = Ensemble {
                    trees,
                    inputs,
                    targets: 1,
                    aggregate: Aggregate::Sum,
                    base: vec![base[0]],
                    post: PostTransform::None,
                };
                let one_minus = post == PostTransform::None;
                return Ok((e, Some(BinaryScores { one_minus, post }), 2));
            }
            let base = base_values(node, classes)?;
            let e = Ensemble { trees, inputs, targets: classes, aggregate: Aggregate::Sum, base, post };
            Ok((e, None, classes))
        }
        _ => {
            let targets = index(int(node, "n_targets").unwrap_or(1), "n_targets", op)?;
            let trees = v5_trees(node)?;
            let aggregate = match int(node, "aggregate_function").unwrap_or(1) {
                0 => Aggregate::Average,
                1 => Aggregate::Sum,
                2 => Aggregate::Min,
                3 => Aggregate::Max,
                a => return unsupported(format!("{op}: aggregate_function {a}")),
            };
            let post = match int(node, "post_transform").unwrap_or(0) {
                0 => PostTransform::None,
                1 => PostTransform::Softmax,
                2 => PostTransform::Logistic,
                3 => PostTransform::SoftmaxZero,
                p => return unsupported(format!("{op}: post_transform {p} (PROBIT is not supported)")),
            };
            let e = Ensemble { trees, inputs, targets, aggregate, base: vec![0.0; targets], post };
            Ok((e, None, targets))
        }
    }
}

fn base_values(node: &NodeProto, n: usize) -> Result<Vec<f32>, GraphError> {
    let b = floats(node, "base_values")?;
    match b.len() {
        0 => Ok(vec![0.0; n]),
        k if k == n => Ok(b),
        1 if n == 2 => Ok(vec![b[0], b[0]]),
        k => unsupported(format!("{}: {k} base_values for {n} targets", node.op_type)),
    }
}

// ---------------------------------------------------------------------------
// Lowering
// ---------------------------------------------------------------------------

struct Builder<'g> {
    values: HashMap<String, Value>,
    consts: dense::Constants<'g>,
    width: usize,
    steps: Vec<Step>,
    parts: Vec<String>,
    nodes_total: usize,
}

impl Builder<'_> {
    fn alloc(&mut self, shape: Vec<usize>) -> Value {
        let v = Value { off: self.width, shape };
        self.width += v.len();
        v
    }

    fn value(&self, name: &str, op: &str) -> Result<Value, GraphError> {
        self.values
            .get(name)
            .cloned()
            .map_or_else(|| unsupported(format!("{op} input \"{name}\" is not computed")), Ok)
    }
}

/// Lowers `graph` with output `output` into a [`Program`] reading a row of
/// `input_dim` floats.
pub fn lower(
    graph: &GraphProto,
    input: &str,
    output: &str,
    input_dim: usize,
) -> Result<(Program, Vec<Shape>), GraphError> {
    // Only what the output depends on.
    let producer: HashMap<&str, &NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let mut needed: HashSet<*const NodeProto> = HashSet::new();
    let mut stack = vec![output];
    while let Some(name) = stack.pop() {
        if let Some(n) = producer.get(name) {
            if needed.insert(*n as *const NodeProto) {
                stack.extend(n.input.iter().map(String::as_str).filter(|s| !s.is_empty()));
            }
        }
    }
    let mut b = Builder {
        values: HashMap::new(),
        consts: dense::Constants::new(graph),
        width: 0,
        steps: Vec::new(),
        parts: Vec::new(),
        nodes_total: 0,
    };
    let x = b.alloc(vec![1, input_dim]);
    b.values.insert(input.to_string(), x.clone());
    let mut shapes = Vec::new();
    for node in graph.node.iter().filter(|n| needed.contains(&(*n as *const NodeProto))) {
        let op = node.op_type.as_str();
        if op == "Constant" {
            b.consts.define(node).map_err(GraphError::Unsupported)?;
            continue;
        }
        // A classifier's outputs are (label, scores): the scores are its value.
        let at = usize::from(matches!(op, "TreeEnsembleClassifier" | "LinearClassifier"));
        let out = node
            .output
            .get(at)
            .map_or_else(|| unsupported(format!("{op} node without its output {at}")), Ok)?;
        if b.values.contains_key(out) {
            return unsupported(format!("\"{out}\" is computed twice"));
        }
        let v = lower_node(&mut b, node, &mut shapes)?;
        b.values.insert(out.clone(), v);
    }
    let out = b.value(output, "graph output")?;
    // Parts in order of first appearance, with their count: ensembles of one
    // converter export differ only in their trees.
    let mut chain: Vec<(String, usize)> = Vec::new();
    for p in &b.parts {
        match chain.iter_mut().find(|(q, _)| q == p) {
            Some((_, n)) => *n += 1,
            None => chain.push((p.clone(), 1)),
        }
    }
    let chain: Vec<String> =
        chain.into_iter().map(|(p, n)| if n > 1 { format!("{n}× {p}") } else { p }).collect();
    let trees = if shapes.is_empty() {
        String::new()
    } else {
        format!(
            "; {} trees, max depth {}, {} nodes, ≤ {} node visits",
            shapes.iter().map(|s| s.trees).sum::<usize>(),
            shapes.iter().map(|s| s.max_depth).max().unwrap_or(0),
            shapes.iter().map(|s| s.nodes).sum::<usize>(),
            shapes.iter().map(|s| s.steps).sum::<usize>()
        )
    };
    let describe = format!("{input_dim} inputs → {} → {} outputs{trees}", chain.join(" → "), out.len());
    let program =
        Program { steps: fuse(b.steps), width: b.width, input: x.span(), output: out.span(), describe };
    Ok((program, shapes))
}

/// Fuses runs of tree steps over the same input with contiguous outputs (one
/// ensemble per output, as per-output GBM exports are) into one kernel: one
/// pass over all trees instead of one set-up per output.
fn fuse(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        let merged = match (out.last_mut(), &step) {
            (
                Some(Step::Trees { kernel: k0, reference: r0, binary: None, x: x0, y: y0 }),
                Step::Trees { kernel: k1, reference: r1, binary: None, x: x1, y: y1 },
            ) if x0 == x1 && y0.off + y0.len == y1.off => {
                match Trees::fuse(&[(**k0).clone(), (**k1).clone()]) {
                    Some(k) => {
                        **k0 = k;
                        r0.extend(r1.iter().cloned());
                        y0.len += y1.len;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !merged {
            out.push(step);
        }
    }
    out
}

fn data_input(b: &Builder, node: &NodeProto) -> Result<(Value, Option<String>), GraphError> {
    let op = node.op_type.as_str();
    let mut data = None;
    let mut other = None;
    // The first computed input is the data (ops with several check them
    // themselves); the first constant is the other operand.
    for name in node.input.iter().filter(|n| !n.is_empty()) {
        if b.values.contains_key(name) {
            if data.is_none() {
                data = Some(b.value(name, op)?);
            }
        } else if b.consts.has(name) {
            if other.is_none() {
                other = Some(name.clone());
            }
        } else {
            return unsupported(format!("{op} input \"{name}\" is neither computed nor a constant"));
        }
    }
    match data {
        Some(d) => Ok((d, other)),
        None => unsupported(format!("{op} node on constants only")),
    }
}

fn lower_node(b: &mut Builder, node: &NodeProto, shapes: &mut Vec<Shape>) -> Result<Value, GraphError> {
    let op = node.op_type.as_str();
    let first = node.input.first().map(String::as_str).unwrap_or("");
    let const_left = !first.is_empty() && b.consts.has(first);
    let (x, other) = data_input(b, node)?;
    match op {
        "Identity" => Ok(x),
        "Cast" => match int(node, "to") {
            Some(1) => Ok(x),
            to => unsupported(format!("Cast to ONNX type {to:?} (only float)")),
        },
        "Reshape" => {
            let shape_name = node.input.get(1).map(String::as_str).unwrap_or("");
            let target = b.consts.get(shape_name).map_err(GraphError::Unsupported)?.values;
            let allowzero = int(node, "allowzero").unwrap_or(0) != 0;
            let mut shape: Vec<i64> = target.iter().map(|v| *v as i64).collect();
            for (i, d) in shape.iter_mut().enumerate() {
                if *d == 0 && !allowzero {
                    *d = x.shape.get(i).copied().unwrap_or(1) as i64;
                }
            }
            let known: i64 = shape.iter().filter(|d| **d >= 0).product();
            let n = x.len() as i64;
            let dims: Vec<usize> = shape
                .iter()
                .map(|d| {
                    if *d < 0 {
                        if known > 0 {
                            (n / known) as usize
                        } else {
                            0
                        }
                    } else {
                        *d as usize
                    }
                })
                .collect();
            if dims.iter().product::<usize>() != x.len() || shape.iter().filter(|d| **d < 0).count() > 1 {
                return unsupported(format!("Reshape of {:?} to {target:?}", x.shape));
            }
            Ok(Value { off: x.off, shape: dims })
        }
        "Flatten" => {
            let axis = int(node, "axis").unwrap_or(1);
            let r = x.shape.len() as i64;
            let axis = if axis < 0 { axis + r } else { axis }.clamp(0, r) as usize;
            let a: usize = x.shape[..axis].iter().product();
            Ok(Value { off: x.off, shape: vec![a, x.len() / a.max(1)] })
        }
        "Squeeze" | "Unsqueeze" => {
            // Only what leaves a row a row: [1, n] ↔ [n] ↔ [1, n, 1].
            let n = x.len();
            if x.shape.iter().filter(|d| **d != 1).count() > 1 {
                return unsupported(format!("{op} of shape {:?}", x.shape));
            }
            Ok(Value { off: x.off, shape: if op == "Squeeze" { vec![n] } else { vec![1, n] } })
        }
        "Concat" => {
            let axis = int(node, "axis").unwrap_or(0);
            let mut parts = Vec::new();
            let mut len = 0;
            for name in node.input.iter().filter(|n| !n.is_empty()) {
                let v = b.value(name, op)?;
                let last = v.shape.len() as i64 - 1;
                if !(v.is_row() && (axis == last || axis == -1)) {
                    return unsupported(format!(
                        "Concat on axis {axis} of shape {:?} (only rows, last axis)",
                        v.shape
                    ));
                }
                len += v.len();
                parts.push(v.span());
            }
            let y = b.alloc(vec![1, len]);
            b.steps.push(Step::Concat { parts, y: y.span() });
            b.parts.push("concat".into());
            Ok(y)
        }
        _ if ML_OPS[..3].contains(&op) => {
            if !x.is_row() {
                return unsupported(format!("{op} on shape {:?}", x.shape));
            }
            let (e, binary, width) = ensemble(node, x.len())?;
            let kernel = Trees::lower(&e)?;
            let shape = kernel.shape();
            b.nodes_total += shape.nodes;
            if b.nodes_total > super::trees::MAX_TREE_NODES {
                return Err(GraphError::Limit(format!(
                    "{} tree nodes in all ensembles exceed the limit of {} (limit max_tree_nodes); use fewer or shallower trees",
                    b.nodes_total,
                    super::trees::MAX_TREE_NODES
                )));
            }
            let steps: usize = shapes.iter().map(|s| s.steps).sum::<usize>() + shape.steps;
            if steps > super::trees::MAX_TREE_STEPS {
                return Err(GraphError::Limit(format!(
                    "the tree ensembles need up to {steps} node visits per request (Σ tree depths), over the limit of {} \
                     (limit max_tree_steps = trees × depth); use fewer or shallower trees",
                    super::trees::MAX_TREE_STEPS
                )));
            }
            shapes.push(shape);
            b.parts.push(kernel.describe_kind(op));
            let y = b.alloc(vec![1, width]);
            b.steps.push(Step::Trees {
                kernel: Box::new(kernel),
                reference: vec![(e, y.span())],
                binary,
                x: x.span(),
                y: y.span(),
            });
            Ok(y)
        }
        "LinearRegressor" | "LinearClassifier" => {
            if !x.is_row() {
                return unsupported(format!("{op} on shape {:?}", x.shape));
            }
            let coef = floats(node, "coefficients")?;
            let mut intercepts = floats(node, "intercepts")?;
            let inputs = x.len();
            if inputs == 0 || coef.len() % inputs != 0 {
                return unsupported(format!("{op}: {} coefficients for {inputs} inputs", coef.len()));
            }
            let mut rows = coef.len() / inputs;
            let mut coef = coef;
            if op == "LinearRegressor" {
                let t = index(int(node, "targets").unwrap_or(1), "targets", op)?;
                if t != rows {
                    return unsupported(format!("{op}: {rows} coefficient rows for {t} targets"));
                }
            } else {
                let classes =
                    ints(node, "classlabels_ints").len().max(strings(node, "classlabels_strings").len());
                if rows == 1 && classes == 2 {
                    // Binary with one row: scores [-s, s].
                    let neg: Vec<f32> = coef.iter().map(|c| -c).collect();
                    coef = [neg, coef].concat();
                    let i0 = intercepts.first().copied().unwrap_or(0.0);
                    intercepts = vec![-i0, i0];
                    rows = 2;
                } else if rows != classes {
                    return unsupported(format!("{op}: {rows} coefficient rows for {classes} classes"));
                }
            }
            if intercepts.is_empty() {
                intercepts = vec![0.0; rows];
            }
            if intercepts.len() != rows {
                return unsupported(format!("{op}: {} intercepts for {rows} outputs", intercepts.len()));
            }
            // ONNX stores [outputs][inputs]; the dense layer wants [inputs][outputs].
            let mut weights = vec![0.0; inputs * rows];
            for o in 0..rows {
                for i in 0..inputs {
                    weights[i * rows + o] = coef[o * inputs + i];
                }
            }
            let post = post_transform(node)?;
            let mut layer =
                Layer { inputs, outputs: rows, weights, bias: intercepts, activation: Activation::Identity };
            dense::flush_subnormals(&mut layer.weights);
            dense::flush_subnormals(&mut layer.bias);
            let layer = dense::Dense::new(vec![layer.clone()])
                .map(|_| layer)
                .map_or_else(|| unsupported(format!("{op}: a coefficient is not finite")), Ok)?;
            b.parts.push(format!(
                "{op}[{inputs}→{rows}{}]",
                match post {
                    PostTransform::None => String::new(),
                    p => format!(", {}", p.as_str()),
                }
            ));
            let y = b.alloc(vec![1, rows]);
            b.steps.push(Step::Linear { layer, post, x: x.span(), y: y.span() });
            Ok(y)
        }
        "MatMul" | "Gemm" => {
            if !x.is_row() || const_left {
                return unsupported(format!("{op} with the data on the right or of shape {:?}", x.shape));
            }
            let mut layer = dense::lower_layer(node, &b.consts, x.len()).map_err(GraphError::Unsupported)?;
            dense::flush_subnormals(&mut layer.weights);
            dense::flush_subnormals(&mut layer.bias);
            b.parts.push(format!("{op}[{}→{}]", layer.inputs, layer.outputs));
            let y = b.alloc(vec![1, layer.outputs]);
            b.steps.push(Step::Linear { layer, post: PostTransform::None, x: x.span(), y: y.span() });
            Ok(y)
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let Some(c) = other else { return unsupported(format!("{op} of two computed values")) };
            let c = b.consts.get(&c).map_err(GraphError::Unsupported)?;
            let n = x.len();
            let fits = c.values.len() == 1
                || (c.values.len() == n && x.is_row() && matches!(c.shape.as_slice(), [_] | [1, _]));
            if !fits {
                return unsupported(format!(
                    "{op} of shape {:?} with a constant of shape {:?}",
                    x.shape, c.shape
                ));
            }
            let op2 = match op {
                "Add" => BinOp::Add,
                "Sub" => BinOp::Sub,
                "Mul" => BinOp::Mul,
                _ => BinOp::Div,
            };
            b.parts.push(op.to_ascii_lowercase());
            let y = b.alloc(x.shape.clone());
            b.steps.push(Step::Binary { op: op2, c: c.values, const_left, x: x.span(), y: y.span() });
            Ok(y)
        }
        "Relu" | "Sigmoid" | "Tanh" | "Abs" | "Clip" | "Softmax" | "Normalizer" => {
            let u = match op {
                "Normalizer" => {
                    let norm = string(node, "norm").unwrap_or_default();
                    if !x.is_row() {
                        return unsupported(format!("Normalizer of shape {:?}", x.shape));
                    }
                    Unary::Normalize(match norm.as_str() {
                        "MAX" => Norm::Max,
                        "L1" => Norm::L1,
                        "L2" => Norm::L2,
                        n => return unsupported(format!("Normalizer norm {n:?}")),
                    })
                }
                "Relu" => Unary::Relu,
                "Sigmoid" => Unary::Sigmoid,
                "Tanh" => Unary::Tanh,
                "Abs" => Unary::Abs,
                "Softmax" => {
                    let axis = int(node, "axis").unwrap_or(-1);
                    if !(x.is_row() && (axis == -1 || axis == x.shape.len() as i64 - 1)) {
                        return unsupported(format!("Softmax on axis {axis} of shape {:?}", x.shape));
                    }
                    Unary::Softmax
                }
                _ => {
                    let bound = |i: usize| -> Result<Option<f32>, GraphError> {
                        match node.input.get(i).filter(|n| !n.is_empty()) {
                            Some(n) => {
                                Ok(b.consts.get(n).map_err(GraphError::Unsupported)?.values.first().copied())
                            }
                            None => Ok(None),
                        }
                    };
                    let lo = bound(1)?.or(attr(node, "min").map(|a| a.f)).unwrap_or(f32::NEG_INFINITY);
                    let hi = bound(2)?.or(attr(node, "max").map(|a| a.f)).unwrap_or(f32::INFINITY);
                    Unary::Clip(lo, hi)
                }
            };
            b.parts.push(op.to_ascii_lowercase());
            let y = b.alloc(x.shape.clone());
            b.steps.push(Step::Unary { op: u, x: x.span(), y: y.span() });
            Ok(y)
        }
        _ => unsupported(format!("operator {op} (this kernel supports {})", OPS.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{TensorProto, ValueInfoProto};

    fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn floats_attr(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Floats as i32,
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    fn strings_attr(name: &str, v: &[&str]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Strings as i32,
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    fn string_attr(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::String as i32,
            s: v.into(),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        }
    }

    /// Two trees over x0/x1 with GTE, LT and NEQ splits and a missing-value rule;
    /// ids deliberately out of order.
    fn regressor(out: &str, post: &str) -> NodeProto {
        node(
            "TreeEnsembleRegressor",
            &["x"],
            &[out],
            vec![
                ints_attr("nodes_treeids", &[7, 7, 7, 3, 3, 3]),
                ints_attr("nodes_nodeids", &[2, 0, 1, 0, 5, 4]),
                ints_attr("nodes_featureids", &[0, 0, 0, 1, 0, 0]),
                floats_attr("nodes_values", &[0.0, 0.5, 0.0, 0.25, 0.0, 0.0]),
                strings_attr("nodes_modes", &["LEAF", "BRANCH_GTE", "LEAF", "BRANCH_LT", "LEAF", "LEAF"]),
                ints_attr("nodes_truenodeids", &[0, 1, 0, 4, 0, 0]),
                ints_attr("nodes_falsenodeids", &[0, 2, 0, 5, 0, 0]),
                ints_attr("nodes_missing_value_tracks_true", &[0, 1, 0, 0, 0, 0]),
                ints_attr("target_treeids", &[7, 7, 3, 3, 3]),
                ints_attr("target_nodeids", &[1, 2, 4, 5, 5]),
                ints_attr("target_ids", &[0, 1, 0, 1, 0]),
                floats_attr("target_weights", &[1.0, -2.0, 0.5, 3.0, 0.25]),
                AttributeProto {
                    name: "n_targets".into(),
                    r#type: AttributeType::Int as i32,
                    i: 2,
                    ..Default::default()
                },
                floats_attr("base_values", &[0.1, 0.2]),
                string_attr("post_transform", post),
            ],
        )
    }

    fn graph(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, output: &str) -> GraphProto {
        GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![ValueInfoProto { name: "x".into(), ..Default::default() }],
            output: vec![ValueInfoProto { name: output.into(), ..Default::default() }],
            ..Default::default()
        }
    }

    fn floats_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    fn ints_tensor(name: &str, v: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: 7,
            int64_data: v.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_tree_graph_with_reshape_concat_and_maths_matches_its_reference() {
        let g = graph(
            vec![
                regressor("t1", "NONE"),
                regressor("t2", "LOGISTIC"),
                node("Reshape", &["t1", "shape"], &["r1"], vec![]),
                node(
                    "Concat",
                    &["r1", "t2"],
                    &["c"],
                    vec![AttributeProto {
                        name: "axis".into(),
                        r#type: AttributeType::Int as i32,
                        i: 1,
                        ..Default::default()
                    }],
                ),
                node("Mul", &["c", "half"], &["y"], vec![]),
            ],
            vec![ints_tensor("shape", &[1, -1]), floats_tensor("half", &[1], &[0.5])],
            "y",
        );
        let (p, shapes) = lower(&g, "x", "y", 2).unwrap();
        assert_eq!(p.output_dim(), 4);
        assert_eq!(shapes.len(), 2);
        assert!(
            p.describe()
                .ends_with("→ concat → mul → 4 outputs; 4 trees, max depth 1, 12 nodes, ≤ 4 node visits"),
            "{}",
            p.describe()
        );
        let mut s = p.scratch();
        for x in [[0.0, 0.0], [0.5, 0.25], [0.7, 0.1], [f32::NAN, 0.3], [0.2, f32::NAN], [1.0, 1.0]] {
            let (got, want) = (p.run(&x, &mut s).to_vec(), p.reference(&x));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6 || (g.is_nan() && w.is_nan()), "{x:?}: {got:?} vs {want:?}");
            }
        }
        // By hand, x = [0.7, 0.1]: tree 7: 0.7 >= 0.5 → node 1 → [1, 0]; tree 3: 0.1 < 0.25 →
        // node 4 → [0.5, 0]; + base → [1.6, 0.2]; × 0.5 → [0.8, 0.1].
        let y = p.run(&[0.7, 0.1], &mut s).to_vec();
        assert!((y[0] - 0.8).abs() < 1e-6 && (y[1] - 0.1).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn unsupported_ops_and_modes_are_named() {
        let g = graph(vec![regressor("t", "NONE"), node("ZipMap", &["t"], &["y"], vec![])], vec![], "y");
        match lower(&g, "x", "y", 2) {
            Err(GraphError::Unsupported(m)) => assert!(m.starts_with("operator ZipMap"), "{m}"),
            other => panic!("{other:?}"),
        }
        let g = graph(vec![regressor("y", "PROBIT")], vec![], "y");
        match lower(&g, "x", "y", 2) {
            Err(GraphError::Unsupported(m)) => assert!(m.contains("post_transform PROBIT"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut bad = regressor("y", "NONE");
        if let Some(a) = bad.attribute.iter_mut().find(|a| a.name == "nodes_truenodeids") {
            a.ints[1] = 0; // node 0 of tree 7 points at itself
        }
        assert!(matches!(
            lower(&graph(vec![bad], vec![], "y"), "x", "y", 2),
            Err(GraphError::Unsupported(_))
        ));
    }
}
