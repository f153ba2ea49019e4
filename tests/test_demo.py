"""`fvq demo`: every available method end to end on a small DiT, and TP=2 against TP=1 (gloo)."""

from __future__ import annotations

import math

import pytest
import torch

from fastvideo_quant.demo.model import DemoConfig
from fastvideo_quant.demo.run import available_methods, format_table, run_demo

# Small, but every sharded size still fits AWQ's group 128 at TP=2 (o_proj: 256/2 inputs).
SMALL = DemoConfig(hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=512, num_layers=1,
                   in_channels=32, num_tokens=32)


@pytest.fixture(scope="module")
def results():
    return run_demo(SMALL, tp=2, log=lambda _: None)


def test_every_available_method_runs_and_is_close_to_float32(results):
    runnable, skipped = available_methods(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    by_name = {r.method: r for r in results}
    assert "unquantized" in runnable and set(by_name) == set(runnable) | set(skipped)
    for name in runnable:
        r = by_name[name]
        assert r.error is None, f"{name}: {r.error}"
        # Weight quantization of random weights: int4 g128 gives ~0.15, 8-bit ~0.05; bf16 alone ~5e-3.
        assert 0 < r.rel_err < 0.3 and r.cosine > 0.95, (name, r.rel_err, r.cosine)
        assert math.isfinite(r.forward_ms) and r.linear_bytes > 0
    assert by_name["unquantized"].rel_err < 1e-2 and by_name["unquantized"].bytes_ratio == pytest.approx(1.0)
    for name in set(runnable) - {"unquantized"}:
        assert by_name[name].bytes_ratio < 0.75, name
    for name, reason in skipped.items():
        assert by_name[name].skipped == reason and reason


def test_tp2_matches_tp1(results):
    for r in results:
        if r.output is None:
            continue
        # Same weights, same input; only the summation order (and per-rank activation
        # quantization for methods that quantize activations) differs from TP=1.
        assert r.tp_rel_diff is not None, r.method
        assert r.tp_rel_diff < max(1e-2, r.tp_ref_rel_err), (r.method, r.tp_rel_diff, r.tp_ref_rel_err)


def test_table_lists_every_method_and_reasons(results):
    table = format_table(results, tp=2)
    for r in results:
        assert r.method in table
    assert "TP=2 vs TP=1" in table and "rel err" in table and "vs bf16" in table


def test_unknown_method_is_reported(tmp_path):
    (r,) = run_demo(SMALL, methods=["nope"], log=lambda _: None)
    assert r.error and "unknown quantization method 'nope'; available: [" in r.error, r.error


def test_cli_prints_table_and_exit_status(capsys):
    from fastvideo_quant.cli import main

    small = ["--hidden-size", "128", "--num-heads", "2", "--num-kv-heads", "1", "--intermediate-size", "256",
             "--num-layers", "1", "--in-channels", "16", "--num-tokens", "8"]
    assert main(["demo", "--method", "unquantized", *small]) == 0
    out = capsys.readouterr().out
    assert "reference: float32" in out and "unquantized  " in out and "done in" in out
    assert main(["demo", "--method", "nope", *small]) == 1  # refused before the demo runs (tests/cli/test_demo_cmd.py)
    assert "fvq demo: error: unknown quantization method 'nope'" in capsys.readouterr().err


def test_a_failing_method_is_named_with_its_plugin_and_distribution(monkeypatch, capsys):
    """One method failing fails the demo (exit 1), and its note says whose plugin it is."""
    from fastvideo_quant.cli import main
    from fastvideo_quant.demo import run

    def broken(name, *args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(run, "run_method", broken)
    small = ["--hidden-size", "128", "--num-heads", "2", "--num-kv-heads", "1", "--intermediate-size", "256",
             "--num-layers", "1", "--in-channels", "16", "--num-tokens", "8"]
    assert main(["demo", "--method", "unquantized", *small]) == 1
    out = capsys.readouterr().out
    assert ("unquantized: FAILED in plugin 'unquantized' (distribution 'fastvideo-quant'): RuntimeError: kernel "
            "exploded"
            in out)


def test_unavailable_method_is_skipped_with_its_reason():
    import toy_method

    from fastvideo_quant import plugins
    from fastvideo_quant.plugins import hookimpl

    class Missing(toy_method.ToyConfig):
        @classmethod
        def get_name(cls):
            return "toy-missing"

        @classmethod
        def unavailable_reason(cls):
            return "needs the foo package; run: pip install foo"

    class Plugin:
        @hookimpl
        def register_quantization_methods(self, register):
            register(Missing, toy_method.ToyLinearMethod, weight_loader_v2=True)

    plugins.register_plugin(Plugin(), name="toy-missing")
    try:
        (r,) = run_demo(SMALL, methods=["toy-missing"], log=lambda _: None)
    finally:
        plugins.unregister_plugin("toy-missing")
    assert r.skipped == "needs the foo package; run: pip install foo" and r.error is None
    assert "toy-missing: skipped: needs the foo package" in format_table([r])


def test_tp_compares_like_with_like_when_ranks_cannot_run_where_tp1_ran(tmp_path, monkeypatch):
    """TP=1 ran on a GPU but the ranks must use CPUs (fewer GPUs than ranks): TP=1 is re-run on the CPU for the
    comparison, so a method whose GPU and CPU kernels differ (fp8: W8A16 vs W8A8 at small M) is not misjudged."""
    from fastvideo_quant.demo import run as demo_run

    results = run_demo(SMALL, methods=["unquantized", "fp8"], workdir=tmp_path, device="cpu", log=lambda _: None)
    x = torch.randn(1, SMALL.num_tokens, SMALL.in_channels, generator=torch.Generator().manual_seed(1))
    logs: list[str] = []
    monkeypatch.setattr(demo_run, "tp_device_type", lambda tp: "cpu")
    real_compare = demo_run.compare
    compared = []
    monkeypatch.setattr(demo_run, "compare", lambda out, ref: compared.append(ref) or real_compare(out, ref))
    ref32 = results[0].output.clone()  # stand-in for the float32 reference: the unquantized (bf16-class) output
    demo_run._run_tp(results, SMALL, tmp_path, x, ref32, 2, logs.append, torch.device("cuda"))  # "TP=1 ran on a GPU"
    assert any("TP=1 re-run on cpu" in line for line in logs)
    # what TP=2 was compared with is the re-run's output, not the first TP=1 run's; the bound's error is the
    # re-run's own (compared with the float32 reference), not the first run's
    tp_refs = [ref for ref in compared if ref is not ref32]
    assert len(tp_refs) == len(results) and all(ref is not r.output for ref in tp_refs for r in results)
    assert len(compared) - len(tp_refs) == len(results)
    for r in results:  # the bound of test_tp2_matches_tp1: row-parallel ranks quantize their input slice apart
        assert r.error is None and r.tp_rel_diff is not None, r.method
        assert r.tp_rel_diff < max(1e-2, r.tp_ref_rel_err), (r.method, r.tp_rel_diff, r.tp_ref_rel_err)


def test_a_method_that_failed_only_at_tp_keeps_its_tp1_numbers():
    """fvq demo --tp 8 with AWQ, whose group alignment breaks at 8 ranks: the TP=1 quantize and run succeeded, so the
    row keeps those numbers and its TP column says FAILED (with the note); a method that never ran keeps dashes.
    (Was: the whole row blanked to '-', the TP=1 results lost.)"""
    from fastvideo_quant.demo.run import MethodResult

    ok = MethodResult("unquantized", act_dtype="bf16", linear_bytes=2048, bytes_ratio=1.0, rel_err=1e-3, cosine=1.0,
                      quantize_s=0.0, forward_ms=1.0, tp_rel_diff=1e-4)
    tp_failed = MethodResult("awq", act_dtype="bf16", linear_bytes=512, bytes_ratio=0.25, rel_err=0.158, cosine=0.99,
                             quantize_s=0.5, forward_ms=2.0, error="at TP=8: ShardingError: ...")
    never = MethodResult("fp8", error="RuntimeError: boom")
    table = format_table([ok, tp_failed, never], tp=8).splitlines()
    awq = next(line for line in table if line.startswith("awq"))
    assert "1.58e-01" in awq and "0.250" in awq and awq.split()[-1] == "FAILED", awq
    assert next(line for line in table if line.startswith("fp8 ")).split()[1:] == ["-"] * 8
    assert "awq: FAILED" in "\n".join(table) and "at TP=8: ShardingError" in "\n".join(table)


def test_a_method_whose_output_is_nan_shows_nan_not_dashes():
    """A plugin whose output came out NaN, with no error: its row shows nan (was, for a moment, dashes as if it had not
    run)."""
    from fastvideo_quant.demo.run import MethodResult

    broken = MethodResult("toy", act_dtype="bf16", linear_bytes=512, bytes_ratio=0.25, rel_err=float("nan"),
                          cosine=float("nan"), quantize_s=0.1, forward_ms=1.0)
    row = next(line for line in format_table([broken]).splitlines() if line.startswith("toy"))
    assert row.split()[1:] == ["bf16", "0", "0.250", "nan", "nan", "0.10", "1.0"], row


def test_config_gives_one_methods_keys(capsys, tmp_path):
    """--config: a method whose from_config needs keys (every vLLM-style port) could not run in the demo (a vLLM method
    porter's review). Here AWQ at group 64, as the checkpoint the demo wrote says; refused without exactly one
    --method, and a key the method does not read is a usage error before anything is quantized."""
    import json

    from fastvideo_quant.cli import main

    small = ["--hidden-size", "128", "--num-heads", "2", "--num-kv-heads", "1", "--intermediate-size", "256",
             "--num-layers", "1", "--in-channels", "16", "--num-tokens", "8"]
    (r,) = run_demo(SMALL, methods=["awq"], log=lambda _: None, options={"group_size": 64}, workdir=tmp_path / "w")
    assert r.error is None and 0 < r.rel_err < 0.3, r
    assert json.loads((tmp_path / "w" / "awq" / "config.json").read_text())["quantization_config"]["group_size"] == 64
    assert main(["demo", "--config", '{"group_size": 64}', *small]) == 2
    assert "--config gives one method's config keys, so it needs exactly one --method" in capsys.readouterr().err
    assert main(["demo", "--method", "awq", "--config", '{"group_sise": 64}', *small]) == 2
    err = capsys.readouterr().err
    assert "fvq demo: error: --config: " in err and "did you mean 'group_size'" in err, err
