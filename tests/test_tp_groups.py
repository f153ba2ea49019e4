"""Tensor-parallel layers on real gloo groups: a layer keeps the TP group it was built with, a fused layer's gathered
output (and bias) is in the TP=1 layout, and a rank outside its TP group or a wrong input width is a named error."""

from __future__ import annotations

import pytest
import torch
import tp_group_workers as G

from fastvideo_quant.testing.distributed import run_distributed

REF = G.X @ G.W.t()


def test_layers_built_in_a_sub_group_keep_it_outside_the_block() -> None:
    for rank, res in enumerate(run_distributed(G.built_in_a_sub_group, 4)):
        assert res["tp_size"] == (2, 2), rank
        torch.testing.assert_close(res["row"], REF)  # was 2x: summed over all 4 ranks
        torch.testing.assert_close(res["column"], REF)  # was [3, 64]: gathered over all 4 ranks
        # a pickled copy runs over the group current at call time: the world is refused, its sub-group is right
        assert res["unpickled_outside"] is not None and res["unpickled_outside"].startswith(
            f"RowParallelLinear 'o' was sharded for TP size 2 at TP rank {rank % 2}, but its all-reduce would run over a "
            f"group of 4 rank(s) in which this process is rank {rank}"), res["unpickled_outside"]
        torch.testing.assert_close(res["unpickled_inside"], REF)


def test_a_layer_saved_at_tp2_refuses_to_run_without_its_group() -> None:
    """torch.save(model) at TP=2, torch.load where torch.distributed is not initialised: its all-reduce would do
    nothing and the output would be one rank's partial sum (relative error ~0.6), silently."""
    import io

    from fastvideo_quant.errors import ShardingError

    blob = run_distributed(G.saved_at_tp2, 2)[1]
    layer = torch.load(io.BytesIO(blob), weights_only=False)
    assert layer.tp_size == 2 and layer.tp_rank == 1
    with pytest.raises(ShardingError, match=r"RowParallelLinear 'o' was sharded for TP size 2 at TP rank 1, but its "
                                            r"all-reduce would run over no process group \(torch.distributed is not "
                                            r"initialised here\)"):
        layer(G.X[:, 32:])  # rank 1's half of the input (input_is_parallel)


def test_a_layer_holds_its_group_weakly_and_names_a_destroyed_one() -> None:
    """A layer (or set_tp_group) that kept its process group alive past destroy_process_group kept gloo's worker
    threads running into interpreter exit, where they could abort the process (the TP guide's example did, 1 run in 3)."""
    for res in run_distributed(G.destroyed_group, 2):
        assert res["twin_group_is_the_layers"]
        assert res["unpickled_group"] is None
        for name in ("row", "twin", "unpickled", "unpickled_after"):
            torch.testing.assert_close(res[name], REF, msg=name)
        assert res["freed"], "the destroyed group is still alive: something holds it"
        assert res["forward"] is not None and res["forward"].startswith("RowParallelLinear 'o': the TP group it was built over")
        assert "destroy_process_group" in res["forward"] and "build and load the model again" in res["forward"]
        assert res["load"] == res["forward"]  # a load names the layer too, before looking for the checkpoint
        assert res["get_tp_group"] is not None and "chosen with set_tp_group has been destroyed" in res["get_tp_group"]


def test_a_layer_built_before_init_stays_tp1(tmp_path) -> None:
    for res in run_distributed(G.built_before_init, 2, str(tmp_path / "rendezvous")):
        assert res["tp_size"] == (1, 1)
        torch.testing.assert_close(res["column"], REF)  # was [3, 64]: gathered over the 2-rank world
        torch.testing.assert_close(res["row"], REF)


@pytest.mark.parametrize("world", [2, 4])
def test_fused_gather_is_in_the_tp1_layout_and_the_bias_fits_the_output(world: int) -> None:
    full = REF + G.B
    for res in run_distributed(G.fused_gather, world):
        torch.testing.assert_close(res["merged"], full)  # was [gate_r0, up_r0, gate_r1, up_r1]
        out, bias = res["merged_skip"]
        torch.testing.assert_close(out, REF)
        torch.testing.assert_close(bias, G.B)  # was this rank's shard
        out, bias = res["column_skip"]
        torch.testing.assert_close(out + bias, full)


def test_a_rank_outside_its_tp_group_is_named() -> None:
    results = run_distributed(G.not_a_member, 4)
    assert results[:2] == [None, None]
    for rank in (2, 3):
        assert results[rank] == (
            f"ShardingError: set_tp_group: rank {rank} (of the 4-rank world) is not a member of the group, whose "
            "ranks are [0, 1]; every rank must use a TP group it belongs to (torch.distributed.new_group makes one "
            "on every rank: pass each rank its own, e.g. the one holding it)"), results[rank]


def test_a_wrong_input_width_names_the_layer_and_the_fix() -> None:
    res = run_distributed(G.wrong_input_width, 2)[0]
    assert res["row_full"] == (
        "ValueError: RowParallelLinear 'o_proj': input's last dim is 64, expected this rank's 32 (input_size 64 over "
        "TP 2); this is the whole input: build the layer with input_is_parallel=False to split it here"), res
    assert res["row_other"] == ("ValueError: RowParallelLinear 'o_proj': input's last dim is 5, expected this rank's "
                                "32 (input_size 64 over TP 2)"), res
    assert res["column"] == "ValueError: ColumnParallelLinear 'c': input's last dim is 48, expected 64 (input_size)", res


