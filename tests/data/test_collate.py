"""The one collate: the documented batch dict, text tokenised only when present."""

import pickle

import pytest
import torch
from transformers import BertTokenizerFast

from medpeft.data.collate import Collate
from medpeft.errors import ConfigError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dry", "wet", "drusen", "fluid"]


@pytest.fixture
def tokenizer(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # from_pretrained(folder) reads vocab.txt in transformers 4 and 5 alike
    # (transformers 5 silently ignores a vocab_file= argument)
    return BertTokenizerFast.from_pretrained(str(tmp_path))


def item(text, present, target):
    images = {"fundus": torch.zeros(3, 8, 8), "oct": torch.zeros(2, 3, 8, 8)}
    inputs = {"images": images, "text": text, "present": torch.tensor(present)}
    return inputs, torch.tensor(target)


def test_collate_builds_documented_batch(tokenizer):
    items = [item("", [True, True, False], 0), item("wet fluid", [False, True, True], 1),
             item("", [True, True, False], 0)]
    inputs, targets = Collate(tokenizer, max_text_len=6)(items)
    assert set(inputs) == {"images", "text", "present"}
    assert inputs["images"]["fundus"].shape == (3, 3, 8, 8)
    assert inputs["images"]["oct"].shape == (3, 2, 3, 8, 8)
    assert inputs["present"].dtype == torch.bool and inputs["present"].shape == (3, 3)
    ids, mask = inputs["text"]["input_ids"], inputs["text"]["attention_mask"]
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == mask.dtype == torch.long
    cls, sep, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    for missing in (0, 2):  # missing text: only [CLS] [SEP]
        assert ids[missing].tolist() == [cls, sep, pad, pad, pad, pad]
        assert mask[missing].sum() == 2
    assert tokenizer.convert_ids_to_tokens(ids[1, 1:3]) == ["wet", "fluid"]
    assert targets.tolist() == [0, 1, 0]


def test_images_only_need_no_tokenizer_and_collate_pickles():
    items = [({"images": {"image": torch.ones(3, 4, 4)}, "present": torch.tensor([True])},
              torch.tensor(i)) for i in range(2)]
    inputs, targets = pickle.loads(pickle.dumps(Collate()))(items)
    assert set(inputs) == {"images", "present"} and inputs["images"]["image"].shape == (2, 3, 4, 4)
    assert inputs["present"].tolist() == [[True], [True]] and targets.tolist() == [0, 1]
    with pytest.raises(ConfigError, match="tokenizer"):
        Collate()([item("dry", [True, True, True], 0)])
