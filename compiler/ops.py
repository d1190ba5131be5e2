"""The operator table: every ONNX operator the DLA runs, defined once.

Adding an operator is one entry here and its handler ``_op_<Name>`` in
:mod:`compiler.frontend_ops`; the rest derives from the table:

* the front end dispatches a node to ``Op.handler`` (:meth:`compiler.frontend._FrontEnd._node`) and
  names :data:`SUPPORTED_OPS` in its refusals;
* the host/DLA partitioner (:mod:`compiler.partition`) places a node by ``Op.category``;
* the ONNX conformance run (``tests/onnx_backend.py``) takes the node cases of every operator with
  ``conformance`` set, turning the inputs from ``Op.params`` on into initializers;
* ``docs/conformance.md`` lists the table (``scripts/onnx_backend_report.py``).

Categories (what the partitioner needs to know):

* ``layer``: becomes a DLA layer of its own (convolution, pooling, fully connected, resize);
* ``unary``: a per-channel function of one tensor, fused into the output stage of the layer
  producing its input, else a channel-wise layer (a depthwise 1x1 convolution) of its own;
* ``binary``: an element-wise Add/Mul of two tensors (or of a tensor and a per-channel
  constant), fused into the layer producing one operand;
* ``view``: no code: a reshape or alias of its input, or a concatenation whose inputs are
  written in place by their producers.

An op marked ``canonical`` has no handler: canonicalisation (:mod:`compiler.frontend_canon`)
rewrites it into ops that have one where it can (Div by a constant into Mul, ...); what is left of
it runs on the host. Ops of the domain :data:`MDLA_DOMAIN` are the compiler's own (activations
the ONNX standard has no operator for), made by canonicalisation only.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Op", "OPS", "SUPPORTED_OPS", "CATEGORIES", "MDLA_DOMAIN", "spec", "ops_in", "conformance_ops",
           "conformance_case_prefixes", "param_inputs"]

CATEGORIES = ("layer", "unary", "binary", "view")
#: the domain of the compiler's own operators
MDLA_DOMAIN = "com.microndla"


@dataclass(frozen=True)
class Op:
    name: str                    #: ONNX op type (default domain)
    category: str                #: one of CATEGORIES
    doc: str                     #: what the DLA makes of it (docs/conformance.md)
    params: int | None = None    #: inputs from this position on are parameters (weights, scales, shapes)
    conformance: bool = True     #: its onnx.backend.test node cases are part of the conformance run
    canonical: bool = False      #: rewritten by canonicalisation, no handler of its own
    domain: str = ""             #: "" (ONNX), MDLA_DOMAIN or (canonical ops) com.microsoft
    #: further name prefixes of its onnx.backend.test node cases (besides ``test_<name lowercased>``)
    case_prefixes: tuple[str, ...] = ()

    @property
    def handler(self) -> str:
        """The front end's method translating this op (compiler/frontend_ops.py)."""
        return "_op_" + self.name


