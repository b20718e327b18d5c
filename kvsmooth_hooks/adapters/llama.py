"""Llama-family decoders with separate ``k_proj`` / ``v_proj`` Linear layers."""

from .base import Adapter


class LlamaFamilyAdapter(Adapter):
    """Llama, Mistral, Mixtral, Qwen2/2-MoE/3/3-MoE, Gemma 1/2/3 (text), Phi, OPT, OLMo, Granite, SmolLM3,
    and the language decoders of LLaVA, Qwen2-VL / Qwen2.5-VL and InstructBLIP (OPT / Vicuna).

    Layers live at ``get_decoder().layers`` (``model.layers``; ``model.decoder.layers`` for OPT),
    attention at ``layer.self_attn``, projections ``self_attn.k_proj`` / ``self_attn.v_proj``.
    """

    name = "llama"
    model_types = (
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi",
        "opt",
        "olmo",
        "olmo2",
        "granite",
        "smollm3",
        "starcoder2",
        # language models of vision-language models (LLaVA uses llama/mistral/qwen2; InstructBLIP opt/llama)
        "qwen2_vl_text",
        "qwen2_5_vl_text",
    )
