"""`fvq bench`: argument parsing, and a clear non-zero exit without CUDA."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from fastvideo_quant.cli import bench as cli_bench


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fvq")
    cli_bench.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_arguments():
    args = parse("--method", "int8", "--method", "fp8", "--shapes", "5120x5120", "64x128", "--m", "1", "16",
                 "--config", '{"group_size": 64}')
    assert args.method == ["int8", "fp8"] and args.shapes == [(5120, 5120), (64, 128)]
    assert args.m == [1, 16] and args.config == {"group_size": 64}
    assert parse("--method", "int8").shapes[0] == (5120, 5120)
    with pytest.raises(SystemExit):
        parse("--method", "int8", "--shapes", "5120by5120")


@pytest.mark.parametrize("argv, words", [
    (("--config", "{bad"), r"argument --config: '\{bad': not JSON \(Expecting property name .* \(char 1\)\); pass e\.g\."),
    (("--config", "[1]"), r"argument --config: '\[1\]': expected a JSON object of config keys, found list"),
    (("--m", "0"), r"argument --m: '0': expected an integer >= 1"),
    (("--shapes", "0x5120"), r"argument --shapes: shape '0x5120': K and N must be positive"),  # (was: torch's error)
    # (was: the second --config replaced the first silently)
    (("--config", '{"group_size": 64}', "--config", '{"zero_point": false}'),
     r"""argument --config: given twice, as '\{"group_size": 64\}' and '\{"zero_point": false\}'"""),
])
def test_bad_arguments_are_usage_errors_that_say_what_was_expected(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        parse("--method", "awq", *argv)
    assert exit_.value.code == 2
    assert re.search(words, capsys.readouterr().err)


@pytest.mark.parametrize("config, error, words", [
    ({"group_sise": 64}, "ConfigError", r"--config key group_sise=64: .* does not read 'group_sise'.*did you mean "
                                        r"'group_size'"),
    ({"group_size": 7}, "ConfigError", r"group_size=7 is not supported"),
])
def test_a_config_the_method_drops_or_refuses_is_refused_before_the_gpu(tmp_path, config, error, words):
    """On any machine (a CPU one included): the key check and from_config run before CUDA is asked for."""
    from fastvideo_quant import errors

    with pytest.raises(getattr(errors, error), match=words):
        cli_bench.run(parse("--method", "awq", "--config", json.dumps(config), "--out", str(tmp_path)))
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no CUDA GPU")
def test_no_cuda_exits_nonzero_with_message(capsys, tmp_path):
    assert cli_bench.run(parse("--method", "unquantized", "--out", str(tmp_path))) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "fvq demo" in err
    assert not any(tmp_path.iterdir())


def test_flush_mode_is_validated_and_recorded(monkeypatch):
    from fastvideo_quant import bench

    monkeypatch.setattr(bench, "FLUSH", "sometimes")
    with pytest.raises(ValueError, match="FVQ_BENCH_FLUSH must be 'write' or 'read', found 'sometimes'"):
        bench.median_ms(lambda: None)
    row = bench.Row("int8", 64, 32, 1, 0.02, 0.01, 2.0, 1e-3, 1e-4, 0.5)
    for mode, words in (("write", "writing 256 MB"), ("read", "reading 256 MB")):
        monkeypatch.setattr(bench, "FLUSH", mode)
        env = bench.environment()
        assert env["l2_flush"] == mode
        assert words in bench.markdown([row], env)


def test_rounds_are_validated_and_reported():
    """Several rounds per point: the row's speedup is the median per-round ratio, the table shows the range, and a
    bad round count is refused (by the parser, and by bench_method before it looks for a GPU)."""
    from fastvideo_quant import bench

    assert parse("--method", "int8", "--rounds", "3").rounds == 3 and parse("--method", "int8").rounds == 1
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            parse("--method", "int8", "--rounds", bad)
    with pytest.raises(ValueError, match="rounds must be an int >= 1, found 0"):
        bench.bench_method("unquantized", rounds=0)
    times = [(0.30, 0.20, 0.28, 0.20), (0.33, 0.20, 0.30, 0.20), (0.27, 0.21, 0.29, 0.20)]
    row = bench._row("fp8", 5120, 5120, 4096, times, 1e-2, 1e-3, 0.5, None)
    assert row.bf16_ms == 0.30 and row.method_ms == 0.20 and row.speedup == pytest.approx(1.5)
    assert row.speedups == pytest.approx([1.5, 1.65, 0.27 / 0.21]) and row.speedup_graph == pytest.approx(1.45)
    single = bench._row("fp8", 5120, 5120, 4096, times[:1], 1e-2, 1e-3, 0.5, None)
    assert single.speedups is None and single.speedup == pytest.approx(1.5) and single.speedup_graph == pytest.approx(1.4)
    no_graph = bench._row("x", 64, 64, 1, [(0.02, 0.01, None, None), (0.02, 0.01, None, None)], 0, 0, 1, None)
    assert no_graph.speedup_graph is None and no_graph.graph_speedups is None
    text = bench.markdown([row, single], bench.environment())
    assert "Each point timed in 3 rounds" in text
    assert "| 1.50× (1.29–1.65) | 1.45× (1.40–1.50) |" in text and "| 1.50× | 1.40× |" in text


def test_probe_results_are_named_like_the_harness_tables(tmp_path, monkeypatch):
    """``write_json`` (the probes) names files as ``write_results`` does — ``<name>_<gpu>_<date>[_<tag>]`` — and
    records the machine beside the payload."""
    import json

    from fastvideo_quant import bench

    env = {"gpu": "NVIDIA H200", "torch": "2.11", "cuda": "13.0", "date": "2026-12-04", "l2_flush": "write"}
    monkeypatch.setattr(bench, "environment", lambda: env)
    assert bench.result_stem("fp8", env) == "fp8_nvidia-h200_2026-12-04"
    path = bench.write_json(tmp_path / "r", "x-probe", {"rows": [1, 2]}, "5120")
    assert path == tmp_path / "r" / "x-probe_nvidia-h200_2026-12-04_5120.json"
    assert json.loads(path.read_text()) == {"env": env, "rows": [1, 2]}


def test_chain_arguments():
    args = parse("--method", "fp8", "--chain", "--l2-multiple", "0.5", "--replays", "5", "--rounds", "3")
    assert args.chain and args.l2_multiple == 0.5 and args.replays == 5 and args.rounds == 3
    plain = parse("--method", "fp8")
    assert not plain.chain and plain.m is None and plain.l2_multiple == 3.0 and plain.replays == 20
    for bad in (("--l2-multiple", "0"), ("--l2-multiple", "lots"), ("--replays", "0")):
        with pytest.raises(SystemExit):
            parse("--method", "fp8", "--chain", *bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no CUDA GPU")
def test_chain_without_cuda_exits_nonzero_with_message(capsys, tmp_path):
    assert cli_bench.run(parse("--method", "unquantized", "--chain", "--out", str(tmp_path))) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_chain_arguments_are_checked_before_the_gpu():
    from fastvideo_quant import bench
    from fastvideo_quant.errors import UnknownMethodError

    for kwargs, words in (({"rounds": 0}, "rounds must be an int >= 1, found 0"),
                          ({"replays": 2.5}, "replays must be an int >= 1, found 2.5"),
                          ({"l2_multiple": -1}, "l2_multiple must be a number > 0, found -1")):
        with pytest.raises(ValueError, match=words):
            bench.bench_chain("unquantized", **kwargs)
    with pytest.raises(UnknownMethodError, match="no_such_method"):
        bench.bench_chain("no_such_method")


def test_chain_table_and_file_names(tmp_path, monkeypatch):
    import json

    from fastvideo_quant import bench

    env = {"gpu": "NVIDIA H200", "torch": "2.11", "cuda": "13.0", "date": "2026-12-04", "l2_flush": "write"}
    monkeypatch.setattr(bench, "environment", lambda: env)
    monkeypatch.setattr(bench, "l2_bytes", lambda device=None: 50 * 2**20)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    rows = [bench.ChainRow("fp8", 5120, 5120, 16, 6, 26 * 2**20, 16.0, 12.5, 1.28, 1.27, 1.30, 1.7e-3, 2.6e-2,
                           [[16.0, 12.5], [16.1, 12.6], [15.9, 12.4]])]
    js, md = bench.write_chain_results(rows, tmp_path, l2_multiple=3.0, replays=20)
    assert js.name == "fp8-chain_nvidia-h200_2026-12-04.json" and md.name == "fp8-chain_nvidia-h200_2026-12-04.md"
    payload = json.loads(js.read_text())
    assert payload["l2_bytes"] == 50 * 2**20 and payload["points"][0]["ratio"] == 1.28
    text = md.read_text()
    assert "3 round(s) of 20 replays" in text and "≥ 3 × L2 = 150 MiB" in text
    assert "| fp8 | 5120 | 5120 | 16 | 6 | 16.0 | 12.5 | 1.28 | 1.27–1.30 | 1.7e-03 |" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chain_on_the_gpu(tmp_path, monkeypatch, capsys):
    """A small chain end to end through the CLI (4 layers: the minimum), and a tolerance the method cannot meet
    stopping it before anything is timed."""
    import json

    from fastvideo_quant import bench
    from fastvideo_quant.errors import AccuracyError
    from fastvideo_quant.quantization import get_quantization_config
    from fastvideo_quant.quantization.base import Tolerance

    args = parse("--method", "unquantized", "--chain", "--shapes", "256x512", "--m", "1", "16",
                 "--l2-multiple", "0.001", "--replays", "3", "--rounds", "2", "--out", str(tmp_path))
    assert cli_bench.run(args) == 0
    [js] = tmp_path.glob("unquantized-chain_*.json")
    points = json.loads(js.read_text())["points"]
    assert [p["M"] for p in points] == [1, 16] and all(p["layers"] == 4 and p["ratio"] > 0 for p in points)
    assert all(len(p["rounds_us"]) == 2 and p["rel_err_max"] < 1e-2 for p in points)
    cls = get_quantization_config("unquantized")
    monkeypatch.setattr(cls, "tolerance", Tolerance(max_rel_error=0.0))
    x_err = bench.rel_err  # an error over a zero tolerance: any rounding at all
    monkeypatch.setattr(bench, "rel_err", lambda out, ref: x_err(out, ref) + 1e-9)
    with pytest.raises(AccuracyError, match="over the method's tolerance 0.0"):
        bench.bench_chain("unquantized", [(256, 512)], [1], l2_multiple=0.001, replays=1, rounds=1)


def test_chain_rounds_alternate_the_graphs_and_report_us_per_layer(monkeypatch):
    from fastvideo_quant import bench as b

    order = []
    monkeypatch.setattr(b, "chain_ms_per_layer",
                        lambda graph, layers, replays: order.append(graph) or graph * layers * replays / 1e3)
    times = b.chain_rounds_us({"a": (1, 2), "b": (3, 4)}, rounds=2, replays=5)
    assert order == [1, 3, 1, 3]  # (each round times every graph once, in order)
    assert times == {"a": [10.0, 10.0], "b": [60.0, 60.0]}


def test_best_of_rounds_pairs_each_path_with_bf16_of_its_round():
    """The probes' tables: per point the fastest round of each path, its ratio to bf16 timed in that same round (not
    the fastest bf16), ordered by M then K then N; a path a row lacks is an empty cell."""
    from fastvideo_quant.bench import best_of_rounds, ratio_cell

    rows = [dict(K=64, N=32, M=16, bf16=0.030, fp8=0.020, round=0),
            dict(K=64, N=32, M=16, bf16=0.040, fp8=0.016, round=1),
            dict(K=64, N=32, M=1, bf16=0.010, round=0)]
    best = best_of_rounds(rows, ["fp8"])
    assert list(best) == [(64, 32, 1), (64, 32, 16)]
    assert best[(64, 32, 16)]["fp8"] == (0.016, 0.040) and best[(64, 32, 16)]["bf16"] == (0.030, 0.030)
    assert ratio_cell(best[(64, 32, 16)], "fp8") == "16.0 (2.50x)"
    assert ratio_cell(best[(64, 32, 1)], "fp8") == ""


def test_build_layer_calibrates_a_config_that_requires_it():
    """fp8 static (input_scale from calibration activations): the harness draws N(0, 1) tokens, the timed inputs'
    distribution, instead of failing with fvq quantize's "needs calibration activations"; given ones are used."""
    from fastvideo_quant.bench import CALIBRATION_SEED, CALIBRATION_TOKENS, build_layer

    w = torch.randn(48, 64) / 8
    static = {"quant_method": "fp8", "activation_scheme": "static"}
    layer = build_layer("fp8", w, static)
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    drawn = torch.randn(CALIBRATION_TOKENS, 64, generator=gen)
    assert float(layer.input_scale) == pytest.approx(float(drawn.abs().amax()) / 448.0, rel=1e-6)
    x = torch.randn(5, 64)
    ref = x @ w.T
    assert ((layer(x)[0] - ref).norm() / ref.norm()).item() < 0.08
    given = torch.full((2, 64), 3.0)
    assert float(build_layer("fp8", w, static, activations=given).input_scale) == pytest.approx(3.0 / 448.0)
    dynamic = build_layer("fp8", w)
    assert getattr(dynamic, "input_scale", None) is None


