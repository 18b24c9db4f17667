"""Latency oracles: cycles per timestep of a (pruned) model on the target, with their source.

`--latency` picks one:

  analytic   MAC and load counts per step (export.cost_report, from the model's shapes) x per-core
             costs (CORE_COSTS, keyed by the board's cpu). Always available. Source "analytic estimate".
             A width cut (a narrower d_model) is priced through the shapes like any other model: on
             the default UCR shape (32/32/2, cortex-m7) the cycles it saves, as a fraction of the
             model's, are within 10% of QEMU's, and scaled by one measurement (the emulator oracle's
             `estimate`) within 3% (tests/test_prune.py); the unscaled M7 figures run ~9% high.
  lut:FILE   a per-layer cost table measured once on the emulator or a board (format below).
             Source: the table's own ("emulator instruction count" or "board DWT cycles").
  emulator   measure each model's firmware in QEMU: deterministic instruction counts.
  board      measure each model's firmware on the board: DWT cycle counter.

emulator/board need `s4op_micro.firmware.measure_cycles(model, board, where, calib_x, coeff_bits)`
(where is "emulator" or "board"; calib_x: training inputs to quantize the model with; returns
{"cycles_per_step": float, "source": str}), provided by the firmware stage. Building
and running firmware per candidate is slow, so those oracles measure only the models the controller
keeps (`cycles`) and rank candidates with the analytic estimate scaled to the latest measurement
(`estimate`): the cost model is refreshed by measuring the chosen models.

LUT format (JSON), one table per board and model shape:

    {
      "format": "s4op-micro/latency-lut-1",
      "board": "cortex-m7",                     # board or core name it was measured on
      "source": "emulator instruction count",   # or "board DWT cycles"
      "model": {"d_model": 32, "d_state": 32, "n_layers": 2},   # the unpruned model's shape
      "fixed": 900,               # cycles per step outside the blocks (encoder, pooling, loop)
      "layers": [                 # one entry per block of the unpruned model, in order
        {"width": {"0": 700, "16": 2400, "32": 4100},  # cycles of the block by operators kept
         "removed_column": 45},   # optional: cycles saved per removed operator (its mixer column)
        ...
      ]
    }

A block's cycles at a width between two measured widths are interpolated linearly (outside them,
extrapolated from the nearest two); modes pruned count as fractional operators; a dropped block
costs 0. A table for another board or model shape is refused, and so is --granularity width with
a table (it has no narrower-d_model entries).
"""

import json
import math
from pathlib import Path

from ..core.errors import UserError
from ..quant.cost import cost_report
from .operators import kept_modes

LUT_FORMAT = "s4op-micro/latency-lut-1"
ORACLES = ("analytic", "lut:FILE", "emulator", "board")
ANALYTIC = "analytic estimate"
MEASURED_SOURCES = {"emulator": "emulator instruction count", "board": "board DWT cycles"}

# Rough cycles per MAC and per 32-bit load of the generated int8/int16 C on each core (with DSP:
# SMLAD pairs after unpacking; M7 dual-issues; M55 has Helium), plus fixed overheads per layer and
# per step (calls, requantization, tables). An estimate to rank candidates: measure a LUT on the
# emulator or the board for real figures.
# Fitted (non-negative least squares on the relative error) to QEMU instruction counts x the core's
# CPI (boards.CORE_CPI) by benchmarks/bench_latency.py --quick (3 shapes x 6 widths per core, 108
# measurements): mean error 0.5-1.8%, max 5.7% (results/latency_calibration.md), refitted after the
# generated C moved to per-layer code, int16 mixer weights and export-time requantization records.
CORE_COSTS = {
    "cortex-m0plus": dict(mac=12.076, load=1.991, layer=1594, step=3167),
    "cortex-m0": dict(mac=12.076, load=1.991, layer=1594, step=3167),
    "cortex-m3": dict(mac=2.24, load=5.76, layer=28, step=172),
    "cortex-m4": dict(mac=0.508, load=3.698, layer=122, step=457),
    "cortex-m33": dict(mac=0.365, load=3.329, layer=102, step=287),
    "cortex-m7": dict(mac=0.44, load=2.434, layer=94, step=276),
    "cortex-m55": dict(mac=0.799, load=2.37, layer=165, step=409),
}


def analytic_cycles(report, cpu):
    """Cycles per step from cost_report's MAC and load counts (export: shapes alone)."""
    c = CORE_COSTS[cpu]
    return (report["macs_per_step"] * c["mac"] + report["loads_per_step"] * c["load"]
            + c["step"] + c["layer"] * len(report["layers"]))


# --- oracles ------------------------------------------------------------------------------------

class AnalyticOracle:
    def __init__(self, board, coeff_bits=8):
        self.board, self.coeff_bits = board, coeff_bits
        self.source = ANALYTIC
        if board.cpu not in CORE_COSTS:  # fail before any work
            raise UserError(f"no analytic cycle costs for cpu {board.cpu!r}; use --latency lut:FILE measured on it")

    def cycles(self, model, lineage):
        return analytic_cycles(cost_report(model, self.coeff_bits), self.board.cpu)

    estimate = cycles


