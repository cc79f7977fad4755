"""The base checksum: the definition (byte sum, position-weighted byte sum) computed in bounded memory."""
import torch

from qerl.quantizers.fingerprint import _CHUNK, _MODULUS, stored_fingerprint, tensor_checksum


def reference(tensor: torch.Tensor) -> tuple[int, int]:
    data = tensor.contiguous().reshape(-1).view(torch.uint8).to(torch.int64)
    positions = torch.arange(data.numel(), dtype=torch.int64)
    return int(data.sum()), int((data * (positions % _MODULUS + 1)).sum())


def test_checksum_is_the_definition_across_chunks():
    torch.manual_seed(0)
    for tensor in (torch.randn(3 * _CHUNK // 4 + 7), torch.randint(0, 256, (2 * _CHUNK + 5,), dtype=torch.uint8),
                   torch.randn(513, 257, dtype=torch.bfloat16).t(), torch.zeros(0), torch.tensor([True, False])):
        plain, weighted, dtype, shape = tensor_checksum(tensor)
        assert (plain, weighted) == reference(tensor) and dtype == str(tensor.dtype) and shape == tuple(tensor.shape)


def test_a_changed_byte_or_a_swap_changes_the_fingerprint():
    layer = torch.nn.Linear(64, 32)
    before = stored_fingerprint(layer)
    with torch.no_grad():
        layer.weight[0, :2] = layer.weight[0, :2].flip(0)  # same bytes, other places: the weighted sum sees it
    assert stored_fingerprint(layer)["weight"][0] == before["weight"][0] and stored_fingerprint(layer) != before
