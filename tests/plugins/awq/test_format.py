"""AutoAWQ GEMM packing, checked against a by-hand packing written from the format definition."""

import torch
from fvq_awq.format import dequantize_awq, pack_awq, unpack_awq
from fvq_awq.layout import dequantize_kernel, repack_to_kernel, unpack_kernel

# AutoAWQ WQLinear_GEMM.from_linear: for word c, nibble i (bits 4i..4i+3) holds column 8c + ORDER[i].
ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def hand_pack(values: list[list[int]]) -> list[list[int]]:
    """Pack row by row with Python ints, exactly as the format text says; words as signed int32."""
    out = []
    for row in values:
        words = []
        for c in range(len(row) // 8):
            word = 0
            for i in range(8):
                word |= row[8 * c + ORDER[i]] << (4 * i)
            words.append(word - (1 << 32) if word >= 1 << 31 else word)
        out.append(words)
    return out


def test_unpack_matches_hand_packed_known_matrix():
    values = [[(3 * r + 5 * c) % 16 for c in range(16)] for r in range(4)]
    packed = torch.tensor(hand_pack(values), dtype=torch.int32)
    assert torch.equal(unpack_awq(packed).to(torch.int64), torch.tensor(values))


def test_pack_produces_the_hand_packed_bits():
    gen = torch.Generator().manual_seed(1)
    values = torch.randint(0, 16, (6, 24), generator=gen)
    assert pack_awq(values).tolist() == hand_pack(values.tolist())


def test_known_word_bits():
    # Column j holds value j: nibble i must hold ORDER[i] → 0x75316420.
    word = pack_awq(torch.arange(8).reshape(1, 8))
    assert word.item() == 0x75316420
    assert unpack_awq(word).tolist() == [list(range(8))]


def test_dequantize_is_q_minus_z_times_s_per_group():
    gen = torch.Generator().manual_seed(2)
    k, n, group = 64, 16, 32
    q, z = torch.randint(0, 16, (k, n), generator=gen), torch.randint(0, 16, (k // group, n), generator=gen)
    s = torch.rand(k // group, n, generator=gen).half()
    w = dequantize_awq(pack_awq(q), pack_awq(z), s)
    for kk in (0, 31, 32, 63):
        for nn in (0, 7, 15):
            g = kk // group
            assert w[kk, nn].item() == (q[kk, nn] - z[g, nn]).item() * s[g, nn].float().item()


def test_kernel_layout_round_trips():
    gen = torch.Generator().manual_seed(3)
    for k, n, group in [(256, 16, 128), (96, 8, 32), (40, 8, 40)]:
        q, z = torch.randint(0, 16, (k, n), generator=gen), torch.randint(0, 16, (k // group, n), generator=gen)
        s = torch.rand(k // group, n, generator=gen).half()
        qw, zk, sk, layout = repack_to_kernel(pack_awq(q), pack_awq(z), s, group)
        assert torch.equal(unpack_kernel(qw, layout), q.t())
        assert torch.equal(dequantize_kernel(qw, zk, sk, layout), dequantize_awq(pack_awq(q), pack_awq(z), s).t())
