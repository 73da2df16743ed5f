"""TRM (attention and token-MLP) and the plain transformer learn 4x4 Sudoku on CPU in the one
training loop, as the HRM does in test_learning.py (same data, batch and optimizer settings).

Measured on this 2-core machine (one thread), exact accuracy on the 200 unseen puzzles: TRM-Att
(one recursion of two latent updates, the cheapest that learns fast here) 0.93 after 400 steps,
transformer 0.885 after 300, TRM-MLP (T = 2, n = 2) 1.0 after 100. Untrained, each solves almost
none. The thresholds leave room for platform differences, not for a broken model. TRM's no-gradient
recursions are tested in tests/model/test_trm.py.
"""

import pytest

from puzzle_hrm.transformer import TransformerConfig
from puzzle_hrm.trm import TRMConfig
from puzzle_hrm.train import fit

from .conftest import small_train

SMALL = dict(hidden_size=64, num_heads=4, expansion=4, puzzle_emb_ndim=64, halt_max_steps=2, pos_encodings="learned", forward_dtype="float32")
CASES = {
    "trm": (TRMConfig(H_cycles=1, L_cycles=2, L_layers=1, puzzle_emb_len=1, **SMALL), 400, 0.5),
    "trm_mlp": (TRMConfig(H_cycles=2, L_cycles=2, L_layers=1, puzzle_emb_len=1, mlp_t=True, **{**SMALL, "pos_encodings": "none"}), 100, 0.8),
    "transformer": (TransformerConfig(H_layers=2, **SMALL), 300, 0.6),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_learns_4x4_sudoku(sudoku4_learning, name):
    arch, steps, threshold = CASES[name]
    common = dict(global_batch_size=64, epochs=50, eval_interval=50, lr=3e-3, lr_warmup_steps=20, weight_decay=0.1, log_every=100, eval_max_batches=None)
    untrained = fit(small_train(sudoku4_learning, max_steps=1, **common), arch)
    trained = fit(small_train(sudoku4_learning, max_steps=steps, **common), arch)
    assert trained.final_eval["count"] == 200
    assert untrained.final_eval["exact_accuracy"] < 0.05
    assert trained.final_eval["exact_accuracy"] >= threshold
    assert trained.last_train_metrics["lm_loss"] < 0.5 * untrained.last_train_metrics["lm_loss"]
