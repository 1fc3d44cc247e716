"""``lbsim export``: a learned policy's inference graph as ONNX, for serving outside Python.

    lbsim export --checkpoint daemon/checkpoints/qmix --format onnx --out qmix.onnx

The graph is built with ``onnx.helper`` straight from the checkpoint's numpy
weights (no torch) and computes, for the n servers of one LB and one tick,
exactly what the daemon's learned policy does (``daemon/policies/learned.py``
over ``daemon/nets.py``):

inputs
    ``obs``          (n, F) float32  ``features.observation_matrix`` of the frame
    ``up``           (n,)   bool     server admin state is UP
    ``prev_action``  (n,)   int64    level index chosen last tick (the no-op level
                                     after a reset)
    ``h``            (n, H) float32  GRU hidden state (zeros after a reset)
outputs
    ``scores``       (n, K) float32  Q-values (QMIX) / logits (SAC) per level
    ``h_out``        (n, H) float32  the next hidden state: feed back as ``h``
    ``action``       (n,)   int64    greedy level index: feed back as ``prev_action``
    ``level``        (n,)   float32  its multiplier; weight = static weight x level

Feature normalisation is inside the graph (log1p, the checkpoint's mean/std,
each row relative to the mean over up servers, the previous level one-hot,
clip to +-10), computed in float64 like the daemon; the network runs in
float32.  The model's metadata_props carry the algorithm, the levels, the
feature names and spec, and the server range it accepts.

Exporters are registered per network kind (``register_exporter``); the kind
is the checkpoint metadata's ``network`` field, else its ``algorithm``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8          # the IR of opset 17: loads in every onnxruntime >= 1.12
EX_UNAVAILABLE = 69
EX_CONFIG = 78

Exporter = Callable[[dict[str, np.ndarray], dict[str, Any]], Any]
EXPORTERS: dict[str, Exporter] = {}


class ExportError(ValueError):
    """A checkpoint that cannot be exported; one line naming the file and field."""


def register_exporter(*kinds: str) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        for k in kinds:
            EXPORTERS[k] = fn
        return fn
    return deco


def network_kind(meta: dict[str, Any]) -> str:
    return str(meta.get("network") or meta.get("algorithm") or "")


class _Graph:
    """A small builder over onnx.helper: named constants and nodes in order."""

    def __init__(self) -> None:
        from onnx import helper

        self.h = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        self._n += 1
        name = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.h.make_node(op_type, list(inputs), [name],
                                           name=f"n{self._n}_{op_type}", **attrs))
        return name


def _inputs_block(g: _Graph, meta: dict[str, Any]) -> str:
    """obs, up, prev_action -> (n, 2F + K) float32 network inputs (nets.agent_inputs)."""
    from onnx import TensorProto

    DOUBLE, FLOAT = TensorProto.DOUBLE, TensorProto.FLOAT  # noqa: N806
    feats = meta["features"]
    mean = np.asarray(feats["mean"], dtype=np.float64)[None, :]
    std = np.asarray(feats["std"], dtype=np.float64)[None, :]
    k = len(meta["levels"])
    zero = g.const("zero_f64", np.array(0.0))
    one = g.const("one_f64", np.array(1.0))
    o64 = g.op("Cast", "obs", to=DOUBLE)
    a = g.op("Log", g.op("Add", g.op("Max", o64, zero), one))          # log1p(max(obs, 0))
    z = g.op("Div", g.op("Sub", a, g.const("feat_mean", mean)), g.const("feat_std", std))
    up2 = g.op("Unsqueeze", "up", g.const("ax1", np.array([1], dtype=np.int64)))
    a_up = g.op("Where", up2, a, zero)
    ax0 = g.const("ax0", np.array([0], dtype=np.int64))
    tot = g.op("ReduceSum", a_up, ax0, keepdims=1)                     # (1, F)
    cnt = g.op("ReduceSum", g.op("Cast", up2, to=DOUBLE), ax0, keepdims=1)  # (1, 1)
    ref = g.op("Div", tot, g.op("Max", cnt, one))                      # 0 when none is up
    rel = g.op("Sub", a, ref)
    lo = g.const("lvl_lo", np.array(0, dtype=np.int64))
    hi = g.const("lvl_hi", np.array(k - 1, dtype=np.int64))
    prev = g.op("Min", g.op("Max", "prev_action", lo), hi)
    hot = g.op("Equal", g.op("Unsqueeze", prev, "ax1"),
               g.const("lvl_idx", np.arange(k, dtype=np.int64)[None, :]))
    x = g.op("Concat", z, rel, g.op("Cast", hot, to=DOUBLE), axis=1)
    x = g.op("Where", g.op("IsNaN", x), zero, x)                       # nan_to_num
    x = g.op("Clip", x, g.const("clip_lo", np.array(-10.0)),
             g.const("clip_hi", np.array(10.0)))                     # also maps +-inf
    return g.op("Cast", x, to=FLOAT, out="agent_inputs")


def _f32(t: dict[str, np.ndarray], k: str) -> np.ndarray:
    return np.asarray(t[k], dtype=np.float32)


@register_exporter("qmix", "sac_gru", "gru")
def export_gru_agent(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
    """fc1 -> ReLU -> GRUCell (torch gate order r, z, n) -> head; greedy level."""
    from onnx import TensorProto

    g = _Graph()
    x = _inputs_block(g, meta)
    H = int(_f32(tensors, "gru.weight_hh").shape[1])
    k = len(meta["levels"])
    F = len(meta["features"]["names"])

    def gemm(inp: str, w: str, b: str) -> str:
        return g.op("Gemm", inp, g.const(w, _f32(tensors, w)), g.const(b, _f32(tensors, b)),
                    transB=1)

    e = g.op("Relu", gemm(x, "fc1.weight", "fc1.bias"))
    gi = gemm(e, "gru.weight_ih", "gru.bias_ih")
    gh = gemm("h", "gru.weight_hh", "gru.bias_hh")
    sizes = g.const("gate_sizes", np.array([H, H, H], dtype=np.int64))
    gi_r, gi_z, gi_n = (f"gi_{s}" for s in "rzn")
    gh_r, gh_z, gh_n = (f"gh_{s}" for s in "rzn")
    g.nodes.append(g.h.make_node("Split", [gi, sizes], [gi_r, gi_z, gi_n], axis=1,
                                 name="split_gi"))
    g.nodes.append(g.h.make_node("Split", [gh, sizes], [gh_r, gh_z, gh_n], axis=1,
                                 name="split_gh"))
    r = g.op("Sigmoid", g.op("Add", gi_r, gh_r))
    zg = g.op("Sigmoid", g.op("Add", gi_z, gh_z))
    c = g.op("Tanh", g.op("Add", gi_n, g.op("Mul", r, gh_n)))
    g.op("Add", c, g.op("Mul", zg, g.op("Sub", "h", c)), out="h_out")  # (1-z) c + z h
    g.op("Gemm", "h_out", g.const("head.weight", _f32(tensors, "head.weight")),
         g.const("head.bias", _f32(tensors, "head.bias")), transB=1, out="scores")
    g.op("ArgMax", "scores", axis=1, keepdims=0, out="action")
    g.op("Gather", g.const("levels", np.asarray(meta["levels"], dtype=np.float32)),
         "action", axis=0, out="level")

    h = g.h
    n = "n_servers"
    inputs = [h.make_tensor_value_info("obs", TensorProto.FLOAT, [n, F]),
              h.make_tensor_value_info("up", TensorProto.BOOL, [n]),
              h.make_tensor_value_info("prev_action", TensorProto.INT64, [n]),
              h.make_tensor_value_info("h", TensorProto.FLOAT, [n, H])]
    outputs = [h.make_tensor_value_info("scores", TensorProto.FLOAT, [n, k]),
               h.make_tensor_value_info("h_out", TensorProto.FLOAT, [n, H]),
               h.make_tensor_value_info("action", TensorProto.INT64, [n]),
               h.make_tensor_value_info("level", TensorProto.FLOAT, [n])]
    graph = h.make_graph(g.nodes, f"marllb_{meta.get('algorithm', 'agent')}", inputs, outputs,
                         initializer=g.inits)
    return graph


def _model(graph: Any, meta: dict[str, Any], source: str) -> Any:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="marllb lbsim export")
    model.ir_version = IR_VERSION
    model.doc_string = ("marllb learned load-balancer policy, one tick per run; inputs and "
                        "outputs are described in marllb.sim.export")
    props = {
        "source_checkpoint": source,
        "algorithm": str(meta.get("algorithm")),
        "network": network_kind(meta),
        "levels": json.dumps(meta["levels"]),
        "feature_names": json.dumps(meta["features"]["names"]),
        "feature_spec": str(meta["features"].get("spec")),
        "servers_min": str(meta.get("servers_min")),
        "servers_max": str(meta.get("servers_max")),
        "hidden": str(meta.get("hidden")),
        "code_version": str(meta.get("code_version")),
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_model(path: str | Path) -> Any:
    """Load and validate a checkpoint; its inference graph as an ``onnx.ModelProto``."""
    from marllb.daemon import checkpoint as ckpt

    try:
        tensors, meta = ckpt.load(path)
        if str(meta.get("arch", "")).startswith("setnet"):   # v2: before the v1 checks
            raise ExportError(
                f"checkpoint {path}: the v2 residual set network (on {meta.get('base')!r}, a "
                "stateful heuristic) has no ONNX exporter yet; v1 GRU checkpoints "
                "(e.g. daemon/checkpoints/qmix_v1) export")
        ckpt.validate(tensors, meta, str(path))
    except ckpt.CheckpointError as e:
        raise ExportError(str(e)) from None
    kind = network_kind(meta)
    fn = EXPORTERS.get(kind)
    if fn is None:
        raise ExportError(f"checkpoint {path}: no ONNX exporter for network {kind!r} "
                          f"(have: {', '.join(sorted(EXPORTERS))})")
    return _model(fn(tensors, meta), meta, str(path))


def export(path: str | Path, out: str | Path, fmt: str = "onnx") -> Path:
    """Write the checkpoint's inference graph to ``out`` atomically."""
    from marllb.daemon.fsutil import atomic_write_bytes

    if fmt != "onnx":
        raise ExportError(f"--format {fmt!r}: only 'onnx' is supported")
    model = build_model(path)
    return atomic_write_bytes(out, model.SerializeToString())


def _missing_onnx() -> str | None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "the onnx package is not installed (pip install 'marllb[onnx]')"
    return None


def cmd_export(args: argparse.Namespace) -> int:
    from marllb.daemon.fsutil import OutputError

    why = _missing_onnx()
    if why:
        print(f"lbsim: error: export: {why}", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        p = export(args.checkpoint, args.out, args.format)
    except ExportError as e:
        print(f"lbsim: error: export: {e}", file=sys.stderr)
        return EX_CONFIG
    except OutputError as e:
        print(f"lbsim: error: export: {e}", file=sys.stderr)
        return 73  # EX_CANTCREAT
    print(f"lbsim export: wrote {p} (ONNX opset {OPSET}; inputs obs, up, prev_action, h; "
          f"outputs scores, h_out, action, level)", file=sys.stderr)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a learned policy's inference graph (ONNX)",
        description="Write a learned checkpoint's per-tick inference (feature "
        "normalisation, recurrent state as explicit input/output, greedy level) as an "
        "ONNX model, for onnxruntime or any ONNX server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint path (NAME, NAME.safetensors or NAME.json)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.set_defaults(func=cmd_export)
