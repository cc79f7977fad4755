"""A tiny byte-level tokenizer (259 ids) built in memory: the fast default for tiny random-init test models."""
from __future__ import annotations

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: ChatML, the format SmolLM2 and Qwen2.5 use.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer():
    """A transformers fast tokenizer over the 256 bytes plus ChatML specials; ids 0-255 are bytes, then specials.

    It round-trips any UTF-8 text, has a ChatML chat template and pad = eos = <|im_end|>, and builds in
    milliseconds (SmolLM2's GGUF tokenizer takes ~10 s to parse), so tiny test models can use a 320-entry vocab.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(byte_chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=None, eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token=None, padding_side="left")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _byte_of(ch: str) -> int:
    """The byte GPT-2's byte-level alphabet maps to `ch` (printable bytes map to themselves)."""
    return _BYTE_OF_CHAR[ch]


def _gpt2_byte_map() -> dict[str, int]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_BYTE_OF_CHAR = _gpt2_byte_map()
