"""Chat messages and the Qwen2.5-Omni chat template.

One place defines how a sample becomes a conversation, used by the shard
builder (which stores both the structured messages and the rendered string)
and by the tokenizer files of the embedded tiny backbone (which ship the same
template so `tokenizer.apply_chat_template` renders identically).
"""
from __future__ import annotations

from typing import Any

import jinja2

SYSTEM_PROMPT = "You are an emotion recognition assistant"

# Qwen2.5-Omni-7B's `chat_template` (processor/tokenizer), verbatim. Video and
# audio contents render as one placeholder each; the loader later expands each
# placeholder to the exact number of tower tokens.
QWEN25_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

ASSISTANT_PREFIX = "<|im_start|>assistant\n"

_env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
_template = _env.from_string(QWEN25_OMNI_CHAT_TEMPLATE)


def build_messages(
    question: str,
    subtitle: str | None,
    answer: str | None,
    has_video: bool,
    has_audio: bool,
    system_prompt: str = SYSTEM_PROMPT,
) -> list[dict[str, Any]]:
    """The conversation of one sample: system, user (video, audio, subtitle, question), assistant.

    Returns messages in the Hugging Face multimodal chat format. ``answer`` None
    leaves the assistant turn out (inference prompts).
    """
    content: list[dict[str, str]] = []
    if has_video:
        content.append({"type": "video"})
    if has_audio:
        content.append({"type": "audio"})
    text = f"Subtitle: {subtitle.strip()}\n{question}" if subtitle and subtitle.strip() else question
    content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": content},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render(messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """Render messages with the Qwen2.5-Omni template (identical to `tokenizer.apply_chat_template(tokenize=False)`)."""
    return _template.render(messages=messages, add_generation_prompt=add_generation_prompt)
