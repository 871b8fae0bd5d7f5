"""The chat templates that `data.chat_template` can name, for tokenizers that have none of their own (a base
model's). Plain strings, so reading a config needs no tokenizer library."""

from __future__ import annotations

# ChatML, so chat data renders the same way as with many hub instruct models (Qwen, SmolLM2, ...).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE}
"""The templates `data.chat_template` names; any other value must be a Jinja template."""


def is_jinja_template(text: str) -> bool:
    """Whether `text` is a Jinja template rather than the name of one."""
    return "{{" in text or "{%" in text
