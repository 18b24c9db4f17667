"""Integer export: discretize -> quantize -> integer reference -> C (Jinja) -> host run.

Public API (other stages call these names):
  quantize_model(model, calib_x, coeff_bits=8) -> QuantizedModel
  IntegerReference(qmodel).run / run_steps / predict / quantize_input
  cost_report(model_or_qmodel, coeff_bits=8) -> dict      (shapes only, no calibration)
  export_model(ckpt_path, board, out_dir, ...) -> report dict
"""

from .quantize import QuantizedModel, quantize_model
from .reference import IntegerReference

__all__ = ["QuantizedModel", "quantize_model", "IntegerReference", "cost_report", "export_model"]


def __getattr__(name):  # lazy: cgen pulls in jinja2 and the board table
    if name in ("cost_report", "export_model"):
        from . import cgen

        return getattr(cgen, name)
    raise AttributeError(name)
