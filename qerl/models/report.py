"""`LoadReport`: what loading a policy cost (bytes, peak memory, time) and, when asked, per-layer quantization error."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.3f} GiB"


@dataclass
class LoadReport:
    """Filled by every `PolicyLoader.load`; kept as `loader.last_report`.

    Attributes:
        source: the loader that produced the model (its repr).
        mode: "dense" (no quantizer), "load-then-quantize" (whole model built in `dtype`, then quantized) or
            "streamed" (one decoder layer materialized in `dtype` at a time, quantized, its dense copy freed) or
            "pre-quantized" (packed layers read as stored from a compressed-tensors folder, never dense).
        quantizer: quantizer class name, or None.
        device: where the model lives.
        dtype: dtype of the unquantized tensors (embeddings, norms, lm_head, and each layer before quantization).
        dense_bytes: bytes of the whole model's weights in `dtype` (what a dense load would hold).
        final_bytes: bytes of the loaded model's tensors (packed 4-bit buffers plus what stays dense).
        peak_tensor_bytes: most bytes of model tensors alive at once while loading, counted from the tensors
            themselves (exact and noise-free; excludes quantizer temporaries and the loader's file buffers).
        peak_layer_dense_bytes: most dense bytes of one decoder layer alive before it was quantized (streamed mode);
            equals dense bytes of all layers for load-then-quantize.
        peak_device_bytes: the allocator's view: `torch.cuda.max_memory_allocated` on GPU (reset when loading
            starts, less what was already allocated then), or the process RSS high-water mark on CPU (`ru_maxrss`, which includes everything the process
            held before loading, so it is only an upper bound).
        peak_device_source: which of the two `peak_device_bytes` is.
        seconds: wall time of the load (checksum included).
        checksum_seconds: of which the checksum of the stored base (pre-quantized folders; 0 otherwise), taken so a
            later step can tell that the base is still the folder's (`qerl.quantizers.fingerprint`).
        quantized_layers: number of Linear layers replaced by QuantLinear.
        layer_errors: relative Frobenius error ||W - Q(W)|| / ||W|| per quantized layer (only with measure_errors).
    """

    source: str
    mode: str
    quantizer: str | None
    device: str
    dtype: str
    dense_bytes: int = 0
    final_bytes: int = 0
    peak_tensor_bytes: int = 0
    peak_layer_dense_bytes: int = 0
    peak_device_bytes: int | None = None
    peak_device_source: str = ""
    seconds: float = 0.0
    checksum_seconds: float = 0.0
    quantized_layers: int = 0
    layer_errors: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for logs and `qerl quantize`."""
        lines = [
            f"model: {self.source}",
            f"mode: {self.mode}; quantizer: {self.quantizer or 'none'}; device: {self.device}; dtype: {self.dtype}",
            (f"size: {_gib(self.dense_bytes)} dense -> {_gib(self.final_bytes)} loaded "
             f"({self.dense_bytes / max(self.final_bytes, 1):.2f}x smaller), {self.quantized_layers} layers quantized"),
            (f"peak model tensors while loading: {_gib(self.peak_tensor_bytes)} "
             f"(largest dense block awaiting quantization: {_gib(self.peak_layer_dense_bytes)})"),
            f"peak memory ({self.peak_device_source or 'n/a'}): {_gib(self.peak_device_bytes)}",
            f"load time: {self.seconds:.1f} s" + (f" (base checksum {self.checksum_seconds:.1f} s)"
                                                  if self.checksum_seconds else ""),
        ]
        return "\n".join(lines)

    def one_line(self) -> str:
        """How the base was loaded, in one line for the run's log."""
        how = {"pre-quantized": f"pre-quantized {self.quantizer} layers read as stored",
               "streamed": f"streamed and quantized to {self.quantizer} layer by layer",
               "load-then-quantize": f"loaded whole in {self.dtype}, then quantized to {self.quantizer}",
               }.get(self.mode, f"dense {self.dtype}")
        checksum = f", base checksum {self.checksum_seconds:.1f} s" if self.checksum_seconds else ""
        return (f"base: {self.source}: {how} ({self.quantized_layers} layers packed, {_gib(self.final_bytes)} on "
                f"{self.device}, {self.seconds:.1f} s{checksum})")
