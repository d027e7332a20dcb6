"""The shipped digits models: loadable with the public loader, and guidance works as the
papers say. Margins are set from measured numbers (200 samples, seeds 1000-1199, DDIM 20):
    conditional, no guidance   accuracy 0.96     CFG w = 2            accuracy 1.00
    null label, no guidance    accuracy 0.085    + classifier s = 4   accuracy 0.89
"""
import numpy as np
import pytest

from fastguide import assets
from fastguide.eval.demo import format_row, run_demo
from fastguide.eval.digits import DigitsEvaluator
from fastguide.pipeline import GuidedSampler, generate, labels_for


@pytest.fixture(scope="module")
def setup():
    model, info = assets.load("digits_unet"), assets.train_info("digits_unet")
    return model, info["diffusion"], assets.load("digits_classifier"), DigitsEvaluator()


def _accuracy(setup, **kw):
    model, diffusion, _, evaluator = setup
    seeds = list(range(1000, 1200))
    labels = labels_for(seeds, 10)
    images, _ = generate(GuidedSampler(model, diffusion, "ddim", 20, **kw), seeds, labels, 200)
    return evaluator.evaluate(images, labels)["accuracy"]


def test_shipped_models_are_small_and_documented():
    total = sum(assets.path(n).stat().st_size for n in assets.names())
    assert set(assets.names()) == {"digits_unet", "digits_unet_weak", "digits_classifier",
                                   "digits_clean_classifier"}
    assert total < 12e6
    for n in assets.names():
        info = assets.train_info(n)
        assert info["command"].startswith("fastguide train") and info["cpu_seconds"] > 0


def test_clean_classifier_is_accurate_on_held_out_digits(setup):
    evaluator = setup[3]
    acc = (evaluator.test_logits.argmax(1) == evaluator.test_labels).double().mean().item()
    assert acc > 0.97  # measured 0.982


def test_classifier_free_guidance_raises_accuracy(setup):
    plain, guided = _accuracy(setup), _accuracy(setup, cfg_scale=2)
    assert plain > 0.85  # the model is a real digit model
    assert guided >= 0.98 and guided >= plain + 0.03


def test_classifier_guidance_raises_accuracy(setup):
    classifier = setup[2]
    plain = _accuracy(setup, unconditional=True)
    guided = _accuracy(setup, unconditional=True, classifier=classifier, classifier_scale=4)
    assert plain < 0.25  # the null label alone does not follow the intended labels
    assert guided > 0.8 and guided > plain + 0.6


def test_demo_runs_and_writes_grids(tmp_path):
    lines = []
    rows = run_demo([0, 2], [4], samples=40, steps=5, batch_size=40, out=tmp_path, log=lines.append)
    assert [r["guidance"] for r in rows] == ["held-out", "cfg", "cfg", "classifier"]
    assert len(lines) == 4 and all(format_row(r) in lines for r in rows)
    assert (tmp_path / "cfg_2.png").exists() and (tmp_path / "classifier_4.png").exists()
    for r in rows:
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and np.isfinite(r["fid"])


def test_demo_command_writes_table_and_results_json(tmp_path, capsys):
    import json

    from fastguide.cli import main
    assert main(["demo", "--samples", "20", "--steps", "3", "--cfg-scales", "0,1",
                 "--classifier-scales", "2", "--batch-size", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "held-out" in out and "classifier" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["cfg_scales"] == [0.0, 1.0]
    assert [r["guidance"] for r in results["rows"]] == ["held-out", "cfg", "cfg", "classifier"]
    assert results["rows"][0]["scale"] is None and results["meta"]["torch"]
