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
