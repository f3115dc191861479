//! Dense kernel: a plain multi-layer perceptron lowered from the ONNX graph into
//! flat `f32` layers, so the per-request run is a few tight loops.
//!
//! Why: inside Envoy's V8, tract's per-run bookkeeping (tensor values, op
//! dispatch, activation packing) costs ~10 µs for a 20→32→32→20 MLP that is only
//! 2,300 multiply-adds. tract still parses, checks and optimises every model,
//! and stays the engine for any graph this module does not recognise; a lowered
//! model is only used after it agreed with tract's plan on probe inputs
//! ([`super::Model::from_onnx_with`]).
//!
//! Recognised graph: one input, then a chain of layers, each
//! `MatMul(h, W)` or `Gemm(h, W, C)` (transA = 0), an optional `Add` of a
//! constant bias, an optional `Relu` / `Sigmoid` / `Tanh`; `Cast` to float and
//! `Identity` anywhere. Weights come from initializers or `Constant` nodes.

use std::collections::HashMap;

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};

/// ONNX `TensorProto.DataType.FLOAT`.
const ONNX_FLOAT: i64 = 1;

/// Activation applied after a layer's affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Sigmoid,
    Tanh,
}

impl Activation {
    fn as_str(self) -> &'static str {
        match self {
            Activation::Identity => "linear",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
        }
    }
}

/// `y = act(x · W + b)`; `weights` is `[inputs][outputs]` row-major (ONNX
/// MatMul layout), so the run adds one contiguous row per non-zero input.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub activation: Activation,
}

/// A lowered MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    layers: Vec<Layer>,
    /// Widest layer output: the size of each scratch buffer.
    width: usize,
}

impl Dense {
    /// Builds a network from layers; `None` unless the widths chain up and every
    /// weight is finite (a non-finite weight would make skipping zero inputs
    /// inexact: `0 × inf` is NaN).
    pub fn new(mut layers: Vec<Layer>) -> Option<Dense> {
        // Subnormal weights (|w| < 1.2e-38, left by weight decay) make every
        // multiply-add on them take a slow path on x86 and in V8; their
        // contribution is far below the probe tolerance, so they become 0.
        for l in &mut layers {
            flush_subnormals(&mut l.weights);
            flush_subnormals(&mut l.bias);
        }
        let first = layers.first()?;
        let mut prev = first.inputs;
        for l in &layers {
            if l.inputs != prev
                || l.weights.len() != l.inputs * l.outputs
                || l.bias.len() != l.outputs
                || !l.weights.iter().chain(&l.bias).all(|v| v.is_finite())
            {
                return None;
            }
            prev = l.outputs;
        }
        let width = layers.iter().map(|l| l.outputs).max().unwrap_or(0);
        Some(Dense { layers, width })
    }

    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    pub fn output_dim(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// `20→32(relu)→32(relu)→20(linear)`: for logs and `augur inspect-model`.
    pub fn describe(&self) -> String {
        let mut s = self.input_dim().to_string();
        for l in &self.layers {
            s.push_str(&format!("→{}({})", l.outputs, l.activation.as_str()));
        }
        s
    }

    /// Scratch space for [`Dense::run`]: two buffers of the widest layer.
    pub fn scratch(&self) -> Scratch {
        Scratch { a: vec![0.0; self.width], b: vec![0.0; self.width] }
    }

    /// Runs the network on `x` (length [`Dense::input_dim`]); the output slice
    /// lives in `scratch`. No allocation.
    pub fn run<'s>(&self, x: &[f32], scratch: &'s mut Scratch) -> &'s [f32] {
        let Scratch { a, b } = scratch;
        let (mut src, mut dst): (&mut Vec<f32>, &mut Vec<f32>) = (a, b);
        let mut input: &[f32] = x;
        let mut last = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                std::mem::swap(&mut src, &mut dst);
                input = &src[..last];
            }
            forward(layer, input, &mut dst[..layer.outputs]);
            last = layer.outputs;
        }
        &dst[..last]
    }
}

/// Sets every subnormal value to 0.
pub(crate) fn flush_subnormals(v: &mut [f32]) {
    v.iter_mut().filter(|w| w.is_subnormal()).for_each(|w| *w = 0.0);
}

/// Reusable buffers of one worker.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