_TABLE = (
    Op("Conv", "layer", "convolution, grouped and depthwise included", params=1, case_prefixes=("basic_conv",)),
    Op("ConvTranspose", "layer", "transposed convolution, lowered by phases", params=1),
    Op("BatchNormalization", "unary", "folded into the producing layer's weights and bias", params=1,
       case_prefixes=("batchnorm",)),
    Op("Relu", "unary", "output-stage activation"),
    Op("LeakyRelu", "unary", "output-stage activation (0 <= alpha <= 1)"),
    Op("Clip", "unary", "output-stage activation (constant bounds)", params=1),
    Op("Sigmoid", "unary", "output-stage activation (table)"),
    Op("Tanh", "unary", "output-stage activation (table)"),
    Op("Add", "binary", "residual Add fused into a layer, or a per-channel constant folded into a bias"),
    Op("Sum", "binary", "Sum of tensors, as Adds"),
    Op("Mul", "binary", "product fused into a layer (also a per-channel gate), or a constant folded into weights"),
    Op("Concat", "view", "channel concatenation, written in place by the producers"),
    Op("MaxPool", "layer", "max pooling"),
    Op("AveragePool", "layer", "average pooling"),
    Op("GlobalAveragePool", "layer", "average pooling over the whole map"),
    Op("GlobalMaxPool", "layer", "max pooling over the whole map"),
    Op("Gemm", "layer", "fully connected layer (a convolution covering the whole map)", params=1),
    Op("MatMul", "layer", "fully connected layer by a constant matrix", params=1),
    Op("Resize", "layer", "integer upsampling, nearest or linear, as a fixed depthwise transposed convolution; any "
       "other resize of a map of up to 4096 pixels (downsampling, cubic, align_corners, crop) as a fixed linear "
       "map whose output is a model output or feeds the host", params=1),
    Op("Upsample", "layer", "as Resize", params=1),
    Op("Flatten", "view", "a view of the feature map"),
    Op("Reshape", "view", "a view of the feature map", params=1),
    Op("Identity", "view", "an alias"),
    Op("Dropout", "view", "an alias (inference)", params=1),
    Op("HardSwish", "unary", "output-stage activation hardswish where the machine has it (else as x * HardSigmoid)"),
    Op("Silu", "unary", "output-stage activation silu: x * Sigmoid(x), fused by canonicalisation",
       domain=MDLA_DOMAIN, conformance=False),
    Op("Mish", "unary", "output-stage activation mish where the machine has it (a table gate): the ONNX op, "
       "and x * Tanh(Softplus(x)) fused by canonicalisation"),
    Op("HardSigmoid", "unary", "Mul and Add by constants (folded into the producing layer) and Clip(0, 1)",
       canonical=True),
    Op("Div", "binary", "Div by a constant: Mul by its reciprocal", params=1, canonical=True),
    Op("Sub", "binary", "Sub of a constant: Add of its negation; of a tensor: Add of its product by -1",
       params=1, canonical=True),
    Op("Neg", "unary", "Mul by -1", canonical=True),
    Op("Split", "view", "along the channels of a feature map: 1x1 selections folded into consumer Convs",
       params=1, canonical=True, conformance=False),
    Op("Slice", "view", "of a channel range: as Split", params=1, canonical=True, conformance=False),
    Op("Cast", "view", "between float types: removed", canonical=True, conformance=False),
    # sequences (compiler/frontend_seq.py): the DLA part is a product over the steps, the rest runs on the host
    Op("LSTM", "layer", "input part of the gates for all steps as a 1x1 convolution over the steps; the recurrence "
       "on the host", params=1, canonical=True, conformance=False),
    Op("GRU", "layer", "as LSTM", params=1, canonical=True, conformance=False),
    # quantised models (compiler/quant_import.py): dequantised, then requantised to the DLA's 16-bit formats
    Op("QuantizeLinear", "view", "of an activation, with the DequantizeLinear after it: removed (a Clip for an "
       "unsigned range)", params=1, canonical=True, conformance=False),
    Op("DequantizeLinear", "view", "of constants: folded into float weights", params=1, canonical=True,
       conformance=False),
    Op("QLinearConv", "layer", "Conv with dequantised weights and bias", params=1, canonical=True, conformance=False),
    Op("QLinearMatMul", "layer", "MatMul with dequantised weights", params=1, canonical=True, conformance=False),
    Op("ConvInteger", "layer", "after DynamicQuantizeLinear: Conv of the float input by dequantised weights",
       params=1, canonical=True, conformance=False),
    Op("MatMulInteger", "layer", "after DynamicQuantizeLinear: MatMul of the float input by dequantised weights",
       params=1, canonical=True, conformance=False),
    Op("DynamicQuantizeLinear", "view", "before ConvInteger/MatMulInteger: removed with them", canonical=True,
       conformance=False),
    Op("QGemm", "layer", "Gemm with dequantised weights and bias", params=1, canonical=True, conformance=False,
       domain="com.microsoft"),
    Op("DynamicQuantizeLSTM", "layer", "LSTM with dequantised weights", params=1, canonical=True,
       conformance=False, domain="com.microsoft"),
)

#: op type -> its entry
OPS: dict[str, Op] = {op.name: op for op in _TABLE}
assert all(op.category in CATEGORIES for op in _TABLE)

#: ONNX ops the front end translates (besides any node whose inputs are all constants, which is
#: folded, and the canonical ops, which are rewritten into these)
SUPPORTED_OPS: tuple[str, ...] = tuple(op.name for op in _TABLE if not op.canonical and not op.domain)


def spec(node) -> Op | None:
    """The table's entry translating this node (None: the DLA does not run it)."""
    op = OPS.get(node.op_type)
    if op is None or op.canonical:
        return None
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return op if domain == op.domain else None


def ops_in(*categories: str) -> frozenset[str]:
    """The op types of these categories."""
    return frozenset(op.name for op in _TABLE if op.category in categories and not op.canonical)


def conformance_ops() -> tuple[str, ...]:
    """The ops whose ONNX node conformance cases are run."""
    return tuple(op.name for op in _TABLE if op.conformance)


def conformance_case_prefixes() -> dict[str, tuple[str, ...]]:
    """Op type -> the name prefixes of its node cases (``test_<prefix>``, then ``_`` or the end)."""
    return {op.name: (op.name.lower(),) + op.case_prefixes for op in _TABLE if op.conformance}


def param_inputs() -> dict[str, slice]:
    """Op type -> the slice of its inputs that are parameters (initializers in the conformance run)."""
    return {op.name: slice(op.params, None) for op in _TABLE if op.params is not None}
