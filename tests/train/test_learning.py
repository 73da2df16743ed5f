"""A real learning check: a small HRM learns 4x4 Sudoku on CPU in about a minute.

Measured on the 2-core CI machine: 94 % exact accuracy on 200 unseen puzzles after 1,000 steps
(62 s). The threshold leaves room for platform differences but not for a broken model: an
untrained HRM solves none of them.
"""

from puzzle_hrm.train import fit

from .conftest import small_arch, small_train


def test_small_hrm_learns_4x4_sudoku(sudoku4_learning):
    arch = small_arch(hidden_size=64, num_heads=4, expansion=4, puzzle_emb_ndim=64, halt_max_steps=2, pos_encodings="learned")
    common = dict(global_batch_size=64, lr=3e-3, lr_warmup_steps=20, weight_decay=0.1, log_every=100, eval_max_batches=None)
    untrained = fit(small_train(sudoku4_learning, max_steps=1, **common), arch).final_eval
    trained = fit(small_train(sudoku4_learning, max_steps=1000, **common), arch).final_eval
    assert trained["count"] == 200  # the whole held-out test split
    assert untrained["exact_accuracy"] < 0.05
    assert trained["exact_accuracy"] >= 0.85
