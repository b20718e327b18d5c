"""``row_entropy``: the paper's sink degree, the Shannon entropy of the token's attention row."""

from ..smoothing import attention_entropy
from .base import Scorer, ScoreInputs, register_scorer


@register_scorer("row_entropy")
class RowEntropy(Scorer):
    """``H_h = -sum_j p_hj ln p_hj`` per query head (KVSmooth, Eq. 4); the layer score is the mean.

    Exact at the ``cache`` site; at ``kv_proj`` the newest row is the previous token's.
    """

    needs_row = True
    exact_at = frozenset({"cache"})
    stacked_rows = True

    def score(self, state, inputs: ScoreInputs):
        return attention_entropy(inputs.row)  # [..., B, Hq]
