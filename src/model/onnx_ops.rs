//! The ONNX operators this filter can load, and nothing else.
//!
//! `tract_onnx::onnx()` registers every ONNX operator tract knows (~190: convolutions,
//! RNNs, FFT, attention, tree ensembles, ...); with whole-program LTO that keeps all
//! their code in the module, which Envoy compiles on every start. augur's models are
//! small MLPs, so only the operators below are registered. A model using any other
//! operator is refused at load by [`check_supported`] with
//! `ModelError::Parse("unsupported ONNX operator(s): ...")`.
//!
//! The builders mirror tract-onnx 0.23.9's own (`src/ops/{math,nn,cast,array}.rs`
//! and `math/{gemm,clip}.rs`), so a supported model gives the same plan and outputs.

use tract_onnx::model::{optional_inputs, OnnxOpRegister, ParsingContext};
use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;
use tract_onnx::tract_hir::tract_core::ops::einsum::EinSum;
use tract_onnx::Onnx;

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// An ONNX framework that knows only the operators in [`register`].
pub fn framework() -> Onnx {
    Onnx { op_register: register(), ..Onnx::default() }
}

/// Refuses a model that uses an operator missing from [`register`], naming it
/// (tract would otherwise fail later, during analysis, with a less direct error).
pub fn check_supported(onnx: &Onnx, proto: &ModelProto) -> Result<(), String> {
    let reg = &onnx.op_register;
    let mut missing: Vec<&str> = proto
        .graph
        .iter()
        .flat_map(|g| g.node.iter())
        .map(|n| n.op_type.as_str())
        .filter(|op| !reg.0.contains_key(*op))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort_unstable();
    missing.dedup();
    let mut supported: Vec<&str> = reg.0.keys().map(String::as_str).collect();
    supported.sort_unstable();
    Err(format!(
        "unsupported ONNX operator(s): {}; this filter supports only {}",
        missing.join(", "),
        supported.join(", ")
    ))
}

fn register() -> OnnxOpRegister {
    let mut reg = OnnxOpRegister::default();
    // What augur_tools.loop.train and benches/models emit.
    reg.insert("MatMul", |_, _| Ok((expand(ops::matmul::MatMulInference::default()), vec![])));
    reg.insert("Add", |_, _| Ok((ops::math::Add.into_hir(), vec![])));
    reg.insert("Relu", |_, _| Ok((expand(ops::activations::Clip::new(Some(0.0), None)), vec![])));
    reg.insert("Sigmoid", |_, _| Ok((ops::nn::sigmoid().into_hir(), vec![])));
    reg.insert("Cast", cast);
    // Other plain MLP building blocks.
    reg.insert("Sub", |_, _| Ok((ops::math::Sub.into_hir(), vec![])));
    reg.insert("Mul", |_, _| Ok((ops::math::Mul.into_hir(), vec![])));
    reg.insert("Div", |_, _| Ok((ops::math::Div.into_hir(), vec![])));
    reg.insert("Tanh", |_, _| Ok((ops::math::tanh().into_hir(), vec![])));
    // Element-wise maths of hand-written graphs (and of the NaN test fixture).
    reg.insert("Abs", |_, _| Ok((ops::math::abs().into_hir(), vec![])));
    reg.insert("Neg", |_, _| Ok((ops::math::neg().into_hir(), vec![])));
    reg.insert("Exp", |_, _| Ok((ops::math::exp().into_hir(), vec![])));
    reg.insert("Log", |_, _| Ok((ops::math::ln().into_hir(), vec![])));
    reg.insert("Sqrt", |_, _| Ok((ops::math::sqrt().into_hir(), vec![])));
    reg.insert("Identity", |_, _| Ok((Box::<ops::identity::Identity>::default(), vec![])));
    reg.insert("Constant", constant);
    reg.insert("Gemm", gemm);
    reg.insert("Clip", clip);
    reg.insert("Softmax", softmax);
    reg.insert("Flatten", |_, node| {
        let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(1);
        Ok((expand(ops::array::Flatten::new(axis)), vec![]))
    });
    reg.insert("Reshape", |_, node| {
        let allowzero = node.get_attr_opt::<i64>("allowzero")?.unwrap_or(0) != 0;
        Ok((expand(ops::array::Reshape::new(allowzero)), vec![]))
    });
    reg.insert("Concat", |_, node| Ok((expand(ops::array::Concat::new(node.get_attr("axis")?)), vec![])));
    reg
}

fn cast(_: &ParsingContext, node: &NodeProto) -> Built {
    let mut to = node.get_attr::<DatumType>("to")?;
    if to == i64::datum_type() {
        // As tract-onnx: integer tensors usually carry shapes.
        to = TDim::datum_type();
    }
    Ok((Box::new(ops::cast::cast(to)), vec![]))
}

fn constant(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let value = if let Some(v) = node.get_attr_opt("value")? {
        ctx.load_tensor(v)?
    } else if let Some(i) = node.get_attr_opt::<i64>("value_int")? {
        tensor0(i)
    } else if let Some(v) = node.get_attr_opt::<f32>("value_float")? {
        tensor0(v)
    } else if let Some(ints) = node.get_attr_opt_slice::<i64>("value_ints")? {
        tensor1(ints)
    } else if let Some(floats) = node.get_attr_opt_slice::<f32>("value_floats")? {
        tensor1(floats)
    } else {
        bail!("Constant node without a numeric value")
    };
    Ok((Box::new(ops::konst::Const::new(value.into_arc_tensor())?), vec![]))
}

