from decimal import Decimal

import pytest

from hybrid.backbone import char_tokenizer
from hybrid.tasks import AdditionTask, Collator, Example, PromptFormat, extract_answer, get_task, pad, split_of
from puzzle_hrm.data.format import IGNORE_LABEL_ID

RG_TASKS = ["basic_arithmetic", "chain_sum", "simple_equations", "gsm_symbolic", "mini_sudoku"]


def wrong_answer(answer: str) -> str:
    """A near miss: the number plus one, or a sudoku grid with its first digit changed."""
    try:
        return str(Decimal(answer) + 1)
    except ArithmeticError:
        return str(int(answer[0]) % 4 + 1) + answer[1:]


@pytest.mark.parametrize("name", ["addition", "chain_sum"])
def test_examples_are_fixed_by_the_seed(name):
    task = get_task(name)
    assert task.examples("train", 20, seed=0) == task.examples("train", 20, seed=0)
    assert task.examples("train", 20, seed=0) != task.examples("train", 20, seed=1)
    assert task.examples("eval", 10, seed=0)[:4] == task.examples("eval", 4, seed=0)  # growing n keeps the first ones


@pytest.mark.parametrize("name", ["addition", "chain_sum"])
def test_train_and_eval_never_share_a_question_for_any_seeds(name):
    task = get_task(name)
    eval_questions = [ex.question for ex in task.examples("eval", 50, seed=0)]
    assert len(set(eval_questions)) == 50
    for seed in (0, 1):
        train_questions = {ex.question for ex in task.examples("train", 300, seed=seed)}
        assert len(train_questions) == 300 and train_questions.isdisjoint(eval_questions)
    assert all(split_of(q) == "eval" for q in eval_questions)


def test_about_one_question_in_ten_is_held_out():
    questions = [f"What is {a} + {b}?" for a in range(50) for b in range(50)]
    held_out = sum(split_of(q) == "eval" for q in questions) / len(questions)
    assert 0.08 < held_out < 0.12


def test_a_task_with_too_few_questions_says_so():
    with pytest.raises(ValueError, match="too few distinct questions"):
        AdditionTask(digits=1).examples("eval", 50, seed=0)  # 100 questions, about 10 held out


