"""Capability flags shared by the standard test suites, each as ChatAvengers is today."""

from __future__ import annotations


class ChatAvengersCapabilities:
    """Honest langchain-tests flags (see ``ChatModelTests`` for their meaning)."""

    @property
    def has_tool_calling(self) -> bool:
        return True  # bind_tools: experts get the tools, samples vote on tool calls

    @property
    def has_structured_output(self) -> bool:
        return True  # with_structured_output: objects voted whole, then field by field

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True  # summed over every expert call

    @property
    def supports_model_override(self) -> bool:
        return False  # a per-call `model` only renames the ensemble in metadata and traces
