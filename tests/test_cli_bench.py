"""`fvq bench`: argument parsing, and a clear non-zero exit without CUDA."""

from __future__ import annotations

import argparse

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