@pytest.mark.parametrize("call, match", [
    (lambda: get_task("no_such_task"), r"unknown task 'no_such_task'.*basic_arithmetic"),
    (lambda: get_task("addition").examples("test", 3, seed=0), r"unknown split 'test'"),
    (lambda: get_task("addition").examples("train", -1, seed=0), "n must be >= 0"),
    (lambda: AdditionTask(digits=0), "digits >= 1"),
    (lambda: pad([[1]], 0, "middle"), "side must be"),
])
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_reasoning_gym_options_reach_the_dataset():
    task = get_task("chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    assert all(len(ex.metadata["expression"].split()) == 3 for ex in task.examples("train", 10, seed=0))


@pytest.mark.parametrize("name", ["addition", *RG_TASKS])
def test_verifier_accepts_the_answer_and_rejects_a_near_miss(name):
    task = get_task(name)
    for example in task.examples("eval", 3, seed=0):
        assert example.task == name
        assert task.verify(example, example.answer) == 1.0
        assert task.verify(example, f"<answer>{example.answer}</answer>") == 1.0
        assert task.verify(example, wrong_answer(example.answer)) < 1.0  # reasoning-gym may give partial credit
        assert task.is_correct(example, example.answer) and not task.is_correct(example, wrong_answer(example.answer))


def test_numeric_answers_are_taken_from_chatty_completions():
    task = AdditionTask()
    example = Example("addition", "What is 12 + 35?", "47", {"a": 12, "b": 35})
    assert task.verify(example, "12 + 35 = 47.") == 1.0
    assert task.verify(example, "  47\n") == 1.0
    assert task.verify(example, "47 is wrong, it is 48") == 0.0
    assert task.verify(example, "") == 0.0


@pytest.mark.parametrize("completion, numeric, expected", [
    ("The total is 1,234.", True, "1234"),
    ("x = -13", True, "-13"),
    ("it is 3.25 exactly", True, "3.25"),
    ("<answer> 7 </answer> and 9", True, "7"),
    ("no number here", True, "no number here"),
    ("\n1 2\n3 4\n", False, "1 2\n3 4"),
    ("think… <answer>1 2\n3 4</answer>", False, "1 2\n3 4"),
    (" 47\n\nQuestion: What is 3 + 4?\nAnswer: 7", True, "47"),  # a base model going on with the plain format
    (" 1 2\n3 4\nQuestion: What", False, "1 2\n3 4"),
])
def test_extract_answer(completion, numeric, expected):
    assert extract_answer(completion, numeric) == expected


SHOTS = (Example("addition", "What is 1 + 2?", "3"), Example("addition", "What is 2 + 2?", "4"))


def test_chat_prompt_puts_system_and_shots_as_turns():
    tokenizer = char_tokenizer()
    prompt = PromptFormat(system="Be brief.", shots=SHOTS).prompt(tokenizer, "What is 5 + 5?")
    assert prompt == (
        "<|system|>Be brief.\n<|user|>What is 1 + 2?\n<|assistant|>3\n<|user|>What is 2 + 2?\n<|assistant|>4\n"
        "<|user|>What is 5 + 5?\n<|assistant|>"
    )
    assert PromptFormat().target(tokenizer, "10") == "10"


def test_plain_prompt_without_chat_template():
    tokenizer = char_tokenizer(chat_template=False)
    prompt = PromptFormat(system="Be brief.", shots=SHOTS[:1]).prompt(tokenizer, "What is 5 + 5?")
    assert prompt == "Be brief.\n\nQuestion: What is 1 + 2?\nAnswer: 3\n\nQuestion: What is 5 + 5?\nAnswer:"
    assert PromptFormat().target(tokenizer, "10") == " 10"


@pytest.mark.parametrize("chat_template", [True, False])
def test_collator_masks_everything_but_answer_and_eos(chat_template):
    tokenizer = char_tokenizer(chat_template)
    collator = Collator(tokenizer, max_length=512)
    examples = [Example("addition", "What is 1 + 2?", "3"), Example("addition", "What is 10 + 20?", "30")]
    batch = collator(examples)
    assert batch["examples"] == examples
    for row, example in enumerate(examples):
        prompt = tokenizer(collator.prompt_format.prompt(tokenizer, example.question), add_special_tokens=False)["input_ids"]
        target = tokenizer(collator.prompt_format.target(tokenizer, example.answer), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(target)
        assert batch["prompt_lengths"][row] == len(prompt)
        assert batch["input_ids"][row, :n].tolist() == prompt + target  # right padding: real tokens first
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["labels"][row].tolist() == [IGNORE_LABEL_ID] * len(prompt) + target + [IGNORE_LABEL_ID] * (batch["input_ids"].shape[1] - n)
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()


def test_collator_prompts_are_left_padded_for_generation():
    tokenizer = char_tokenizer()
    collator = Collator(tokenizer, max_length=512)
    examples = [Example("addition", "What is 1 + 2?", "3"), Example("addition", "What is 100 + 200?", "300")]
    batch = collator.prompts(examples)
    assert batch["attention_mask"][:, -1].all() and batch["attention_mask"][0, 0] == 0
    for row, ids in enumerate(collator.prompt_ids(examples)):
        assert batch["input_ids"][row, -len(ids) :].tolist() == ids and batch["attention_mask"][row].sum() == len(ids)
    assert batch["examples"] == examples


def test_collator_rejects_examples_longer_than_the_context():
    collator = Collator(char_tokenizer(), max_length=10)
    with pytest.raises(ValueError, match=r"needs \d+ tokens; the model's context is 10"):
        collator([Example("addition", "What is 1 + 2?", "3")])

