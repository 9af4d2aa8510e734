"""Training: a tiny CPU run lowers the loss and exports a bundle matching torch; determinism, resume, time
budget, and bad data refused before training starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from seisbind.bundle import INPUT_NAMES, ONNX_FILES, OUTPUT_NAME, read_manifest
from seisbind.descriptors import compute_descriptors
from seisbind.files import save_npy_atomic
from seisbind.openfwi import OpenFWIError, open_dataset

from cli.main import app
from model.checkpoint import load_checkpoint
from model.config import AugmentConfig, ModelConfig, RunError, TrainConfig
from model.encoders import create_model
from model.export import export_run
from model.train import train
from tests.model_fixtures import write_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "pairs", 48, seed=0)


def _cfg(data: Path | tuple[str, ...], out: Path, **kw) -> TrainConfig:
    base = dict(data=data if isinstance(data, tuple) else (str(data),), out=str(out), epochs=6, batch_size=8, seed=0,
                lr=2e-3, amp="off", neighbour_group=1,
                val_fraction=0.0, threads=1, progress=False, model=ModelConfig.tiny())
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "run"
    return out, train(_cfg(data, out, augment=None))


def test_tiny_run_lowers_the_loss_and_logs_every_epoch(tiny_run):
    out, summary = tiny_run
    assert summary["finished"] and summary["epochs"] == 6 and summary["steps"] == 36
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "temperature", "logit_scale", "lr"} <= set(rows[0])
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"], [r["loss"] for r in rows]  # 2.50 -> 2.00 measured


def test_exported_bundle_matches_torch_on_the_training_pairs(tiny_run, data, tmp_path):
    out, _ = tiny_run
    manifest = export_run(out, tmp_path / "bundle")
    assert read_manifest(tmp_path / "bundle").bundle_id == manifest.bundle_id
    assert manifest.training["steps"] == 36 and manifest.training["train_minutes"] > 0
    ds = open_dataset(data)
    g, m = np.asarray(ds.data[0][:6]), np.asarray(ds.models[0][:6])
    d = compute_descriptors(m).astype(np.float32)
    from model.checkpoint import model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(out))
    encoders = (("seismic", model.seismic, g), ("velocity", model.velocity, m), ("physics", model.physics, d))
    for modality, enc, x in encoders:
        sess = ort.InferenceSession(str(tmp_path / "bundle" / ONNX_FILES[modality]), providers=["CPUExecutionProvider"])
        got = sess.run([OUTPUT_NAME], {INPUT_NAMES[modality]: x})[0]
        with torch.no_grad():
            want = enc(torch.from_numpy(x.copy())).numpy()
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert (cos >= 0.9999).all(), (modality, cos)


def test_interrupted_then_resumed_run_equals_the_uninterrupted_one(tiny_run, data, tmp_path):
    ref = load_checkpoint(tiny_run[0])
    out = tmp_path / "run"
    first = train(_cfg(data, out, max_steps=10, augment=None))  # stops mid-epoch, as an interruption would
    assert not first["finished"] and first["steps"] == 10
    assert load_checkpoint(out)["step_in_epoch"] == 4
    second = train(_cfg(data, out, augment=None))
    assert second["finished"] and second["steps"] == 36
    got = load_checkpoint(out)
    for name, p in ref["model"].items():
        torch.testing.assert_close(got["model"][name], p, msg=name)
    assert [r["loss"] for r in got["history"]] == pytest.approx([r["loss"] for r in ref["history"]], rel=1e-6)


def test_augmented_run_resumed_mid_epoch_equals_the_uninterrupted_one(data, tmp_path):
    """Every batch's perturbations depend only on (seed, step, rank): a resumed run draws what an uninterrupted one
    did, and BatchNorm statistics recomputed at the epoch's end match too; so does an epoch laid out in groups of
    similar models."""
    whole = train(_cfg(data, tmp_path / "whole", epochs=2, neighbour_group=4))
    train(_cfg(data, tmp_path / "parts", epochs=2, max_steps=5, neighbour_group=4))
    parts = train(_cfg(data, tmp_path / "parts", epochs=2, neighbour_group=4))
    assert whole["steps"] == parts["steps"] == 12
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    for name, p in a["model"].items():
        torch.testing.assert_close(b["model"][name], p, msg=name)
    assert a["config"]["augment"] is not None


def test_a_run_folder_with_other_settings_is_not_resumed(tiny_run, data):
    with pytest.raises(RunError, match="different settings \\(seed\\)"):
        train(_cfg(data, tiny_run[0], seed=1, augment=None))
    with pytest.raises(RunError, match="different settings \\(augment\\)"):
        train(_cfg(data, tiny_run[0]))
    with pytest.raises(RunError, match="already finished with epochs=6"):
        train(_cfg(data, tiny_run[0], epochs=8, augment=None))
    assert train(_cfg(data, tiny_run[0], augment=None))["stopped"] == "already finished"


def test_time_budget_stops_and_marks_the_run_finished(data, tmp_path):
    summary = train(_cfg(data, tmp_path / "run", epochs=1000, time_budget_min=0.05, val_fraction=0.25))
    assert summary["finished"] and summary["stopped"] == "time_budget" and summary["epochs"] < 1000
    last = load_checkpoint(tmp_path / "run")["history"][-1]
    assert 0 <= last["val_sv_R@1"] <= 1
    assert 0 <= last["val_sv_R@1_running_bn"] <= 1, "validation with the running BatchNorm averages is logged too"


def test_recomputed_batchnorm_statistics_are_the_exact_average_over_the_batches() -> None:
    from model.batches import recompute_batchnorm
    from model.encoders import create_model

    model = create_model(ModelConfig.tiny(), seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 5, 125, 70, generator=gen) * 2 - 1, 1500 + 3000 * torch.rand(4, 1, 70, 70, generator=gen),
                torch.rand(4, 8, generator=gen)) for _ in range(3)]
    bn = model.velocity.stem[1]
    inputs = []
    hook = model.velocity.stem[0].register_forward_hook(lambda m, i, o: inputs.append(o.detach()))
    assert recompute_batchnorm(model, iter(batches), amp=False, device=torch.device("cpu")) == 3
    hook.remove()
    want = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    torch.testing.assert_close(bn.running_mean, want)
    assert bn.momentum == 0.1 and model.training, "momentum and mode are restored"


def _corrupt(folder: Path, how: str) -> Path:
    if how == "counts":
        m = np.load(folder / "model" / "model2.npy")
        save_npy_atomic(folder / "model" / "model2.npy", m[:-1])
        return folder / "data" / "data2.npy"
    if how == "nan":
        d = np.load(folder / "data" / "data1.npy")
        d[3, 2, 100, 5] = np.nan
        save_npy_atomic(folder / "data" / "data1.npy", d)
        return folder / "data" / "data1.npy"
    d = np.load(folder / "data" / "data2.npy")
    save_npy_atomic(folder / "data" / "data2.npy", np.ascontiguousarray(d[:, :, :500]))
    return folder / "data" / "data2.npy"


@pytest.mark.parametrize("how,message", [("counts", "holds 24 gathers but model2.npy holds 23 models"),
                                         ("nan", "NaN or Inf"), ("shape", r"shape is \(24, 5, 500, 70\)")])
def test_bad_data_is_refused_naming_the_file_before_training(how, message, tmp_path):
    good = write_dataset(tmp_path / "good", 24, seed=1)
    bad = write_dataset(tmp_path / "bad", 48, seed=2)
    bad_file = _corrupt(bad, how)
    out = tmp_path / "run"
    with pytest.raises(OpenFWIError, match=message) as e:
        train(_cfg((str(good), str(bad)), out))
    assert str(bad_file) in str(e.value)
    assert not (out / "checkpoint.pt").exists()
    res = CliRunner().invoke(app, ["train", "--data", str(good), "--data", str(bad), "--out", str(out)])
    assert res.exit_code != 0 and bad_file.name in res.output and not out.exists()


def test_cli_export_and_evaluation_of_run_and_bundle_agree(tiny_run, data, tmp_path):
    from model.evaluate import evaluate, load_embedder

    out, _ = tiny_run
    bundle = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["export", "--run", str(out), "--out", str(bundle)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["bundle_id"] == read_manifest(bundle).bundle_id
    test = write_dataset(tmp_path / "test", 16, seed=9, chunk=16)
    a = evaluate(load_embedder(out), [str(test)], [str(data)], tmp_path / "ra", figures=False)
    b = evaluate(load_embedder(bundle), [str(test)], [str(data)], tmp_path / "rb", figures=False)
    for part in ("p1", "p1_large"):
        for task in ("seismic_to_velocity", "velocity_to_physics"):
            assert a[part][task]["mean_pos_sim"] == pytest.approx(b[part][task]["mean_pos_sim"], abs=1e-4)
    assert a["p2"]["descriptor_mre"] == pytest.approx(b["p2"]["descriptor_mre"], rel=1e-3)
    assert a["train_minutes"] == pytest.approx(b["train_minutes"])


def test_cli_export_with_variants_checks_each_and_lists_them(tiny_run, tmp_path):
    out, _ = tiny_run
    bundle = tmp_path / "bundle"
    res = CliRunner().invoke(app, ["export", "--run", str(out), "--out", str(bundle), "--variant", "fast",
                                   "--variant", "int8", "--default-variant", "fast", "--calibration-gathers", "24"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    manifest = read_manifest(bundle)
    assert printed["default_variants"] == manifest.default_variants == {"seismic": "fast"}
    assert printed["variants"]["seismic"]["fast"] >= 0.9999 and printed["variants"]["seismic"]["int8"] >= 0.99
    int8 = manifest.variants["seismic"]["int8"]
    assert int8["calibration"]["gathers"] == 24 and int8["parity_rows"] == 12  # 48 pairs: a quarter held out
    assert manifest.bundle_id == export_run(out, tmp_path / "plain").bundle_id
    bad = CliRunner().invoke(app, ["export", "--run", str(out), "--out", str(tmp_path / "b2"), "--variant", "int4"])
    assert bad.exit_code == 2 and "unknown seismic variant" in bad.output and not (tmp_path / "b2").exists()


def test_preprocess_cache_gives_the_same_pairs_and_a_changed_file_is_checked_again(tmp_path):
    from model.data import load_pairs, open_folders
    from model.encoders import create_model

    folder = write_dataset(tmp_path / "pairs", 24, seed=3)
    enc = create_model(ModelConfig.tiny()).seismic
    cache = tmp_path / "cache"
    fresh = load_pairs(open_folders([folder]), enc)
    first = load_pairs(open_folders([folder], enc, cache), enc, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1
    again = load_pairs(open_folders([folder], enc, cache), enc, cache_dir=cache)
    assert torch.equal(fresh.pre, first.pre) and torch.equal(fresh.pre, again.pre)
    d = np.load(folder / "data" / "data1.npy")
    d[0, 0, 0, 0] = np.inf
    save_npy_atomic(folder / "data" / "data1.npy", d)
    with pytest.raises(OpenFWIError, match="data1.npy: holds NaN or Inf"):
        open_folders([folder], enc, cache)


def test_cli_train_options_reach_the_stored_config(data, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--arch", "narrow", "--no-augment",
                                   "--bn-batches", "0", "--epochs", "1", "--batch-size", "16", "--threads", "1",
                                   "--amp", "off", "--val-fraction", "0", "--neighbour-group", "4"])
    assert res.exit_code == 0, res.output
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.model == ModelConfig.narrow() and cfg.augment is None and cfg.bn_batches == 0
    assert cfg.neighbour_group == 4


def test_cli_train_clean_p_reaches_the_augmentation_and_is_checked(data, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--data", str(data), "--arch", "narrow", "--epochs", "1", "--batch-size", "16", "--threads",
              "1", "--amp", "off", "--val-fraction", "0", "--bn-batches", "0"]
    res = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "bad"), "--clean-p", "1.5"])
    assert res.exit_code != 0 and "clean_p" in res.output and not (tmp_path / "bad").exists()
    res = CliRunner().invoke(app, [*common, "--out", str(out), "--clean-p", "0.4"])
    assert res.exit_code == 0, res.output
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.augment is not None and cfg.augment.clean_p == 0.4


def test_a_run_stored_before_clean_p_resumes_with_clean_p_0_only():
    stored = TrainConfig(data=("a",), out="o").to_dict()
    del stored["augment"]["clean_p"]
    assert TrainConfig(data=("a",), out="o", augment=AugmentConfig(clean_p=0.0)).resume_mismatch(stored) == []
    assert TrainConfig(data=("a",), out="o").resume_mismatch(stored) == ["augment"]


def test_cli_train_names_the_architectures_when_one_is_unknown(data, tmp_path):
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--arch", "huge"])
    assert res.exit_code != 0 and "'huge'" in res.output and "medium" in res.output
    assert not (tmp_path / "run").exists()
    assert ModelConfig.named("medium").seis_width == 96 and ModelConfig.named("narrow") == ModelConfig.narrow()


def test_a_run_started_from_another_runs_weights_fine_tunes_them(tiny_run, data, tmp_path):
    src = load_checkpoint(tiny_run[0])["model"]
    train(_cfg(data, tmp_path / "ft", epochs=1, max_steps=1, lr=1e-9, augment=None, init_from=str(tiny_run[0])))
    tuned = load_checkpoint(tmp_path / "ft")["model"]
    weights = [k for k, v in src.items() if v.is_floating_point() and k.endswith("weight")]
    assert weights and all(torch.allclose(tuned[k], src[k], atol=1e-5) for k in weights)
    untrained = create_model(ModelConfig.tiny(), seed=0).state_dict()  # the comparison is not vacuous
    assert any(not torch.allclose(src[k], untrained[k]) for k in weights)
    with pytest.raises(RunError, match="its model differs from this run's in"):
        other = dataclasses.replace(ModelConfig.tiny(), embed_dim=16)
        train(_cfg(data, tmp_path / "other", model=other, init_from=str(tiny_run[0])))


def test_channels_last_is_on_for_cpu_training_unless_switched_off(data, tmp_path):
    from model.train import resolve_precision

    assert resolve_precision(_cfg(data, tmp_path / "a"))[1] is True  # _cfg: amp off, channels_last auto
    assert resolve_precision(_cfg(data, tmp_path / "b", channels_last="off"))[1] is False
    summary = train(_cfg(data, tmp_path / "run", epochs=1, augment=None))
    assert summary["precision"]["channels_last"] is True
