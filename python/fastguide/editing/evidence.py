"""The editing evidence on the shipped digits models: every number and picture in README's
"Image editing" section comes from this script, which runs the `fastguide` commands themselves
on the held-out digits (never trained on) and measures their outputs with the clean digits
classifier (fastguide.eval.digits):

    python -m fastguide.editing.evidence --out editing_evidence [--docs docs/images]

  inpainting  the right half of each digit masked; generated with its label and CFG, and on
              the null label (where only the known half says which digit it is); the baseline
              against RePaint; accuracy = the classifier recognises the true label
  img2img     each digit edited towards another class (label + 1 mod 10) at strengths 0..1,
              several seeds each: accuracy on the target and on the source label, distance to
              the input, diversity (RMS distance between the seeds' edits of one input)
  inversion   invert, then sample back with the same steps: reconstruction RMSE against the
              step count, for ddim, euler and heun

The test suite runs the same functions on fewer images and steps (tests/test_editing_digits.py).
"""
import argparse
import contextlib
import io
import itertools
import json
import pathlib
import shutil
import time

import numpy as np

__all__ = ["write_inputs", "inpaint_rows", "img2img_rows", "inversion_rows", "main"]


def _cli(argv):
    """Run a fastguide command in this process; its printed lines are returned, not shown."""
    from ..cli import main as cli_main
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            code = cli_main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    if code not in (0, None):
        raise RuntimeError(f"fastguide {' '.join(map(str, argv))} failed:\n{buffer.getvalue()}")
    return buffer.getvalue()


def _outputs(out_dir):
    """(uint8 images, labels or None) of a command's output directory."""
    (npz,) = pathlib.Path(out_dir).glob("samples_*.npz")
    with np.load(npz) as f:
        return f["arr_0"], (f["arr_1"] if "arr_1" in f.files else None)


def write_inputs(work, count=450):
    """The held-out digits (true labels; and with target labels y + 1 mod 10) and the
    right-half mask, as the files a user would give the commands."""
    from PIL import Image

    from ..train.data import digits_split, float_to_uint8
    work = pathlib.Path(work)
    work.mkdir(parents=True, exist_ok=True)
    x, y = digits_split("test")
    images, labels = float_to_uint8(x[:count]).numpy(), y[:count].numpy().astype(np.int64)
    np.savez(work / "heldout.npz", images, labels)
    np.savez(work / "heldout_target.npz", images, (labels + 1) % 10)
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(work / "right_half.png")
    return images, labels


def _evaluator():
    from ..eval.digits import DigitsEvaluator
    return DigitsEvaluator()


def inpaint_rows(work, sampler="ddpm", steps=20, cfg_scale=2.0, jump_length=5, jump_count=4,
                 conditions=("label", "null label"), log=print):
    """Inpaint the right half of every held-out digit (write_inputs) with each method."""
    work = pathlib.Path(work)
    images, labels = _outputs_of(work / "heldout.npz")
    evaluator = _evaluator()
    masked = images.copy()
    masked[:, :, 4:] = 0
    rows = [{"condition": "masked input", "method": "-",
             **_scores(evaluator, masked, labels), "seconds": 0.0}]
    log(_format(rows[0]))
    for condition, method in itertools.product(conditions, ("replace", "repaint")):
        out = work / f"inpaint_{method}_{condition.replace(' ', '_')}"
        guidance = (["--cfg-scale", cfg_scale] if condition == "label"
                    else ["--unconditional"])
        jumps = ["--jump-length", jump_length, "--jump-count", jump_count] if (
            method == "repaint") else []
        start = time.perf_counter()
        _cli(["inpaint", "digits_unet", "--image", work / "heldout.npz", "--mask",
              work / "right_half.png", "--method", method, *jumps, "--sampler", sampler,
              "--steps", steps, *guidance, "--batch-size", 500, "--out", out, "--overwrite",
              "--no-progress", "--no-resume"])
        result, _ = _outputs(out)
        if not (result[:, :, :4] == images[:, :, :4]).all():
            raise AssertionError(f"{out}: the known pixels changed")
        row = {"condition": condition, "method": method, **_scores(evaluator, result, labels),
               "seconds": time.perf_counter() - start, "dir": str(out)}
        rows.append(row)
        log(_format(row))
    return rows


def _outputs_of(npz):
    with np.load(npz) as f:
        return f["arr_0"], f["arr_1"]


def _scores(evaluator, images, labels):
    r = evaluator.evaluate(images, labels)
    return {"accuracy": r["accuracy"], "fid": r["fid"], "precision": r["precision"]}


def _format(row):
    return (f"{row['condition']:<13} {row['method']:<8} accuracy {row['accuracy']:.3f}  "
            f"FID {row['fid']:.3f}  precision {row['precision']:.3f}  {row['seconds']:.1f} s")


def _rms(a, b):
    """Per pair √mean((a − b)²) with images in [−1, 1]."""
    d = (a.astype(np.float64) - b.astype(np.float64)) / 127.5
    return np.sqrt((d ** 2).reshape(len(d), -1).mean(axis=1))