pub(crate) fn forward(l: &Layer, x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(&l.bias);
    for (xi, row) in x.iter().zip(l.weights.chunks_exact(l.outputs)) {
        // Profiles are mostly one-hot slots and ReLU zeros: skip them.
        if *xi != 0.0 {
            axpy(*xi, row, y);
        }
    }
    match l.activation {
        Activation::Identity => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
    }
}

/// `y += a · row`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn axpy(a: f32, row: &[f32], y: &mut [f32]) {
    use core::arch::wasm32::{f32x4_add, f32x4_mul, f32x4_splat, v128, v128_load, v128_store};
    let n = y.len().min(row.len());
    let quads = n / 4;
    let av = f32x4_splat(a);
    for q in 0..quads {
        let i = q * 4;
        // SAFETY: i + 4 <= n <= len of both slices; v128 loads/stores are unaligned.
        unsafe {
            let r = v128_load(row.as_ptr().add(i) as *const v128);
            let yp = y.as_mut_ptr().add(i) as *mut v128;
            v128_store(yp, f32x4_add(v128_load(yp), f32x4_mul(av, r)));
        }
    }
    for i in quads * 4..n {
        y[i] += a * row[i];
    }
}

/// `y += a · row`.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn axpy(a: f32, row: &[f32], y: &mut [f32]) {
    for (v, w) in y.iter_mut().zip(row) {
        *v += a * w;
    }
}

/// Why a graph was not lowered (it then runs on tract's plan).
pub type NotDense = String;

/// One `MatMul(h, W)` or `Gemm(h, W, C)` node with constant weights as a layer
/// reading `width` inputs (also used by the ONNX-ML graph kernel).
pub(crate) fn lower_layer(node: &NodeProto, consts: &Constants, width: usize) -> Result<Layer, NotDense> {
    if node.op_type == "Gemm" {
        return gemm(node, consts, width);
    }
    let w = node.input.get(1).ok_or("MatMul without a weight")?;
    let w = consts.get(w)?;
    let (rows, cols) = matrix(&w)?;
    if rows != width {
        return Err(format!("MatMul weight {rows}×{cols} after width {width}"));
    }
    Ok(Layer {
        inputs: rows,
        outputs: cols,
        weights: w.values,
        bias: vec![0.0; cols],
        activation: Activation::Identity,
    })
}

/// Lowers `proto` to a [`Dense`] network, or says why it cannot.
pub fn lower(proto: &ModelProto, input_dim: usize) -> Result<Dense, NotDense> {
    let graph = proto.graph.as_ref().ok_or("no graph")?;
    let mut consts = Constants::new(graph);
    let inputs: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).filter(|n| !consts.has(n)).collect();
    let [input] = inputs.as_slice() else {
        return Err(format!("{} graph inputs", inputs.len()));
    };
    let mut cur: String = (*input).to_string();
    let mut width = input_dim;
    let mut layers: Vec<Layer> = Vec::new();
    // The last layer still accepts a bias or an activation.
    let mut open = false;
    // After a trailing Reshape/Flatten only Identity and Cast may follow.
    let mut trailing = false;
    for node in &graph.node {
        let op = node.op_type.as_str();
        if op == "Constant" {
            consts.define(node)?;
            continue;
        }
        let [out] = node.output.as_slice() else {
            return Err(format!("{op} node with {} outputs", node.output.len()));
        };
        let (data, other) = split_inputs(node, &cur, &consts)?;
        match (op, other) {
            ("Cast", None) => {
                let to = attr_i64(node, "to")?.unwrap_or(0);
                if to != ONNX_FLOAT {
                    return Err(format!("Cast to ONNX type {to}"));
                }
            }
            ("Identity", None) => {}
            _ if trailing => return Err(format!("operator {op} after a Reshape/Flatten")),
            ("MatMul", Some(_)) | ("Gemm", _) if data == 0 => {
                layers.push(lower_layer(node, &consts, width)?);
                width = layers.last().map_or(width, |l| l.outputs);
                open = true;
            }
            // skl2onnx ends MLPRegressor with Reshape(y, [-1, 1]) and torch
            // exports may Flatten: on one row the values are the same, in the
            // same order. Only at the end of the chain (tract's plan, which the
            // kernel is checked against, applies the real op).
            ("Reshape", Some(_)) | ("Flatten", None) if !layers.is_empty() => {
                trailing = true;
            }
            ("Add", Some(b)) if open => {
                let b = consts.get(b)?;
                let layer = layers.last_mut().ok_or("Add before any layer")?;
                if layer.activation != Activation::Identity {
                    return Err("Add after an activation".into());
                }
                add_bias(&mut layer.bias, &b)?;
            }
            ("Relu" | "Sigmoid" | "Tanh", None) if open => {
                let layer = layers.last_mut().ok_or("activation before any layer")?;
                layer.activation = match op {
                    "Relu" => Activation::Relu,
                    "Sigmoid" => Activation::Sigmoid,
                    _ => Activation::Tanh,
                };
                open = false;
            }
            _ => return Err(format!("operator {op} in this position")),
        }
        cur = out.clone();
    }
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    if outputs != [cur.as_str()] {
        return Err("the graph output is not the end of the layer chain".into());
    }
    Dense::new(layers).ok_or_else(|| "layer widths do not chain or a weight is not finite".into())
}

