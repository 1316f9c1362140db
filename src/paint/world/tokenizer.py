"""A word-level Hugging Face fast tokenizer trained on the world's captions.

Lower-cased, split on whitespace and punctuation, wrapped as ``<bos> ... <eos>``. The ids
are chosen for transformers' CLIP text pooling: it pools at the first ``eos_token_id``
unless that id is 2, which it treats as the legacy "argmax of the ids" rule; so the eos
id here is 3, and padding (id 0) is distinct from eos.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3 in this order
EOS_ID = 3


def train_tokenizer(texts: Iterable[str], model_max_length: int = 32):
    """Train a word-level tokenizer on ``texts``; returns a ``PreTrainedTokenizerFast``.

    Every word seen at least once gets an id (the world's vocabulary is small and closed),
    so class names and prompt templates included in ``texts`` never map to ``<unk>``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert eos_id == EOS_ID and tok.token_to_id(PAD) == 0, "special tokens must come first, in order"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, bos_id), (EOS, eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
    )