fn softmax(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let axis = node.get_attr_opt("axis")?;
    if ctx.onnx_operator_set_version < 13 {
        Ok((expand(ops::nn::LayerSoftmax::new(axis.unwrap_or(1), true)), vec![]))
    } else {
        Ok((expand(ops::nn::Softmax::new(axis.unwrap_or(-1))), vec![]))
    }
}

fn clip(ctx: &ParsingContext, node: &NodeProto) -> Built {
    if ctx.onnx_operator_set_version < 11 {
        let min: Option<f32> = node.get_attr_opt("min")?;
        let max: Option<f32> = node.get_attr_opt("max")?;
        Ok((expand(ops::activations::Clip::new(min, max)), vec![]))
    } else {
        let mut bounds = optional_inputs(node).skip(1);
        let (min, max) = (bounds.next().flatten(), bounds.next().flatten());
        Ok((expand(Clip11 { min, max }), vec![]))
    }
}

/// Clip from opset 11: bounds are optional inputs.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Clip11 {
    min: Option<usize>,
    max: Option<usize>,
}

impl Expansion for Clip11 {
    fn name(&self) -> StaticName {
        "Clip".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1 + self.min.is_some() as usize + self.max.is_some() as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(&self, name: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let dt = model.outlet_fact(inputs[0])?.datum_type;
        let mut wire = inputs[0];
        for (bound, suffix, is_min) in [(self.min, "min", true), (self.max, "max", false)] {
            let Some(ix) = bound else { continue };
            let mut b = inputs[ix];
            if model.outlet_fact(b)?.datum_type != dt {
                b = model.wire_node(format!("{name}.{suffix}.cast"), ops::cast::cast(dt), &[b])?[0];
            }
            let op = if is_min { ops::math::max() } else { ops::math::min() };
            wire = wire_with_rank_broadcast(format!("{name}.{suffix}"), model, op, &[wire, b])?[0];
        }
        Ok(tvec!(wire))
    }
}

fn gemm(_: &ParsingContext, node: &NodeProto) -> Built {
    let alpha = node.get_attr_opt("alpha")?.unwrap_or(1.);
    let beta = node.get_attr_opt("beta")?.unwrap_or(1.);
    let trans_a = node.get_attr_opt("transA")?.unwrap_or(false);
    let trans_b = node.get_attr_opt("transB")?.unwrap_or(false);
    Ok((expand(Gemm { alpha, beta, trans_a, trans_b }), vec![]))
}

/// `alpha·op(A)·op(B) + beta·C`, wired as an EinSum (as tract-onnx does).
#[derive(Debug, Clone)]
struct Gemm {
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
}

impl Expansion for Gemm {
    fn name(&self) -> StaticName {
        "Gemm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() < 2 {
            bail!("Wrong input number. Rules expect at least 2, node has {}.", inputs.len());
        }
        if inputs.len() == 3 {
            s.equals(&inputs[2].datum_type, &outputs[0].datum_type)?;
        }
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[1].rank, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[1].datum_type, &outputs[0].datum_type)?;
        let (ca, ra) = if self.trans_a { (0, 1) } else { (1, 0) };
        let (cb, rb) = if self.trans_b { (0, 1) } else { (1, 0) };
        s.equals(&inputs[0].shape[ra], &outputs[0].shape[0])?;
        s.equals(&inputs[0].shape[ca], &inputs[1].shape[rb])?;
        s.equals(&inputs[1].shape[cb], &outputs[0].shape[1])?;
        Ok(())
    }

    fn wire(&self, name: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let (a, b, c) = (inputs[0], inputs[1], inputs.get(2).copied());
        let axes = AxesMapping::for_numpy_matmul(2, self.trans_a, self.trans_b, false)?;
        let dt = model.outlet_fact(a)?.datum_type;
        let mut wire = model.wire_node(format!("{name}.ab"), EinSum::new(axes, dt), &[a, b])?[0];
        if self.alpha != 1.0 {
            let alpha = tensor0(self.alpha).broadcast_into_rank(model.outlet_fact(wire)?.rank())?;
            let alpha = model.add_const(format!("{name}.alpha_ab.cst"), alpha)?;
            wire = model.wire_node(format!("{name}.alpha_ab"), ops::math::mul(), &[alpha, wire])?[0];
        }
        if let Some(mut c) = c.filter(|_| self.beta != 0.0) {
            while model.outlet_fact(wire)?.rank() > model.outlet_fact(c)?.rank() {
                let rank = model.outlet_fact(c)?.rank();
                c = model.wire_node(format!("{name}.c_add_axis_{rank}"), AxisOp::Add(0), &[c])?[0];
            }
            let beta = tensor0(self.beta).broadcast_into_rank(model.outlet_fact(wire)?.rank())?;
            let beta = model.add_const(format!("{name}.beta_c.cst"), beta)?;
            let beta_c = model.wire_node(format!("{name}.beta_c"), ops::math::mul(), &[beta, c])?[0];
            wire = model.wire_node(name, ops::math::add(), &[wire, beta_c])?[0];
        }
        Ok(tvec!(wire))
    }
}