def test_a_parameter_without_a_weight_loader_in_a_sharded_layer_is_the_plugins_error(tmp_path) -> None:
    for msg in run_distributed(G.forgetful_loader_at_tp, 2, str(tmp_path)):
        assert "tensor 'up.weight_scale' (model.safetensors) → 'up.weight_scale': the parameter has no weight_loader, " \
               "so nothing can take this rank's slice of it over the layer's 2 tensor-parallel ranks" in msg, msg
        assert "ForgetfulMethod.create_weights of method 'toy-forgetful' of plugin 'toy-forgetful'" in msg, msg


def test_a_quantized_layers_state_dict_is_refused_by_another_tp_rank() -> None:
    for rank, res in enumerate(run_distributed(G.state_dict_of_another_rank, 2)):
        assert res["own"] is None, res["own"]
        assert res["other"] is not None and (
            f"load_state_dict: layer 'c' (ColumnParallelLinear): the state_dict holds TP rank {1 - rank}'s shard of a "
            f"model sharded over 2 rank(s); this layer is TP rank {rank} of 2") in res["other"], res["other"]


def test_layers_take_fastvideos_tp_group_where_it_is_initialised() -> None:
    """A FastVideo run with sequence parallelism over 4 ranks and TP=1 (each rank its own tokens) sharded every layer
    4 ways over the world, and a gathered output mixed the ranks' tokens (relative error ~1), silently."""
    for rank, res in enumerate(run_distributed(G.fastvideo_host_group, 4)):
        assert res["uninitialised"] == 4, rank  # imported, not initialised: the whole world
        col_tp, row_tp, col_err, row_err = res["sp"]
        assert (col_tp, row_tp) == (1, 1) and col_err < 1e-12 and row_err < 1e-12, (rank, res["sp"])
        assert res["tp2"][:2] == (2, rank % 2) and res["tp2"][2] < 1e-12, (rank, res["tp2"])
        assert res["chosen"] == 4, rank  # set_tp_group / tp_group comes first
        assert res["tp_only"] == 2, rank
        assert res["raising"] is not None and res["raising"].startswith(
            "fastvideo.distributed.parallel_state.get_tp_group() raised RuntimeError: world group not set up; the "
            "layers take the host framework's TP group"), res["raising"]
        assert res["unknown"] is not None and res["unknown"].startswith(
            "fastvideo.distributed.parallel_state.get_tp_group() returned _Coordinator whose device_group is NoneType, "
            "not a torch.distributed ProcessGroup"), res["unknown"]
        assert res["after"] == 4, rank


def test_layers_take_vllms_tp_group_where_it_is_initialised() -> None:
    """Model code ported from vLLM runs under vLLM's parallel state (the same API as FastVideo's): with TP=2 groups in
    a world of 4 the layers sharded 4 ways over the world, silently (a porting author's review). Both states
    initialised with different groups are refused; with the same group, taken."""
    for rank, res in enumerate(run_distributed(G.vllm_host_group, 4)):
        assert res["tp2"][:2] == (2, rank % 2) and res["tp2"][2] < 1e-12, (rank, res["tp2"])
        assert res["both"] is not None and res["both"].startswith(
            "both fastvideo.distributed.parallel_state and vllm.distributed.parallel_state have a TP "
            "group initialised, and they differ"), res["both"]
        assert res["same"] == 2, rank


@pytest.mark.parametrize("world", [2, 4])
def test_a_layer_rebuilt_off_meta_in_another_group_loads_its_own_shard(world: int, tmp_path) -> None:
    """to_empty rebuilds a meta layer's parameters as the TP rank the layer was built for, whatever group is current
    then. (Was: as the current group's: a TP=1 layer got TP=2 parameters and its load failed, blaming the checkpoint;
    under another group of the same size the load passed and each rank's output was off by ~0.7, silently.)"""
    for rank, res in enumerate(run_distributed(G.rebuilt_off_meta_in_another_group, world, str(tmp_path))):
        for name, want in (("solo", (0, 1)), ("tp2", (rank % 2, 2))):
            if name in res:
                assert res[name]["layer"] == res[name]["param"] == want, (rank, name, res[name])
                torch.testing.assert_close(res[name]["out"], REF)


def test_building_as_holds_in_its_own_thread_only() -> None:
    """A layer built in another thread while one thread rebuilds as TP rank 1 of 2 is built as the process's own TP
    (1, without torch.distributed). (Was, with a process-wide setting: ColumnParallelLinear(64, 128) built elsewhere
    meanwhile got tp_rank 1, tp_size 2 and a (64, 64) weight.)"""
    import threading

    from fastvideo_quant.distributed import building_as, get_tensor_model_parallel_world_size
    from fastvideo_quant.layers.linear import ColumnParallelLinear

    inside, built = threading.Event(), {}

    def other() -> None:
        inside.wait(10)
        layer = ColumnParallelLinear(64, 128, bias=False, params_dtype=torch.float32)
        built["layer"] = (layer.tp_rank, layer.tp_size, tuple(layer.weight.shape))

    thread = threading.Thread(target=other)
    thread.start()
    with building_as(1, 2):
        assert get_tensor_model_parallel_world_size() == 2
        inside.set()
        thread.join(10)
    assert built["layer"] == (0, 1, (128, 64))
    assert get_tensor_model_parallel_world_size() == 1