/// Which input of `node` carries the activations (`cur`), and the name of the
/// other (constant) input if any. Anything else is not a chain.
fn split_inputs<'n>(
    node: &'n NodeProto,
    cur: &str,
    consts: &Constants,
) -> Result<(usize, Option<&'n str>), NotDense> {
    let names: Vec<&str> = node.input.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    let data = names
        .iter()
        .position(|n| *n == cur)
        .ok_or_else(|| format!("{} node does not consume the previous layer's output", node.op_type))?;
    let others: Vec<&str> = names.iter().enumerate().filter(|(i, _)| *i != data).map(|(_, n)| *n).collect();
    for o in &others {
        if !consts.has(o) {
            return Err(format!("{} node input \"{o}\" is not a constant", node.op_type));
        }
    }
    match others.as_slice() {
        [] => Ok((data, None)),
        [one] => Ok((data, Some(*one))),
        _ if node.op_type == "Gemm" => Ok((data, others.first().copied())),
        _ => Err(format!("{} node with {} inputs", node.op_type, names.len())),
    }
}

/// `Gemm(h, B, C)`: `alpha · h · op(B) + beta · C`.
fn gemm(node: &NodeProto, consts: &Constants, width: usize) -> Result<Layer, NotDense> {
    if attr_i64(node, "transA")?.unwrap_or(0) != 0 {
        return Err("Gemm with transA".into());
    }
    let trans_b = attr_i64(node, "transB")?.unwrap_or(0) != 0;
    let alpha = attr_f32(node, "alpha")?.unwrap_or(1.0);
    let beta = attr_f32(node, "beta")?.unwrap_or(1.0);
    let b_name = node.input.get(1).ok_or("Gemm without B")?;
    let b = consts.get(b_name)?;
    let (rows, cols) = matrix(&b)?;
    let (inputs, outputs) = if trans_b { (cols, rows) } else { (rows, cols) };
    if inputs != width {
        return Err(format!("Gemm weight for {inputs} inputs after width {width}"));
    }
    let mut weights = vec![0.0; inputs * outputs];
    for i in 0..inputs {
        for o in 0..outputs {
            let v = if trans_b { b.values[o * cols + i] } else { b.values[i * cols + o] };
            weights[i * outputs + o] = alpha * v;
        }
    }
    let mut bias = vec![0.0; outputs];
    if let Some(c_name) = node.input.get(2).filter(|n| !n.is_empty()) {
        let mut c = consts.get(c_name)?;
        c.values.iter_mut().for_each(|v| *v *= beta);
        add_bias(&mut bias, &c)?;
    }
    Ok(Layer { inputs, outputs, weights, bias, activation: Activation::Identity })
}

/// Adds a bias broadcastable to `[1, n]`: shape `[]`, `[1]`, `[n]` or `[1, n]`.
fn add_bias(bias: &mut [f32], b: &Const) -> Result<(), NotDense> {
    let n = bias.len();
    let ok_shape = match b.shape.as_slice() {
        [] => true,
        [k] => *k == 1 || *k == n,
        [1, k] => *k == 1 || *k == n,
        _ => false,
    };
    if !ok_shape {
        return Err(format!("bias of shape {:?} for {n} outputs", b.shape));
    }
    if b.values.len() == 1 {
        bias.iter_mut().for_each(|v| *v += b.values[0]);
    } else {
        bias.iter_mut().zip(&b.values).for_each(|(v, x)| *v += x);
    }
    Ok(())
}

fn matrix(c: &Const) -> Result<(usize, usize), NotDense> {
    match c.shape.as_slice() {
        [r, k] => Ok((*r, *k)),
        s => Err(format!("weight of shape {s:?} (expected a matrix)")),
    }
}

