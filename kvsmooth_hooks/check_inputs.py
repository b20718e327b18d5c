"""Short random inputs a model can generate from (text, audio features, images with their image tokens), for
:mod:`kvsmooth_hooks.check`."""

from __future__ import annotations

import torch


def _special_ids(cfg) -> set[int]:
    ids = set()
    for c in [cfg] + [getattr(cfg, n) for n in dir(cfg) if n.endswith("_config") and hasattr(getattr(cfg, n, None), "to_dict")]:
        for k, v in c.to_dict().items() if hasattr(c, "to_dict") else []:
            if (k.endswith("_token_id") or k.endswith("_token_index") or k.endswith("_id")) and isinstance(v, int):
                ids.add(v)
    return ids


def make_inputs(model, batch: int = 1, length: int = 8, seed: int = 1) -> list[dict]:
    """Candidate inputs, tried in order until the unhooked model generates: text prompts (random ids that are not
    special tokens); audio features in both layouts; images (with the image tokens a wrapper expects)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    special = _special_ids(cfg)
    pool = torch.tensor([i for i in range(4, 100) if i not in special])
    ids = pool[torch.randint(len(pool), (batch, length), generator=g)]
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_features":
        enc = getattr(cfg, "encoder_config", None) or getattr(cfg, "audio_config", None) or cfg
        mels = getattr(enc, "num_mel_bins", None) or getattr(enc, "feature_size", None) or getattr(enc, "input_feat_per_channel", None) or 80
        frames = 2 * (getattr(enc, "max_source_positions", None) or 32)
        return [{"input_features": torch.randn(batch, mels, frames, generator=g)},
                {"input_features": torch.randn(batch, frames, mels, generator=g)}]
    if main == "input_values":
        return [{"input_values": torch.randn(batch, 16000, generator=g)}, text]
    vc = getattr(cfg, "vision_config", None) or getattr(cfg, "encoder", None)
    size = getattr(vc, "image_size", None)
    size = size[0] if isinstance(size, (list, tuple)) else size
    out = [text]
    if isinstance(size, int):
        pix = torch.randn(batch, getattr(vc, "num_channels", 3), size, size, generator=g)
        if main == "pixel_values" and getattr(cfg, "text_config", None) is None:
            return [{"pixel_values": pix}, text]
        tok = getattr(cfg, "image_token_index", None) or getattr(cfg, "image_token_id", None)
        nq = getattr(cfg, "num_query_tokens", None)
        if isinstance(tok, int) and isinstance(nq, int):  # BLIP-2 / InstructBLIP: one image token per query token
            ids_img = torch.cat([torch.full((batch, nq), tok), ids], 1)
            img = {"input_ids": ids_img, "attention_mask": torch.ones_like(ids_img), "pixel_values": pix}
            if getattr(cfg, "qformer_config", None) is not None:  # InstructBLIP: the Q-Former reads the prompt too
                img = {**img, "qformer_input_ids": ids, "qformer_attention_mask": torch.ones_like(ids)}
            out.append(img)
        tok = tok if isinstance(tok, int) else getattr(cfg, "video_token_index", None)
        if isinstance(tok, int) and isinstance(nq, int) and len(out) == 1:
            ids_img = torch.cat([torch.full((batch, nq), tok), ids], 1)
            out.append({"input_ids": ids_img, "attention_mask": torch.ones_like(ids_img), "pixel_values": pix[:, :, None]})
        out.append({**text, "pixel_values": pix})
        out.append({**text, "pixel_values": pix[:, None]})  # [B, images, C, H, W] (IDEFICS)
    return out