def test_results_record_the_config_and_never_overwrite_an_earlier_run(tmp_path, monkeypatch):
    """A second run on the same day and card (another config, or the same one again) writes beside the first — it
    overwrote it before — and both the table and the JSON say which config built the layers (the rows carry it, so
    no caller can forget to pass it)."""
    import dataclasses
    import json

    from fastvideo_quant import bench

    env = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11", "cuda": "13.0", "date": "2026-12-06", "l2_flush": "write"}
    monkeypatch.setattr(bench, "environment", lambda: env)
    row = bench._row("fp8", 5120, 5120, 1024, [(0.073, 0.052, 0.073, 0.051)], 3.7e-2, 2.6e-2, 0.5, None)
    first = bench.write_results([row], tmp_path)
    assert [p.name for p in first] == ["fp8_nvidia-h100-80gb-hbm3_2026-12-06.json", "fp8_nvidia-h100-80gb-hbm3_2026-12-06.md"]
    before = first[0].read_text()
    static = {"quant_method": "fp8", "activation_scheme": "static"}
    second = bench.write_results([dataclasses.replace(row, config=static)], tmp_path)
    assert [p.name for p in second] == ["fp8_nvidia-h100-80gb-hbm3_2026-12-06_2.json",
                                        "fp8_nvidia-h100-80gb-hbm3_2026-12-06_2.md"]
    assert first[0].read_text() == before and json.loads(before)["config"] == {}
    assert "Config: the method's default" in first[1].read_text()
    assert json.loads(second[0].read_text())["config"] == static
    assert 'Config: `{"activation_scheme": "static", "quant_method": "fp8"}`' in second[1].read_text()
    assert bench.write_results([row], tmp_path)[0].name.endswith("_3.json")
    # (an .md left alone by an interrupted run still blocks its stem: the pair stays together)
    (tmp_path / "fp8_nvidia-h100-80gb-hbm3_2026-12-06_4.md").write_text("x")
    assert bench.write_results([row], tmp_path)[0].name.endswith("_5.json")
    chain = bench.ChainRow("fp8", 64, 64, 1, 4, 1, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, [[1.0, 1.0]])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    c1 = bench.write_chain_results([chain], tmp_path)
    c2 = bench.write_chain_results([dataclasses.replace(chain, config=static)], tmp_path)
    assert c1[0] != c2[0] and json.loads(c2[0].read_text())["config"] == static and "static" in c2[1].read_text()
    mixed = bench.write_results([row, dataclasses.replace(row, config=static)], tmp_path)
    assert json.loads(mixed[0].read_text())["config"] == [{}, static] and "Configs (per row" in mixed[1].read_text()
    p1 = bench.write_json(tmp_path, "probe", {"a": 1})
    assert bench.write_json(tmp_path, "probe", {"a": 2}) != p1 and json.loads(p1.read_text())["a"] == 1