class LutOracle:
    def __init__(self, path, board, lineage):
        self.path, self.board = Path(path), board
        lut = _read_lut(self.path)
        if lut["board"] not in (board.name, board.cpu):
            raise UserError(f"latency table {self.path} is for board {lut['board']!r}, not {board.name!r}; "
                            f"measure one on {board.name} or pass --board {lut['board']}")
        shape = {"d_model": lineage.d_model, "d_state": 2 * lineage.modes_per_operator, "n_layers": lineage.n_layers}
        if "model" in lut and {k: lut["model"].get(k) for k in shape} != shape:
            raise UserError(f"latency table {self.path} was measured for a model {lut['model']}, this one is {shape}")
        if len(lut["layers"]) != lineage.n_layers:
            raise UserError(f"latency table {self.path} has {len(lut['layers'])} layers, the model {lineage.n_layers}")
        self.lut = lut
        self.source = f"{lut['source']} (table {self.path.name})"

    def cycles(self, model, lineage):
        total = self.lut["fixed"]
        M = lineage.modes_per_operator
        for layer, orig in zip(model.layers, lineage.layers):
            entry = self.lut["layers"][orig]
            total += _interpolate(entry["width"], kept_modes(layer) / M)
            total -= len(layer.removed) * entry.get("removed_column", 0)
        return float(total)

    estimate = cycles


class MeasuredOracle:
    """Firmware measured in the emulator or on the board by `measure` (handed in by the caller:
    s4op_micro.measure.emulator.measure_cycles, which caches by width); `estimate` ranks candidates
    cheaply by scaling the analytic figure to the latest measurement."""

    def __init__(self, where, board, measure, calib_x=None, coeff_bits=8):
        self.where, self.board, self.calib_x, self.coeff_bits = where, board, calib_x, coeff_bits
        self.source = MEASURED_SOURCES[where]
        self.measure = measure
        self.analytic = AnalyticOracle(board, coeff_bits)
        self.scale = None  # measured / analytic of the latest measured model

    def cycles(self, model, lineage):
        result = self.measure(model, self.board, self.where, calib_x=self.calib_x, coeff_bits=self.coeff_bits)
        cycles = float(result["cycles_per_step"])
        self.scale = cycles / self.analytic.cycles(model, lineage)
        return cycles

    def estimate(self, model, lineage):
        if self.scale is None:
            return self.cycles(model, lineage)
        return self.analytic.cycles(model, lineage) * self.scale


def make_oracle(spec, board, lineage, coeff_bits=8, calib_x=None, measure=None):
    """The oracle named by --latency; UserError for an unknown name or a bad table. measure: the
    firmware measurement behind `emulator` and `board` (see MeasuredOracle)."""
    if spec == "analytic":
        return AnalyticOracle(board, coeff_bits)
    if spec.startswith("lut:") and len(spec) > 4:
        return LutOracle(spec[4:], board, lineage)
    if spec in MEASURED_SOURCES:
        if measure is None:
            raise UserError(f"--latency {spec} needs a firmware measurement; call prune() with measure=")
        return MeasuredOracle(spec, board, measure, calib_x, coeff_bits)
    raise UserError(f"unknown latency oracle {spec!r}; choose from {', '.join(ORACLES)}")


def _read_lut(path):
    try:
        lut = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"latency table {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"latency table {path} is not valid JSON ({type(e).__name__}); see `s4op_micro.prune.latency` for the format") from None
    problem = _lut_problem(lut)
    if problem:
        raise UserError(f"latency table {path} is malformed: {problem}; see `s4op_micro.prune.latency` for the format")
    return lut


def _lut_problem(lut):
    if not isinstance(lut, dict) or lut.get("format") != LUT_FORMAT:
        return f"format must be {LUT_FORMAT!r}"
    if not isinstance(lut.get("board"), str):
        return "no board name"
    if lut.get("source") not in (*MEASURED_SOURCES.values(), ANALYTIC):
        return f"source must be one of {sorted((*MEASURED_SOURCES.values(), ANALYTIC))}"
    if not _is_number(lut.get("fixed")):
        return "no fixed cost"
    layers = lut.get("layers")
    if not isinstance(layers, list) or not layers:
        return "no layers"
    for i, entry in enumerate(layers):
        width = entry.get("width") if isinstance(entry, dict) else None
        if not isinstance(width, dict) or len(width) < 2:
            return f"layer {i} needs costs at two or more widths"
        try:
            if any(int(k) < 0 or not _is_number(v) for k, v in width.items()):
                return f"layer {i} has a negative width or a non-numeric cost"
            if len({int(k) for k in width}) < len(width):
                return f"layer {i} lists a width twice"
        except ValueError:
            return f"layer {i} has a width that is not an integer"
        if not _is_number(entry.get("removed_column", 0)):
            return f"layer {i} has a non-numeric removed_column"
    return None


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interpolate(table, width):
    points = sorted((int(k), float(v)) for k, v in table.items())
    lo = max([p for p in points[:-1] if p[0] <= width] or [points[0]])
    hi = points[points.index(lo) + 1]
    return lo[1] + (hi[1] - lo[1]) * (width - lo[0]) / (hi[0] - lo[0])