fn attr_i64(node: &NodeProto, name: &str) -> Result<Option<i64>, NotDense> {
    node.get_attr_opt::<i64>(name).map_err(|e| format!("{e}"))
}

fn attr_f32(node: &NodeProto, name: &str) -> Result<Option<f32>, NotDense> {
    node.get_attr_opt::<f32>(name).map_err(|e| format!("{e}"))
}

/// A constant tensor as `f32`.
#[derive(Debug, Clone)]
pub(crate) struct Const {
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Vec<f32>,
}

/// Initializers and `Constant` node outputs, by name.
pub(crate) struct Constants<'g> {
    initializers: HashMap<&'g str, &'g TensorProto>,
    nodes: HashMap<String, Const>,
}

impl<'g> Constants<'g> {
    pub(crate) fn new(graph: &'g GraphProto) -> Self {
        let initializers = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        Constants { initializers, nodes: HashMap::new() }
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.initializers.contains_key(name) || self.nodes.contains_key(name)
    }

    pub(crate) fn define(&mut self, node: &NodeProto) -> Result<(), NotDense> {
        let [out] = node.output.as_slice() else {
            return Err("Constant node without one output".into());
        };
        let t = node
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref())
            .ok_or("Constant node without a tensor value")?;
        let c = to_const(t)?;
        self.nodes.insert(out.clone(), c);
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Result<Const, NotDense> {
        if let Some(c) = self.nodes.get(name) {
            return Ok(c.clone());
        }
        let t = self.initializers.get(name).ok_or_else(|| format!("\"{name}\" is not a constant"))?;
        to_const(t)
    }
}

pub(crate) fn to_const(t: &TensorProto) -> Result<Const, NotDense> {
    let tensor = tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, t, None)
        .map_err(|e| format!("constant \"{}\": {e}", t.name))?;
    let tensor = tensor.cast_to::<f32>().map_err(|e| format!("constant \"{}\": {e}", t.name))?;
    let plain = tensor.try_as_plain_ram().map_err(|e| format!("constant \"{}\": {e}", t.name))?;
    let values = plain.as_slice::<f32>().map_err(|e| format!("constant \"{}\": {e}", t.name))?.to_vec();
    Ok(Const { shape: tensor.shape().to_vec(), values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(
        inputs: usize,
        outputs: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
        activation: Activation,
    ) -> Layer {
        Layer { inputs, outputs, weights, bias, activation }
    }

    #[test]
    fn runs_a_two_layer_network_by_hand() {
        // x = [1, 2]; W0 = [[1, -1, 0.5], [2, 0, -1]] → [5, -1, -1.5] + b0 [0, 0, 2] → relu [5, 0, 0.5]
        let l0 = layer(2, 3, vec![1.0, -1.0, 0.5, 2.0, 0.0, -1.0], vec![0.0, 0.0, 2.0], Activation::Relu);
        // W1 = [[1], [10], [2]] → 5 + 0 + 1 = 6, b1 = -6 → sigmoid(0) = 0.5
        let l1 = layer(3, 1, vec![1.0, 10.0, 2.0], vec![-6.0], Activation::Sigmoid);
        let net = Dense::new(vec![l0, l1]).unwrap();
        assert_eq!(net.describe(), "2→3(relu)→1(sigmoid)");
        let mut s = net.scratch();
        assert_eq!(net.run(&[1.0, 2.0], &mut s), &[0.5]);
        // Zero inputs are skipped, not mis-added: only the biases remain.
        let out = net.run(&[0.0, 0.0], &mut s).to_vec();
        let expect = 1.0 / (1.0 + (-(-6.0f32 + 2.0 * 2.0)).exp());
        assert!((out[0] - expect).abs() < 1e-6, "{out:?} vs {expect}");
    }

    #[test]
    fn refuses_layers_that_do_not_chain_or_hold_non_finite_weights() {
        let a = layer(2, 3, vec![0.0; 6], vec![0.0; 3], Activation::Identity);
        let b = layer(4, 1, vec![0.0; 4], vec![0.0], Activation::Identity);
        assert!(Dense::new(vec![a.clone(), b]).is_none());
        let inf = layer(2, 1, vec![f32::INFINITY, 0.0], vec![0.0], Activation::Identity);
        assert!(Dense::new(vec![inf]).is_none());
        assert!(Dense::new(vec![]).is_none());
        assert!(Dense::new(vec![a]).is_some());
    }
}
