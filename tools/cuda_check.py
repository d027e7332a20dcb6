"""Static performance checks of the compiled CUDA kernels (no GPU needed): `make cuda-check`.

Reads every kernel's resource usage per architecture (`cuobjdump -res-usage`) and its SASS
(`cuobjdump -sass`) from the built extension, compares them with the budgets committed next to
the kernels, prints the table, and exits 1 on any violation.

Budget files: every csrc/<family>/cuda_budget.json, of the form

    {"kernels": [
      {"match": "<regex, searched in the demangled kernel name>",
       "max_registers": 128,                  # or {"sm_80": 96, "sm_90": 128}
       "dynamic_shared_bytes": 0,             # the most dynamic shared memory its launcher asks
       "smem_limit": "sm_86",                 # the smallest GPU that runs it (default sm_86)
       "requires": ["LDG\\\\.E\\\\.128"],     # SASS regexes that must occur; or {"sm_90": [...]}
       "max_stack_bytes": 0,                  # a known spill, tolerated until fixed (say so in note)
       "note": "why"}
    ]}

Rules, for every kernel in every architecture of the binary:
  - it matches a budget entry (the first match, files in path order, counts); an unbudgeted kernel
    fails;
  - no spills and no local memory: STACK = 0, LOCAL = 0 and no LDL/STL in its SASS (an entry
    may tolerate a known spill with max_stack_bytes; the default, and the goal, is 0);
  - registers <= max_registers;
  - static + dynamic shared memory <= the opt-in limit of smem_limit: sm_86 (also sm_89)
    101376 bytes, sm_80 166912, sm_90 232448. A kernel whose launcher checks the device's limit
    first and falls back otherwise may name a larger GPU (say so in "note");
  - each `requires` regex matches a line of its SASS: tensor cores (HMMA, HGMMA), ldmatrix (LDSM),
    cp.async (LDGSTS), TMA (UTMALDG), 16-byte accesses (LDG.E.128, STG.E.128), cluster barriers.
Entries that match no kernel are reported (a warning: the code they budgeted is gone).

    python tools/cuda_check.py [--so PATH] [--cuobjdump PATH] [--budgets GLOB]
"""
import argparse
import glob
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMEM_LIMIT = {"sm_86": 101376, "sm_89": 101376, "sm_80": 166912, "sm_90": 232448}


