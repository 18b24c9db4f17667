"""The int8 model on disk: DIR/qmodel.npz (the QuantizedModel itself, which IntegerReference runs)
and DIR/model.json (every tensor's shape, scale and zero point and every requantization's
multiplier and shift, for people and other tools)."""

import json
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .quantize import QuantizedModel

def _flatten(prefix, obj, arrays):
    if isinstance(obj, dict):
        return {k: _flatten(f"{prefix}{k}.", v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_flatten(f"{prefix}{i}.", v, arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        arrays[prefix[:-1]] = obj
        return {"__array__": prefix[:-1]}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten(obj, arrays):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def save_qmodel(q, path):
    arrays = {}
    tree = _flatten("", {"meta": q.meta, "tensors": q.tensors, "enc": q.enc, "layers": q.layers, "dec": q.dec,
                         "stats": q.stats}, arrays)
    np.savez_compressed(path, __tree__=np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8), **arrays)


def load_qmodel(path):
    path = Path(path)
    if path.is_dir():
        path = path / "qmodel.npz"
    if not path.is_file():
        raise UserError(f"{path} not found: not an export directory (run `s4op-micro export` first)")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != "__tree__"}
            tree = json.loads(bytes(z["__tree__"]).decode())
        return QuantizedModel(**_unflatten(tree, arrays))
    except Exception as e:  # zipfile, numpy, json and KeyError/TypeError on a foreign or damaged file
        raise UserError(f"{path} is corrupt ({type(e).__name__}); re-run `s4op-micro export` to re-create it") from None


def model_json(q, board_name):
    """Every tensor's shape, scale and zero point, and every requantization's multiplier/shift."""
    def arr(a):
        a = np.asarray(a)
        return {"shape": list(a.shape), "dtype": str(a.dtype)}

    def fc(p, x, out):
        return {"input": x, "output": out, "weight": {"shape": list(p["w"].shape), "dtype": "int8", "zero_point": 0,
                                                      "scale": p["w_scale"].tolist()},
                "bias": {"shape": list(p["bias"].shape), "dtype": "int32"},
                "multiplier": p["mult"].tolist(), "shift": p["shift"].tolist()}

    n = len(q.layers)
    layers = []
    for i, L in enumerate(q.layers):
        s = L["ssm"]
        d = {"ssm": {"input": f"h{i}", "output": f"y{i}", "channels": s["channels"].tolist(),
                     "active": s["active"].tolist(), "mode_start": s["mode_start"].tolist(),
                     "state": {"dtype": "int16", "shape": [int(s["mode_start"][-1]), 2],
                               "gain_abs": np.abs(s["state_gain"]).tolist()},
                     "A": arr(s["a_re"]), "input_shift": s["sh"].tolist(), "const_input": arr(s["k"]),
                     "C": {"shape": [len(s["c_re"]), 2], "dtype": f"int{q.meta['coeff_bits']}",
                           "scale_per_channel": s["c_scale"].tolist()},
                     "D": arr(s["d"]), "bias": arr(s["bias"]), "multiplier": s["mult"].tolist(), "shift": s["shift"].tolist()},
             "gelu_table": {"input": f"y{i}", "output": f"g{i}", "shape": [256], "dtype": "int8"},
             "fc_a": fc(L["fc_a"], f"g{i}", f"a{i}"), "fc_b": fc(L["fc_b"], f"g{i}", f"b{i}"),
             "sigmoid_table": {"input": f"b{i}", "output": "sig", "shape": [256], "dtype": "int8"},
             "mul": {"inputs": [f"a{i}", "sig"], "output": f"z{i}", **L["mul"]},
             "add": {"inputs": [f"h{i}", f"z{i}"], "output": f"r{i}", **L["add"]}}
        if q.meta["coeff_bits"] == 8:
            d["ssm"]["A_code"] = {"rho": arr(s["rho"]), "phi": arr(s["phi"]), "per_channel": ["lg_lo", "lg_step", "dth"]}
        if "post" in L:
            d["post_norm"] = {"input": f"r{i}", "output": f"h{i + 1}", **fc(L["post"], f"r{i}", f"h{i + 1}")}
            d["post_norm"]["weight"]["shape"] = [len(L["post"]["w"])]
        layers.append(d)
    return {"format": "s4op-micro/int8-model-1", "board": board_name, "meta": q.meta, "tensors": q.tensors,
            "encoder": fc(q.enc, "x", "h0"), "layers": layers, "pool": {"input": f"h{n}", "output": "pool"},
            "decoder": fc(q.dec, "pool", "logits")}
