from qerl.data.prompts import SYSTEM_PROMPTS, format_prompt, resolve_system_prompt


def test_presets_and_custom_system_prompts():
    assert resolve_system_prompt("think_answer") == SYSTEM_PROMPTS["think_answer"]
    assert "<think>" in SYSTEM_PROMPTS["think_answer"] and "<answer>" in SYSTEM_PROMPTS["think_answer"]
    assert resolve_system_prompt("Be brief.") == "Be brief."
    assert resolve_system_prompt(None) is None and resolve_system_prompt("  ") is None


def test_chat_template_is_the_tokenizers(tiny_tokenizer):
    prompt = format_prompt("What is 2 + 3?", tiny_tokenizer, "Be brief.")
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert format_prompt("Hi", tiny_tokenizer) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_plain_text_fallback():
    assert format_prompt("Q", None, "S") == "S\n\nQ" and format_prompt("Q") == "Q"
