"""The result file: its layout, the fields every row must have, and a recorder that rewrites the
file after every row, so a run that is cut short keeps everything measured until then.

    {"benchmark": "models", "schema_version": 1, "suite": ..., "meta": {...}, "config": {...},
     "backends": {name: {...}}, "forward": [rows], "train": [rows], "sampling": [rows]}

Every row has "status": "ok", "skipped" or "error"; the last two carry a "reason".
"""
import math

from .timing import write_json

__all__ = ["SCHEMA_VERSION", "SECTIONS", "REQUIRED", "Recorder", "validate", "skipped_row",
           "error_row", "row_key", "merge"]

SCHEMA_VERSION = 1
SECTIONS = ("forward", "train", "sampling")

REQUIRED = {
    "top": ("benchmark", "schema_version", "suite", "meta", "config", "backends", *SECTIONS),
    "meta": ("date", "commit", "torch", "device", "python", "threads", "fastguide_build",
             "peak_flops"),
    "backend": ("label", "dtype", "norm", "attention", "layout", "compile_mode", "cuda_graph"),
    # Fields of every row, then the extra fields of a row with status "ok".
    "forward": ("model", "batch", "backend", "status"),
    "forward_ok": ("dtype", "layout", "params", "flops_per_img", "time_s", "time_min_s", "reps",
                   "img_per_s", "flops_per_s", "mfu"),
    "train": ("model", "batch", "backend", "status"),
    "train_ok": ("dtype", "layout", "flops_per_img", "time_s", "time_min_s", "reps",
                 "img_per_s", "flops_per_s", "mfu"),
    "sampling": ("model", "classifier", "guidance", "sampler", "steps", "batch", "backend",
                 "status"),
    "sampling_ok": ("dtype", "flops_per_img", "time_s", "reps", "s_per_img", "flops_per_s",
                    "bound_s_per_img", "x_bound", "mfu"),
}

# Fields that must be positive finite numbers in an "ok" row (mfu and the bound are None on a
# CPU, where there is no peak to divide by).
POSITIVE = ("flops_per_img", "time_s", "img_per_s", "s_per_img", "flops_per_s", "reps")


def skipped_row(base, reason):
    return {**base, "status": "skipped", "reason": reason}


def error_row(base, exc):
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return {**base, "status": "error", "reason": f"{type(exc).__name__}: {first_line}"}


def _missing(obj, keys, where):
    return [f"{where}: missing {k!r}" for k in keys if k not in obj]


def _check_row(section, i, row, has_peak):
    where = f"{section}[{i}]"
    problems = _missing(row, REQUIRED[section], where)
    status = row.get("status")
    if status == "ok":
        problems += _missing(row, REQUIRED[f"{section}_ok"], where)
        for key in POSITIVE:
            value = row.get(key)
            if key in row and not (isinstance(value, (int, float)) and math.isfinite(value)
                                   and value > 0):
                problems.append(f"{where}: {key} = {value!r} is not a positive number")
        if has_peak and not (isinstance(row.get("mfu"), float) and 0 < row["mfu"] < 1):
            problems.append(f"{where}: mfu = {row.get('mfu')!r} is not in (0, 1)")
    elif status in ("skipped", "error"):
        if not row.get("reason"):
            problems.append(f"{where}: {status} without a reason")
    else:
        problems.append(f"{where}: status {status!r}")
    return problems


def validate(data):
    """Every problem with a result file's content, as a list of strings (empty: valid)."""
    problems = _missing(data, REQUIRED["top"], "file")
    meta = data.get("meta", {})
    problems += _missing(meta, REQUIRED["meta"], "meta")
    for name, desc in data.get("backends", {}).items():
        problems += _missing(desc, REQUIRED["backend"], f"backends[{name}]")
    has_peak = bool(meta.get("peak_flops"))
    for section in SECTIONS:
        for i, row in enumerate(data.get(section, [])):
            problems += _check_row(section, i, row, has_peak)
            if row.get("backend") not in data.get("backends", {}):
                problems.append(f"{section}[{i}]: unknown backend {row.get('backend')!r}")
    return problems


def row_key(section, row):
    """What a row measures: two rows with the same key are the same cell."""
    key = (row["model"], row["batch"], row["backend"])
    if section == "sampling":
        key += (row["guidance"], row["sampler"], row["steps"])
    return key


def merge(old, new):
    """`new` on top of `old` (e.g. the torch.compile cells measured in a second call): a new row
    replaces the old row of its cell unless the new one is skipped and the old one measured.
    The new run's meta and config are kept; the older ones are listed under "merged_from"."""
    out = {**new, "merged_from": [*old.get("merged_from", []),
                                  {"meta": old["meta"], "config": old["config"]}]}
    for section in SECTIONS:
        rows = {row_key(section, r): r for r in old.get(section, [])}
        for r in new[section]:
            kept = rows.get(row_key(section, r))
            if kept is None or r["status"] != "skipped" or kept["status"] == "skipped":
                rows[row_key(section, r)] = r
        out[section] = list(rows.values())
    return out


class Recorder:
    """Collects rows and rewrites the JSON file after each (atomically), merged onto `base`
    (a previous result) when one is given."""

    def __init__(self, path, suite, meta, config, backends, log=print, base=None):
        self.path = path
        self.log = log
        self.base = base
        self.data = {"benchmark": "models", "schema_version": SCHEMA_VERSION, "suite": suite,
                     "meta": meta, "config": config, "backends": backends,
                     **{s: [] for s in SECTIONS}}
        self.flush()

    def add(self, section, row):
        self.data[section].append(row)
        self.flush()
        self.log(_summary(section, row))
        return row

    def result(self):
        return merge(self.base, self.data) if self.base else self.data

    def flush(self):
        if self.path is not None:
            write_json(self.path, self.result())


def _summary(section, row):
    ran = f"ran {row['dtype']}" if row.get("dtype") else ""
    what = f"{section:8} {row['model']:>18} b={row['batch']:<3} {row['backend']:>13} {ran:>12}"
    if section == "sampling":
        what += f" {row['guidance']:>10} {row['steps']:>3} steps"
    if row["status"] != "ok":
        return f"{what}  {row['status']}: {row['reason']}"
    mfu = f"  MFU {100 * row['mfu']:5.1f}%" if row.get("mfu") is not None else ""
    speed = (f"{row['s_per_img']:.4f} s/img" if section == "sampling"
             else f"{row['img_per_s']:9.2f} img/s")
    return f"{what}  {speed}  {row['flops_per_s'] / 1e12:7.3f} TFLOP/s{mfu}"