def img2img_rows(work, strengths=(0, 0.25, 0.5, 0.75, 1), count=100, seeds_per_image=4,
                 sampler="ddim", steps=20, cfg_scale=2.0, log=print):
    """Edit the first `count` held-out digits towards label + 1 mod 10."""
    work = pathlib.Path(work)
    images, labels = _outputs_of(work / "heldout.npz")
    images, labels = images[:count], labels[:count]
    np.savez(work / f"target_{count}.npz", images, (labels + 1) % 10)
    evaluator = _evaluator()
    k, rows = seeds_per_image, []
    for strength in strengths:
        out = work / f"img2img_{strength:g}"
        start = time.perf_counter()
        _cli(["img2img", "digits_unet", "--image", work / f"target_{count}.npz", "--strength",
              strength, "--seeds", f"0-{count * k - 1}", "--sampler", sampler, "--steps",
              steps, "--cfg-scale", cfg_scale, "--batch-size", 500, "--out", out,
              "--overwrite", "--no-progress", "--no-resume"])
        result, target = _outputs(out)
        source = np.tile(labels, k)
        logits = evaluator.features(_float(result))[0].argmax(1).numpy()
        groups = result.reshape(k, count, *result.shape[1:])  # output j·count + i: image i
        pairs = [_rms(groups[a], groups[b]) for a, b in itertools.combinations(range(k), 2)]
        row = {"strength": strength, "target_accuracy": float((logits == target).mean()),
               "source_accuracy": float((logits == source).mean()),
               "distance": float(_rms(result, np.tile(images, (k, 1, 1, 1))).mean()),
               "diversity": float(np.mean(pairs)), "seconds": time.perf_counter() - start,
               "dir": str(out)}
        rows.append(row)
        log(f"strength {strength:<5g} target accuracy {row['target_accuracy']:.3f}  source "
            f"accuracy {row['source_accuracy']:.3f}  distance {row['distance']:.3f}  "
            f"diversity {row['diversity']:.3f}  {row['seconds']:.1f} s")
    return rows


def _float(images):
    from ..train.data import uint8_to_float
    return uint8_to_float(images)


def inversion_rows(work, samplers=("ddim", "euler", "heun"), steps_list=(5, 10, 20, 50),
                   count=100, log=print):
    """Invert and reconstruct the first `count` held-out digits (true labels, no guidance)."""
    work = pathlib.Path(work)
    images, labels = _outputs_of(work / "heldout.npz")
    np.savez(work / f"heldout_{count}.npz", images[:count], labels[:count])
    rows = []
    for sampler, steps in itertools.product(samplers, steps_list):
        out = work / f"invert_{sampler}_{steps}"
        start = time.perf_counter()
        _cli(["invert", "digits_unet", "--image", work / f"heldout_{count}.npz", "--sampler",
              sampler, "--steps", steps, "--batch-size", 500, "--out", out, "--overwrite",
              "--no-progress", "--no-resume"])
        result, _ = _outputs(out)
        error = _rms(result, images[:count])
        row = {"sampler": sampler, "steps": steps, "rmse": float(error.mean()),
               "max_rmse": float(error.max()), "seconds": time.perf_counter() - start,
               "dir": str(out)}
        rows.append(row)
        log(f"{sampler:<6} {steps:>4} steps  RMSE {row['rmse']:.4f}  max {row['max_rmse']:.4f}"
            f"  {row['seconds']:.1f} s")
    return rows


def docs_pictures(work, docs, count=24):
    """README's pictures: the compare.png of small runs of the same commands (first `count`
    held-out digits): input | masked | result, input | result, input | reconstruction."""
    images, labels = _outputs_of(work / "heldout.npz")
    small = work / f"heldout_{count}.npz"
    np.savez(small, images[:count], labels[:count])
    np.savez(work / f"target_{count}.npz", images[:count], (labels[:count] + 1) % 10)
    common = ["--no-progress", "--no-resume", "--overwrite"]
    runs = {
        "editing_inpaint_replace.png": ["inpaint", "digits_unet", "--image", small, "--mask",
                                        work / "right_half.png", "--method", "replace",
                                        "--sampler", "ddpm", "--steps", 20, "--cfg-scale", 2],
        "editing_inpaint_repaint.png": ["inpaint", "digits_unet", "--image", small, "--mask",
                                        work / "right_half.png", "--jump-length", 5,
                                        "--jump-count", 4, "--sampler", "ddpm", "--steps", 20,
                                        "--cfg-scale", 2],
        "editing_img2img.png": ["img2img", "digits_unet", "--image", work / f"target_{count}.npz",
                                "--strength", 0.6, "--steps", 20, "--cfg-scale", 2],
        "editing_invert.png": ["invert", "digits_unet", "--image", small, "--sampler", "ddim",
                               "--steps", 10],
    }
    docs.mkdir(parents=True, exist_ok=True)
    for name, argv in runs.items():
        out = work / "docs" / pathlib.Path(name).stem
        _cli([*argv, "--out", out, *common])
        shutil.copy(out / "compare.png", docs / name)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastguide.editing.evidence",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="editing_evidence", help="working directory")
    p.add_argument("--docs", default=None,
                   help="copy the commands' compare.png pictures into this folder")
    args = p.parse_args(argv)
    work = pathlib.Path(args.out)
    write_inputs(work)
    results = {"inpaint": inpaint_rows(work), "img2img": img2img_rows(work),
               "inversion": inversion_rows(work)}
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.docs:
        docs_pictures(work, pathlib.Path(args.docs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