def find_cuobjdump(given):
    if given:
        return given
    cands = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", "cuobjdump"))
    spec = importlib.util.find_spec("triton")  # the CUDA torch venv ships one inside triton
    if spec and spec.submodule_search_locations:
        cands.append(os.path.join(spec.submodule_search_locations[0], "backends", "nvidia", "bin", "cuobjdump"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    sys.exit("cuda_check: error: cuobjdump not found (set CUOBJDUMP, or install triton in this venv)")


def find_so(given):
    if given:
        return given
    spec = importlib.util.find_spec("fastguide._C")
    if spec is None or not spec.origin:
        sys.exit("cuda_check: error: fastguide._C not importable here; pass --so PATH")
    return spec.origin


def run(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"cuda_check: error: {' '.join(cmd)} failed: {res.stderr.strip()[:500]}")
    return res.stdout


def parse_resources(text):
    """{(arch, mangled): {"REG": n, "STACK": n, "SHARED": n, "LOCAL": n}} of the ELF sections."""
    out, arch, in_elf, name = {}, None, False, None
    for line in text.splitlines():
        if line.startswith("Fatbin elf code"):
            in_elf, arch = True, None
        elif line.startswith("Fatbin ptx code"):
            in_elf = False
        m = re.match(r"arch = (sm_\d+a?)", line)
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function (\S+):$", line)
        if m and in_elf:
            name = m.group(1)
            continue
        if name and in_elf and "REG:" in line:
            out[(arch, name)] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            name = None
    return out


def parse_sass(text):
    """{(arch, mangled): [instruction lines]}."""
    out, arch, name = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (sm_\d+a?)", line)
        if m:
            arch, name = m.group(1), None
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[(arch, name)] = []
            continue
        if name and "/*" in line and ";" in line:
            out[(arch, name)].append(line.strip())
    return out


def demangle(names):
    names = list(names)
    if not shutil.which("c++filt"):
        return dict(zip(names, names))
    res = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return dict(zip(names, res.stdout.splitlines()))


def short(name):
    name = re.sub(r"fastguide::\w+::\(anonymous namespace\)::", "", name)
    name = re.sub(r"^void ", "", name)
    name = name.replace("c10::BFloat16", "bf16").replace("c10::Half", "f16")
    depth, out = 0, []
    for ch in name:  # drop the parameter list
        if ch == "(" and depth == 0:
            break
        depth += ch == "<"
        depth -= ch == ">"
        out.append(ch)
    return "".join(out)


def per_arch(value, arch, default):
    if isinstance(value, dict):
        return value.get(arch, value.get(arch.rstrip("a"), default))
    return default if value is None else value


def load_budgets(pattern):
    entries = []
    for path in sorted(glob.glob(str(ROOT / pattern))):
        data = json.loads(pathlib.Path(path).read_text())
        for e in data["kernels"]:
            entries.append({**e, "file": os.path.relpath(path, ROOT), "used": 0})
    return entries


def check(res, sass, names, budgets):
    rows, errors = [], []
    for (arch, mangled), r in sorted(res.items(), key=lambda kv: (names[kv[0][1]], kv[0][0])):
        name = names[mangled]
        entry = next((e for e in budgets if re.search(e["match"], name)), None)
        lines = sass.get((arch, mangled), [])
        spills = sum(1 for ln in lines if re.search(r"\b(LDL|STL)\b", ln))
        row = {"kernel": short(name), "arch": arch, "regs": r.get("REG", 0), "stack": r.get("STACK", 0),
               "local": r.get("LOCAL", 0), "smem": r.get("SHARED", 0), "ldl_stl": spills}
        bad = []
        if entry is None:
            bad.append("no budget entry")
        else:
            entry["used"] += 1
            limit = per_arch(entry.get("max_registers"), arch, None)
            dyn = per_arch(entry.get("dynamic_shared_bytes"), arch, 0)
            row["smem"] += dyn
            smem_cap = SMEM_LIMIT[entry.get("smem_limit", "sm_86")]
            row["budget"] = f"{limit} regs"
            if limit is None:
                bad.append("budget has no max_registers")
            elif row["regs"] > limit:
                bad.append(f"{row['regs']} registers > budget {limit}")
            if row["smem"] > smem_cap:
                bad.append(f"{row['smem']} B shared memory > {smem_cap} ({entry.get('smem_limit', 'sm_86')})")
            if "max_shared_bytes" in entry and row["smem"] > entry["max_shared_bytes"]:
                bad.append(f"{row['smem']} B shared memory > budget {entry['max_shared_bytes']}")
            missing = [rx for rx in per_arch(entry.get("requires"), arch, [])
                       if not any(re.search(rx, ln) for ln in lines)]
            if missing:
                bad.append("SASS lacks " + ", ".join(missing))
            row["features"] = ",".join(per_arch(entry.get("requires"), arch, [])) or "-"
        tolerated = entry.get("max_stack_bytes", 0) if entry else 0
        if row["local"] or row["stack"] > tolerated or (spills and not tolerated):
            bad.append(f"spills/local memory: stack {row['stack']} B, local {row['local']} B, "
                       f"{spills} LDL/STL")
        row["status"] = "ok" if not bad else "FAIL"
        rows.append(row)
        errors += [f"{arch} {row['kernel']}: {b}" for b in bad]
    return rows, errors


def print_table(rows):
    width = max(len(r["kernel"]) for r in rows)
    print(f"{'kernel':{width}}  arch   regs budget    stack local  smem(B) LDL/STL status  requires")
    for r in rows:
        print(f"{r['kernel']:{width}}  {r['arch']:6} {r['regs']:4} {r.get('budget', '-'):9} "
              f"{r['stack']:5} {r['local']:5} {r['smem']:8} {r['ldl_stl']:7} {r['status']:6}  "
              f"{r.get('features', '-')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--so", help="the built extension (default: fastguide._C of this Python)")
    p.add_argument("--cuobjdump", help="cuobjdump to use (default: found on PATH, CUDA_HOME, triton)")
    p.add_argument("--budgets", default="csrc/*/cuda_budget.json")
    p.add_argument("--json", help="also write the table here as JSON")
    args = p.parse_args(argv)
    cuobjdump, so = find_cuobjdump(args.cuobjdump), find_so(args.so)
    res = parse_resources(run([cuobjdump, "-res-usage", so]))
    if not res:
        sys.exit(f"cuda_check: error: no CUDA kernels in {so} (built without FASTGUIDE_CUDA?)")
    sass = parse_sass(run([cuobjdump, "-sass", so]))
    names = demangle({m for _, m in res})
    budgets = load_budgets(args.budgets)
    rows, errors = check(res, sass, names, budgets)
    print_table(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    for e in budgets:
        if not e["used"]:
            print(f"warning: {e['file']}: entry {e['match']!r} matches no kernel")
    archs = sorted({r["arch"] for r in rows})
    print(f"{len(rows)} kernel images ({', '.join(archs)}) from {so}: {len(errors)} violations")
    for e in errors:
        print("  " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
