"""Vision-language models: only the language decoder is smoothed, never the vision tower.

The adapter of the *language model's* family does the work (``get_adapter`` looks at
``config.text_config.model_type`` first); this file lists the wrappers we test and the model types of
their language decoders. Image tokens enter the decoder as part of the prompt (``inputs_embeds`` in the
prefill), so they are never smoothed.

- LLaVA / LLaVA-1.5 (``LlavaForConditionalGeneration``): decoder at ``model.language_model`` (Llama/Vicuna).
- Qwen2-VL / Qwen2.5-VL: decoder at ``model.language_model`` (``qwen2_vl_text`` / ``qwen2_5_vl_text``,
  Llama-like layout; M-RoPE positions are computed by the model and need nothing from us).
- InstructBLIP: decoder-only language models (OPT, Llama/Vicuna) under ``language_model``; T5 variants are
  encoder-decoder models and are refused.
"""

VLM_TEXT_MODEL_TYPES = ("qwen2_vl_text", "qwen2_5_vl_text")
